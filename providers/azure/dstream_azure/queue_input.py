"""azure-queue-input-provider: receive from an Azure Storage queue, delete on commit.

A received message is invisible for ``visibility_timeout`` seconds. It is deleted only
when dstream commits a checkpoint covering it (its envelopes are durable downstream);
while held, its invisibility is extended. If the input dies, held messages become
visible again when their visibility timeout runs out and are received again (by the
next run, or another consumer): at-least-once, never lost. On a graceful stop, what is
still held after ``commit_wait`` is made visible at once.

A message whose dequeue count passes ``max_dequeue_count``, or whose body is not JSON,
is moved to the poison queue (``<queue>-poison``, as Azure Functions does) and deleted.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from pydantic import Field

from dstream.sdk import (
    Duration,
    InfrastructureProvider,
)
from dstream_azure import checks
from dstream_azure.inputs import Held, Poison, QueueInput, QueueInputConfig, to_envelope_lines
from dstream_azure.lifecycle import status
from dstream_azure.naming import storage_name
from dstream_azure.storage_queues import (
    Encoding,
    QueueMessage,
    StorageQueueAdmin,
    queue_client,
    service_client,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dstream.sdk import Resource


class StorageQueueInputConfig(QueueInputConfig):
    queue: str = Field(description="the Storage queue to read")
    visibility_timeout: int = Field(
        default=60, ge=1, le=7 * 86400, description="seconds a received message stays invisible (renewed while held)"
    )
    batch: int = Field(default=32, ge=1, le=32, description="messages per receive request (at most 32)")
    poll_interval: Duration = Field(
        default=1.0, gt=0, description="longest wait between receives when the queue is empty"
    )
    max_dequeue_count: int = Field(
        default=10, ge=0, description="move a message received more often than this to the poison queue (0: never)"
    )
    poison_queue: str | None = Field(default=None, description="poison queue (default: <queue>-poison)")
    message_encoding: Encoding = Field(default="text", description='"text" (default) or "base64" message bodies')
    concurrency: int = Field(default=16, ge=1, le=64, description="parallel deletes and renewals")


class AzureQueueInputProvider(QueueInput[StorageQueueInputConfig, QueueMessage], InfrastructureProvider):
    name = "azure-queue-input-provider"
    version = "0.1.0"
    Config = StorageQueueInputConfig

    def __init__(self, config: StorageQueueInputConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.receive_batch = config.batch
        self.queue_name = storage_name(config.queue)
        self.service = service_client(config.connection_string, config.concurrency, **config.client_options())
        self.client = queue_client(self.service, self.queue_name, config.message_encoding)
        self.poison_name = storage_name(config.poison_queue or f"{self.queue_name}-poison")
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="queue")
        self._backoff = 0.05
        self._received_at = 0.0
        self.deleting: deque[Future[str]] = deque()

    @property
    def source(self) -> str:
        return f"Storage queue {self.queue_name}"

    def receive(self, max_count: int) -> list[QueueMessage]:
        self._received_at = time.monotonic()  # the service starts the timeouts after this: conservative
        try:
            pages = self.client.receive_messages(
                messages_per_page=max_count, max_messages=max_count, visibility_timeout=self.config.visibility_timeout
            )
            messages = list(pages)
        except ResourceNotFoundError:
            raise RuntimeError(
                f"queue {self.queue_name} does not exist (create it with `dstream init` on the task that writes it)"
            ) from None
        if messages:
            self._backoff = 0.05
        return messages

    def idle(self) -> bool:
        wait, self._backoff = self._backoff, min(self._backoff * 2, self.config.poll_interval)
        return self.ctx.sleep(wait)

    def decode(self, message: QueueMessage) -> tuple[bytes, float, float]:
        period = float(self.config.visibility_timeout)
        count = message.dequeue_count or 0
        if self.config.max_dequeue_count and count > self.config.max_dequeue_count:
            raise Poison(f"received {count} times (max_dequeue_count = {self.config.max_dequeue_count})")
        lines = to_envelope_lines(message.content or "", {"Queue": self.queue_name, "MessageId": message.id})
        return lines, self._received_at + period, period

    def settle(self, held: list[Held[QueueMessage]]) -> None:
        """Delete in the background (receiving goes on meanwhile); at most a few rounds outstanding."""
        self.deleting.extend(self.pool.submit(self._delete, h) for h in held)
        self._reap(keep=4 * self.config.concurrency)

    def _reap(self, keep: int) -> None:
        failures: list[str] = []
        while self.deleting and (self.deleting[0].done() or len(self.deleting) > keep):
            failure = self.deleting.popleft().result()
            if failure:
                failures.append(failure)
        if failures:
            self.log.warning(
                "%d message(s) could not be deleted (%s); they were redelivered meanwhile and will arrive again",
                len(failures),
                failures[0],
            )

    def _delete(self, held: Held[QueueMessage]) -> str:
        try:
            self.client.delete_message(held.message.id, held.message.pop_receipt)
        except ResourceNotFoundError:
            return ""  # already gone
        except HttpResponseError as exc:
            return str(getattr(exc, "error_code", None) or exc.status_code)
        return ""

    def release(self, held: list[Held[QueueMessage]]) -> None:
        list(self.pool.map(lambda h: self._update(h, 0), held))

    def renew(self, held: list[Held[QueueMessage]]) -> None:
        list(self.pool.map(lambda h: self._update(h, self.config.visibility_timeout), held))

    def _update(self, held: Held[QueueMessage], visibility: int) -> None:
        started = time.monotonic()
        try:
            updated = self.client.update_message(
                held.message.id, held.message.pop_receipt, visibility_timeout=visibility
            )
        except HttpResponseError as exc:
            self.log.warning(
                "could not extend message %s (%s)", held.message.id, getattr(exc, "error_code", None) or exc.status_code
            )
            return
        held.message.pop_receipt = updated.pop_receipt
        held.message.next_visible_on = updated.next_visible_on
        held.deadline = started + visibility

    def poison(self, message: QueueMessage, reason: str) -> None:
        poison = queue_client(self.service, self.poison_name, self.config.message_encoding)
        try:
            poison.send_message(message.content, time_to_live=-1)
        except ResourceNotFoundError:
            # Not marked as dstream-managed: destroy never deletes set-aside messages.
            with contextlib.suppress(ResourceExistsError):
                self.service.create_queue(self.poison_name, metadata={"dstream_poison_of": self.queue_name})
            poison.send_message(message.content, time_to_live=-1)
        self.client.delete_message(message.id, message.pop_receipt)
        self.log.warning("moved message %s to poison queue %s: %s", message.id, self.poison_name, reason)

    def close_clients(self) -> None:
        self._reap(keep=0)
        self.pool.shutdown(wait=True)
        self.client.close()
        self.service.close()

    # -- lifecycle: the input only reports; the writing task owns the queue ------------

    def status(self) -> Iterator[Resource]:
        yield from self._status(self.service)

    def check(self) -> Iterator[Resource]:
        """The account answers these credentials; the queue this input reads, present or not."""
        with checks.answered("the storage account"):
            yield from self._status(service_client(self.config.connection_string, 1, **checks.QUICK))

    def _status(self, service: Any) -> Iterator[Resource]:
        wanted: dict[str, list[str]] = {self.queue_name: [], self.poison_name: []}
        for res in status(StorageQueueAdmin(service), wanted, None):
            if res.name != self.poison_name or res.state == "present":
                yield res


main = AzureQueueInputProvider.main
