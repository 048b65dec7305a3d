"""Fixtures for the Azure provider tests.

Every test gets its own name prefix (queues, containers, task names) and removes what
carries it afterwards, so tests can run in any order against one Azurite (or one Service
Bus emulator). Connection strings reach task files through the environment
(``env("DSTREAM_TEST_AZURE")``, ``env("DSTREAM_TEST_SB")``), the way a user keeps them out
of the file.

The Service Bus emulator and the SQL Server it keeps its state in are MCR images, which
the development machines cannot pull: ``.github/workflows/servicebus.yml`` sets
``DSTREAM_TEST_SERVICEBUS=1`` and testcontainers starts them there (its Ryuk reaper image
is on Docker Hub, so it is switched off off GitHub).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from azure.servicebus.management import ServiceBusAdministrationClient
    from azure.storage.queue import QueueServiceClient

CONN_ENV = "DSTREAM_TEST_AZURE"
# Emulator 2.0.0 brought the management API (port 5300) and its /health endpoint; a 1.x image
# serves neither. The installer repository's compose templates say :latest and name no version.
# 2.0.1 is the pin: the stored public sources show it pinned by other projects' emulator fixtures
# (one of them noting that 2.0.0 intermittently exits with SIGSEGV), and 2.0.0 pinned by .NET
# Aspire's hosting integration (radical/aspire@5980d95, a dotnet/aspire fork,
# src/Aspire.Hosting.Azure.ServiceBus/ServiceBusEmulatorContainerImageTags.cs). Nothing here can
# reach MCR to confirm either; servicebus.yml prints the digest it pulled, to pin by digest next.
EMULATOR_IMAGE = os.environ.get(
    "DSTREAM_SERVICEBUS_EMULATOR_IMAGE", "mcr.microsoft.com/azure-messaging/servicebus-emulator:2.0.1"
)
SQL_IMAGE = os.environ.get("DSTREAM_SERVICEBUS_SQL_IMAGE", "mcr.microsoft.com/mssql/server:2022-CU14-ubuntu-22.04")
SQL_PASSWORD = "Dstream-Emulator-1!"  # a throwaway container's password, not a secret
SB_KEY = "SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=SAS_KEY_VALUE;UseDevelopmentEmulator=true;"
START_TIMEOUT = 300  # seconds each container may take to become ready (the tests' timeouts are above it)

# The marks of every test that needs the emulator.
EMULATOR_MARKS = [
    pytest.mark.servicebus,
    pytest.mark.skipif(
        not os.environ.get("DSTREAM_TEST_SERVICEBUS"),
        reason="the Service Bus emulator is an MCR image (mcr.microsoft.com/azure-messaging/servicebus-emulator) "
        "that this machine cannot pull; .github/workflows/servicebus.yml runs these tests with "
        "DSTREAM_TEST_SERVICEBUS=1",
    ),
    # Above the fixture's start-up (two containers, START_TIMEOUT each), which the first test pays.
    pytest.mark.timeout(2 * START_TIMEOUT + 600),
]
EMULATOR_CONFIG = {
    "UserConfig": {
        "Namespaces": [
            {
                "Name": "sbemulatorns",
                "Queues": [{"Name": "dstream-seed", "Properties": {"MaxDeliveryCount": 10, "LockDuration": "PT1M"}}],
                "Topics": [],
            }
        ],
        "Logging": {"Type": "Console"},  # docker logs, so a failure on GitHub shows why
    }
}


@dataclass
class Azure:
    connection_string: str
    prefix: str

    @property
    def queues(self) -> QueueServiceClient:
        from azure.storage.queue import QueueServiceClient

        return QueueServiceClient.from_connection_string(self.connection_string)

    def queue_names(self) -> set[str]:
        with self.queues as svc:
            return {q.name for q in svc.list_queues(name_starts_with=self.prefix)}

    def count(self, queue: str) -> int:
        """Messages in ``queue``, visible or not (held messages count)."""
        with self.queues as svc:
            return int(svc.get_queue_client(queue).get_queue_properties().approximate_message_count or 0)

    def visible(self, queue: str) -> list[str]:
        with self.queues as svc:
            return [m.content for m in svc.get_queue_client(queue).peek_messages(max_messages=32)]

    def send(self, queue: str, *bodies: str) -> None:
        with self.queues as svc:
            client = svc.get_queue_client(queue)
            for body in bodies:
                client.send_message(body, time_to_live=-1)

    def cleanup(self) -> None:
        from azure.storage.blob import BlobServiceClient

        with self.queues as svc:
            for name in self.queue_names():
                svc.delete_queue(name)
        with BlobServiceClient.from_connection_string(self.connection_string) as blobs:
            for container in blobs.list_containers(name_starts_with=self.prefix):
                blobs.delete_container(container.name)


@pytest.fixture
def azure(azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Azure]:
    """Azurite, a fresh name prefix, the connection string in the environment, cleanup after."""
    monkeypatch.setenv(CONN_ENV, azurite_connection_string)
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    found = Azure(azurite_connection_string, f"t{uuid.uuid4().hex[:8]}")
    yield found
    found.cleanup()


def lifecycle(verb: str, task: str, hcl: Path) -> list[dict[str, Any]]:
    """``dstream VERB TASK --json``: the output provider's resource rows."""
    result = run_cli(verb, task, "-f", str(hcl), "--json", *(["--yes"] if verb == "destroy" else []))
    assert result.returncode == 0, result.stderr
    return [row for row in json.loads(result.stdout)["resources"] if row["role"] == "output"]


def by_name(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {row["name"]: (row["action"], row.get("state", "")) for row in rows}


@dataclass
class ServiceBus:
    """A running emulator: data-plane and management connection strings."""

    data: str
    admin_conn: str

    def admin(self) -> ServiceBusAdministrationClient:
        from dstream_azure.servicebus_admin import admin_client
        from pydantic import SecretStr

        return admin_client(SecretStr(self.admin_conn))

    def active(self, queue: str) -> tuple[int, int]:
        with self.admin() as client:
            props = client.get_queue_runtime_properties(queue)
            return props.active_message_count, props.dead_letter_message_count

    def remove_prefixed(self, prefix: str) -> None:
        """Delete the queues and topics a test created (the emulator holds 50 at most)."""
        with self.admin() as client:
            for q in list(client.list_queues()):
                if q.name.lower().startswith(prefix):
                    with contextlib.suppress(Exception):
                        client.delete_queue(q.name)
            for t in list(client.list_topics()):
                if t.name.lower().startswith(prefix):
                    with contextlib.suppress(Exception):
                        client.delete_topic(t.name)


@pytest.fixture(scope="session")
def servicebus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceBus]:
    """The Service Bus emulator (and its SQL Server), started by testcontainers."""
    if not os.environ.get("GITHUB_ACTIONS"):
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # Ryuk's image is on Docker Hub
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network
    from testcontainers.core.wait_strategies import HttpWaitStrategy, LogMessageWaitStrategy

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
                LogMessageWaitStrategy("SQL Server is now ready for client connections").with_startup_timeout(
                    START_TIMEOUT
                )
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
            # HealthCheckApiSchema.md: GET :5300/health answers 200 once the emulator serves.
            .waiting_for(HttpWaitStrategy(5300, "/health").with_startup_timeout(START_TIMEOUT))
        )
        with sql, emulator:
            host = emulator.get_container_host_ip()
            yield ServiceBus(
                data=f"Endpoint=sb://{host}:{emulator.get_exposed_port(5672)};{SB_KEY}",
                admin_conn=f"Endpoint=sb://{host}:{emulator.get_exposed_port(5300)};{SB_KEY}",
            )


@pytest.fixture
def sb(servicebus: ServiceBus, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh name prefix; the connection strings in the environment for task files; cleanup."""
    monkeypatch.setenv("DSTREAM_TEST_SB", servicebus.data)
    monkeypatch.setenv("DSTREAM_TEST_SB_ADMIN", servicebus.admin_conn)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    yield prefix
    servicebus.remove_prefixed(prefix)
