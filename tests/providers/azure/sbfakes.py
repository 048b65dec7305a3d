"""In-memory stand-ins for the azure-servicebus clients, for the unit tests.

They behave like the SDK where the providers depend on it: a sender's batches are real
``ServiceBusMessageBatch`` objects with a size cap; the administration client keeps
queues, topics, subscriptions and rules, with case-insensitive names and (optionally)
drops ``user_metadata`` the way a broker without that property would; a receiver keeps
track of what was completed, abandoned, released (AMQP ``released`` through its link, as
the SDK's ``_handler.settle_messages``), dead-lettered and renewed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import MessageSizeExceededError, MessagingEntityNotFoundError, ServiceBusError

FAKE_SB = "Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0;UseDevelopmentEmulator=true"
AZURE_SB = "Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0"


def body(message: ServiceBusMessage) -> bytes:
    return b"".join(message.body)


def encoded_batch_size(batch: ServiceBusMessageBatch) -> int:
    """The bytes the SDK puts on the wire for ``batch``, envelope included (its own encoder, 7.15.0
    ``_transport/_pyamqp_transport.py:379-389``), unlike ``batch.size_in_bytes``, which does not
    count the envelope properties set after the size check (``_common/message.py:693-710``)."""
    from azure.servicebus._pyamqp import utils
    from azure.servicebus._pyamqp.message import BatchMessage

    return int(utils.get_message_encoded_size(BatchMessage(*batch._message)))


MAX_BATCH_MESSAGES = 4500  # "will reject any request containing more than 4,500 messages" (Azure/azure-service-bus#397)


@dataclass
class FakeSender:
    """A sender whose link takes ``limit``-byte batches and ``link_limit``-byte single messages.

    A batch over ``limit`` once encoded (envelope included), or of more than 4,500 messages, is
    refused with MessageSizeExceededError (the link's max size: an assumption, no broker run here;
    the count: Azure/azure-service-bus#397). ``create_message_batch`` refuses a size over the link's
    as the SDK does (7.15.0 ``_servicebus_sender.py:544-548``) and otherwise sizes to the link (:551).
    """

    limit: int
    link_limit: int = 0
    refuse_batches: bool = False
    refuse_over: int | None = None  # refuse batches encoded larger than this (a stricter broker)
    sent: list[list[bytes]] = field(default_factory=list)
    sessions: list[list[str | None]] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # encoded size of each batch sent
    refused: list[int] = field(default_factory=list)  # message counts of the batches refused
    closed: bool = False

    @property
    def _max_message_size_on_link(self) -> int:  # the SDK's private attribute
        return self.link_limit

    def create_message_batch(self, max_size_in_bytes: int | None = None) -> ServiceBusMessageBatch:
        if max_size_in_bytes and max_size_in_bytes > self.limit:
            raise ValueError(f"Max message size: {max_size_in_bytes} is too large")
        return ServiceBusMessageBatch(max_size_in_bytes=max_size_in_bytes or self.limit)

    def send_messages(self, message: ServiceBusMessageBatch | ServiceBusMessage) -> None:
        if isinstance(message, ServiceBusMessage):
            if self.link_limit and len(body(message)) > self.link_limit:
                raise MessageSizeExceededError(message="the message is larger than the link allows")
            self.sent.append([body(message)])
            self.sessions.append([message.session_id])
            return
        messages = message._messages
        if self.refuse_batches and len({m.message_id for m in messages}) > 1:
            raise ServiceBusError(
                "Batching brokered messages with distinct SessionId, PartitionKey, or MessageId is not supported "
                "for an entity with partitioning and duplicate detection enabled."
            )
        size = encoded_batch_size(message)
        cap = min(self.limit, self.refuse_over or self.limit)
        if size > cap or len(messages) > MAX_BATCH_MESSAGES:
            self.refused.append(len(messages))
            raise MessageSizeExceededError(message=f"batch of {size} bytes, {len(messages)} messages refused")
        self.sizes.append(size)
        self.sent.append([body(m) for m in messages])
        self.sessions.append([m.session_id for m in messages])

    def close(self) -> None:
        self.closed = True

    def bodies(self) -> list[bytes]:
        return [raw for batch in self.sent for raw in batch]


class MissingSender(FakeSender):
    def __init__(self) -> None:
        super().__init__(limit=1024)

    def send_messages(self, message: Any) -> None:
        raise MessagingEntityNotFoundError(message="entity not found")


class FakeServiceBusClient:
    def __init__(self, missing: set[str] | None = None, **sender: Any) -> None:
        self.senders: dict[str, FakeSender] = {}
        self.missing = missing or set()
        self.sender_options = sender

    def get_queue_sender(self, queue_name: str) -> Any:
        if queue_name in self.missing:
            return MissingSender()
        options = {"limit": 256 * 1024, **self.sender_options}
        return self.senders.setdefault(queue_name, FakeSender(**options))

    def get_topic_sender(self, topic_name: str) -> Any:
        return self.get_queue_sender(topic_name)

    def close(self) -> None:
        pass


@dataclass
class Entity:
    name: str
    user_metadata: str | None = None
    requires_duplicate_detection: bool = True
    requires_session: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rule:
    name: str
    filter: Any


class FakeAdminClient:
    """ServiceBusAdministrationClient's entity calls, in memory (names are case-insensitive)."""

    def __init__(self, *queues: Entity, keeps_user_metadata: bool = True, sku: str = "Standard") -> None:
        self.queues = {q.name.lower(): q for q in queues}
        self.topics: dict[str, Entity] = {}
        self.subscriptions: dict[tuple[str, str], Entity] = {}
        self.rules: dict[tuple[str, str], dict[str, Rule]] = {}
        self.keeps_user_metadata = keeps_user_metadata
        self.sku = sku
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []

    def _entity(self, name: str, kwargs: dict[str, Any]) -> Entity:
        return Entity(
            name,
            kwargs.get("user_metadata") if self.keeps_user_metadata else None,
            bool(kwargs.get("requires_duplicate_detection")),
            bool(kwargs.get("requires_session")),
            kwargs,
        )

    # queues
    def list_queues(self) -> list[Entity]:
        return list(self.queues.values())

    def get_queue(self, name: str) -> Entity:
        try:
            return self.queues[name.lower()]
        except KeyError:
            raise ResourceNotFoundError(f"queue {name}") from None

    def create_queue(self, name: str, **kwargs: Any) -> Entity:
        if name.lower() in self.queues:
            raise ResourceExistsError(f"queue {name}")
        self.created.append({"kind": "queue", "name": name, **kwargs})
        entity = self.queues[name.lower()] = self._entity(name, kwargs)
        return entity

    def delete_queue(self, name: str) -> None:
        if name.lower() not in self.queues:
            raise ResourceNotFoundError(f"queue {name}")
        self.deleted.append(name)
        del self.queues[name.lower()]

    # topics
    def list_topics(self) -> list[Entity]:
        return list(self.topics.values())

    def get_topic(self, name: str) -> Entity:
        try:
            return self.topics[name.lower()]
        except KeyError:
            raise ResourceNotFoundError(f"topic {name}") from None

    def create_topic(self, name: str, **kwargs: Any) -> Entity:
        if name.lower() in self.topics:
            raise ResourceExistsError(f"topic {name}")
        self.created.append({"kind": "topic", "name": name, **kwargs})
        entity = self.topics[name.lower()] = self._entity(name, kwargs)
        return entity

    def delete_topic(self, name: str) -> None:
        if name.lower() not in self.topics:
            raise ResourceNotFoundError(f"topic {name}")
        self.deleted.append(name)
        del self.topics[name.lower()]
        for key in [k for k in self.subscriptions if k[0] == name.lower()]:
            del self.subscriptions[key]
            self.rules.pop(key, None)

    # subscriptions and rules
    def list_subscriptions(self, topic: str) -> list[Entity]:
        self.get_topic(topic)
        return [s for (t, _), s in self.subscriptions.items() if t == topic.lower()]

    def get_subscription(self, topic: str, name: str) -> Entity:
        try:
            return self.subscriptions[(topic.lower(), name.lower())]
        except KeyError:
            raise ResourceNotFoundError(f"subscription {topic}/{name}") from None

    def create_subscription(self, topic: str, name: str, **kwargs: Any) -> Entity:
        self.get_topic(topic)
        key = (topic.lower(), name.lower())
        if key in self.subscriptions:
            raise ResourceExistsError(f"subscription {topic}/{name}")
        self.created.append({"kind": "subscription", "name": f"{topic}/{name}", **kwargs})
        entity = self.subscriptions[key] = self._entity(name, kwargs)
        self.rules[key] = {"$Default": Rule("$Default", None)}
        return entity

    def delete_subscription(self, topic: str, name: str) -> None:
        key = (topic.lower(), name.lower())
        if key not in self.subscriptions:
            raise ResourceNotFoundError(f"subscription {topic}/{name}")
        del self.subscriptions[key]
        self.rules.pop(key, None)

    def list_rules(self, topic: str, subscription: str) -> list[Rule]:
        return list(self.rules[(topic.lower(), subscription.lower())].values())

    def create_rule(self, topic: str, subscription: str, name: str, *, filter: Any = None) -> Rule:
        rules = self.rules[(topic.lower(), subscription.lower())]
        if name in rules:
            raise ResourceExistsError(f"rule {name}")
        rule = rules[name] = Rule(name, filter)
        return rule

    def delete_rule(self, topic: str, subscription: str, name: str) -> None:
        rules = self.rules.get((topic.lower(), subscription.lower()), {})
        if name not in rules:
            raise ResourceNotFoundError(f"rule {name}")
        del rules[name]

    def get_namespace_properties(self) -> Any:
        return type("NamespaceProperties", (), {"messaging_sku": self.sku})()

    def close(self) -> None:
        pass


@dataclass
class Received:
    body: Any
    body_type: AmqpMessageBodyType = AmqpMessageBodyType.DATA
    message_id: str = "m"
    application_properties: dict[bytes, Any] = field(default_factory=dict)
    locked_until_utc: datetime = field(default_factory=lambda: datetime.now(UTC) + timedelta(seconds=60))
    session_id: str | None = None
    _delivery_id: int | None = 1
    _delivery_tag: bytes | None = b"tag"


class FakeLink:
    """The receive link's settle_messages (the SDK's ``receiver._handler``)."""

    def __init__(self, receiver: FakeReceiver, works: bool = True) -> None:
        self.receiver = receiver
        self.works = works

    def settle_messages(self, delivery_id: int, delivery_tag: bytes, outcome: str) -> None:
        if not self.works:
            raise RuntimeError("link closed")
        self.receiver.settled.append((delivery_id, delivery_tag, outcome))


class FakeReceiver:
    """A non-session receiver. With ``clock``, message locks last ``lock_duration`` on it: complete
    raises MessageLockLostError once a lock has passed (7.15.0 ``_servicebus_receiver.py:479-482``),
    renew_message_lock moves it (``:1029-1031``)."""

    def __init__(
        self, messages: list[Received], link_works: bool = True, clock: Any = None, lock_duration: float = 60
    ) -> None:
        self.clock = clock
        self.lock_duration = lock_duration
        self.pending = list(messages)
        self.completed: list[str] = []
        self.abandoned: list[str] = []
        self.settled: list[tuple[int, bytes, str]] = []
        self.dead: list[tuple[str, str]] = []
        self.renewed: list[str] = []
        self.closed = False
        self._handler = FakeLink(self, link_works)

    def receive_messages(self, max_message_count: int, max_wait_time: float) -> list[Received]:
        out, self.pending = self.pending[:max_message_count], self.pending[max_message_count:]
        if self.clock is not None:
            for m in out:
                m.locked_until_utc = self.clock.utcnow() + timedelta(seconds=self.lock_duration)
        return out

    def complete_message(self, m: Received) -> None:
        if self.clock is not None and m.locked_until_utc <= self.clock.utcnow():
            from azure.servicebus.exceptions import MessageLockLostError

            raise MessageLockLostError(message="The lock on the message lock has expired.")
        self.completed.append(m.message_id)

    def abandon_message(self, m: Received) -> None:
        self.abandoned.append(m.message_id)

    def dead_letter_message(self, m: Received, reason: str, error_description: str) -> None:
        self.dead.append((m.message_id, error_description))

    def renew_message_lock(self, m: Received) -> datetime:
        self.renewed.append(m.message_id)
        now = self.clock.utcnow() if self.clock is not None else datetime.now(UTC)
        m.locked_until_utc = now + timedelta(seconds=self.lock_duration)
        return m.locked_until_utc

    def close(self) -> None:
        self.closed = True


# -- a session-enabled entity whose session locks expire on a clock ---------------------------------
#
# What the session tests rely on, each from azure-servicebus 7.15.0 (the version the venv installs;
# paths under azure/servicebus/):
# - accepting a session sets its lock end from the broker's attach frame
#   (_transport/_pyamqp_transport.py:709-715, on_attach); only ServiceBusSession.renew_lock moves it
#   (_servicebus_session.py:189-199), and renew_lock first calls _check_live (:189);
# - a session lock has expired once locked_until_utc <= now (_servicebus_session.py:43-48), and then
#   every receive, settle or renew raises SessionLockLostError (_base_handler.py:377-378, reached from
#   receive_messages _servicebus_receiver.py:695 and settling :470);
# - a closed receiver raises ValueError("The handler has already been shutdown ...") from the same
#   calls (_base_handler.py:362-365; close() sets _shutdown, :582-590);
# - NEXT_AVAILABLE_SESSION with no free session times out (OperationTimeoutError, the broker's
#   com.microsoft:timeout, _transport/_pyamqp_transport.py:166); a named session held elsewhere is
#   SessionCannotBeLockedError (:162);
# - the broker side: a session whose lock ran out is free again and its uncompleted messages come back,
#   each with its delivery count raised (the count is zero-based: message.py delivery_count, and the
#   SDK's live test asserts 0 on a first receive, tests/test_queues.py
#   test_queue_by_queue_client_conn_str_receive_handler_peeklock); a released message comes back with
#   its count unchanged (test_queues.py ..._release_messages: "release would not increase delivery count").

HANDLER_SHUTDOWN = "The handler has already been shutdown. Please use ServiceBusClient to create a new instance."


class FakeClock:
    """A controllable clock: ``monotonic()`` seconds and ``utcnow()``; timers fire as time advances."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.start = datetime(2026, 1, 1, tzinfo=UTC)
        self.timers: list[tuple[float, Any]] = []  # (interval, callback)
        self._fired: dict[int, float] = {}

    def __call__(self) -> float:
        return self.now

    def utcnow(self) -> datetime:
        return self.start + timedelta(seconds=self.now - 1000.0)

    def every(self, interval: float, callback: Any) -> None:
        """Call ``callback`` each time ``interval`` seconds of this clock pass (a timer thread's ticks)."""
        self.timers.append((interval, callback))
        self._fired[len(self.timers) - 1] = self.now

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = [(self._fired[i] + iv, i, cb) for i, (iv, cb) in enumerate(self.timers) if self._fired[i] + iv <= end]
            if not due:
                break
            at, i, cb = min(due, key=lambda d: d[0])
            self.now = max(self.now, at)
            self._fired[i] = at
            cb()
        self.now = end


@dataclass
class SessionMessage:
    """The parts of a ServiceBusReceivedMessage the input reads."""

    body: Any
    message_id: str
    session_id: str
    delivery_count: int = 0
    body_type: AmqpMessageBodyType = AmqpMessageBodyType.DATA
    application_properties: dict[bytes, Any] = field(default_factory=dict)
    _delivery_id: int | None = 1
    _delivery_tag: bytes | None = b"tag"
    locked_until_utc: datetime | None = None


class SessionBroker:
    """Sessions of messages; a session is locked to one receiver until it is closed or its lock runs out."""

    def __init__(self, clock: FakeClock, lock_duration: float = 10.0) -> None:
        self.clock = clock
        self.lock_duration = lock_duration
        self.sessions: dict[str, list[SessionMessage]] = {}
        self.locked: dict[str, FakeSessionReceiver] = {}
        self.opened: list[FakeSessionReceiver] = []
        self.deliveries: list[tuple[str, int]] = []  # (message id, delivery count) per delivery
        self.receive_cost = 0.0  # clock seconds each receive takes (a busy reader)
        self._delivery = 0

    def put(self, session: str, *values: int) -> None:
        queue = self.sessions.setdefault(session, [])
        for v in values:
            raw = f'{{"data":{{"s":"{session}","v":{v}}}}}'.encode()
            queue.append(SessionMessage([raw], message_id=f"{session}-{v}", session_id=session))

    def owner(self, session: str) -> FakeSessionReceiver | None:
        """The receiver holding ``session`` now; one whose lock ran out holds nothing (the broker frees it)."""
        holder = self.locked.get(session)
        if holder is not None and (holder.closed or holder.session.locked_until_utc <= self.clock.utcnow()):
            holder.give_back()
            return None
        return holder

    def open(self, wanted: Any) -> FakeSessionReceiver:
        receiver = FakeSessionReceiver(self, wanted)
        self.opened.append(receiver)
        return receiver

    def next_delivery(self) -> int:
        self._delivery += 1
        return self._delivery


class FakeServiceBusSession:
    def __init__(self, receiver: FakeSessionReceiver) -> None:
        self.receiver = receiver
        self.locked_until_utc = datetime.min.replace(tzinfo=UTC)
        self.renewals = 0

    @property
    def session_id(self) -> str:
        assert self.receiver.session_id is not None
        return self.receiver.session_id

    @property
    def _lock_expired(self) -> bool:  # _servicebus_session.py:43-48
        return self.locked_until_utc <= self.receiver.broker.clock.utcnow()

    def renew_lock(self) -> datetime:  # _servicebus_session.py:189-199
        self.receiver.check_live()
        self.renewals += 1
        self.locked_until_utc = self.receiver.broker.clock.utcnow() + timedelta(
            seconds=self.receiver.broker.lock_duration
        )
        return self.locked_until_utc


class FakeSessionReceiver:
    def __init__(self, broker: SessionBroker, wanted: Any) -> None:
        self.broker = broker
        self.wanted = wanted
        self.session_id: str | None = None
        self.session = FakeServiceBusSession(self)
        self.delivered: list[SessionMessage] = []
        self.completed: list[str] = []
        self.released: list[str] = []
        self.abandoned: list[str] = []
        self.closed = False
        self._handler: Any = self  # the receive link, for the AMQP "released" outcome

    def check_live(self) -> None:
        if self.closed:  # _base_handler.py:362-365
            raise ValueError(HANDLER_SHUTDOWN)
        if self.session_id is not None and self.session._lock_expired:  # _base_handler.py:377-378
            from azure.servicebus.exceptions import SessionLockLostError

            raise SessionLockLostError(message="the session lock has expired")

    def _accept(self) -> None:
        from azure.servicebus import NEXT_AVAILABLE_SESSION
        from azure.servicebus.exceptions import OperationTimeoutError, SessionCannotBeLockedError

        broker = self.broker
        if self.wanted is NEXT_AVAILABLE_SESSION:
            free = [s for s, q in broker.sessions.items() if q and broker.owner(s) is None]
            if not free:
                raise OperationTimeoutError(message="no session available")
            self.session_id = free[0]
        elif broker.owner(self.wanted) is not None:
            raise SessionCannotBeLockedError(message="locked by another receiver")
        else:
            self.session_id = self.wanted
        assert self.session_id is not None
        broker.locked[self.session_id] = self
        self.session.locked_until_utc = broker.clock.utcnow() + timedelta(seconds=broker.lock_duration)

    def receive_messages(self, max_message_count: int, max_wait_time: float | None = None) -> list[SessionMessage]:
        self.broker.clock.advance(self.broker.receive_cost)
        self.check_live()
        if self.session_id is None:
            self._accept()
        assert self.session_id is not None
        queue = self.broker.sessions.get(self.session_id, [])
        pending = [m for m in queue if m not in self.delivered][:max_message_count]
        for m in pending:
            m._delivery_id = self.broker.next_delivery()
            self.broker.deliveries.append((m.message_id, m.delivery_count))
        self.delivered += pending
        return pending

    def _settle(self, m: SessionMessage) -> None:
        self.check_live()  # _servicebus_receiver.py:470
        if m not in self.delivered:
            from azure.servicebus.exceptions import MessageAlreadySettled

            raise MessageAlreadySettled(action="settle")
        self.delivered.remove(m)

    def complete_message(self, m: SessionMessage) -> None:
        self._settle(m)
        self.completed.append(m.message_id)
        self.broker.sessions[m.session_id].remove(m)

    def abandon_message(self, m: SessionMessage) -> None:
        self._settle(m)
        self.abandoned.append(m.message_id)
        m.delivery_count += 1

    def dead_letter_message(self, m: SessionMessage, reason: str, error_description: str) -> None:
        self._settle(m)
        self.broker.sessions[m.session_id].remove(m)

    def settle_messages(self, delivery_id: int, delivery_tag: bytes, outcome: str) -> None:
        """The link's settle_messages (pyamqp ReceiveClient); a released message keeps its delivery count."""
        if self.closed:
            raise RuntimeError("link closed")
        (m,) = [m for m in self.delivered if m._delivery_id == delivery_id]
        self.delivered.remove(m)
        self.released.append(m.message_id)

    def give_back(self) -> None:
        """The broker takes the session back: what this receiver held and did not settle comes again."""
        for m in self.delivered:
            m.delivery_count += 1
        self.delivered = []
        if self.session_id is not None and self.broker.locked.get(self.session_id) is self:
            del self.broker.locked[self.session_id]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._handler = None  # as the SDK's close (_base_handler.py:582-590, via _close_handler)
        if self.session_id is not None and self.broker.locked.get(self.session_id) is self:
            self.delivered = []  # they come again to the next holder (no test relies on their count)
            del self.broker.locked[self.session_id]
