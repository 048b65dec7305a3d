"""The engine-agnostic CDC pieces (dstream.sdk.cdc): positions, snapshot planning and
chunked resumable reads, transaction assembly, heartbeats, lag gauges, adaptive polling,
reconnect backoff, the shared config."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dstream.sdk.cdc import (
    Backoff,
    CdcConfig,
    ChunkCursor,
    IncrementalCursor,
    IncrementalSnapshots,
    LagReporter,
    PollInterval,
    Position,
    PositionError,
    SnapshotPlan,
    TransactionAssembler,
    parse_tables,
    plan_snapshots,
    read_chunks,
    read_metadata,
    restart_point,
    row_key,
    tables_json,
)


def fmt(value: int) -> str:
    return f"L{value}"


def parse(text: str) -> int:
    if not text.startswith("L"):
        raise ValueError(f"bad {text!r}")
    return int(text[1:])


# -- positions -------------------------------------------------------------------------------


def test_position_json_round_trip_and_numeric_order() -> None:
    positions = [
        Position(5, snapshot=ChunkCursor(("7",), 3)),
        Position(5),
        Position(5, 3),
        Position(9),
        Position(10, 2),
        Position(100),
    ]
    for position in positions:
        assert Position.from_json(position.to_json(fmt), parse) == position
    assert sorted(positions, key=lambda p: p.key) == positions
    # Numeric, not textual: "L9" > "L10" as text.
    assert Position(9).key < Position(10).key
    assert Position.from_json({"lsn": "L5", "index": 0}, parse) == Position(5)
    assert Position(5).to_json(fmt) == {"lsn": "L5"}
    assert Position(5, 2).to_json(fmt) == {"lsn": "L5", "index": 2}


@pytest.mark.parametrize(
    "bad",
    [None, 5, {"value": 3}, {"lsn": 5}, {"lsn": "X5"}, {"lsn": "L5", "index": -1}, {"lsn": "L5", "index": "2"}],
)
def test_foreign_checkpoints_are_refused(bad: Any) -> None:
    with pytest.raises(PositionError):
        Position.from_json(bad, parse)


def test_chunk_cursor_json() -> None:
    cursor = ChunkCursor(("1", "x"), 20)
    assert cursor.to_json() == {"after": ["1", "x"], "rows": 20}
    assert ChunkCursor.from_json(cursor.to_json()) == cursor
    assert ChunkCursor.from_json({"after": None}) == ChunkCursor()
    for bad in ({"after": "1"}, {"after": [1]}, {"rows": -1}, {"done": []}, [], {"rows": True}):
        with pytest.raises(PositionError):
            ChunkCursor.from_json(bad)


def test_tables_json_round_trip() -> None:
    positions = {"dbo.a": Position(5, 2), "dbo.b": Position(9, snapshot=ChunkCursor(("k",), 1))}
    assert parse_tables(tables_json(positions, fmt), parse) == positions
    with pytest.raises(PositionError):
        parse_tables(["dbo.a"], parse)
    with pytest.raises(PositionError):
        parse_tables({"dbo.a": {"lsn": "X"}}, parse)


# -- snapshots -------------------------------------------------------------------------------


def test_snapshot_plans_per_mode() -> None:
    tables = ["a", "b", "c", "d"]
    inside = Position(7, snapshot=ChunkCursor(("3",), 3))
    stored = {"a": Position(10), "b": inside, "d": Position(2)}
    # initial: only the table without a position (c, added to tables later) starts; b resumes.
    assert plan_snapshots("initial", tables, stored, expired={"d"}) == SnapshotPlan(("c",), ("b",))
    # when_needed: also d, whose position the source no longer holds.
    assert plan_snapshots("when_needed", tables, stored, expired={"d"}) == SnapshotPlan(("c", "d"), ("b",))
    # never: nothing starts, but a snapshot that was under way is finished.
    assert plan_snapshots("never", tables, stored) == SnapshotPlan((), ("b",))
    first = plan_snapshots("initial", tables, {})
    assert first.tables == tuple(tables)
    assert not plan_snapshots("initial", ["a"], {"a": Position(1)})


class Table:
    """A table of keyed rows, read by chunk the way an engine's chunk query would."""

    def __init__(self, keys: list[int]) -> None:
        self.rows = sorted(keys)
        self.queries: list[tuple[tuple[str, ...] | None, int]] = []

    def chunk(self, after: tuple[str, ...] | None, limit: int) -> list[int]:
        self.queries.append((after, limit))
        low = int(after[0]) if after is not None else None
        return [k for k in self.rows if low is None or k > low][:limit]


def key_text(row: int) -> tuple[str, ...]:
    return (str(row),)


def test_chunks_read_every_row_once_and_each_row_carries_the_cursor_after_it() -> None:
    table = Table(list(range(1, 26)))
    out = list(read_chunks(table.chunk, key_text, ChunkCursor(), 10))
    assert [row for row, _ in out] == list(range(1, 26))
    assert out[9][1] == ChunkCursor(("10",), 10)
    assert out[-1][1] == ChunkCursor(("25",), 25)
    # One query per chunk, each bounded by the previous chunk's last key.
    assert table.queries == [(None, 10), (("10",), 10), (("20",), 10)]


def test_a_snapshot_killed_anywhere_resumes_after_the_last_acknowledged_row() -> None:
    """Resuming from any row's cursor (what a checkpoint holds) yields exactly the rest: no
    row is lost (Airbyte's resumable full refresh lost rows here, airbyte#44378), none repeats."""
    keys = [3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377]
    table = Table(keys)
    full = list(read_chunks(table.chunk, key_text, ChunkCursor(), 4))
    for i, (_, cursor) in enumerate(full):
        rest = [row for row, _ in read_chunks(Table(keys).chunk, key_text, cursor, 4)]
        assert rest == keys[i + 1 :], cursor
        assert i + 1 + len(rest) == len(keys)
    # Rows deleted or inserted meanwhile: the rest is read as it is now, after the cursor.
    changed = Table([k for k in keys if k != 21] + [22, 1000])
    rest = [row for row, _ in read_chunks(changed.chunk, key_text, ChunkCursor(("13",), 4), 4)]
    assert rest == [22, 34, 55, 89, 144, 233, 377, 1000]


def test_a_table_without_a_key_restarts_from_its_first_row() -> None:
    table = Table(list(range(1, 8)))
    out = list(read_chunks(table.chunk, key_text, ChunkCursor(("4",), 4), 3, resumable=False))
    assert [row for row, _ in out] == list(range(1, 8))
    assert all(cursor.after is None for _, cursor in out)
    assert [cursor.rows for _, cursor in out] == list(range(1, 8))


def test_snapshot_row_metadata_names_each_row_uniquely() -> None:
    keyed = read_metadata("dbo.t", "L7", row_key({"id": 4, "v": "x"}, ["id"]), "p1", 4)
    assert keyed == {"TableName": "dbo.t", "OperationType": "Read", "LSN": "L7", "Key": {"id": 4}}
    assert row_key({"b": 2, "a": 1}, ["b", "a"]) == {"b": 2, "a": 1}
    assert list(row_key({"b": 2, "a": 1}, ["b", "a"]) or {}) == ["b", "a"]  # key order
    assert row_key({"a": 1}, []) is None
    keyless = [read_metadata("dbo.t", "L7", None, "p1", n) for n in (1, 2)]
    assert [m["Seq"] for m in keyless] == ["p1:1", "p1:2"]
    assert "Key" not in keyless[0]
    # A second pass of a keyless table names its rows differently: never the same id for two rows.
    assert read_metadata("dbo.t", "L7", None, "p2", 1)["Seq"] != keyless[0]["Seq"]


# -- transaction assembly --------------------------------------------------------------------

# A source: transactions as (commit, end, [changes]); commit positions increase, end > commit.
SOURCE = [
    (10, 12, ["a1", "a2", "a3"]),
    (12, 15, []),  # another table's transaction: a heartbeat
    (20, 22, ["b1"]),
    (30, 33, ["c1", "c2", "c3", "c4", "c5"]),
]


def replay(
    asm: TransactionAssembler[str], source: list[tuple[int, int, list[str]]] = SOURCE
) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for commit, end, changes in source:
        asm.begin(commit, end)
        for change in changes:
            if not asm.next_change():
                continue
            ready = asm.change(change)
            if ready:
                out.append(ready)
        ready = asm.commit()
        if ready:
            out.append(ready)
    return out


def test_each_change_carries_the_position_after_it_and_the_last_one_the_end_of_its_transaction() -> None:
    out = replay(TransactionAssembler(None, fmt))
    assert out == [
        ("a1", {"lsn": "L10", "index": 1}),
        ("a2", {"lsn": "L10", "index": 2}),
        ("a3", {"lsn": "L12"}),
        ("b1", {"lsn": "L22"}),
        ("c1", {"lsn": "L30", "index": 1}),
        ("c2", {"lsn": "L30", "index": 2}),
        ("c3", {"lsn": "L30", "index": 3}),
        ("c4", {"lsn": "L30", "index": 4}),
        ("c5", {"lsn": "L33"}),
    ]


def test_resuming_from_any_emitted_position_neither_skips_nor_repeats() -> None:
    full = replay(TransactionAssembler(None, fmt))
    for i, (_, position) in enumerate(full):
        resumed = replay(TransactionAssembler(Position.from_json(position, parse), fmt))
        assert [c for c, _ in resumed] == [c for c, _ in full[i + 1 :]], position


def test_a_transaction_that_commits_exactly_at_the_previous_end_is_not_skipped() -> None:
    # Commit records can be adjacent in the WAL: the next commit starts where the last ended.
    source = [(10, 12, ["a"]), (12, 14, ["b"])]
    out = replay(TransactionAssembler(Position(12), fmt), source)
    assert [c for c, _ in out] == ["b"]


def replay_end_at_commit(
    asm: TransactionAssembler[str], source: list[tuple[int, int, list[str]]] = SOURCE
) -> list[tuple[str, dict[str, Any]]]:
    """Like :func:`replay`, with each transaction's end given only at its commit (pgoutput)."""
    out = []
    for commit, end, changes in source:
        asm.begin(commit)
        for change in changes:
            if not asm.next_change():
                continue
            ready = asm.change(change)
            if ready:
                out.append(ready)
        ready = asm.commit(end)
        if ready:
            out.append(ready)
    return out


def test_the_end_given_at_commit_yields_the_same_positions_as_at_begin() -> None:
    assert replay_end_at_commit(TransactionAssembler(None, fmt)) == replay(TransactionAssembler(None, fmt))
    full = replay(TransactionAssembler(None, fmt))
    for i, (_, position) in enumerate(full):
        resumed = replay_end_at_commit(TransactionAssembler(Position.from_json(position, parse), fmt))
        assert [c for c, _ in resumed] == [c for c, _ in full[i + 1 :]], position
    asm: TransactionAssembler[str] = TransactionAssembler(None, fmt)
    asm.begin(10)
    asm.commit(12)  # an empty transaction: its end is a heartbeat
    assert asm.checkpoint() == {"lsn": "L12"}
    asm.begin(20)
    with pytest.raises(ValueError, match="needs the end"):
        asm.commit()


def test_changes_emitted_before_are_not_even_decoded() -> None:
    asm: TransactionAssembler[str] = TransactionAssembler(Position(30, 3), fmt)
    assert asm.begin(10, 12) is False  # committed below the position: all emitted
    assert asm.next_change() == 0
    assert asm.commit() is None
    assert asm.begin(30, 33) is True
    assert [asm.next_change() for _ in range(3)] == [0, 0, 0]
    assert asm.next_change() == 4  # the 4th change is the first new one, numbered in its transaction


def test_heartbeats_from_empty_transactions_and_from_a_read_bound() -> None:
    asm: TransactionAssembler[str] = TransactionAssembler(None, fmt)
    asm.begin(10, 12)
    assert asm.commit() is None  # nothing captured in it
    assert asm.checkpoint() == {"lsn": "L12"}
    assert asm.checkpoint() is None  # reported once
    asm.reached(40)  # everything committed below 40 was read
    assert asm.done == Position(40)
    assert asm.checkpoint() == {"lsn": "L40"}
    asm.reached(30)  # never backwards
    assert asm.done == Position(40)


def test_no_checkpoint_inside_a_transaction_and_a_cut_transaction_is_read_again() -> None:
    asm: TransactionAssembler[str] = TransactionAssembler(None, fmt)
    asm.begin(10, 12)
    for change in ("a1", "a2"):
        asm.next_change()
        asm.change(change)
    asm.reached(50)
    assert asm.checkpoint() is None  # mid-transaction
    assert asm.done == Position(10, 1)  # a1 was handed out, a2 is held back
    asm.abandon()  # the connection dropped: re-read from the source
    out = replay(asm, [(10, 12, ["a1", "a2", "a3"])])
    assert out == [("a2", {"lsn": "L10", "index": 2}), ("a3", {"lsn": "L12"})]


def test_after_a_snapshot_taken_at_a_position_the_stream_starts_there() -> None:
    # Transactions committed below the snapshot's position are in the snapshot.
    asm: TransactionAssembler[str] = TransactionAssembler(Position(30, snapshot=ChunkCursor()), fmt)
    assert asm.begin(10, 12) is False
    asm.commit()
    assert asm.begin(30, 33) is True


# -- polling and backoff ----------------------------------------------------------------------


def test_poll_interval_doubles_while_idle_and_resets_on_data() -> None:
    polls = PollInterval(0.2, 1.0)
    assert [polls.after_poll(0, False) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert polls.after_poll(3, False) == 0.2
    assert polls.after_poll(0, False) == 0.2
    assert polls.after_poll(0, False) == 0.4
    assert polls.after_poll(10, True) == 0.0  # a full batch: more is waiting
    assert polls.after_poll(0, False) == 0.2


def test_backoff_doubles_within_its_time_budget() -> None:
    now = [0.0]
    backoff = Backoff(timeout=10, initial=1, maximum=4, clock=lambda: now[0])
    delays = []
    while (delay := backoff.next_delay()) is not None:
        delays.append(delay)
        now[0] += delay
    assert delays == [1, 2, 4, 3]  # the last wait is cut to the budget
    assert backoff.attempts == 5
    backoff.reset()
    assert backoff.next_delay() == 1


# -- config -------------------------------------------------------------------------------------


# -- lag ---------------------------------------------------------------------------------------


def test_lag_gauges_are_rate_limited_per_table_and_logged_periodically(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    now = [100.0]
    sent: list[tuple[str, float, dict[str, str]]] = []
    lag = LagReporter(
        lambda name, value, **labels: sent.append((name, value, labels)),
        logging.getLogger("t"),
        every=1.0,
        log_every=60.0,
        clock=lambda: now[0],
    )
    lag.observe("a", 2.5, 100)
    lag.observe("a", 2.0)  # within a second: not sent again
    lag.observe("b", None)  # unknown: no gauge
    assert sent == [("lag_seconds", 2.5, {"table": "a"}), ("lag_lsn_bytes", 100.0, {"table": "a"})]
    now[0] += 1.5
    lag.observe("a", -0.1)
    assert sent[-1] == ("lag_seconds", 0.0, {"table": "a"})  # never negative
    with caplog.at_level(logging.INFO, "t"):
        lag.log_due()
        assert not caplog.records  # not yet a minute
        now[0] += 60
        lag.log_due()
    assert caplog.records[0].getMessage() == "lag behind the newest captured change: a 0.0s; b unknown"


def test_cdc_config_validation() -> None:
    config = CdcConfig(tables=[" public.a ", "b"])
    assert config.tables == ["public.a", "b"]
    assert (config.poll_interval, config.max_poll_interval, config.snapshot) == (0.2, 5.0, "initial")
    durations = CdcConfig(tables=["a"], poll_interval="200ms", max_poll_interval="1m30s", reconnect_timeout="2m")
    assert (durations.poll_interval, durations.max_poll_interval, durations.reconnect_timeout) == (0.2, 90.0, 120.0)
    assert CdcConfig(tables=["a"], snapshot="none").snapshot == "never"  # the setting's earlier name
    with pytest.raises(ValidationError):
        CdcConfig(tables=["a"], poll_interval="0s")
    with pytest.raises(ValidationError):
        CdcConfig(tables=["a"], poll_interval="soon")
    with pytest.raises(ValidationError, match="listed twice"):
        CdcConfig(tables=["a", "a"])
    with pytest.raises(ValidationError, match="shorter than poll_interval"):
        CdcConfig(tables=["a"], poll_interval=2, max_poll_interval=1)
    with pytest.raises(ValidationError):
        CdcConfig(tables=[])
    with pytest.raises(ValidationError):
        CdcConfig(tables=["a"], snapshot="always")


# -- incremental snapshots (DBLog) against a reference --------------------------------------
#
# The reference is the source itself: a dict of key → value, a log of its changes in commit
# order (the stream), and a consumer that applies every envelope in order. Whatever the
# interleaving of writes, stream reads, chunk reads and restarts from an acknowledged
# position, the consumer must end with the source's rows.


class _Model:
    """A source, its change log, and one IncrementalSnapshots fed the way a provider feeds it."""

    def __init__(self, rows: int, chunk: int) -> None:
        self.source = dict.fromkeys(range(0, rows * 2, 2), 0)  # even keys: inserts land between rows
        self.log: list[tuple[Any, ...]] = []
        self.chunk = chunk
        self.out: list[tuple[Any, ...]] = []  # (op, old key, new key, value), then the position after it
        self.positions: list[tuple[int, dict[str, IncrementalCursor]]] = []
        self.restart((0, {"t": IncrementalCursor()}))
        self.version = 0
        self.next_key = rows * 2 + 1

    def restart(self, position: tuple[int, dict[str, IncrementalCursor]]) -> None:
        self.read, cursors = position
        self.snaps: IncrementalSnapshots[tuple[int, int]] = IncrementalSnapshots(cursors)
        self.watermarks = 0
        self.pending: str | None = None

    def write(self, kind: int, pick: int) -> None:
        self.version += 1
        keys = sorted(self.source)
        if kind == 0 or not keys:
            key, self.next_key = self.next_key if pick % 2 else pick * 2 + 1, self.next_key + 2
            if key in self.source:
                return
            self.source[key] = self.version
            self.log.append(("Insert", None, key, self.version))
            return
        key = keys[pick % len(keys)]
        if kind == 1:
            self.source[key] = self.version
            self.log.append(("Update", key, key, self.version))
        elif kind == 2:
            del self.source[key]
            self.log.append(("Delete", key, None, None))
        else:  # a key update, to a key that may sort before or after the cursor
            new = -(pick + 1) * 3 if pick % 2 else self.next_key
            self.next_key += 2
            if new in self.source:
                return
            del self.source[key]
            self.source[new] = self.version
            self.log.append(("Update", key, new, self.version))

    def emit(self, item: tuple[Any, ...]) -> None:
        self.out.append(item)
        self.positions.append((self.read, dict(self.snaps.cursors)))

    def stream(self, n: int) -> None:
        for entry in self.log[self.read : self.read + n]:
            self.read += 1
            if entry[0] == "H":
                closed = self.snaps.close(entry[1])
                if closed is None:
                    continue
                for (key, value), cursor in closed.rows:
                    self.snaps.cursors[closed.table] = cursor  # what a checkpoint after this row holds
                    self.emit(("Read", None, key, value))
                if closed.finished:
                    self.snaps.cursors.pop(closed.table, None)
                else:
                    self.snaps.cursors[closed.table] = closed.cursor
                continue
            _, old, new, _ = entry
            self.snaps.changed("t", [(old,), (new,)])
            self.emit(entry)

    def read_chunk(self) -> bool:
        """Read a chunk from the source as it is now. The stream may be behind (changes
        committed since its last read): what it has not handed out yet comes after the read."""
        nxt = self.snaps.next_chunk()
        if nxt is None:
            return False
        _, cursor = nxt
        after = int(cursor.after[0]) if cursor.after is not None else None
        keys = [k for k in sorted(self.source) if after is None or k > after][: self.chunk]
        self.watermarks += 1
        self.pending = f"{len(self.log)}:{self.watermarks}"
        self.snaps.open(self.pending, "t", [((k,), (str(k),), (k, self.source[k])) for k in keys], self.chunk)
        return True

    def high_watermark(self) -> None:
        """The read's transaction ended: its watermark goes into the log (writes may precede it)."""
        if self.pending is not None:
            self.log.append(("H", self.pending))
            self.pending = None

    def replica(self) -> dict[int, Any]:
        rows: dict[int, Any] = {}
        for op, old, new, value in self.out:
            if old is not None:
                rows.pop(old, None)
            if op != "Delete":
                rows[new] = value
        return rows


@settings(max_examples=300, deadline=None)
@given(
    rows=st.integers(0, 30),
    chunk=st.integers(1, 8),
    steps=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 40), st.integers(0, 3)), max_size=150),
)
def test_incremental_snapshot_replica_equals_source_whatever_the_interleaving(
    rows: int, chunk: int, steps: list[tuple[int, int, int]]
) -> None:
    model = _Model(rows, chunk)
    for action, pick, kind in steps:
        if action <= 1:
            model.write(kind, pick)
        elif action == 2:
            model.stream(pick % 7 + 1)
        elif action == 3:
            model.read_chunk()
        elif action == 4:
            model.high_watermark()
        elif action == 5:
            model.write(kind, pick)
        elif model.positions:  # kill -9: the consumer has a prefix; resume from an acknowledged position in it
            cut = pick % len(model.out) + 1
            acked = cut - 1 - (kind % cut)
            position = model.positions[acked]
            del model.out[cut:], model.positions[cut:]
            model.restart(position)
    for _ in range(10_000):  # drain: stream everything, chunk until the table is done
        model.high_watermark()
        model.stream(len(model.log))
        if not model.read_chunk() and model.snaps.window is None:
            break
    assert not model.snaps
    assert model.replica() == model.source


def test_incremental_snapshot_drops_a_row_changed_inside_its_window_and_releases_the_rest() -> None:
    snaps: IncrementalSnapshots[str] = IncrementalSnapshots({"t": IncrementalCursor(where="v > 0", total=4)})
    assert snaps.next_chunk() == ("t", IncrementalCursor(where="v > 0", total=4))
    snaps.open("w1", "t", [((1,), ("1",), "r1"), ((2,), ("2",), "r2"), ((3,), ("3",), "r3")], 3)
    assert snaps.next_chunk() is None  # one chunk at a time
    snaps.changed("t", [(2,), None])
    snaps.changed("other", [(1,)])  # another table's key 1: not this row
    assert snaps.close("stale") is None  # an earlier run's watermark
    closed = snaps.close("w1")
    assert closed is not None
    assert [(row, c.after, c.rows) for row, c in closed.rows] == [("r1", ("1",), 1), ("r3", ("3",), 2)]
    assert closed.dropped == 1
    assert closed.cursor == IncrementalCursor(("3",), 2, 1, "v > 0", 4)
    assert not closed.finished
    snaps.open("w2", "t", [], 3)
    last = snaps.close("w2")
    assert last is not None
    assert last.finished
    assert not snaps


def test_incremental_cursor_round_trips_and_refuses_what_is_not_one() -> None:
    cursor = IncrementalCursor(("a", "1"), 10, 2, "x > 1", 100)
    position = Position(5, incremental=cursor)
    assert Position.from_json(position.to_json(str), int) == position
    assert cursor.percent == 10.0
    for bad in ({"after": [1]}, {"rows": -1}, {"where": 3}, {"extra": 1}, "x"):
        with pytest.raises(PositionError):
            IncrementalCursor.from_json(bad)


def test_incremental_mode_plans_tables_without_a_position_as_incremental() -> None:
    stored = {"a": Position(1), "c": Position(1, snapshot=ChunkCursor())}
    plan = plan_snapshots("incremental", ["a", "b", "c"], stored)
    assert plan.incremental == ("b",)
    assert plan.resume == ("c",)  # a blocking snapshot under way is finished as it began
    assert plan.start == ()


def test_a_table_restarting_from_its_first_row_takes_the_new_point() -> None:
    keyed = Position(10, snapshot=ChunkCursor(("5",), 5))
    assert restart_point(keyed, 20, resumable=True) == keyed
    assert restart_point(keyed, 20, resumable=False) == Position(20, snapshot=ChunkCursor())
    assert restart_point(Position(10, snapshot=ChunkCursor()), 20, resumable=True) == Position(
        20, snapshot=ChunkCursor()
    )


def test_an_abandoned_chunk_is_read_again_from_the_cursor() -> None:
    snaps: IncrementalSnapshots[str] = IncrementalSnapshots({"t": IncrementalCursor(("4",), 4, 1)})
    snaps.open("w1", "t", [((5,), ("5",), "r5")], 2)
    snaps.abandon()  # the connection dropped before its watermark was written
    assert snaps.close("w1") is None
    assert snaps.next_chunk() == ("t", IncrementalCursor(("4",), 4, 1))


def test_a_request_during_a_snapshot_under_way_never_narrows_it() -> None:
    """A filtered request while the full snapshot runs keeps every row (Debezium queues a
    request after the running one: AbstractIncrementalSnapshotChangeEventSource.java 500-536,
    addDataCollectionNamesToSnapshot reads a chunk at once only when no snapshot runs);
    two filters read the rows of either; a full request widens a filtered one."""
    snaps: IncrementalSnapshots[str] = IncrementalSnapshots()
    snaps.start("t")
    snaps.start("t", "id > 100")
    assert snaps.cursors["t"].where is None
    snaps.stop("t")
    snaps.start("t", "a = 1")
    snaps.start("t", "b = 2")
    assert snaps.cursors["t"].where == "(a = 1) OR (b = 2)"
    snaps.start("t")
    assert snaps.cursors["t"].where is None
    snaps.stop("t")
    snaps.start("t", "a = 1")
    assert snaps.cursors["t"].where == "a = 1"  # nothing under way: the request as asked


def test_an_incremental_cursor_keeps_when_it_started_and_status_gives_its_rate() -> None:
    cursor = IncrementalCursor(("9",), 600, 6, None, 1200, 1000.0)
    again = IncrementalCursor.from_json(cursor.to_json())
    assert again == cursor
    assert again.status(1060.0) == {
        "snapshot_rows": 600,
        "snapshot_chunks": 6,
        "snapshot_percent": 50.0,
        "snapshot_rows_per_second": 10.0,
    }
    assert "snapshot_rows_per_second" not in IncrementalCursor(rows=5).status(1060.0)  # an older checkpoint's
    with pytest.raises(PositionError):
        IncrementalCursor.from_json({"after": None, "rows": 1, "chunks": 1, "started": "yesterday"})
