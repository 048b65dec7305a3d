"""asb-input-provider: peek-lock receive from a Service Bus queue or subscription.

Messages are received in peek-lock mode and **completed only when dstream commits** a
checkpoint covering them (they are durable downstream); locks are renewed while held.
On a graceful stop, what is still held after ``commit_wait`` (locks renewed meanwhile) is
*released* (the AMQP outcome that returns a message without counting a delivery), so it
is redelivered at once and restarts do not push it towards the dead-letter queue;
abandoning, or letting the lock expire, would count a delivery each time. Only if the
release is not possible is it abandoned. If the input dies, the locks expire and the
broker redelivers, counting deliveries (past the entity's max delivery count it
dead-letters them). A
message whose body is not JSON is dead-lettered with the reason. Bodies that are
envelopes (written by asb-output-provider) are replayed unchanged; other JSON becomes
the ``data`` of an envelope whose metadata holds the application properties.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceNotFoundError
from pydantic import Field, SecretStr, model_validator

from dstream.sdk import (
    Duration,
    InfrastructureProvider,
    Resource,
)
from dstream_azure.inputs import Held, QueueInput, QueueInputConfig, to_envelope_lines
from dstream_azure.servicebus import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessagingEntityNotFoundError,
    ServiceBusClient,
    ServiceBusError,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
    body_bytes,
    decoded_properties,
    lock_remaining,
    release_message,
)
from dstream_azure.servicebus_admin import admin_client

if TYPE_CHECKING:
    from collections.abc import Iterator

SETTLE_ERRORS = (MessageLockLostError, MessageAlreadySettled, ServiceBusError)


class AsbInputConfig(QueueInputConfig):
    admin_connection_string: SecretStr | None = Field(
        default=None, description="connection string for status (default: connection_string)"
    )
    queue: str | None = Field(default=None, description="the queue to read")
    topic: str | None = Field(default=None, description="the topic to read (with subscription)")
    subscription: str | None = Field(default=None, description="the subscription of topic to read")
    max_batch: int = Field(default=100, ge=1, le=5000, description="messages per receive call")
    max_wait: Duration = Field(default=1.0, gt=0, description="seconds a receive call waits for messages")
    prefetch_count: int = Field(default=0, ge=0, description="messages the SDK prefetches (0: off)")

    @model_validator(mode="after")
    def _one_source(self) -> AsbInputConfig:
        if bool(self.queue) == bool(self.topic and self.subscription):
            raise ValueError("set queue, or topic and subscription")
        return self


class AsbInputProvider(QueueInput[AsbInputConfig, ServiceBusReceivedMessage], InfrastructureProvider):
    name = "asb-input-provider"
    version = "0.1.0"
    Config = AsbInputConfig

    def __init__(self, config: AsbInputConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.receive_batch = config.max_batch
        self._client: ServiceBusClient | None = None
        self._receiver: Any = None

    @property
    def source(self) -> str:
        cfg = self.config
        return f"Service Bus queue {cfg.queue}" if cfg.queue else f"Service Bus {cfg.topic}/{cfg.subscription}"

    @property
    def receiver(self) -> Any:
        if self._receiver is None:
            cfg = self.config
            self._client = ServiceBusClient.from_connection_string(
                cfg.connection_string.get_secret_value(), **cfg.client_options()
            )
            options: dict[str, Any] = {
                "receive_mode": ServiceBusReceiveMode.PEEK_LOCK,
                "prefetch_count": cfg.prefetch_count,
            }
            if cfg.queue:
                self._receiver = self._client.get_queue_receiver(queue_name=cfg.queue, **options)
            else:
                assert cfg.topic is not None
                assert cfg.subscription is not None
                self._receiver = self._client.get_subscription_receiver(
                    topic_name=cfg.topic, subscription_name=cfg.subscription, **options
                )
        return self._receiver

    def receive(self, max_count: int) -> list[ServiceBusReceivedMessage]:
        try:
            messages: list[ServiceBusReceivedMessage] = self.receiver.receive_messages(
                max_message_count=max_count, max_wait_time=self.config.max_wait
            )
        except MessagingEntityNotFoundError:
            raise RuntimeError(
                f"{self.source} does not exist (create it with `dstream init` on the task that writes it)"
            ) from None
        return messages

    def decode(self, message: ServiceBusReceivedMessage) -> tuple[bytes, float, float]:
        remaining = lock_remaining(message.locked_until_utc)
        metadata = {"MessageId": message.message_id, **decoded_properties(message)}
        lines = to_envelope_lines(body_bytes(message), metadata)
        return lines, time.monotonic() + remaining, remaining

    def settle(self, held: list[Held[ServiceBusReceivedMessage]]) -> None:
        lost = 0
        for item in held:
            try:
                self.receiver.complete_message(item.message)
            except SETTLE_ERRORS:
                lost += 1
        if lost:
            self.log.warning("%d message(s) lost their lock before completion; they will be delivered again", lost)

    def release(self, held: list[Held[ServiceBusReceivedMessage]]) -> None:
        abandoned = 0
        for item in held:
            if release_message(self.receiver, item.message):
                continue
            abandoned += 1
            try:
                self.receiver.abandon_message(item.message)
            except SETTLE_ERRORS as exc:
                self.log.debug("abandon failed (%s); the lock expires instead", type(exc).__name__)
        if abandoned:
            self.log.warning("%d message(s) could not be released and were abandoned (a delivery counted)", abandoned)

    def renew(self, held: list[Held[ServiceBusReceivedMessage]]) -> None:
        for item in held:
            try:
                until = self.receiver.renew_message_lock(item.message)
            except SETTLE_ERRORS as exc:
                self.log.warning("could not renew the lock of message %s (%s)", item.message.message_id, exc)
                continue
            remaining = lock_remaining(until)
            item.deadline = time.monotonic() + remaining
            item.period = max(item.period, remaining)

    def poison(self, message: ServiceBusReceivedMessage, reason: str) -> None:
        self.receiver.dead_letter_message(message, reason="not a dstream envelope", error_description=reason[:1000])
        self.log.warning("dead-lettered message %s: %s", message.message_id, reason)

    def close_clients(self) -> None:
        if self._receiver is not None:
            self._receiver.close()
        if self._client is not None:
            self._client.close()

    def status(self) -> Iterator[Resource]:
        cfg = self.config
        admin = admin_client(cfg.admin_connection_string or cfg.connection_string, **cfg.client_options())
        try:
            props: Any
            if cfg.queue:
                props = admin.get_queue_runtime_properties(cfg.queue)
                kind, name = "servicebus_queue", cfg.queue
            else:
                assert cfg.topic is not None
                assert cfg.subscription is not None
                props = admin.get_subscription_runtime_properties(cfg.topic, cfg.subscription)
                kind, name = "servicebus_subscription", f"{cfg.topic}/{cfg.subscription}"
            details = {"active": props.active_message_count, "dead_letter": props.dead_letter_message_count}
            yield Resource(kind, name, "none", "present", details)
        except ResourceNotFoundError:
            kind = "servicebus_queue" if cfg.queue else "servicebus_subscription"
            yield Resource(kind, cfg.queue or f"{cfg.topic}/{cfg.subscription}", "none", "absent")
        finally:
            admin.close()


main = AsbInputProvider.main
