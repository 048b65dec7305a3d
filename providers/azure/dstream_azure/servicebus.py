"""Azure Service Bus (azure-servicebus): messages from envelopes, batching, lifecycle admin.

The only module that imports ``azure.servicebus``.

**Message ids.** Queues and topics created by ``dstream init`` have duplicate detection
on, so a message id that is the same every time an envelope is sent makes the broker
drop the copies that a replay after a crash sends again (within the detection window).
The id is a hash of the envelope's *position*: its table, the position keys found in its
metadata (``LSN``, ``Seq``, ``Sequence``, ``Offset``, … or ``message_id_keys``) and its
operation (``OperationID``/``OperationType``, so an update's before and after images
differ). An envelope without any position key gets a hash of its whole content.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast
from urllib.parse import urlsplit

import orjson
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusMessageBatch,
    ServiceBusReceivedMessage,
    ServiceBusReceiveMode,
)
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusError,
)
from azure.servicebus.management import ServiceBusAdministrationClient

from dstream import protocol
from dstream_azure.lifecycle import Existing, owner_from_metadata, ownership_metadata

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pydantic import SecretStr

__all__ = [
    "MessageAlreadySettled",
    "MessageLockLostError",
    "MessagingEntityNotFoundError",
    "ServiceBusClient",
    "ServiceBusError",
    "ServiceBusReceiveMode",
    "ServiceBusReceivedMessage",
]

POSITION_KEYS = (
    "LSN",
    "Seq",
    "SeqVal",
    "CommitLSN",
    "Position",
    "Offset",
    "Sequence",
    "lsn",
    "seq",
    "sequence",
    "offset",
    "position",
)
OPERATION_KEYS = ("OperationID", "OperationType", "operation")
PROPERTY_TYPES = (str, int, float, bool)


class EnvelopeTooLarge(ValueError):
    pass


def position_of(metadata: dict[str, Any], keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The position keys present in ``metadata`` (``keys`` or the defaults)."""
    return {k: metadata[k] for k in (keys or POSITION_KEYS) if metadata.get(k) is not None}


def message_id(
    table: str | None,
    metadata: dict[str, Any],
    raw: bytes,
    keys: Iterable[str] | None = None,
    mode: Literal["position", "content"] = "position",
) -> str:
    """A deterministic id (32 hex characters) for an envelope; see the module docstring."""
    return _message_id(table, metadata, raw, position_of(metadata, keys) if mode == "position" else {})


def _message_id(table: str | None, metadata: dict[str, Any], raw: bytes, position: dict[str, Any]) -> str:
    """By position when the envelope has one, else by content."""
    if position:
        operation = {k: metadata[k] for k in OPERATION_KEYS if metadata.get(k) is not None}
        basis = protocol.canonical({"t": table, "p": position, "o": operation})
    else:
        basis = protocol.canonical(protocol.decode(raw))
    return hashlib.sha256(basis).hexdigest()[:32]


def _property(value: Any) -> str | int | float | bool:
    if isinstance(value, PROPERTY_TYPES):
        return value
    return orjson.dumps(value).decode()


def application_properties(table: str | None, metadata: dict[str, Any], position: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if table is not None:
        props["TableName"] = table
    operation = metadata.get("OperationType", metadata.get("operation"))
    if operation is not None:
        props["OperationType"] = _property(operation)
    for key, value in position.items():
        props[key] = _property(value)
    return props


def build_message(
    raw: bytes,
    table: str | None,
    metadata: dict[str, Any],
    keys: Iterable[str] | None = None,
    mode: Literal["position", "content"] = "position",
) -> ServiceBusMessage:
    """The whole envelope line as the body, so a queue input downstream replays it as it was."""
    position = position_of(metadata, keys)
    return ServiceBusMessage(
        raw,
        message_id=_message_id(table, metadata, raw, position if mode == "position" else {}),
        content_type="application/json",
        subject=table,
        application_properties=cast("dict[str | bytes, Any]", application_properties(table, metadata, position)),
    )


class Sender(Protocol):
    def create_message_batch(self, max_size_in_bytes: int | None = None) -> ServiceBusMessageBatch: ...

    def send_messages(self, message: ServiceBusMessageBatch) -> None: ...


def send_batched(sender: Sender, messages: Iterable[ServiceBusMessage], max_bytes: int | None = None) -> int:
    """Send ``messages`` in order in as few SDK batches as fit; returns the number of batches."""
    sent = 0
    batch = sender.create_message_batch(max_size_in_bytes=max_bytes)
    for message in messages:
        try:
            batch.add_message(message)
            continue
        except MessageSizeExceededError:
            if len(batch) == 0:
                raise EnvelopeTooLarge(
                    f"an envelope of {len(next(iter(message.body)))} bytes is over the entity's message size "
                    f"limit ({batch.max_size_in_bytes} bytes with its properties; 256 KB on Standard, up to "
                    "100 MB on Premium)"
                ) from None
        sender.send_messages(batch)
        sent += 1
        batch = sender.create_message_batch(max_size_in_bytes=max_bytes)
        try:
            batch.add_message(message)
        except MessageSizeExceededError:
            raise EnvelopeTooLarge(
                f"an envelope is over the entity's message size limit ({batch.max_size_in_bytes} bytes)"
            ) from None
    if len(batch):
        sender.send_messages(batch)
        sent += 1
    return sent


def body_bytes(message: ServiceBusReceivedMessage) -> bytes:
    """A received message's body as bytes, whatever its AMQP body type."""
    body: Any = message.body
    if message.body_type == AmqpMessageBodyType.DATA:
        return b"".join(bytes(part) for part in body)
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    if message.body_type == AmqpMessageBodyType.SEQUENCE:
        body = list(body)
    return orjson.dumps(body, default=str)


def lock_remaining(locked_until: datetime | None, default: float = 30.0) -> float:
    if locked_until is None:
        return default
    if locked_until.tzinfo is None:
        locked_until = locked_until.replace(tzinfo=UTC)
    return max(0.0, (locked_until - datetime.now(UTC)).total_seconds())


def decoded_properties(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (message.application_properties or {}).items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        out[name] = value.decode() if isinstance(value, bytes) else value
    return out


# -- lifecycle --------------------------------------------------------------------------


class EmulatorTransport(RequestsTransport):  # type: ignore[misc]
    """Plain HTTP for the Service Bus emulator's management port (5300).

    The Python administration client always builds ``https://`` URLs, even for a
    ``UseDevelopmentEmulator=true`` connection string, while the emulator serves its
    management API over HTTP. Only used for loopback endpoints, so credentials never
    travel unencrypted off the machine.
    """

    def send(self, request: Any, **kwargs: Any) -> Any:
        if request.url.startswith("https://"):
            request.url = "http://" + request.url[len("https://") :]
        return super().send(request, **kwargs)


def uses_local_emulator(connection_string: str) -> bool:
    settings = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    lowered = {k.strip().lower(): v.strip() for k, v in settings.items()}
    if lowered.get("usedevelopmentemulator", "").lower() != "true":
        return False
    host = urlsplit(lowered.get("endpoint", "")).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def admin_client(connection_string: SecretStr, **options: Any) -> ServiceBusAdministrationClient:
    value = connection_string.get_secret_value()
    if uses_local_emulator(value):
        options.setdefault("transport", EmulatorTransport())
    return ServiceBusAdministrationClient.from_connection_string(value, **options)


def _owner(user_metadata: str | None) -> str | None:
    if not user_metadata:
        return None
    try:
        value = json.loads(user_metadata)
    except ValueError:
        return None
    return owner_from_metadata(value) if isinstance(value, dict) else None


class EntitySettings:
    """How ``init`` creates queues and topics."""

    def __init__(
        self,
        duplicate_window: float = 600,
        max_delivery_count: int = 10,
        lock_duration: float = 60,
        subscriptions: Iterable[str] = (),
    ) -> None:
        self.duplicate_window = timedelta(seconds=duplicate_window)
        self.max_delivery_count = max_delivery_count
        self.lock_duration = timedelta(seconds=lock_duration)
        self.subscriptions = list(subscriptions)


class QueueAdmin:
    """Service Bus queues: duplicate detection on; ownership in ``user_metadata`` as JSON."""

    resource_type = "servicebus_queue"

    def __init__(self, client: ServiceBusAdministrationClient, settings: EntitySettings | None = None) -> None:
        self.client = client
        self.settings = settings or EntitySettings()

    @staticmethod
    def fold(name: str) -> str:
        return name.lower()

    def existing(self) -> dict[str, Existing]:
        return {q.name: Existing(q.name, _owner(q.user_metadata)) for q in self.client.list_queues()}

    def create(self, name: str, task: str) -> bool:
        s = self.settings
        try:
            self.client.create_queue(
                name,
                requires_duplicate_detection=True,
                duplicate_detection_history_time_window=s.duplicate_window,
                max_delivery_count=s.max_delivery_count,
                lock_duration=s.lock_duration,
                dead_lettering_on_message_expiration=True,
                user_metadata=json.dumps(ownership_metadata(task)),
            )
        except ResourceExistsError:
            return False
        return True

    def delete(self, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self.client.delete_queue(name)

    def describe(self, name: str) -> dict[str, Any]:
        props = self.client.get_queue_runtime_properties(name)
        return {
            "active": props.active_message_count,
            "dead_letter": props.dead_letter_message_count,
            "scheduled": props.scheduled_message_count,
        }


class TopicAdmin(QueueAdmin):
    """Service Bus topics (and the subscriptions in the config, created with them)."""

    resource_type = "servicebus_topic"

    def existing(self) -> dict[str, Existing]:
        return {t.name: Existing(t.name, _owner(t.user_metadata)) for t in self.client.list_topics()}

    def create(self, name: str, task: str) -> bool:
        s = self.settings
        try:
            self.client.create_topic(
                name,
                requires_duplicate_detection=True,
                duplicate_detection_history_time_window=s.duplicate_window,
                user_metadata=json.dumps(ownership_metadata(task)),
            )
        except ResourceExistsError:
            return False
        for sub in s.subscriptions:
            with contextlib.suppress(ResourceExistsError):
                self.client.create_subscription(
                    name, sub, max_delivery_count=s.max_delivery_count, lock_duration=s.lock_duration
                )
        return True

    def delete(self, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self.client.delete_topic(name)

    def describe(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for sub in self.client.list_subscriptions_runtime_properties(name):
            out[f"{sub.name}.active"] = sub.active_message_count
            out[f"{sub.name}.dead_letter"] = sub.dead_letter_message_count
        return out
