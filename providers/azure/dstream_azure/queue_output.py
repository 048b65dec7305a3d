"""azure-queue-output-provider: route envelopes to Azure Storage queues, one per table.

Each message carries envelopes exactly as received (the whole line: data and metadata),
so a queue input downstream replays them unchanged (queue chaining). With
``envelopes_per_message = 1`` (default) a message is one envelope, what other consumers
expect; larger values pack up to that many envelopes per message as JSON lines (within
the 64 KiB message limit), which is much faster. Each queue's messages are sent one after
another in order (``ordered = false`` sends them in parallel); different queues are sent
in parallel. Storage queues are best-effort FIFO only. A batch is acked when every send
in it has completed. Storage queues keep no duplicate detection: after a crash, envelopes
after the last committed checkpoint are sent again (at least once).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceNotFoundError
from pydantic import Field, field_validator

from dstream.sdk import InfrastructureProvider, OutputProvider
from dstream.sdk.units import DURATION_PATTERN, parse_duration
from dstream_azure import checks, lifecycle
from dstream_azure.naming import storage_name
from dstream_azure.routing import Router, RoutingConfig
from dstream_azure.storage_queues import (
    MAX_MESSAGE_BYTES,
    Encoding,
    QueueClient,
    StorageQueueAdmin,
    encoded_size,
    queue_client,
    service_client,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dstream.sdk import Envelope, Resource


class EnvelopeTooLarge(ValueError):
    pass


class QueueMissing(RuntimeError):
    pass


def _ttl_schema(schema: dict[str, Any]) -> None:
    schema.pop("type", None)
    schema.pop("minimum", None)
    schema["anyOf"] = [{"type": "integer", "minimum": -1}, {"type": "string", "pattern": DURATION_PATTERN}]


class StorageQueueOutputConfig(RoutingConfig):
    envelopes_per_message: int = Field(
        default=1, ge=1, le=10_000, description="pack up to this many envelopes per message (JSON lines)"
    )
    message_ttl: int = Field(
        default=-1,
        ge=-1,
        json_schema_extra=_ttl_schema,
        description="seconds a message lives in the queue (-1: never expires; Azure's default is 7 days)",
    )
    message_encoding: Encoding = Field(default="text", description='"text" (default) or "base64" message bodies')
    concurrency: int = Field(
        default=16, ge=1, le=64, description="parallel sends (across queues, or all when unordered)"
    )
    ordered: bool = Field(
        default=True,
        description="send each queue's messages one after another, in order; false sends them in parallel (faster)",
    )

    @field_validator("message_ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> int:
        return -1 if value in (-1, "-1") else int(parse_duration(value))


def pack(lines: list[bytes], per_message: int, encoding: Encoding, limit: int = MAX_MESSAGE_BYTES) -> list[str]:
    """Group envelope lines into message bodies of at most ``per_message`` lines and ``limit`` bytes."""
    bodies: list[str] = []
    current: list[str] = []
    size = 0
    utf8 = 0
    for line in lines:
        text = line.decode()
        line_size = encoded_size(text, encoding)
        if line_size > limit:
            raise EnvelopeTooLarge(
                f"an envelope of {len(line)} bytes is over the Storage queue message limit "
                f"({limit // 1024} KiB after {encoding} encoding); use azure-blob-output-provider or "
                "Service Bus for rows this large"
            )
        if current:
            grown = -(-(utf8 + 1 + len(line)) // 3) * 4 if encoding == "base64" else size + 1 + line_size
            if len(current) >= per_message or grown > limit:
                bodies.append("\n".join(current))
                current, size, utf8 = [], 0, 0
        size += line_size + (1 if current else 0)
        utf8 += len(line) + (1 if current else 0)
        current.append(text)
    if current:
        bodies.append("\n".join(current))
    return bodies


class AzureQueueOutputProvider(OutputProvider[StorageQueueOutputConfig], InfrastructureProvider):
    name = "azure-queue-output-provider"
    version = "0.1.0"
    Config = StorageQueueOutputConfig
    batch_size = 5000

    def __init__(self, config: StorageQueueOutputConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.service = service_client(config.connection_string, config.concurrency, **config.client_options())
        self.router = Router(config, storage_name)
        self.admin = StorageQueueAdmin(self.service)
        self.clients: dict[str, QueueClient] = {}
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="send")

    def _client(self, name: str) -> QueueClient:
        client = self.clients.get(name)
        if client is None:
            client = self.clients[name] = queue_client(self.service, name, self.config.message_encoding)
        return client

    def write(self, batch: list[Envelope]) -> None:
        cfg = self.config
        jobs = []
        for target, items in self.router.group(batch).items():
            client = self._client(target)
            bodies = pack([env.raw for env, _ in items], cfg.envelopes_per_message, cfg.message_encoding)
            if cfg.ordered:
                jobs.append(self.pool.submit(self._send, target, client, bodies))
            else:
                jobs.extend(self.pool.submit(self._send, target, client, [body]) for body in bodies)
        errors = [exc for job in jobs if (exc := job.exception()) is not None]
        if errors:
            raise errors[0]

    def _send(self, target: str, client: QueueClient, bodies: list[str]) -> None:
        for body in bodies:
            try:
                client.send_message(body, time_to_live=self.config.message_ttl)
            except ResourceNotFoundError:
                self._missing(target)
                client.send_message(body, time_to_live=self.config.message_ttl)

    def _missing(self, target: str) -> None:
        if not self.config.create_missing:
            raise QueueMissing(
                f"Storage queue {target} does not exist: run `dstream init {self.ctx.task or 'TASK'}` "
                "(with its table in tables), or set create_missing = true"
            ) from None
        if self.ctx.task is None:
            raise QueueMissing(f"Storage queue {target} does not exist and the task name is unknown") from None
        if self.admin.create(target, self.ctx.task):
            self.log.info("created Storage queue %s (create_missing)", target)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for client in self.clients.values():
            client.close()
        self.service.close()

    # -- lifecycle ---------------------------------------------------------------------

    def init(self) -> Iterator[Resource]:
        return lifecycle.init(self.admin, self.router.wanted(), self.ctx.task)

    def plan(self) -> Iterator[Resource]:
        return lifecycle.plan(self.admin, self.router.wanted(), self.ctx.task)

    def status(self) -> Iterator[Resource]:
        return lifecycle.status(self.admin, self.router.wanted(), self.ctx.task)

    def check(self) -> Iterator[Resource]:
        """The account answers these credentials; each queue the task writes to, present or not."""
        quick = service_client(self.config.connection_string, 1, **checks.QUICK)
        with checks.answered("the storage account"):
            yield from lifecycle.status(StorageQueueAdmin(quick), self.router.wanted(), self.ctx.task)

    def destroy(self) -> Iterator[Resource]:
        return lifecycle.destroy(self.admin, self.router.wanted(), self.ctx.task)


main = AzureQueueOutputProvider.main
