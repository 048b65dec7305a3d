"""Fixtures for the Azure provider tests.

Every test gets its own name prefix (queues, containers, task names) and removes what
carries it afterwards, so tests can run in any order against one Azurite. Connection
strings reach task files through the environment (``env("DSTREAM_TEST_AZURE")``), the
way a user keeps them out of the file.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import run_cli

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from azure.storage.queue import QueueServiceClient

CONN_ENV = "DSTREAM_TEST_AZURE"


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
