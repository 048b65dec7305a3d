"""asb-output-provider and asb-input-provider against the Azure Service Bus emulator.

The emulator (and the SQL Server it stores its state in) are MCR images, which the
development machines cannot pull; ``.github/workflows/servicebus.yml`` sets
``DSTREAM_TEST_SERVICEBUS=1`` and runs these tests there, with testcontainers (fixtures in
conftest.py). The same scenarios as the Storage queue tests: lifecycle with ownership, a
chain through kill -9, duplicate detection absorbing a full replay, a graceful stop that
releases (not abandons) what it holds, poison messages dead-lettered, topics.
"""

from __future__ import annotations

import json
import signal
import time
from typing import TYPE_CHECKING, Any

from tests.conftest import run_cli
from tests.faults import finish, kill, line_count, provider_pid, read_output, start_run, wait_until
from tests.providers.azure.conftest import EMULATOR_MARKS, by_name, lifecycle

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.providers.azure.conftest import ServiceBus

pytestmark = EMULATOR_MARKS


CONN = 'env("DSTREAM_TEST_SB")'
ADMIN = 'env("DSTREAM_TEST_SB_ADMIN")'

LIFECYCLE = """
task "{task}" {{
  input {{ provider_path = "counter-input-provider" }}
  output {{
    provider_path = "asb-output-provider"
    config {{
      connection_string          = {conn}
      admin_connection_string    = {admin}
      tables                     = {tables}
      queue_name_pattern         = "{p}-{{table}}"
      duplicate_detection_window = "5m"
    }}
  }}
}}
"""


def lifecycle_task(p: str, task: str, tables: list[str]) -> str:
    return LIFECYCLE.format(p=p, task=task, conn=CONN, admin=ADMIN, tables=json.dumps(tables))


def test_lifecycle_creates_plans_and_destroys_exactly_the_tasks_queues(
    sb: str, servicebus: ServiceBus, task_file: Callable[..., Path]
) -> None:
    hcl = task_file(lifecycle_task(sb, sb, ["dbo.Orders", "dbo.Customers", "dbo.Refunds"]))
    other = task_file(lifecycle_task(sb, f"{sb}-other", ["dbo.Archive"]), name="other.hcl")
    foreign = f"{sb}-Refunds"
    with servicebus.admin() as client:
        client.create_queue(foreign)
    assert by_name(lifecycle("init", f"{sb}-other", other)) == {f"{sb}-Archive": ("create", "present")}
    assert by_name(lifecycle("plan", sb, hcl)) == {
        f"{sb}-Orders": ("create", "absent"),
        f"{sb}-Customers": ("create", "absent"),
        foreign: ("none", "present"),
    }
    assert by_name(lifecycle("init", sb, hcl))[f"{sb}-Orders"] == ("create", "present")
    with servicebus.admin() as client:
        created = client.get_queue(f"{sb}-Orders")
        assert created.requires_duplicate_detection
        assert created.duplicate_detection_history_time_window.total_seconds() == 300
    # Ownership holds whether the emulator kept user_metadata or dstream used its ledger.
    plan = {r["name"]: r["details"] for r in lifecycle("plan", sb, hcl)}
    assert plan[f"{sb}-Orders"]["managed_by"] == "this task"
    assert plan[foreign]["managed_by"] == "not created by dstream"
    status = {r["name"]: r for r in lifecycle("status", sb, hcl)}
    assert status[f"{sb}-Orders"]["details"]["active"] == 0
    destroyed = by_name(lifecycle("destroy", sb, hcl))
    assert destroyed == {
        f"{sb}-Orders": ("delete", "absent"),
        f"{sb}-Customers": ("delete", "absent"),
        foreign: ("none", "present"),
    }
    with servicebus.admin() as client:
        names = {q.name.lower() for q in client.list_queues()}
    assert f"{sb}-orders" not in names
    assert f"{sb}-customers" not in names
    assert {foreign.lower(), f"{sb}-archive"} <= names  # not ours: kept
    assert by_name(lifecycle("destroy", f"{sb}-other", other)) == {f"{sb}-Archive": ("delete", "absent")}


CHAIN = """
task "{p}-produce" {{
  input {{
    provider_path = "counter-input-provider"
    config {{
      interval          = 0
      max_count         = {total}
      include_timestamp = false
      checkpoint_every  = 100
    }}
  }}
  output {{
    provider_path = "asb-output-provider"
    config {{
      connection_string       = {conn}
      admin_connection_string = {admin}
      queue                      = "{p}-chain"
      lock_duration              = "10s"
      duplicate_detection_window = "5m"
      message_id_keys            = ["Sequence"]  # the counter's Sequence names one record (the task vouches)
    }}
  }}
}}
task "{p}-consume" {{
  input {{
    provider_path = "asb-input-provider"
    config {{
      connection_string = {conn}
      queue             = "{p}-chain"
      max_idle          = "{max_idle}"
      commit_wait       = "{commit_wait}"
    }}
  }}
  output {{
    provider_path = "file-output-provider"
    config {{
      path  = "{out}"
      fsync = false
    }}
  }}
}}
"""


def chain(
    sb: str, task_file: Callable[..., Path], tmp_path: Path, total: int, max_idle: str, commit_wait: str = "2s"
) -> tuple[Path, Path]:
    out = tmp_path / "out.jsonl"
    text = CHAIN.format(p=sb, total=total, conn=CONN, admin=ADMIN, out=out, max_idle=max_idle, commit_wait=commit_wait)
    hcl = task_file(text)
    assert by_name(lifecycle("init", f"{sb}-produce", hcl)) == {f"{sb}-chain": ("create", "present")}
    return hcl, out


def test_chain_delivers_every_envelope_through_kill_9(
    sb: str, servicebus: ServiceBus, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    total = 4000
    hcl, out = chain(sb, task_file, tmp_path, total, max_idle="15s")  # > the 10 s lock a killed input held
    proc = start_run(f"{sb}-produce", hcl)
    wait_until(lambda: servicebus.active(f"{sb}-chain")[0] >= 500, "500 messages in the queue", proc)
    kill(provider_pid(proc, "asb-output-provider"))
    assert finish(proc)[0] == 1
    code, err = finish(start_run(f"{sb}-produce", hcl))
    assert code == 0, err
    # Duplicate detection dropped what the restarted producer sent again.
    assert servicebus.active(f"{sb}-chain")[0] == total

    for target in ("asb-input-provider", "file-output-provider"):
        point = line_count(out) + 800
        proc = start_run(f"{sb}-consume", hcl)
        wait_until(lambda n=point: line_count(out) >= n, f"{point} lines in the output", proc)
        kill(provider_pid(proc, target))
        assert finish(proc)[0] == 1
    code, err = finish(start_run(f"{sb}-consume", hcl), timeout=300)
    assert code == 0, err
    delivery = read_output(out)
    assert delivery.missing == []
    assert max(delivery.values) == total
    assert servicebus.active(f"{sb}-chain") == (0, 0)


def test_duplicate_detection_absorbs_a_full_replay(
    sb: str, servicebus: ServiceBus, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    total = 1500
    hcl, out = chain(sb, task_file, tmp_path, total, max_idle="3s", commit_wait="8s")
    for _ in range(2):
        code, err = finish(start_run(f"{sb}-produce", hcl))
        assert code == 0, err
        assert run_cli("state", "reset", f"{sb}-produce", "--yes", "-f", str(hcl)).returncode == 0
    assert servicebus.active(f"{sb}-chain")[0] == total
    proc = start_run(f"{sb}-consume", hcl)
    wait_until(lambda: line_count(out) >= total // 2, "half the output", proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    # What the stop gave back was released, not abandoned: no delivery was counted. The count is
    # zero-based (the SDK's live test asserts 0 on a first receive and after a release: tests/test_queues.py
    # test_queue_by_queue_client_conn_str_receive_handler_release_messages), so 1 would mean an abandon.
    counts = peeked_delivery_counts(servicebus, f"{sb}-chain")
    assert counts, "nothing left in the queue to peek: the stop came too late to test a release"
    assert set(counts) == {0}, f"delivery counts after a graceful stop: {sorted(set(counts))}"
    code, err = finish(start_run(f"{sb}-consume", hcl))
    assert code == 0, err
    delivery = read_output(out)
    assert delivery.missing == []
    assert delivery.duplicates == 0  # a graceful stop completes what it sent and releases the rest
    assert len(delivery.values) == total


def peeked_delivery_counts(servicebus: ServiceBus, queue: str) -> list[int]:
    from azure.servicebus import ServiceBusClient

    with ServiceBusClient.from_connection_string(servicebus.data) as client, client.get_queue_receiver(queue) as r:
        return [m.delivery_count or 0 for m in r.peek_messages(max_message_count=250)]


def test_released_messages_come_back_at_once_without_a_counted_delivery(sb: str, servicebus: ServiceBus) -> None:
    """Release against abandon on one queue: both come back at once (well inside the 5-minute lock);
    a released message keeps delivery_count 0 (zero-based: the SDK's tests/test_queues.py asserts 0 on
    a first receive and after a release), an abandoned one comes back with 1."""
    from azure.servicebus import ServiceBusClient, ServiceBusMessage
    from dstream_azure.servicebus import release_message

    queue = f"{sb}-release"
    with servicebus.admin() as admin:
        admin.create_queue(queue, lock_duration=_minutes(5), max_delivery_count=10)
    with ServiceBusClient.from_connection_string(servicebus.data) as client:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages([ServiceBusMessage(f'{{"data": {i}}}', message_id=f"m{i}") for i in range(6)])
        with client.get_queue_receiver(queue) as receiver:
            held = []
            while len(held) < 6:
                got = receiver.receive_messages(max_message_count=6, max_wait_time=10)
                assert got, f"received {len(held)} of 6"
                held += got
            assert [m.delivery_count for m in held] == [0] * 6  # zero-based
            for m in held[:3]:
                assert release_message(receiver, m)
            for m in held[3:]:
                receiver.abandon_message(m)
        started = time.monotonic()
        with client.get_queue_receiver(queue) as receiver:
            again = []
            while len(again) < 6 and time.monotonic() - started < 60:
                again += receiver.receive_messages(max_message_count=6, max_wait_time=5)
            assert time.monotonic() - started < 60  # well inside the 5-minute lock: given back, not expired
            counts = {m.message_id: m.delivery_count for m in again}
            assert counts == {"m0": 0, "m1": 0, "m2": 0, "m3": 1, "m4": 1, "m5": 1}  # released vs abandoned
            for m in again:
                receiver.complete_message(m)


def _minutes(n: int) -> Any:
    from datetime import timedelta

    return timedelta(minutes=n)


def test_poison_messages_are_dead_lettered(
    sb: str, servicebus: ServiceBus, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    from azure.servicebus import ServiceBusClient, ServiceBusMessage

    hcl, out = chain(sb, task_file, tmp_path, 1, max_idle="3s")
    with (
        ServiceBusClient.from_connection_string(servicebus.data) as client,
        client.get_queue_sender(f"{sb}-chain") as s,
    ):
        s.send_messages([ServiceBusMessage("not json"), ServiceBusMessage('{"data": {"value": 1}}')])
    result = run_cli("run", f"{sb}-consume", "-f", str(hcl))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["data"] for line in out.read_text().splitlines()] == [{"value": 1}]
    assert servicebus.active(f"{sb}-chain") == (0, 1)
    assert "dead-lettered message" in result.stderr


TOPIC = """
task "{p}-topic" {{
  input {{
    provider_path = "file-input-provider"
    config {{ path = "{src}" }}
  }}
  output {{
    provider_path = "asb-output-provider"
    config {{
      connection_string       = {conn}
      admin_connection_string = {admin}
      topic                      = "{p}-events"
      subscriptions              = ["audit"]
      duplicate_detection_window = "5m"
    }}
  }}
}}
task "{p}-audit" {{
  input {{
    provider_path = "asb-input-provider"
    config {{
      connection_string = {conn}
      topic             = "{p}-events"
      subscription      = "audit"
      max_idle          = "3s"
    }}
  }}
  output {{
    provider_path = "file-output-provider"
    config {{ path = "{out}" }}
  }}
}}
"""


def test_a_topic_and_its_subscription_carry_envelopes_unchanged(
    sb: str, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    src, out = tmp_path / "src.jsonl", tmp_path / "out.jsonl"
    lines = [json.dumps({"data": {"n": i}, "metadata": {"TableName": "dbo.T", "LSN": f"{i:08x}"}}) for i in range(50)]
    src.write_text("\n".join(lines) + "\n")
    hcl = task_file(TOPIC.format(p=sb, conn=CONN, admin=ADMIN, src=src, out=out))
    assert by_name(lifecycle("init", f"{sb}-topic", hcl)) == {f"{sb}-events": ("create", "present")}
    assert run_cli("run", f"{sb}-topic", "-f", str(hcl)).returncode == 0
    result = run_cli("run", f"{sb}-audit", "-f", str(hcl))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == [json.loads(line) for line in lines]
    assert by_name(lifecycle("destroy", f"{sb}-topic", hcl)) == {f"{sb}-events": ("delete", "absent")}
