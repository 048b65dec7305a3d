"""asb-output-provider and asb-input-provider against the Azure Service Bus emulator.

The emulator (and the SQL Server it stores its state in) are MCR images, which the
development machines cannot pull; ``.github/workflows/servicebus.yml`` sets
``DSTREAM_TEST_SERVICEBUS=1`` and runs these tests there, with testcontainers. The same
scenarios as the Storage queue tests: lifecycle with ownership, a chain through kill -9,
duplicate detection absorbing a full replay, poison messages dead-lettered, topics.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import run_cli
from tests.faults import finish, kill, line_count, provider_pid, read_output, start_run, wait_until
from tests.providers.azure.conftest import by_name, lifecycle

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = [
    pytest.mark.servicebus,
    pytest.mark.skipif(
        not os.environ.get("DSTREAM_TEST_SERVICEBUS"),
        reason="the Service Bus emulator is an MCR image (mcr.microsoft.com/azure-messaging/servicebus-emulator) "
        "that this machine cannot pull; .github/workflows/servicebus.yml runs these tests with "
        "DSTREAM_TEST_SERVICEBUS=1",
    ),
]

EMULATOR_IMAGE = os.environ.get(
    "DSTREAM_SERVICEBUS_EMULATOR_IMAGE", "mcr.microsoft.com/azure-messaging/servicebus-emulator:latest"
)
SQL_IMAGE = os.environ.get("DSTREAM_SERVICEBUS_SQL_IMAGE", "mcr.microsoft.com/mssql/server:2022-latest")
SQL_PASSWORD = "Dstream-Emulator-1!"  # a throwaway container's password, not a secret
KEY = "SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
EMULATOR_CONFIG = {
    "UserConfig": {
        "Namespaces": [
            {
                "Name": "sbemulatorns",
                "Queues": [{"Name": "dstream-seed", "Properties": {"MaxDeliveryCount": 10, "LockDuration": "PT1M"}}],
                "Topics": [],
            }
        ],
        "Logging": {"Type": "File"},
    }
}


@pytest.fixture(scope="module")
def servicebus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(data-plane connection string, management connection string) of a running emulator."""
    if not os.environ.get("GITHUB_ACTIONS"):
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # Ryuk's image is on Docker Hub
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    config = tmp_path_factory.mktemp("sb") / "Config.json"
    config.write_text(json.dumps(EMULATOR_CONFIG))
    config.chmod(0o644)
    with Network() as network:
        sql = (
            DockerContainer(SQL_IMAGE)
            .with_env("ACCEPT_EULA", "Y")
            .with_env("MSSQL_SA_PASSWORD", SQL_PASSWORD)
            .with_network(network)
            .with_network_aliases("sqlserver")
            .waiting_for(
                LogMessageWaitStrategy("SQL Server is now ready for client connections").with_startup_timeout(300)
            )
        )
        emulator = (
            DockerContainer(EMULATOR_IMAGE)
            .with_env("ACCEPT_EULA", "Y")
            .with_env("SQL_SERVER", "sqlserver")
            .with_env("MSSQL_SA_PASSWORD", SQL_PASSWORD)
            .with_volume_mapping(str(config), "/ServiceBus_Emulator/ConfigFiles/Config.json", "ro")
            .with_exposed_ports(5672, 5300)
            .with_network(network)
            .waiting_for(LogMessageWaitStrategy("Emulator Service is Successfully Up!").with_startup_timeout(300))
        )
        with sql, emulator:
            host = emulator.get_container_host_ip()
            data = f"Endpoint=sb://{host}:{emulator.get_exposed_port(5672)};{KEY}"
            admin = f"Endpoint=sb://{host}:{emulator.get_exposed_port(5300)};{KEY}"
            yield data, admin


@pytest.fixture
def sb(servicebus: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh name prefix; the connection strings in the environment for task files."""
    monkeypatch.setenv("DSTREAM_TEST_SB", servicebus[0])
    monkeypatch.setenv("DSTREAM_TEST_SB_ADMIN", servicebus[1])
    return f"t{uuid.uuid4().hex[:8]}"


def admin(servicebus: tuple[str, str]) -> Any:
    from dstream_azure.servicebus import admin_client
    from pydantic import SecretStr

    return admin_client(SecretStr(servicebus[1]))


def active(servicebus: tuple[str, str], queue: str) -> tuple[int, int]:
    with admin(servicebus) as client:
        props = client.get_queue_runtime_properties(queue)
        return props.active_message_count, props.dead_letter_message_count


CONN = 'env("DSTREAM_TEST_SB")'
ADMIN = 'env("DSTREAM_TEST_SB_ADMIN")'

LIFECYCLE = """
task "{p}" {{
  input {{ provider_path = "counter-input-provider" }}
  output {{
    provider_path = "asb-output-provider"
    config {{
      connection_string       = {conn}
      admin_connection_string = {admin}
      tables                  = ["dbo.Orders", "dbo.Customers", "dbo.Refunds"]
      queue_name_pattern      = "{p}-{{table}}"
    }}
  }}
}}
"""


def test_lifecycle_creates_plans_and_destroys_exactly_the_tasks_queues(
    sb: str, servicebus: tuple[str, str], task_file: Callable[..., Path]
) -> None:
    hcl = task_file(LIFECYCLE.format(p=sb, conn=CONN, admin=ADMIN))
    foreign = f"{sb}-Refunds"
    with admin(servicebus) as client:
        client.create_queue(foreign)
    assert by_name(lifecycle("plan", sb, hcl)) == {
        f"{sb}-Orders": ("create", "absent"),
        f"{sb}-Customers": ("create", "absent"),
        foreign: ("none", "present"),
    }
    assert by_name(lifecycle("init", sb, hcl))[f"{sb}-Orders"] == ("create", "present")
    with admin(servicebus) as client:
        created = client.get_queue(f"{sb}-Orders")
        assert created.requires_duplicate_detection
        assert json.loads(created.user_metadata)["dstream_task"] == sb
    assert set(by_name(lifecycle("plan", sb, hcl)).values()) == {("none", "present")}
    status = {r["name"]: r for r in lifecycle("status", sb, hcl)}
    assert status[f"{sb}-Orders"]["details"]["active"] == 0
    destroyed = by_name(lifecycle("destroy", sb, hcl))
    assert destroyed == {
        f"{sb}-Orders": ("delete", "absent"),
        f"{sb}-Customers": ("delete", "absent"),
        foreign: ("none", "present"),
    }
    with admin(servicebus) as client:
        names = {q.name.lower() for q in client.list_queues()}
    assert f"{sb}-orders" not in names
    assert foreign.lower() in names


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
      queue                   = "{p}-chain"
      lock_duration           = "10s"
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
    sb: str, servicebus: tuple[str, str], task_file: Callable[..., Path], tmp_path: Path
) -> None:
    total = 4000
    hcl, out = chain(sb, task_file, tmp_path, total, max_idle="15s")  # > the 10 s lock a killed input held
    proc = start_run(f"{sb}-produce", hcl)
    wait_until(lambda: active(servicebus, f"{sb}-chain")[0] >= 500, "500 messages in the queue", proc)
    kill(provider_pid(proc, "asb-output-provider"))
    assert finish(proc)[0] == 1
    code, err = finish(start_run(f"{sb}-produce", hcl))
    assert code == 0, err
    # Duplicate detection dropped what the restarted producer sent again.
    assert active(servicebus, f"{sb}-chain")[0] == total

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
    assert active(servicebus, f"{sb}-chain") == (0, 0)


def test_duplicate_detection_absorbs_a_full_replay(
    sb: str, servicebus: tuple[str, str], task_file: Callable[..., Path], tmp_path: Path
) -> None:
    total = 1500
    hcl, out = chain(sb, task_file, tmp_path, total, max_idle="3s", commit_wait="8s")
    for _ in range(2):
        code, err = finish(start_run(f"{sb}-produce", hcl))
        assert code == 0, err
        assert run_cli("state", "reset", f"{sb}-produce", "--yes", "-f", str(hcl)).returncode == 0
    assert active(servicebus, f"{sb}-chain")[0] == total
    proc = start_run(f"{sb}-consume", hcl)
    wait_until(lambda: line_count(out) >= total // 2, "half the output", proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    code, err = finish(start_run(f"{sb}-consume", hcl))
    assert code == 0, err
    delivery = read_output(out)
    assert delivery.missing == []
    assert delivery.duplicates == 0  # a graceful stop completes what it sent and abandons the rest
    assert len(delivery.values) == total


def test_poison_messages_are_dead_lettered(
    sb: str, servicebus: tuple[str, str], task_file: Callable[..., Path], tmp_path: Path
) -> None:
    from azure.servicebus import ServiceBusClient, ServiceBusMessage

    hcl, out = chain(sb, task_file, tmp_path, 1, max_idle="3s")
    with ServiceBusClient.from_connection_string(servicebus[0]) as client, client.get_queue_sender(f"{sb}-chain") as s:
        s.send_messages([ServiceBusMessage("not json"), ServiceBusMessage('{"data": {"value": 1}}')])
    result = run_cli("run", f"{sb}-consume", "-f", str(hcl))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["data"] for line in out.read_text().splitlines()] == [{"value": 1}]
    assert active(servicebus, f"{sb}-chain") == (0, 1)
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
      topic                   = "{p}-events"
      subscriptions           = ["audit"]
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
