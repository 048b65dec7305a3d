"""The engine-agnostic CDC pieces (dstream.sdk.cdc): positions, transaction assembly,
heartbeats, adaptive polling, reconnect backoff, the shared config."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from dstream.sdk.cdc import (
    Backoff,
    CdcConfig,
    PollInterval,
    Position,
    PositionError,
    SnapshotCursor,
    TransactionAssembler,
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
        Position(5, snapshot=SnapshotCursor(("a",), "b", ("7",))),
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


def test_snapshot_cursor_json() -> None:
    cursor = SnapshotCursor(("public.a",), "public.b", ("1", "x"))
    assert cursor.to_json() == {"done": ["public.a"], "table": "public.b", "after": ["1", "x"]}
    assert SnapshotCursor.from_json(cursor.to_json()) == cursor
    assert SnapshotCursor.from_json({"done": []}) == SnapshotCursor()
    with pytest.raises(PositionError):
        SnapshotCursor.from_json({"done": "public.a"})


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
    asm: TransactionAssembler[str] = TransactionAssembler(Position(30, snapshot=SnapshotCursor()), fmt)
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


def test_cdc_config_validation() -> None:
    config = CdcConfig(tables=[" public.a ", "b"])
    assert config.tables == ["public.a", "b"]
    assert (config.poll_interval, config.max_poll_interval, config.snapshot) == (0.2, 5.0, "none")
    with pytest.raises(ValidationError, match="listed twice"):
        CdcConfig(tables=["a", "a"])
    with pytest.raises(ValidationError, match="shorter than poll_interval"):
        CdcConfig(tables=["a"], poll_interval=2, max_poll_interval=1)
    with pytest.raises(ValidationError):
        CdcConfig(tables=[])
    with pytest.raises(ValidationError):
        CdcConfig(tables=["a"], snapshot="always")
