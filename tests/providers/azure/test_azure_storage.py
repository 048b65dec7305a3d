"""Storage queue and blob providers against Azurite, through the real CLI with local processes.

What is proven here: init/plan/status/destroy manage exactly the queues (and container)
the task owns; envelopes are routed by table; a counter → queue → queue → file chain
delivers every envelope through kill -9 of each process and of dstream itself; a graceful
stop duplicates nothing; messages are deleted only after ``committed`` (checked at the
protocol level); poison messages are set aside, never dropped; blob output content
equals its input.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psutil
import pytest

from tests.conftest import run_cli
from tests.faults import finish, gone, kill, line_count, provider_pid, read_output, start_run, wait_until
from tests.providers.azure.conftest import by_name, lifecycle

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.providers.azure.conftest import Azure

pytestmark = pytest.mark.azurite

CONN = 'env("DSTREAM_TEST_AZURE")'

ROUTED = """
locals {{
  tables = ["dbo.Orders", "dbo.Customers", "sales.Invoices"]
}}
task "{p}-route" {{
  input {{
    provider_path = "file-input-provider"
    config {{ path = "{src}" }}
  }}
  output {{
    provider_path = "azure-queue-output-provider"
    config {{
      connection_string  = {conn}
      tables             = local.tables
      queue_name_pattern = "{p}-{{schema}}-{{table}}"
      envelopes_per_message = 3
    }}
  }}
}}
"""


def envelopes(tables: dict[str, int]) -> list[bytes]:
    """CDC-like envelopes, interleaved across tables."""
    out = []
    longest = max(tables.values())
    for i in range(longest):
        for table, count in tables.items():
            if i < count:
                meta = {"TableName": table, "OperationType": "Insert", "LSN": f"{i:016x}", "Seq": str(i)}
                out.append(orjson.dumps({"data": {"id": i, "table": table, "note": "<&>"}, "metadata": meta}))
    return out


def drain(azure: Azure, queue: str) -> list[bytes]:
    """Every envelope line in ``queue`` (deleting the messages)."""
    lines: list[bytes] = []
    with azure.queues as svc:
        client = svc.get_queue_client(queue)
        while True:
            batch = list(client.receive_messages(messages_per_page=32, max_messages=32))
            if not batch:
                return lines
            for message in batch:
                lines.extend(message.content.encode().split(b"\n"))
                client.delete_message(message)


def test_lifecycle_creates_plans_and_destroys_exactly_the_tasks_queues(
    azure: Azure, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    src = tmp_path / "src.jsonl"
    src.write_bytes(b"")
    hcl = task_file(ROUTED.format(p=azure.prefix, src=src, conn=CONN))
    task = f"{azure.prefix}-route"
    p = azure.prefix
    wanted = {f"{p}-dbo-orders", f"{p}-dbo-customers", f"{p}-sales-invoices"}
    # A queue the config names but somebody else created: never adopted, never deleted.
    foreign = f"{p}-sales-invoices"
    with azure.queues as svc:
        svc.create_queue(foreign)

    before = by_name(lifecycle("plan", task, hcl))
    assert before == {
        f"{p}-dbo-orders": ("create", "absent"),
        f"{p}-dbo-customers": ("create", "absent"),
        foreign: ("none", "present"),
    }

    created = lifecycle("init", task, hcl)
    assert by_name(created) == {
        f"{p}-dbo-orders": ("create", "present"),
        f"{p}-dbo-customers": ("create", "present"),
        foreign: ("none", "present"),
    }
    assert next(r for r in created if r["name"] == foreign)["details"]["managed_by"] == "not created by dstream"
    assert azure.queue_names() == wanted

    after = by_name(lifecycle("plan", task, hcl))
    assert after == dict.fromkeys(wanted, ("none", "present"))
    again = by_name(lifecycle("init", task, hcl))
    assert again == dict.fromkeys(wanted, ("none", "present"))  # idempotent

    status = {r["name"]: r for r in lifecycle("status", task, hcl)}
    assert status[f"{p}-dbo-orders"]["details"]["messages"] == 0
    assert status[f"{p}-dbo-orders"]["details"]["managed_by"] == "this task"

    destroyed = by_name(lifecycle("destroy", task, hcl))
    assert destroyed == {
        f"{p}-dbo-orders": ("delete", "absent"),
        f"{p}-dbo-customers": ("delete", "absent"),
        foreign: ("none", "present"),
    }
    assert azure.queue_names() == {foreign}
    assert by_name(lifecycle("destroy", task, hcl)) == {
        f"{p}-dbo-orders": ("none", "absent"),
        f"{p}-dbo-customers": ("none", "absent"),
        foreign: ("none", "present"),
    }


def test_destroy_also_removes_queues_of_tables_dropped_from_the_config(
    azure: Azure, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    src = tmp_path / "src.jsonl"
    src.write_bytes(b"")
    p = azure.prefix
    hcl = task_file(ROUTED.format(p=p, src=src, conn=CONN))
    lifecycle("init", f"{p}-route", hcl)
    smaller = hcl.read_text().replace(', "sales.Invoices"', "")
    hcl.write_text(smaller)
    plan = {r["name"]: r for r in lifecycle("plan", f"{p}-route", hcl)}
    assert plan[f"{p}-sales-invoices"]["details"]["note"].startswith("no longer in the config")
    assert by_name(lifecycle("destroy", f"{p}-route", hcl))[f"{p}-sales-invoices"] == ("delete", "absent")
    assert azure.queue_names() == set()


def test_envelopes_are_routed_to_their_tables_queue(
    azure: Azure, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    src = tmp_path / "src.jsonl"
    lines = envelopes({"dbo.Orders": 40, "Customers": 25, "sales.Invoices": 7})
    src.write_bytes(b"\n".join(lines) + b"\n")
    p = azure.prefix
    hcl = task_file(ROUTED.format(p=p, src=src, conn=CONN))
    lifecycle("init", f"{p}-route", hcl)
    result = run_cli("run", f"{p}-route", "-f", str(hcl))
    assert result.returncode == 0, result.stderr
    expected: dict[str, list[bytes]] = {}
    for line in lines:
        table = json.loads(line)["metadata"]["TableName"]
        queue = {"dbo.Orders": "dbo-orders", "Customers": "dbo-customers", "sales.Invoices": "sales-invoices"}[table]
        expected.setdefault(f"{p}-{queue}", []).append(line)
    # "Customers" (no schema, as upstream sends it) takes dbo from the configured dbo.Customers.
    got = {queue: sorted(drain(azure, queue)) for queue in azure.queue_names()}
    # Every envelope, byte for byte, in its table's queue only (Storage queues are not strictly FIFO).
    assert got == {queue: sorted(lines) for queue, lines in expected.items()}


CHAIN = """
task "{p}-produce" {{
  input {{
    provider_path = "counter-input-provider"
    config {{
      interval          = 0
      max_count         = {total}
      include_timestamp = false
      checkpoint_every  = 50
    }}
  }}
  output {{
    provider_path = "azure-queue-output-provider"
    config {{
      connection_string     = {conn}
      queue                 = "{p}-chain"
      envelopes_per_message = {per_message}
    }}
  }}
}}
task "{p}-consume" {{
  input {{
    provider_path = "azure-queue-input-provider"
    config {{
      connection_string  = {conn}
      queue              = "{p}-chain"
      visibility_timeout = 3
      max_idle           = "{max_idle}"
      commit_wait        = "{commit_wait}"
      batch              = 16
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
    azure: Azure,
    task_file: Callable[..., Path],
    tmp_path: Path,
    total: int,
    per_message: int,
    max_idle: str = "6s",
    commit_wait: str = "2s",
) -> tuple[Path, Path]:
    out = tmp_path / "out.jsonl"
    text = CHAIN.format(
        p=azure.prefix,
        total=total,
        conn=CONN,
        out=out,
        per_message=per_message,
        max_idle=max_idle,
        commit_wait=commit_wait,
    )
    hcl = task_file(text)
    assert by_name(lifecycle("init", f"{azure.prefix}-produce", hcl)) == {
        f"{azure.prefix}-chain": ("create", "present")
    }
    return hcl, out


def kill_provider(proc: subprocess.Popen[bytes], name: str) -> str:
    kill(provider_pid(proc, name))
    code, err = finish(proc)
    assert code == 1, err
    assert "killed by signal 9" in err
    return err


def test_chain_delivers_every_envelope_through_kill_9_of_each_stage(
    azure: Azure, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    total = 5000
    hcl, out = chain(azure, task_file, tmp_path, total, per_message=5)
    p = azure.prefix
    queue = f"{p}-chain"

    # Stage 1: kill -9 the queue output mid-stream, then finish.
    proc = start_run(f"{p}-produce", hcl)
    wait_until(lambda: azure.count(queue) >= 200, "200 messages in the queue", proc)
    kill_provider(proc, "azure-queue-output-provider")
    code, err = finish(start_run(f"{p}-produce", hcl))
    assert code == 0, err

    # Stage 2: kill -9 the queue input, then the file output, then dstream itself.
    for target in ("azure-queue-input-provider", "file-output-provider", "orchestrator"):
        point = line_count(out) + 700
        proc = start_run(f"{p}-consume", hcl)
        wait_until(lambda n=point: line_count(out) >= n, f"{point} lines in the output", proc)
        if target == "orchestrator":
            children = psutil.Process(proc.pid).children(recursive=True)
            kill(proc.pid)
            assert finish(proc)[0] == -signal.SIGKILL
            wait_until(lambda c=children: all(gone(x) for x in c), "providers to exit after dstream died")
        else:
            kill_provider(proc, target)
    # Messages held by the killed input reappear after their visibility timeout (3 s),
    # within the last run's max_idle (6 s).
    code, err = finish(start_run(f"{p}-consume", hcl))
    assert code == 0, err

    delivery = read_output(out)
    assert delivery.missing == []
    assert max(delivery.values) == total
    assert azure.count(queue) == 0  # every message was deleted, each only after its commit
    assert f"{queue}-poison" not in azure.queue_names()


def test_sigterm_of_the_consumer_then_resume_duplicates_nothing(
    azure: Azure, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    total = 3000
    # A graceful stop waits up to commit_wait for its last commit (below dstream's 10 s stop_timeout).
    hcl, out = chain(azure, task_file, tmp_path, total, per_message=2, max_idle="1s", commit_wait="8s")
    p = azure.prefix
    code, err = finish(start_run(f"{p}-produce", hcl))
    assert code == 0, err
    for _ in range(2):
        point = line_count(out) + 600
        proc = start_run(f"{p}-consume", hcl)
        wait_until(lambda n=point: line_count(out) >= n, f"{point} lines in the output", proc)
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        assert code == 0, err
    code, err = finish(start_run(f"{p}-consume", hcl))
    assert code == 0, err
    delivery = read_output(out)
    assert delivery.missing == []
    assert delivery.duplicates == 0
    assert len(delivery.values) == total
    assert azure.count(f"{p}-chain") == 0


def _envelope(value: int) -> str:
    return orjson.dumps({"data": {"value": value}, "metadata": {"Sequence": value}}).decode()


class ProviderProcess:
    """azure-queue-input-provider run by hand, speaking the wire protocol directly."""

    def __init__(self, config: dict[str, Any], task: str) -> None:
        from dstream import protocol

        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("azure-queue-input-provider"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.write(protocol.command_envelope("run", config, None, task))
        self.handshake = json.loads(self.readline())

    def write(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line)
        self.proc.stdin.flush()

    def readline(self) -> bytes:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the provider closed its stdout"
        return line

    def read_until(self, count: int) -> tuple[list[int], dict[str, Any]]:
        """Values of the first ``count`` envelopes, and the checkpoint that covers them."""
        values: list[int] = []
        while True:
            message = json.loads(self.readline())
            if "data" in message:
                values.append(message["data"]["value"])
            elif "checkpoint" in message and len(values) >= count:
                return values, message["checkpoint"]


def test_messages_are_deleted_only_after_committed_and_released_on_stop(azure: Azure) -> None:
    from dstream import protocol

    queue = f"{azure.prefix}-held"
    with azure.queues as svc:
        svc.create_queue(queue)
    azure.send(queue, *(_envelope(v) for v in range(1, 11)))
    config = {"connection_string": azure.connection_string, "queue": queue, "visibility_timeout": 2, "commit_wait": 0.5}

    first = ProviderProcess(config, f"{azure.prefix}-t")
    assert "commit" in first.handshake["features"]
    values, cp = first.read_until(10)
    assert sorted(values) == list(range(1, 11))
    assert cp["seq"] == 10
    # All ten are out and checkpointed, but nothing is committed: all still in the queue, held.
    assert azure.count(queue) == 10
    assert azure.visible(queue) == []
    first.write(protocol.committed({"run": cp["run"], "seq": 4}))
    wait_until(lambda: azure.count(queue) == 6, "the 4 committed messages to be deleted")
    kill(first.proc.pid)
    first.proc.wait()
    # The input died holding six: they come back when their visibility timeout runs out.
    wait_until(lambda: len(azure.visible(queue)) == 6, "the 6 uncommitted messages to reappear")
    assert sorted(json.loads(b)["data"]["value"] for b in azure.visible(queue)) == sorted(values[4:])

    second = ProviderProcess({**config, "visibility_timeout": 600}, f"{azure.prefix}-t")
    again, _ = second.read_until(6)
    assert sorted(again) == sorted(values[4:])
    assert azure.visible(queue) == []
    second.proc.send_signal(signal.SIGTERM)
    _, err = second.proc.communicate(timeout=30)
    assert second.proc.returncode == 0, err.decode()
    # A graceful stop without a commit releases what it holds at once, well before 600 s.
    assert len(azure.visible(queue)) == 6
    assert b"releasing 6 message(s)" in err


POISON = """
task "{p}-poison" {{
  input {{
    provider_path = "azure-queue-input-provider"
    config {{
      connection_string = {conn}
      queue             = "{p}-in"
      max_idle          = "1s"
      max_dequeue_count = 1
    }}
  }}
  output {{
    provider_path = "file-output-provider"
    config {{ path = "{out}" }}
  }}
}}
"""


def test_poison_messages_are_moved_aside_and_the_rest_delivered(
    azure: Azure, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    p = azure.prefix
    queue = f"{p}-in"
    with azure.queues as svc:
        svc.create_queue(queue)
        azure.send(queue, _envelope(8))
        # Received once already (by a consumer that then died): dequeue count 1.
        list(svc.get_queue_client(queue).receive_messages(visibility_timeout=1))
    wait_until(lambda: len(azure.visible(queue)) == 1, "the received message to become visible again")
    azure.send(queue, "not json at all", '{"plain": "json"}', _envelope(7))
    out = tmp_path / "out.jsonl"
    hcl = task_file(POISON.format(p=p, conn=CONN, out=out))
    result = run_cli("run", f"{p}-poison", "-f", str(hcl))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["data"] for line in lines] == [{"plain": "json"}, {"value": 7}]
    assert lines[0]["metadata"]["Queue"] == queue
    assert sorted(azure.visible(f"{queue}-poison")) == sorted(["not json at all", _envelope(8)])
    assert azure.count(queue) == 0
    assert "moved message" in result.stderr
    assert "max_dequeue_count = 1" in result.stderr


BLOB = """
task "{p}-blob" {{
  input {{
    provider_path = "file-input-provider"
    config {{ path = "{src}" }}
  }}
  output {{
    provider_path = "azure-blob-output-provider"
    config {{
      connection_string = {conn}
      container         = "{p}-lake"
      path_pattern      = "{{schema}}/{{table}}/{{date}}/{{HH}}.jsonl"
    }}
  }}
}}
"""


def test_blob_output_content_equals_its_input(azure: Azure, task_file: Callable[..., Path], tmp_path: Path) -> None:
    from azure.storage.blob import BlobServiceClient

    p = azure.prefix
    src = tmp_path / "src.jsonl"
    lines = envelopes({"dbo.Orders": 3000, "dbo.Customers": 1200, "sales.Invoices": 1})
    src.write_bytes(b"\n".join(lines) + b"\n")
    hcl = task_file(BLOB.format(p=p, src=src, conn=CONN))
    assert by_name(lifecycle("plan", f"{p}-blob", hcl)) == {f"{p}-lake": ("create", "absent")}
    assert by_name(lifecycle("init", f"{p}-blob", hcl)) == {f"{p}-lake": ("create", "present")}
    assert by_name(lifecycle("plan", f"{p}-blob", hcl)) == {f"{p}-lake": ("none", "present")}
    result = run_cli("run", f"{p}-blob", "-f", str(hcl))
    assert result.returncode == 0, result.stderr

    expected: dict[str, bytes] = {}
    for line in lines:
        schema, table = json.loads(line)["metadata"]["TableName"].split(".")
        expected[f"{schema}/{table}"] = expected.get(f"{schema}/{table}", b"") + line + b"\n"
    got: dict[str, bytes] = {}
    with BlobServiceClient.from_connection_string(azure.connection_string) as blobs:
        container = blobs.get_container_client(f"{p}-lake")
        for blob in sorted(container.list_blobs(), key=lambda b: b.name):
            assert blob.blob_type == "AppendBlob"
            key = "/".join(blob.name.split("/")[:2])
            got[key] = got.get(key, b"") + container.download_blob(blob.name).readall()
    assert got == expected
    assert by_name(lifecycle("destroy", f"{p}-blob", hcl)) == {f"{p}-lake": ("delete", "absent")}
