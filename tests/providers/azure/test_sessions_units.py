"""Sessions without a broker: session ids from envelopes, batches that keep each session's
order, session-enabled entities in init/plan, and the input's session pool (accepting,
reading in turn, letting go, renewing, losing a lock, stopping) against an in-memory
broker that locks each session to one receiver, as Service Bus does."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.servicebus import NEXT_AVAILABLE_SESSION
from azure.servicebus.exceptions import OperationTimeoutError, SessionCannotBeLockedError, SessionLockLostError
from dstream_azure import lifecycle
from dstream_azure.asb_input import AsbInputProvider
from dstream_azure.asb_output import AsbOutputProvider
from dstream_azure.asb_sessions import SessionPool
from dstream_azure.servicebus import TargetSender, build_message
from dstream_azure.servicebus_admin import EntitySettings, QueueAdmin, TopicAdmin
from dstream_azure.sessions import MAX_SESSION_ID, SessionIds, SessionKeyMissing, bounded
from pydantic import ValidationError

from dstream import protocol
from dstream.sdk import Checkpoint, Context, Envelope, Raw
from tests.providers.azure.sbfakes import FAKE_SB, Entity, FakeAdminClient, FakeSender, FakeServiceBusClient, Received

pytestmark = pytest.mark.unit
LOG = logging.getLogger("test")


def env(data: Any, **metadata: Any) -> Envelope:
    return Envelope(protocol.data(data, metadata).rstrip(b"\n"))


# -- session ids -----------------------------------------------------------------------------------


def test_session_ids_by_table_by_row_key_and_by_given_keys() -> None:
    meta = {"TableName": "dbo.Orders", "OperationType": "Update", "Key": {"tenant": 3, "id": 42}}
    assert SessionIds("none").of("dbo.Orders", meta, {}) is None
    assert SessionIds("table").of("dbo.Orders", meta, {}) == "dbo.Orders"
    by_key = SessionIds("key")
    assert by_key.of("dbo.Orders", meta, {}) == 'dbo.Orders:{"id":42,"tenant":3}'  # composite keys, stable order
    assert by_key.of("dbo.Orders", {**meta, "Key": {"id": 42, "tenant": 3}}, {}) == by_key.of("dbo.Orders", meta, {})
    assert by_key.of("dbo.Lines", meta, {}) != by_key.of("dbo.Orders", meta, {})  # same key, other table
    delete = {"TableName": "dbo.Orders", "OperationType": "Delete", "Key": {"tenant": 3, "id": 42}}
    assert by_key.of("dbo.Orders", delete, {"tenant": 3, "id": 42}) == by_key.of("dbo.Orders", meta, {})
    given = SessionIds(["data.customer", "Region"])
    assert given.of("t", {"Region": "eu"}, {"customer": 7}) == '[7,"eu"]'
    assert SessionIds(["customer"]).of("a", {}, {"customer": "c-7"}) == SessionIds(["customer"]).of(
        "b", {}, {"customer": "c-7"}
    )  # across tables, when that is what is asked


def test_a_missing_key_is_an_error_naming_what_is_there_or_falls_back_to_the_table() -> None:
    meta = {"TableName": "dbo.Logs", "OperationType": "Read"}
    with pytest.raises(SessionKeyMissing, match=r"no metadata\.Key .*metadata keys: \['OperationType', 'TableName'\]"):
        SessionIds("key").of("dbo.Logs", meta, {})
    with pytest.raises(SessionKeyMissing, match=r"no data\.customer"):
        SessionIds(["data.customer"]).of("t", {}, {"other": 1})
    assert SessionIds("key", fallback="table").of("dbo.Logs", meta, {}) == "dbo.Logs"
    with pytest.raises(SessionKeyMissing, match=r"has no metadata\.TableName"):
        SessionIds("table").of(None, {}, {})


def test_long_session_ids_are_cut_with_a_hash_and_stay_distinct() -> None:
    a, b = "x" * 200 + "a", "x" * 200 + "b"
    assert len(bounded(a)) == MAX_SESSION_ID
    assert bounded(a) != bounded(b)
    assert bounded("short") == "short"


# -- the output: sessions on messages, batches that keep each session's order -------------------


def asb_output(client: FakeServiceBusClient, **config: Any) -> AsbOutputProvider:
    ctx = Context("test")
    ctx.task = "orders"
    cfg = AsbOutputProvider.Config.model_validate({"connection_string": FAKE_SB, "queue": "q", **config})
    provider = AsbOutputProvider(cfg, ctx)  # type: ignore[arg-type]
    provider._client = client  # type: ignore[assignment]
    return provider


def updates(rows: int, versions: int) -> list[Envelope]:
    """Updates of ``rows`` rows, interleaved, each row's versions in commit order."""
    out = []
    for v in range(1, versions + 1):
        for r in range(rows):
            meta = {"TableName": "t", "OperationType": "Update", "LSN": f"{v:04x}", "Seq": r, "Key": {"id": r}}
            out.append(env({"id": r, "v": v}, **meta))
    return out


def per_session(sender: FakeSender) -> dict[str | None, list[int]]:
    order: dict[str | None, list[int]] = {}
    for bodies, sessions in zip(sender.sent, sender.sessions, strict=True):
        for raw, session in zip(bodies, sessions, strict=True):
            order.setdefault(session, []).append(json.loads(raw)["data"]["v"])
    return order


def test_messages_get_session_ids_and_batches_keep_each_sessions_order() -> None:
    client = FakeServiceBusClient(limit=2000)
    provider = asb_output(client, session="key")
    provider.write(updates(rows=3, versions=20))
    sender = client.senders["q"]
    assert len(sender.sent) > 1  # several batches, each with several sessions
    assert any(len(set(s)) > 1 for s in sender.sessions)
    assert per_session(sender) == {f't:{{"id":{r}}}': list(range(1, 21)) for r in range(3)}
    assert provider.settings.requires_session


def test_an_entity_that_refuses_mixed_session_batches_gets_single_messages_in_order() -> None:
    class PartitionedSessions(FakeSender):
        def send_messages(self, message: Any) -> None:
            messages = getattr(message, "_messages", None)
            if messages is not None and len({m.session_id for m in messages}) > 1:
                from azure.servicebus.exceptions import ServiceBusError

                raise ServiceBusError("All messages in a batch must have the same SessionId on a partitioned entity")
            super().send_messages(message)

    sdk = PartitionedSessions(limit=4000)
    target = TargetSender(sdk, "partitioned")
    msgs = [build_message(e.raw, "t", e.metadata, f"id{i}", f"s{i % 2}") for i, e in enumerate(updates(2, 5))]
    target.send(msgs)
    assert target.singles
    assert per_session(sdk) == {"s0": [1, 2, 3, 4, 5], "s1": [1, 2, 3, 4, 5]}


def test_session_config_errors() -> None:
    with pytest.raises(ValidationError, match="session as a list names the keys"):
        asb_output(FakeServiceBusClient(), session=[])
    with pytest.raises(ValidationError, match="session"):
        asb_output(FakeServiceBusClient(), session="row")
    provider = asb_output(FakeServiceBusClient(), session="key")
    with pytest.raises(SessionKeyMissing, match=r"no metadata\.Key"):
        provider.write([env({"x": 1}, TableName="t")])


# -- init / plan with sessions ----------------------------------------------------------------------


def test_init_creates_session_enabled_queues_and_plan_reports_a_different_existing_setting() -> None:
    client = FakeAdminClient(
        Entity("Old", None, requires_session=False), Entity("Sessioned", None, requires_session=True)
    )
    admin = QueueAdmin(client, EntitySettings(duplicate_window=300, requires_session=True))  # type: ignore[arg-type]
    wanted = {"New": ["t1"], "Old": ["t2"], "Sessioned": ["t3"]}
    plan = {r.name: r.details for r in lifecycle.plan(admin, wanted, "t")}
    assert "sessions are off on this existing entity and on in the config" in plan["Old"]["warning"]
    assert "warning" not in plan["Sessioned"]
    list(lifecycle.init(admin, wanted, "t"))
    (created,) = [c for c in client.created if c["name"] == "New"]
    assert created["requires_session"] is True
    off = {r.name: r.details for r in lifecycle.plan(QueueAdmin(client, EntitySettings()), wanted, "t")}  # type: ignore[arg-type]
    assert "sessions are on on this existing entity and off in the config" in off["Sessioned"]["warning"]


def test_a_topics_subscriptions_are_created_with_sessions_and_checked_in_plan() -> None:
    client = FakeAdminClient()
    settings = EntitySettings(duplicate_window=300, subscriptions=["audit"], requires_session=True)
    list(lifecycle.init(TopicAdmin(client, settings), {"events": []}, "t"))  # type: ignore[arg-type]
    (sub,) = [c for c in client.created if c["kind"] == "subscription" and c["name"] == "events/audit"]
    assert sub["requires_session"] is True
    plain = EntitySettings(duplicate_window=300, subscriptions=["audit"])
    (row,) = lifecycle.plan(TopicAdmin(client, plain), {"events": []}, "t")  # type: ignore[arg-type]
    assert "subscription audit has sessions on and the config has them off" in row.details["warning"]


# -- the input's session pool against an in-memory broker -------------------------------------------


@dataclass
class Broker:
    """Sessions of messages; each session locked to at most one receiver at a time."""

    sessions: dict[str, list[Received]] = field(default_factory=dict)
    locked: dict[str, SessionReceiver] = field(default_factory=dict)
    opened: list[SessionReceiver] = field(default_factory=list)

    def put(self, session: str, *values: int) -> None:
        queue = self.sessions.setdefault(session, [])
        for v in values:
            queue.append(Received([f'{{"data":{{"s":"{session}","v":{v}}}}}'.encode()], message_id=f"{session}-{v}",
                                  session_id=session, _delivery_id=len(queue) + 1))  # fmt: skip

    def open(self, wanted: Any) -> SessionReceiver:
        receiver = SessionReceiver(self, wanted)
        self.opened.append(receiver)
        return receiver


class FakeSession:
    def __init__(self, receiver: SessionReceiver) -> None:
        self.receiver = receiver
        self.renewals = 0

    @property
    def session_id(self) -> str:
        assert self.receiver.session_id is not None
        return self.receiver.session_id

    @property
    def locked_until_utc(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=30)

    def renew_lock(self) -> datetime:
        if self.receiver.lost:
            raise SessionLockLostError(message="lost")
        self.renewals += 1
        return datetime.now(UTC) + timedelta(seconds=30)


class SessionReceiver:
    def __init__(self, broker: Broker, wanted: Any) -> None:
        self.broker = broker
        self.wanted = wanted
        self.session_id: str | None = None
        self.session = FakeSession(self)
        self.delivered: list[Received] = []
        self.completed: list[str] = []
        self.released: list[str] = []
        self.closed = False
        self.lost = False
        self._handler = self  # the receive link, for the AMQP "released" outcome

    def _accept(self) -> None:
        free = [s for s, q in self.broker.sessions.items() if q and s not in self.broker.locked]
        if self.wanted is NEXT_AVAILABLE_SESSION:
            if not free:
                raise OperationTimeoutError(message="no session available")
            self.session_id = free[0]
        elif self.wanted in self.broker.locked:
            raise SessionCannotBeLockedError(message="locked by another receiver")
        else:
            self.session_id = self.wanted
        assert self.session_id is not None
        self.broker.locked[self.session_id] = self

    def receive_messages(self, max_message_count: int, max_wait_time: float) -> list[Received]:
        if self.lost:
            raise SessionLockLostError(message="lost")
        if self.session_id is None:
            self._accept()
        assert self.session_id is not None
        queue = self.broker.sessions.get(self.session_id, [])
        pending = [m for m in queue if m not in self.delivered][:max_message_count]
        self.delivered += pending
        return pending

    def complete_message(self, m: Received) -> None:
        self.completed.append(m.message_id)
        self.broker.sessions[m.session_id or ""].remove(m)

    def settle_messages(self, delivery_id: int, delivery_tag: bytes, outcome: str) -> None:
        (m,) = [m for m in self.delivered if m._delivery_id == delivery_id and m.message_id not in self.completed]
        self.released.append(m.message_id)
        self.delivered.remove(m)

    def close(self) -> None:
        self.closed = True
        if self.session_id is not None and self.broker.locked.get(self.session_id) is self:
            del self.broker.locked[self.session_id]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_pool_accepts_sessions_up_to_its_bound_and_reads_them_in_turn() -> None:
    broker = Broker()
    for s in "abc":
        broker.put(s, 1, 2)
    pool = SessionPool(broker.open, None, max_sessions=2, idle=5, wait=1, log=LOG, clock=Clock())
    got = pool.receive(10)
    assert set(pool.sessions) == {"a", "b"}  # the bound: c waits for a free slot
    assert sorted(i.message.message_id for i in got) == ["a-1", "a-2", "b-1", "b-2"]
    assert all(i.receiver is broker.locked[i.session or ""] for i in got)  # settled through its own receiver


def test_a_session_is_let_go_only_when_idle_and_nothing_of_it_is_held() -> None:
    broker, clock = Broker(), Clock()
    broker.put("a", 1)
    broker.put("b", 1)
    pool = SessionPool(broker.open, None, max_sessions=1, idle=5, wait=1, log=LOG, clock=clock)
    (item,) = pool.receive(10)
    assert item.session == "a"
    clock.now += 60
    assert pool.receive(10) == []
    assert "a" in pool.sessions  # idle, but its message awaits its commit: the session is kept
    item.receiver.complete_message(item.message)
    pool.done(item)
    clock.now += 60
    pool.receive(10)
    assert "a" not in pool.sessions  # idle and nothing held: let go, its lock released
    assert item.receiver.closed
    clock.now += 60
    (other,) = pool.receive(10)
    assert other.session == "b"  # the freed slot takes the next session


def test_configured_sessions_and_a_session_locked_elsewhere() -> None:
    broker = Broker()
    broker.put("a", 1)
    broker.put("b", 1)
    elsewhere = broker.open("b")
    elsewhere.receive_messages(1, 1)  # another consumer holds b
    pool = SessionPool(broker.open, ["a", "b"], max_sessions=4, idle=5, wait=1, log=LOG, clock=Clock())
    got = pool.receive(10)
    assert [i.session for i in got] == ["a"]
    assert set(pool.sessions) == {"a"}


def test_a_lost_session_is_dropped_and_renewal_renews_the_session_lock() -> None:
    broker = Broker()
    broker.put("a", 1, 2)
    pool = SessionPool(broker.open, None, max_sessions=2, idle=5, wait=1, log=LOG, clock=Clock())
    items = pool.receive(1)
    receiver = items[0].receiver
    pool.renew(receiver)
    assert receiver.session.renewals == 1
    receiver.lost = True
    pool.receive(10)
    assert "a" not in pool.sessions


def asb_input(broker: Broker, **config: Any) -> AsbInputProvider:
    cfg = AsbInputProvider.Config.model_validate(
        {"connection_string": FAKE_SB, "queue": "q", "sessions": "next", "max_batch": 3, "max_idle": 0.01,
         "commit_wait": 0, "session_idle": 60, **config}
    )  # fmt: skip
    provider = AsbInputProvider(cfg, Context("t"))  # type: ignore[arg-type]
    provider._pool = SessionPool(broker.open, None, cfg.max_sessions, cfg.session_idle, cfg.max_wait, LOG)
    return provider


def test_the_input_checkpoints_interleaved_sessions_and_completes_exactly_what_was_committed() -> None:
    broker = Broker()
    broker.put("a", 1, 2, 3)
    broker.put("b", 1, 2, 3)
    provider = asb_input(broker)
    items = list(provider.read(None))
    raws = [json.loads(i.line)["data"] for i in items if isinstance(i, Raw)]
    assert {(d["s"], d["v"]) for d in raws} == {(s, v) for s in "ab" for v in (1, 2, 3)}
    for s in "ab":
        assert [d["v"] for d in raws if d["s"] == s] == [1, 2, 3]  # each session in its order
    checkpoints = [i.position for i in items if isinstance(i, Checkpoint)]
    provider.on_committed(checkpoints[0])  # covers the first receive batch only
    completed = sorted(broker.locked["a"].completed + broker.locked["b"].completed)
    first = sorted(f"{d['s']}-{d['v']}" for d in raws[: checkpoints[0]["seq"]])
    assert completed == first
    provider.close()
    # Stopped: the rest released (no delivery counted), every session let go.
    released = sorted(r for rec in broker.opened for r in rec.released)
    assert sorted(completed + released) == sorted(f"{s}-{v}" for s in "ab" for v in (1, 2, 3))
    assert broker.locked == {}


def test_the_input_says_when_an_entity_needs_sessions() -> None:
    from azure.servicebus.exceptions import ServiceBusError

    class SessionEntity:
        def receive_messages(self, **kw: Any) -> list[Any]:
            raise ServiceBusError(
                "It is not possible for an entity that requires sessions to create a non-sessionful message receiver."
            )

        def close(self) -> None:
            pass

    cfg = AsbInputProvider.Config.model_validate({"connection_string": FAKE_SB, "queue": "q"})
    provider = AsbInputProvider(cfg, Context("t"))  # type: ignore[arg-type]
    provider._receiver = SessionEntity()
    with pytest.raises(RuntimeError, match='is session-enabled: set sessions = "next"'):
        provider.receive(1)


def test_accepting_a_session_is_not_retried_and_the_retry_setting_comes_back() -> None:
    broker = Broker()
    seen: list[int] = []

    class Config:
        retry_total = 3

    class Counting(SessionReceiver):
        def receive_messages(self, max_message_count: int, max_wait_time: float) -> list[Received]:
            seen.append(self._config.retry_total)
            return super().receive_messages(max_message_count, max_wait_time)

    def open_receiver(wanted: Any) -> Counting:
        receiver = Counting(broker, wanted)
        receiver._config = Config()  # type: ignore[attr-defined]
        return receiver

    pool = SessionPool(open_receiver, None, max_sessions=1, idle=60, wait=1, log=LOG, clock=Clock())
    assert pool.receive(5) == []  # none available: one attempt, no retries
    broker.put("a", 1)
    pool._next_accept = 0
    pool.receive(5)
    assert seen[:2] == [0, 0]  # both accepts without retries
    assert seen[2:] == [3]  # the held session's later receives with the client's retries
