"""Sessions without a broker: session ids from envelopes, batches that keep each session's
order, session-enabled entities in init/plan, and the input's session pool (accepting,
reading in turn, letting go, renewing, losing a lock, stopping) against an in-memory
broker that locks each session to one receiver, as Service Bus does."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.servicebus import NEXT_AVAILABLE_SESSION
from azure.servicebus.exceptions import (
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
)
from dstream_azure import lifecycle
from dstream_azure.asb_input import AsbInputProvider
from dstream_azure.asb_output import AsbOutputProvider
from dstream_azure.asb_sessions import SessionAcceptError, SessionPool
from dstream_azure.servicebus import TargetSender, build_message
from dstream_azure.servicebus_admin import EntitySettings, QueueAdmin, TopicAdmin
from dstream_azure.sessions import MAX_SESSION_ID, SessionIds, SessionKeyMissing, bounded
from pydantic import ValidationError

from dstream import protocol
from dstream.sdk import Checkpoint, Context, Envelope, Raw
from tests.providers.azure.sbfakes import (
    FAKE_SB,
    Entity,
    FakeAdminClient,
    FakeClock,
    FakeSender,
    FakeServiceBusClient,
    FakeSessionReceiver,
    SessionBroker,
)

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


# -- the input's session pool against an in-memory broker whose session locks expire -----------------


def new_pool(broker: SessionBroker, configured: list[str] | None = None, **kw: Any) -> SessionPool:
    options: dict[str, Any] = {"max_sessions": 2, "idle": 5, "wait": 1, **kw}
    return SessionPool(
        broker.open, configured, options.pop("max_sessions"), options.pop("idle"), options.pop("wait"), LOG,
        clock=broker.clock, utcnow=broker.clock.utcnow, timer=False, **options,
    )  # fmt: skip


def test_the_pool_accepts_sessions_up_to_its_bound_and_reads_them_in_turn() -> None:
    broker = SessionBroker(FakeClock())
    for s in "abc":
        broker.put(s, 1, 2)
    pool = new_pool(broker)
    got = pool.receive(10)
    assert set(pool.sessions) == {"a", "b"}  # the bound: c waits for a free slot
    assert sorted(i.message.message_id for i in got) == ["a-1", "a-2", "b-1", "b-2"]
    assert all(i.receiver is broker.locked[i.session or ""] for i in got)  # settled through its own receiver


def test_a_session_is_let_go_only_when_idle_and_nothing_of_it_is_held() -> None:
    clock = FakeClock()
    broker = SessionBroker(clock, lock_duration=300)
    broker.put("a", 1)
    broker.put("b", 1)
    pool = new_pool(broker, max_sessions=1)
    (item,) = pool.receive(10)
    assert item.session == "a"
    clock.advance(60)
    assert pool.receive(10) == []
    assert "a" in pool.sessions  # idle, but its message awaits its commit: the session is kept
    item.receiver.complete_message(item.message)
    pool.done(item)
    clock.advance(60)
    pool.receive(10)
    assert "a" not in pool.sessions  # idle and nothing held: let go, its lock released
    assert item.receiver.closed
    clock.advance(60)
    (other,) = pool.receive(10)
    assert other.session == "b"  # the freed slot takes the next session


def test_configured_sessions_and_a_session_locked_elsewhere() -> None:
    broker = SessionBroker(FakeClock())
    broker.put("a", 1)
    broker.put("b", 1)
    elsewhere = broker.open("b")
    elsewhere.receive_messages(1, 1)  # another consumer holds b
    pool = new_pool(broker, ["a", "b"], max_sessions=4)
    got = pool.receive(10)
    assert [i.session for i in got] == ["a"]
    assert set(pool.sessions) == {"a"}


def test_the_lock_keeper_renews_a_held_session_before_its_lock_ends_and_reports_a_failed_renewal() -> None:
    clock = FakeClock()
    broker = SessionBroker(clock, lock_duration=10)
    broker.put("a", 1, 2)
    pool = new_pool(broker)
    clock.every(1.0, pool.keeper.tick)
    (item,) = pool.receive(1)
    receiver = item.receiver
    clock.advance(4)
    assert receiver.session.renewals == 0  # more than half the lock left
    clock.advance(2)
    assert receiver.session.renewals == 1
    clock.advance(60)  # nothing read meanwhile: the timer alone keeps the lock
    assert receiver.session.renewals >= 12
    assert broker.owner("a") is receiver
    receiver.close()  # the receiver is gone (as the SDK's: renew_lock raises ValueError)
    clock.advance(10)
    again = pool.receive(10)
    assert pool.take_dropped() == [receiver]  # reported lost by the keeper, dropped with its held message
    assert pool.sessions["a"].receiver is not receiver  # the session, taken anew, gives its messages again
    assert [i.message.message_id for i in again] == ["a-1", "a-2"]


def test_a_renewal_that_fails_for_a_passing_reason_is_tried_again_not_a_lost_session() -> None:
    from azure.servicebus.exceptions import ServiceBusConnectionError

    clock = FakeClock()
    broker = SessionBroker(clock, lock_duration=10)
    broker.put("a", 1)
    pool = new_pool(broker)
    clock.every(1.0, pool.keeper.tick)
    (item,) = pool.receive(1)
    session = item.receiver.session
    renew = session.renew_lock
    failures = iter([ServiceBusConnectionError(message="connection reset")])

    def flaky() -> datetime:
        error = next(failures, None)
        if error is not None:
            raise error
        return renew()

    session.renew_lock = flaky  # type: ignore[method-assign]
    clock.advance(30)
    pool.receive(1)
    assert pool.take_dropped() == []  # one failed renewal with time left: tried again, kept
    assert pool.sessions["a"].receiver is item.receiver
    assert session.renewals >= 3


def test_the_lock_keeper_thread_renews_on_its_own() -> None:
    from dstream_azure.asb_locks import SessionLockKeeper

    renewed = threading.Event()

    class Session:
        locked_until_utc = datetime.now(UTC)

        def renew_lock(self) -> datetime:
            renewed.set()
            return datetime.now(UTC) + timedelta(seconds=60)

    receiver = type("Receiver", (), {"session": Session()})()
    keeper = SessionLockKeeper(lambda: [("a", receiver, threading.Lock())], lambda sid, exc: None, LOG, interval=0.01)
    keeper.start()
    try:
        assert renewed.wait(5), "the keeper's thread renewed nothing"
    finally:
        keeper.stop()
    assert keeper._thread is None  # stop joined the thread


def asb_input(broker: SessionBroker, **config: Any) -> AsbInputProvider:
    cfg = AsbInputProvider.Config.model_validate(
        {"connection_string": FAKE_SB, "queue": "q", "sessions": "next", "max_batch": 3, "max_idle": 0.01,
         "commit_wait": 0, "session_idle": 60, **config}
    )  # fmt: skip
    provider = AsbInputProvider(cfg, Context("t"))  # type: ignore[arg-type]
    provider._pool = new_pool(
        broker, max_sessions=cfg.max_sessions, idle=cfg.session_idle, wait=cfg.max_wait, source=provider.source
    )
    return provider


def test_a_busy_session_keeps_its_lock_for_ten_lock_durations() -> None:
    """Row 1: every receive takes half a second of a 10 s lock; commits come at once. For 100 s the
    session is read without pause, so no held message nears its lock end: only a timer keeps it."""
    clock = FakeClock()
    broker = SessionBroker(clock, lock_duration=10)
    broker.receive_cost = 0.5
    broker.put("a", *range(1, 2001))
    provider = asb_input(broker, max_batch=3)
    clock.every(1.0, provider.pool.keeper.tick)  # the keeper's thread, on this clock
    start = clock.now
    emitted = 0
    for item in provider.read(None):
        if isinstance(item, Checkpoint):
            provider.on_committed(item.position)
        else:
            emitted += 1
        if clock.now - start >= 10 * broker.lock_duration:
            break
    provider.close()
    assert clock.now - start >= 100
    ids = [m for m, _ in broker.deliveries]
    assert len(ids) == len(set(ids)) >= emitted >= 500  # nothing came twice
    assert {count for _, count in broker.deliveries} == {0}  # no delivery counted against any message
    (receiver,) = [r for r in broker.opened if r.session_id == "a"]  # held throughout, never taken anew
    assert receiver.session.renewals >= 10
    assert len(receiver.completed) + len(receiver.released) == len(ids)  # each settled once, through its receiver


def test_a_lost_session_is_forgotten_never_settled_through_its_closed_receiver_and_stop_works() -> None:
    """Row 2: a session lock runs out while its messages await their commit."""
    clock = FakeClock()
    broker = SessionBroker(clock, lock_duration=10)
    broker.put("a", 1, 2, 3)
    provider = asb_input(broker, max_batch=3)
    reading = provider.read(None)
    first = [next(reading) for _ in range(4)]  # three messages and their checkpoint, not yet committed
    assert isinstance(first[-1], Checkpoint)
    receiver = broker.opened[0]
    clock.advance(11)  # no keeper ticking: the lock runs out and the broker frees the session
    again = [next(reading) for _ in range(4)]  # the next receive finds the lock lost; the session comes anew
    assert [json.loads(i.line)["data"]["v"] for i in again[:3] if isinstance(i, Raw)] == [1, 2, 3]
    assert receiver.closed
    assert provider.pool.sessions["a"].receiver is not receiver
    assert broker.deliveries == [("a-1", 0), ("a-2", 0), ("a-3", 0), ("a-1", 1), ("a-2", 1), ("a-3", 1)]
    provider.on_committed(first[-1].position)  # the late commit of the first delivery: those were forgotten
    assert provider.wait_settled(timeout=10)
    assert receiver.completed == []  # nothing went to the closed receiver (the SDK would raise ValueError)
    provider.on_committed(again[-1].position)
    assert provider.wait_settled(timeout=10)
    assert provider.pool.sessions["a"].receiver.completed == ["a-1", "a-2", "a-3"]
    provider.close()  # a graceful stop works


def test_settling_through_a_closed_session_receiver_raises_as_the_sdk_does() -> None:
    broker = SessionBroker(FakeClock())
    broker.put("a", 1)
    receiver = broker.open(NEXT_AVAILABLE_SESSION)
    (m,) = receiver.receive_messages(1)
    receiver.close()
    with pytest.raises(ValueError, match="handler has already been shutdown"):
        receiver.complete_message(m)
    with pytest.raises(ValueError, match="handler has already been shutdown"):
        receiver.session.renew_lock()


def test_the_input_checkpoints_interleaved_sessions_and_completes_exactly_what_was_committed() -> None:
    broker = SessionBroker(FakeClock(), lock_duration=300)
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
    assert provider.wait_settled(timeout=10)
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


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (MessagingEntityNotFoundError(message="The messaging entity could not be found"), "does not exist"),
        (ServiceBusAuthenticationError(message="Unauthorized"), "connection string was refused"),
        (ServiceBusAuthorizationError(message="Unauthorized access"), "connection string was refused"),
        (ServiceBusError(message="The session filter is not supported on a non-session entity"), 'sessions = "none"'),
    ],
)
def test_an_accept_that_waiting_cannot_fix_is_an_error_not_a_debug_line(error: Exception, says: str) -> None:
    broker = SessionBroker(FakeClock())

    class Refusing(FakeSessionReceiver):
        def receive_messages(self, max_message_count: int, max_wait_time: float | None = None) -> list[Any]:
            raise error

    pool = new_pool(broker, source="Service Bus queue q")
    pool.open_receiver = lambda wanted: Refusing(broker, wanted)
    with pytest.raises(SessionAcceptError, match=says) as caught:
        pool.receive(5)
    assert "\n" not in str(caught.value)


def test_no_busy_spin_while_no_session_is_held() -> None:
    broker = SessionBroker(FakeClock())  # nothing to accept
    provider = asb_input(broker, max_idle=0, max_wait=2, session_accept_wait=5)
    waits: list[float] = []

    def sleep(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) < 3

    provider.ctx.sleep = sleep  # type: ignore[method-assign]
    assert list(provider.read(None)) == []
    assert len(waits) == 3
    assert all(w >= 0.05 for w in waits)  # each empty turn waits, never sleep(0)
    assert waits[0] == 2  # until the next accept (5 s away), at most max_wait


def test_accepting_a_session_is_not_retried_and_the_retry_setting_comes_back() -> None:
    broker = SessionBroker(FakeClock())
    seen: list[int] = []
    waits: list[float | None] = []

    class Config:
        retry_total = 3

    class Counting(FakeSessionReceiver):
        def receive_messages(self, max_message_count: int, max_wait_time: float | None = None) -> list[Any]:
            seen.append(self._config.retry_total)
            waits.append(max_wait_time)
            return super().receive_messages(max_message_count, max_wait_time)

    def open_receiver(wanted: Any) -> Counting:
        receiver = Counting(broker, wanted)
        receiver._config = Config()  # type: ignore[attr-defined]
        return receiver

    pool = new_pool(broker, max_sessions=1, idle=60, accept_wait=7)
    pool.open_receiver = open_receiver
    assert pool.receive(5) == []  # none available: one attempt, no retries
    assert pool.next_accept_in() == 7  # the next attempt after the accept budget
    broker.put("a", 1)
    pool._next_accept = 0
    pool.receive(5)
    assert seen[:2] == [0, 0]  # both accepts without retries
    assert waits[:2] == [7, 7]  # each with the accept budget, not a 1 s cap
    assert seen[2:] == [3]  # the held session's later receives with the client's retries


def test_commits_settle_off_the_read_loop_and_sessions_settle_at_once() -> None:
    """Rows 6/7: on 7.15 each completion waits for the broker; two sessions' completions overlap (each
    waits on a barrier only the other can pass), and on_committed returns before they finish."""
    broker = SessionBroker(FakeClock(), lock_duration=300)
    broker.put("a", 1)
    broker.put("b", 1)
    both = threading.Barrier(2, timeout=5)
    started = threading.Event()

    class Confirming(FakeSessionReceiver):
        def complete_message(self, m: Any) -> None:
            started.set()
            both.wait()  # a broken barrier (a timeout: completions one at a time) raises here
            super().complete_message(m)

    provider = asb_input(broker, max_batch=10)
    provider.pool.open_receiver = lambda wanted: Confirming(broker, wanted)
    reading = provider.read(None)
    items = [next(reading) for _ in range(3)]  # a-1, b-1 and their checkpoint
    checkpoint = items[-1]
    assert isinstance(checkpoint, Checkpoint)
    provider.on_committed(checkpoint.position)
    assert started.wait(5)
    assert provider.wait_settled(timeout=10)
    assert not both.broken
    assert sorted(m for s in provider.pool.sessions.values() for m in s.receiver.completed) == ["a-1", "b-1"]
    reading.close()
    provider.close()
