"""SQL Server's incremental snapshots (dstream_mssql_cdc.incremental) against a model: a
table under concurrent inserts, updates, key updates and deletes; a CDC log the capture job
harvests with an arbitrary lag; chunks read between an open and a close row INSERTed into
the signal table; restarts from any acknowledged checkpoint; re-snapshot signals. A
consumer that applies the output in order must end with the source's rows.

What this adds to the SDK's model (tests/unit/test_cdc.py): the watermarks are explicit rows
of a signal table (Debezium's SignalBasedIncrementalSnapshotChangeEventSource.emitWindowOpen /
emitWindowClose), and the capture job harvests the log after the commit, so the stream may be
any way behind the writes, the open row and the read. Each Read is checked when it goes out
against the key's state at the close row's place in the log (never stale), and the replica
against the source at the end. Checked by mutation: with ``Watermarks.changed`` a no-op the
property test fails. (Opening the window at the read instead of at the open row is also safe
in this model, the stream being behind the read: it only drops more rows.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from dstream_mssql_cdc.incremental import (
    CLOSE,
    EXECUTE,
    OPEN,
    STOP,
    Watermarks,
    parse_signal,
    signal_data,
    signal_insert_sql,
    signal_table_ddl,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dstream.sdk.cdc import IncrementalCursor

pytestmark = pytest.mark.unit

T = "dbo.Orders"


@dataclass
class Entry:
    """A change-table row in commit order: a change of the table, or a signal-table INSERT."""

    kind: str  # "change" or a signal type
    old: int | None = None
    new: int | None = None
    value: int | None = None
    row_id: str = ""


@dataclass
class World:
    source: dict[int, int]
    chunk_size: int
    log: list[Entry] = field(default_factory=list)
    captured: int = 0  # how much of the log the capture job harvested
    replica: dict[int, int] = field(default_factory=dict)
    next_key: int = 1000
    # the engine (lost at a kill)
    marks: Watermarks[int] = field(init=False)
    pos: int = 0  # the next log entry the stream reads
    phase: str = "idle"  # idle → opened (open row in) → read (chunk read) → idle (close row in)
    chunk: tuple[str, str, IncrementalCursor] | None = None
    acked: list[tuple[int, dict[str, IncrementalCursor]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.initial = dict(self.source)
        self.marks = Watermarks(None, self.chunk_size)
        self.marks.start(T)  # snapshot = "incremental", first run
        self.acked.append((0, dict(self.marks.snaps.cursors)))

    # -- the workload --------------------------------------------------------------------

    def write(self, op: int, pick: int, value: int) -> None:
        keys = sorted(self.source)
        if op == 0 or not keys:  # insert
            self.next_key += 1 + pick % 3
            key = self.next_key if pick % 2 else -self.next_key  # below and above the cursor
            self.source[key] = value
            self.log.append(Entry("change", None, key, value))
            return
        key = keys[pick % len(keys)]
        if op == 1:  # update
            self.source[key] = value
            self.log.append(Entry("change", key, key, value))
        elif op == 2:  # a key update (old and new key both in the change)
            self.next_key += 1
            new = self.next_key if pick % 2 else -self.next_key
            del self.source[key]
            self.source[new] = value
            self.log.append(Entry("change", key, new, value))
        else:  # delete
            del self.source[key]
            self.log.append(Entry("change", key, None, None))

    def capture(self, n: int) -> None:
        self.captured = min(len(self.log), self.captured + n)

    def signal(self, kind: str) -> None:
        self.log.append(Entry(kind, row_id=f"signal-{len(self.log)}"))

    # -- the engine ------------------------------------------------------------------------

    def chunk_step(self) -> None:
        if self.phase == "idle":
            nxt = self.marks.next_chunk()
            if nxt is None:
                return
            self.chunk = nxt
            self.log.append(Entry(OPEN, row_id=f"{nxt[0]}-open"))  # committed before the read
            self.phase = "opened"
        elif self.phase == "opened":
            assert self.chunk is not None
            chunk, table, cursor = self.chunk
            after = int(cursor.after[0]) if cursor.after else None
            keys = sorted(k for k in self.source if after is None or k > after)[: self.chunk_size]
            self.marks.read(chunk, table, [((k,), (str(k),), self.source[k]) for k in keys])
            self.phase = "read"
        else:
            assert self.chunk is not None
            self.log.append(Entry(CLOSE, row_id=f"{self.chunk[0]}-close"))
            self.phase = "idle"

    def window(self, before: list[tuple[int, int, int]], after: list[tuple[int, int, int]]) -> None:
        """A whole chunk (open row, read, close row) with writes inside it, aimed at the keys
        the chunk reads (what makes the DBLog rule matter)."""
        if self.phase != "idle":
            return
        self.chunk_step()
        if self.chunk is None or self.phase != "opened":
            return
        for op, pick, value in before:
            self.write_near(op, pick, value)
        self.chunk_step()
        for op, pick, value in after:
            self.write_near(op, pick, value)
        self.chunk_step()

    def write_near(self, op: int, pick: int, value: int) -> None:
        assert self.chunk is not None
        cursor = self.chunk[2]
        bound = int(cursor.after[0]) if cursor.after else None
        near = sorted(k for k in self.source if bound is None or k > bound)[: self.chunk_size + 1]
        if op == 0 or not near:
            self.write(op, pick, value)
            return
        keys = sorted(self.source)
        self.write(op, keys.index(near[pick % len(near)]), value)

    def consume(self) -> None:
        # The provider writes the open row, reads the chunk and writes the close row between
        # two polls, in the thread that streams: no change is handed out meanwhile (writers
        # and the capture job go on).
        if self.pos >= self.captured or self.phase != "idle":
            return
        entry = self.log[self.pos]
        self.pos += 1
        if entry.kind == "change":
            self.marks.changed(
                T, [None if entry.old is None else (entry.old,), None if entry.new is None else (entry.new,)]
            )
            if entry.old is not None:
                self.replica.pop(entry.old, None)
            if entry.new is not None:
                assert entry.value is not None
                self.replica[entry.new] = entry.value
            self.acked.append((self.pos, dict(self.marks.snaps.cursors)))
        elif entry.kind in (OPEN, CLOSE):
            closed = self.marks.signal(entry.row_id, entry.kind)
            if closed is None:
                return
            state = self.state_at(self.pos)
            for value, cursor in closed.rows:
                assert cursor.after is not None
                # Never stale: the row is the key's state where the stream stands (the close row),
                # so every change before it was emitted before the row, every later one comes after.
                assert state.get(int(cursor.after[0])) == value, (cursor.after, value, self.pos)
                self.replica[int(cursor.after[0])] = value  # a Read: the row as read
                self.acked.append((self.pos, {**self.marks.snaps.cursors, T: cursor}))
        elif entry.kind == EXECUTE:
            self.marks.start(T)
        elif entry.kind == STOP:
            self.marks.stop(T)

    def state_at(self, pos: int) -> dict[int, int]:
        state = dict(self.initial)
        for entry in self.log[:pos]:
            if entry.kind == "change":
                if entry.old is not None:
                    state.pop(entry.old, None)
                if entry.new is not None:
                    assert entry.value is not None
                    state[entry.new] = entry.value
        return state

    def kill(self, back: int) -> None:
        """kill -9: the engine restarts from an acknowledged checkpoint (the consumer keeps
        what it applied: at-least-once), the chunk in flight is forgotten."""
        pos, cursors = self.acked[max(0, len(self.acked) - 1 - back)]
        self.marks = Watermarks(cursors, self.chunk_size)
        self.pos, self.phase, self.chunk = pos, "idle", None

    def drain(self) -> None:
        for _ in range(100_000):
            if self.pos >= len(self.log) and not self.marks.snaps and self.phase == "idle":
                return
            self.capture(len(self.log))
            if self.phase != "idle" or self.pos >= len(self.log):
                self.chunk_step()
            else:
                self.consume()
        raise AssertionError("the snapshot never finished")


writes = st.tuples(st.integers(0, 3), st.integers(0, 50), st.integers(0, 999))
step = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 3), st.integers(0, 50), st.integers(0, 999)),
    st.tuples(st.just("capture"), st.integers(0, 4), st.just(0), st.just(0)),
    st.tuples(st.just("consume"), st.integers(1, 4), st.just(0), st.just(0)),
    st.tuples(st.just("chunk"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("window"), st.lists(writes, max_size=3), st.lists(writes, max_size=3), st.just(0)),
    st.tuples(st.just("kill"), st.integers(0, 5), st.just(0), st.just(0)),
    st.tuples(st.just("signal"), st.sampled_from([EXECUTE, STOP, EXECUTE]), st.just(0), st.just(0)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.integers(0, 999), min_size=0, max_size=25),
    chunk_size=st.integers(1, 6),
    steps=st.lists(step, max_size=120),
)
def test_a_replica_applying_the_output_in_order_ends_with_the_source(
    rows: list[int], chunk_size: int, steps: list[tuple[str, Any, int, int]]
) -> None:
    world = World({i * 3: v for i, v in enumerate(rows)}, chunk_size)
    for name, a, b, c in steps:
        if name == "write":
            world.write(a, b, c)
        elif name == "capture":
            world.capture(a)
        elif name == "consume":
            for _ in range(a):
                world.consume()
        elif name == "chunk":
            world.chunk_step()
        elif name == "window":
            world.window(a, b)  # type: ignore[arg-type]
        elif name == "kill":
            world.kill(a)
        else:
            world.signal(a)
    world.signal(EXECUTE)  # a last re-snapshot: whatever a STOP cut short is read whole (each Read was
    # checked against the stream's state when it went out, so this cannot hide a stale one)
    world.drain()
    assert world.replica == world.source


def test_a_change_between_the_open_and_the_close_row_drops_its_row_and_one_before_does_not() -> None:
    world = World({1: 10, 2: 20, 3: 30}, chunk_size=10)
    world.write(1, 0, 11)  # key 1, committed before the open row: the read sees 11
    world.chunk_step()  # open row
    world.chunk_step()  # read: 1 → 11, 2 → 20, 3 → 30
    world.write(1, 1, 21)  # key 2, after the read, before the close row
    world.chunk_step()  # close row
    world.capture(len(world.log))
    emitted: list[tuple[str, int]] = []
    while world.pos < len(world.log):
        entry = world.log[world.pos]
        before = dict(world.replica)
        world.consume()
        if entry.kind == CLOSE:
            emitted += [("Read", k) for k in world.replica if before.get(k) != world.replica[k]]
    assert emitted == [("Read", 3)]  # 2 dropped (its change was in the window), 1 not re-sent: same value
    assert world.replica == {1: 11, 2: 21, 3: 30}


def test_a_stale_close_row_of_an_earlier_run_releases_nothing() -> None:
    marks: Watermarks[int] = Watermarks({T: IncrementalCursor()}, 10)
    nxt = marks.next_chunk()
    assert nxt is not None
    marks.read(nxt[0], T, [((1,), ("1",), 1)])
    assert marks.signal("0123-open", OPEN) is None  # not this chunk's open row: still pending
    assert marks.next_chunk() is None  # one chunk in flight at a time
    assert marks.signal("0123-close", CLOSE) is None
    marks.signal(f"{nxt[0]}-open", OPEN)
    closed = marks.signal(f"{nxt[0]}-close", CLOSE)
    assert closed is not None
    assert [v for v, _ in closed.rows] == [1]
    assert closed.finished


def test_signals_are_debeziums_rows_and_their_sql_quotes_the_table() -> None:
    data = signal_data(["dbo.Orders"], {"dbo.Orders": "amount > 10"})
    assert parse_signal(EXECUTE, data) == parse_signal(EXECUTE, data)
    parsed = parse_signal(EXECUTE, data)
    assert parsed is not None
    assert parsed.tables == ("dbo.Orders",)
    assert parsed.where == {"dbo.Orders": "amount > 10"}
    # Debezium's own example (signalling.adoc, "Ad hoc snapshot signals")
    theirs = parse_signal(EXECUTE, '{"data-collections": ["schema1.table1", "schema1.table2"], "type": "INCREMENTAL"}')
    assert theirs is not None
    assert theirs.tables == ("schema1.table1", "schema1.table2")
    assert parse_signal(OPEN, "{}") is None
    assert parse_signal(EXECUTE, "not json") is None
    assert signal_insert_sql("dbo.my]signals") == "INSERT INTO [dbo].[my]]signals] (id, type, data) VALUES (?, ?, ?)"
    assert signal_table_ddl("dstream_signals").startswith("CREATE TABLE [dbo].[dstream_signals] (id VARCHAR(64)")
