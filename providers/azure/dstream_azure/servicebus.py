"""Azure Service Bus data plane (azure-servicebus): envelopes → messages → sends, and back.

With servicebus_admin.py, where the ``azure.servicebus`` clients are made (asb_sessions.py
imports session names and errors, ledger.py a rule filter).

**Sending.** A message's body is the envelope line exactly as received. Messages of one
target go out in stream order, in SDK message batches within the broker's limits:

- bytes: the link's batch size (the SDK reads ``com.microsoft:max-message-batch-size``:
  256 KB on Standard, 1 MB on Premium; 7.15.0 ``_servicebus_sender.py:282-295``) less
  :data:`ENVELOPE_RESERVE`. From 7.14.3 the SDK writes the first message's ``message_id``
  and ``session_id`` onto the batch envelope *after* its size check, without counting them
  (7.15.0 ``_common/message.py:693-710``, ``_transport/_pyamqp_transport.py:589-611``), so
  a batch it calls full can be a few hundred bytes over the limit;
- count: at most :data:`MAX_BATCH_MESSAGES` (4,500: "the Service Bus service will reject
  any request containing more than 4,500 messages", Azure/azure-service-bus#397; the .NET
  SDK enforces it, azure-sdk-for-net#44916/#44917; the Python SDK does not check it);
- a batch the broker still refuses as too large is split in two and each half sent (down
  to single messages), never sent again as it was: a replay would rebuild the same batch.

A message that does not fit in an empty batch is sent on its own: on Premium an entity may
take single messages of up to 100 MB; if the broker refuses it, the error states the limit
the link announced. A batch may hold messages of several
sessions: on a non-partitioned entity the broker enqueues a batch in order, so each
session keeps its order. A partitioned entity refuses batches of distinct message ids
when it has duplicate detection, and batches of several sessions when it has sessions;
that target then falls back to single sends, still in order.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson
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

from dstream_azure.message_ids import position_of

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "MessageAlreadySettled",
    "MessageLockLostError",
    "MessagingEntityNotFoundError",
    "ServiceBusClient",
    "ServiceBusError",
    "ServiceBusReceiveMode",
    "ServiceBusReceivedMessage",
]

_log = logging.getLogger("dstream_azure.servicebus")
PROPERTY_TYPES = (str, int, float, bool)
BATCHING_REFUSED = "batching brokered messages with distinct"
MAX_BATCH_MESSAGES = 4500
# Room for what the SDK adds to a batch's envelope after counting (the first message's id and
# session id, 128 characters each at most, up to 4 UTF-8 bytes a character, with their AMQP
# framing): measured with the 7.15.0 encoder, 283 bytes for two 128-character ASCII ids and 545
# for two-byte characters (tests/providers/azure/test_servicebus_batches.py checks the bound).
ENVELOPE_RESERVE = 1280


class EnvelopeTooLarge(ValueError):
    pass


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
    message_id: str,
    session_id: str | None = None,
    keys: Iterable[str] | None = None,
) -> ServiceBusMessage:
    """The whole envelope line as the body, so a queue input downstream replays it as it was."""
    props = application_properties(table, metadata, position_of(metadata, keys))
    return ServiceBusMessage(
        raw,
        message_id=message_id,
        session_id=session_id,
        content_type="application/json",
        subject=table,
        application_properties=cast("dict[str | bytes, Any]", props),
    )


class Sender(Protocol):
    def create_message_batch(self, max_size_in_bytes: int | None = None) -> ServiceBusMessageBatch: ...

    def send_messages(self, message: ServiceBusMessageBatch | ServiceBusMessage) -> None: ...


def _body_size(message: ServiceBusMessage) -> int:
    body: Any = message.body  # a generator of data sections for a bytes body
    return len(body) if isinstance(body, bytes | str) else sum(len(part) for part in body)


def link_limit(sender: Sender) -> int | None:
    """The largest message the broker announced on the link (its max-message-size), if known."""
    # The SDK keeps it in a private attribute (ServiceBusSender._max_message_size_on_link,
    # 7.14 and 7.15); used for the error text only.
    value = getattr(sender, "_max_message_size_on_link", None)
    return value if isinstance(value, int) and value > 0 else None


def send_one(sender: Sender, message: ServiceBusMessage) -> None:
    """Send a message on its own (one larger than any batch: up to 100 MB on Premium)."""
    try:
        sender.send_messages(message)
    except MessageSizeExceededError:
        limit = link_limit(sender)
        stated = f"{limit} bytes, as the broker announced on the link" if limit else "unknown"
        raise EnvelopeTooLarge(
            f"an envelope of {_body_size(message)} bytes is over this entity's message size limit ({stated}; "
            "Standard namespaces take 256 KB, Premium entities up to their max_message_size_in_kilobytes, "
            "at most 100 MB)"
        ) from None


def batch_limit(sender: Sender, max_bytes: int | None = None) -> int:
    """The bytes a batch may count: the link's batch size (or ``max_bytes``, if smaller) less the reserve."""
    link = sender.create_message_batch().max_size_in_bytes  # the SDK sizes an unsized batch to the link
    return max(1, min(link, max_bytes or link) - ENVELOPE_RESERVE)


def _send_batch(sender: Sender, batch: ServiceBusMessageBatch, messages: list[ServiceBusMessage], limit: int) -> int:
    """Send a full batch; one the broker refuses as too large is split, never sent again as it was."""
    try:
        sender.send_messages(batch)
        return 1
    except MessageSizeExceededError:
        if len(messages) == 1:
            send_one(sender, messages[0])
            return 1
    half = len(messages) // 2
    _log.warning("the broker refused a batch of %d messages as too large: sending it in two halves", len(messages))
    sent = 0
    for part in (messages[:half], messages[half:]):
        smaller = sender.create_message_batch(max_size_in_bytes=limit)
        for message in part:
            smaller.add_message(message)  # fits: a part of what fitted
        sent += _send_batch(sender, smaller, part, limit)
    return sent


def send_batched(sender: Sender, messages: Sequence[ServiceBusMessage], max_bytes: int | None = None) -> int:
    """Send ``messages`` in order, in as few batches as fit; returns the number of sends."""
    limit = batch_limit(sender, max_bytes)
    sent = 0
    batch = sender.create_message_batch(max_size_in_bytes=limit)
    held: list[ServiceBusMessage] = []
    for message in messages:
        if len(held) < MAX_BATCH_MESSAGES:
            try:
                batch.add_message(message)
                held.append(message)
                continue
            except MessageSizeExceededError:
                pass
        if held:
            sent += _send_batch(sender, batch, held, limit)
            batch, held = sender.create_message_batch(max_size_in_bytes=limit), []
            try:
                batch.add_message(message)
                held.append(message)
                continue
            except MessageSizeExceededError:
                pass
        send_one(sender, message)  # larger than a batch can be: alone, still in order
        sent += 1
    if held:
        sent += _send_batch(sender, batch, held, limit)
    return sent


def batching_refused(exc: ServiceBusError) -> bool:
    """The broker refuses this batch as a batch (not for its content): send its messages singly."""
    text = str(exc).lower()
    # Partitioned + duplicate detection: "Batching brokered messages with distinct SessionId,
    # PartitionKey, or MessageId is not supported ..." (azure-sdk-for-python#21955). Partitioned
    # + sessions: every message of one send must have the same SessionId (azure-sdk-for-net,
    # Service Bus TROUBLESHOOTING.md, "Cannot send batch with multiple partition keys").
    return BATCHING_REFUSED in text or ("batch" in text and "sessionid" in text and "same" in text)


class TargetSender:
    """One entity's sender: batches, or single sends once the entity refused batches."""

    def __init__(self, sender: Any, name: str) -> None:
        self.sender = sender
        self.name = name
        self.singles = False

    def send(self, messages: Sequence[ServiceBusMessage], max_bytes: int | None = None) -> int:
        if not self.singles:
            try:
                return send_batched(self.sender, messages, max_bytes)
            except ServiceBusError as exc:
                if not batching_refused(exc):
                    raise
                self.singles = True
                _log.warning(
                    "%s refuses batches of distinct message ids (a partitioned entity with duplicate detection): "
                    "sending one message at a time, which is slower; a non-partitioned entity takes batches",
                    self.name,
                )
        # All of them, in order: what an earlier batch of this call delivered, duplicate detection drops.
        for message in messages:
            send_one(self.sender, message)
        return len(messages)

    def close(self) -> None:
        self.sender.close()


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


def _release_path() -> bool:
    """Whether this SDK has the link call that ``released`` goes through (checked once, at import)."""
    try:
        from azure.servicebus._pyamqp.client import ReceiveClient  # private: it may go in a later SDK
    except ImportError:
        return False
    return callable(getattr(ReceiveClient, "settle_messages", None))


# The SDK versions whose private release path was read (pyproject pins azure-servicebus below 7.16):
# 7.14.0 _pyamqp/client.py:1075 and 7.15.0 _pyamqp/client.py:1109 ReceiveClient.settle_messages;
# ServiceBusReceivedMessage._delivery_id/_delivery_tag, 7.15.0 _common/message.py:810-811.
RELEASE_AVAILABLE = _release_path()


def release_message(receiver: Any, message: ServiceBusReceivedMessage, link: Any = None) -> bool:
    """Give a held message back without counting a delivery; False when that is not possible.

    Service Bus counts a delivery when a message is abandoned or its lock expires
    (``DeliveryCount``: "incremented when a message lock expires, or the message is
    explicitly abandoned"), so a stop that abandons, or lets locks run out, brings each
    restart closer to the dead-letter queue. The AMQP ``released`` outcome returns a message
    without counting a delivery; the SDK itself uses it for the messages it buffered but
    never handed out (7.15.0 ``_transport/_pyamqp_transport.py:795`` and ``:900``,
    ``handler.settle_messages(frame[1], frame[2], "released")``), and its live test asserts
    a released message comes back with ``delivery_count == 0`` (``tests/test_queues.py``,
    ``..._release_messages``). The SDK has no public call for it on a received message (its
    settlements are complete, abandon, defer and dead-letter), so this makes the same call
    on the receive link (``receiver._handler``), pre-settled as the SDK does. It returns
    False, for the caller to abandon instead, when the path is missing from this SDK
    (:data:`RELEASE_AVAILABLE`), when the receiver has reconnected since ``link`` (delivery
    ids belong to one link: on another they would name another message), or on any error.
    """
    handler = getattr(receiver, "_handler", None)
    settle = getattr(handler, "settle_messages", None)
    delivery_id = getattr(message, "_delivery_id", None)
    delivery_tag = getattr(message, "_delivery_tag", None)
    if not RELEASE_AVAILABLE or settle is None or delivery_id is None or delivery_tag is None:
        return False
    if link is not None and handler is not link:
        return False
    try:
        settle(delivery_id, delivery_tag, "released")
    except Exception:  # noqa: BLE001 - any failure means "not released"; the caller falls back
        return False
    return True


def decoded_properties(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (message.application_properties or {}).items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        out[name] = value.decode() if isinstance(value, bytes) else value
    return out
