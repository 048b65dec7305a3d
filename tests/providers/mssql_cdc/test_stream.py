"""Windows, positions, resume and capture-instance switching, driven by recorded rows.

``select`` (recorded.py) gives each window the recorded rows that the change query selects
for it: the documented predicate of ``fn_cdc_get_all_changes`` (``@from_lsn <=
__$start_lsn <= @to_lsn``) plus the query's own keyset, order and ``TOP``
(db.Session.changes). It only filters and slices the recordings; every decision under test
is the provider's.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest
from dstream_mssql_cdc.changes import RecordBuilder, ResultSet
from dstream_mssql_cdc.errors import CdcError, Purged
from dstream_mssql_cdc.lsn import decrement_lsn, format_lsn, from_bytes, increment_lsn
from dstream_mssql_cdc.stream import (
    CaptureInstance,
    ServerState,
    Stream,
    TableCursor,
    Window,
    choose_instance,
    parse_checkpoint,
)

from dstream import protocol
from dstream.sdk.cdc import Position, PositionError

from .fixtures import (
    CUSTOMERS_COLUMNS,
    CUSTOMERS_ROWS,
    ORDERS_COLUMNS,
    ORDERS_ROWS,
    ORDERS_V1_LATE_ROWS,
    ORDERS_V2_COLUMNS,
    ORDERS_V2_ROWS,
    T1,
    T2,
    T3,
    T4,
    T5,
    T6,
    V2_START,
)
from .recorded import select as recorded_rows

if TYPE_CHECKING:
    from dstream.sdk import Record

pytestmark = pytest.mark.unit

ORDERS_ID, CUSTOMERS_ID = 101, 202
L = from_bytes  # recorded binary(10) → int
ORDERS = CaptureInstance("dbo_Orders", "dbo", "Orders", ORDERS_ID, L(T1) - 5, datetime(2024, 1, 1), 11)
CUSTOMERS = CaptureInstance("dbo_Customers", "dbo", "Customers", CUSTOMERS_ID, L(T1) - 5, datetime(2024, 1, 1), 12)
ORDERS_V2 = CaptureInstance("dbo_Orders_v2", "dbo", "Orders", ORDERS_ID, L(V2_START), datetime(2024, 6, 1), 13)
RECORDED: dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]] = {
    "dbo_Orders": (ORDERS_COLUMNS, ORDERS_ROWS + ORDERS_V1_LATE_ROWS),
    "dbo_Customers": (CUSTOMERS_COLUMNS, CUSTOMERS_ROWS),
    "dbo_Orders_v2": (ORDERS_V2_COLUMNS, ORDERS_V2_ROWS),
}
STATE = ServerState(L(T4), (ORDERS, CUSTOMERS))


def select(window: Window) -> ResultSet:
    return recorded_rows(RECORDED, window)


def cursor(table: str, start: Position | None = None, mode: Any = "earliest") -> TableCursor:
    object_id = ORDERS_ID if table == "dbo.Orders" else CUSTOMERS_ID
    return TableCursor(table, object_id, RecordBuilder(table), start, mode, "orders-task")


def data(record: Record) -> dict[str, Any]:
    """The record's data as the output receives it (decimals are exact JSON numbers)."""
    return json.loads(protocol.data(record.data))["data"]  # type: ignore[no-any-return]


def key(record: Record) -> tuple[str, str, str, str]:
    m = record.metadata
    return (m["TableName"], m["LSN"], m["SeqVal"], m["OperationType"])


class Run:
    """Polls a stream against the recordings until it has nothing more to read."""

    def __init__(self, stream: Stream, state: ServerState = STATE) -> None:
        self.stream = stream
        self.state = state
        self.records: list[Record] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.checkpoint_at: list[int] = []  # how many records each checkpoint covers
        self.windows: list[Window] = []

    def poll(self) -> bool:
        windows = self.stream.windows(self.state)
        self.windows += windows
        results = [(w, select(w)) for w in windows]
        self.records += list(self.stream.feed(results))
        heartbeat = self.stream.heartbeat()
        if heartbeat is not None:
            self.checkpoints.append(heartbeat)
            self.checkpoint_at.append(len(self.records))
        return Stream.full(results)

    def all(self) -> Run:
        for _ in range(1000):
            if not self.poll():
                return self
        raise AssertionError("the stream never caught up")


def both(batch: int = 100, orders: Position | None = None, customers: Position | None = None) -> Stream:
    return Stream([cursor("dbo.Orders", orders), cursor("dbo.Customers", customers)], batch)


EXPECTED = [
    ("dbo.Orders", format_lsn(L(T1)), "Insert"),
    ("dbo.Customers", format_lsn(L(T2)), "Insert"),
    ("dbo.Orders", format_lsn(L(T2)), "Update"),
    ("dbo.Orders", format_lsn(L(T3)), "Insert"),
    ("dbo.Orders", format_lsn(L(T3)), "Insert"),
    ("dbo.Orders", format_lsn(L(T3)), "Delete"),
    ("dbo.Customers", format_lsn(L(T4)), "Update"),
]


def test_one_poll_emits_every_change_once_in_commit_order_across_tables() -> None:
    run = Run(both())
    assert run.poll() is False
    assert [(k[0], k[1], k[3]) for k in map(key, run.records)] == EXPECTED
    # T2 touched both tables: Customers' change has the lower seqval, so it comes first.
    assert run.records[1].metadata["SeqVal"] < run.records[2].metadata["SeqVal"]
    windows = {w.table: w for w in run.windows}
    assert windows["dbo.Orders"].start == ORDERS.min_lsn  # start = "earliest"
    assert windows["dbo.Orders"].end == L(T4)  # bounded by sys.fn_cdc_get_max_lsn()
    assert windows["dbo.Orders"].after is None


def test_every_record_carries_every_tables_position_and_a_heartbeat_follows() -> None:
    run = Run(both()).all()
    positions = [r.position["tables"] for r in run.records]
    assert all(set(p) == {"dbo.Orders", "dbo.Customers"} for p in positions)
    # Inside T3 (three Orders changes): index 1, 2, then the position past the transaction.
    t3 = [
        p["dbo.Orders"] for r, p in zip(run.records, positions, strict=True) if r.metadata["LSN"] == format_lsn(L(T3))
    ]
    assert t3 == [
        {"lsn": format_lsn(L(T3)), "index": 1},
        {"lsn": format_lsn(L(T3)), "index": 2},
        {"lsn": format_lsn(increment_lsn(L(T3)))},
    ]
    assert positions[-1]["dbo.Customers"] == {"lsn": format_lsn(increment_lsn(L(T4)))}
    # After the poll, Orders (last change in T3) moves to the max LSN + 1: the next window's start.
    assert run.checkpoints[-1] == {
        "tables": {
            "dbo.Orders": {"lsn": format_lsn(increment_lsn(L(T4)))},
            "dbo.Customers": {"lsn": format_lsn(increment_lsn(L(T4)))},
        }
    }
    assert Run(run.stream).poll() is False  # nothing new: no window at all
    assert run.stream.windows(STATE) == []


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 100])
def test_resuming_from_any_checkpoint_loses_and_repeats_nothing(batch: int) -> None:
    full = Run(both(batch)).all()
    assert sorted((k[0], k[1], k[3]) for k in map(key, full.records)) == sorted(EXPECTED)
    emitted = [key(r) for r in full.records]
    checkpoints = [(i + 1, r.position) for i, r in enumerate(full.records)]
    checkpoints += list(zip(full.checkpoint_at, full.checkpoints, strict=True))
    assert len(checkpoints) > len(emitted)
    for done, checkpoint in checkpoints:
        positions = parse_checkpoint(checkpoint)
        stream = both(batch, positions["dbo.Orders"], positions["dbo.Customers"])
        stream.check_start(STATE)
        rest = Run(stream).all()
        by_table: dict[str, list[Any]] = defaultdict(list)
        for k in emitted[done:]:
            by_table[k[0]].append(k)
        again: dict[str, list[Any]] = defaultdict(list)
        for r in rest.records:
            again[r.metadata["TableName"]].append(key(r))
        assert again == by_table, f"resuming from {checkpoint} (batch {batch})"


def test_a_full_window_continues_after_its_last_row_without_reading_it_again() -> None:
    run = Run(Stream([cursor("dbo.Orders", Position(L(T3)))], 2))
    assert run.poll() is True  # 2 of T3's 3 rows: the transaction stays open
    assert [r.metadata["OperationType"] for r in run.records] == ["Insert"]  # the 2nd waits for a 3rd
    assert run.records[0].position["tables"]["dbo.Orders"] == {"lsn": format_lsn(L(T3)), "index": 1}
    assert run.poll() is False
    second = run.windows[-1]
    assert second.start == L(T3)
    assert second.after == (L(T3), 1, 0x0000002A000002200003, 2)  # after the 2nd row of T3
    assert [r.metadata["OperationType"] for r in run.records] == ["Insert", "Insert", "Delete"]
    assert run.records[-1].position["tables"]["dbo.Orders"] == {"lsn": format_lsn(increment_lsn(L(T3)))}


def test_a_window_that_ends_between_an_updates_images_keeps_the_pair_together() -> None:
    run = Run(Stream([cursor("dbo.Orders")], 2))
    run.poll()  # rows: T1 insert, T2 before-image → the before-image is left for the next window
    assert run.windows[0].limit == 2
    assert run.records == []  # T1's insert is held until its transaction is known complete
    run.poll()
    assert run.windows[1].after == (L(T1), 1, 0x0000002A000001E80002, 2)  # after T1's insert, not the 3
    run.all()
    kinds = [(r.metadata["LSN"], r.metadata["OperationType"]) for r in run.records]
    assert kinds[:2] == [(format_lsn(L(T1)), "Insert"), (format_lsn(L(T2)), "Update")]
    assert json.loads(protocol.data(run.records[1].metadata["Before"]))["data"]["amount"] == 9.99


def test_a_batch_size_of_one_still_reads_an_update_as_one_change() -> None:
    run = Run(Stream([cursor("dbo.Customers")], 1)).all()
    assert all(w.limit == 2 for w in run.windows)
    assert [r.metadata["OperationType"] for r in run.records] == ["Insert", "Update"]


def test_resume_inside_a_transaction_skips_the_changes_already_emitted() -> None:
    run = Run(Stream([cursor("dbo.Orders", Position(L(T3), 2))], 100)).all()
    assert [(r.data["id"], r.metadata["OperationType"]) for r in run.records] == [(1, "Delete")]
    # An update's two images are one change: index 1 of T2 is the whole update.
    run = Run(Stream([cursor("dbo.Orders", Position(L(T2), 1))], 100)).all()
    assert [r.metadata["LSN"] for r in run.records] == [format_lsn(L(T3))] * 3


def test_start_latest_begins_after_the_max_lsn_and_a_first_checkpoint_pins_it() -> None:
    stream = Stream([cursor("dbo.Orders", None, "latest")], 100)
    assert stream.heartbeat() is None  # no position before the first plan
    assert stream.windows(STATE) == []  # nothing after the max LSN yet
    assert stream.heartbeat() == {"tables": {"dbo.Orders": {"lsn": format_lsn(increment_lsn(L(T4)))}}}
    later = ServerState(L(T6), (ORDERS,))
    run = Run(stream, later).all()
    assert [r.metadata["LSN"] for r in run.records] == [format_lsn(L(T5)), format_lsn(L(T6))]


def test_positions_older_than_the_oldest_retained_change_are_purged_errors_before_anything_is_emitted() -> None:
    cleaned = ServerState(
        L(T4), (CaptureInstance("dbo_Orders", "dbo", "Orders", ORDERS_ID, L(T3), None, 11), CUSTOMERS)
    )
    stream = both(orders=Position(L(T2)), customers=Position(L(T1)))
    with pytest.raises(Purged) as caught:
        stream.check_start(cleaned)
    message = str(caught.value)
    assert "dbo.Orders" in message
    assert "dbo.Customers" not in message  # still retained
    assert format_lsn(L(T2)) in message
    assert format_lsn(L(T3)) in message
    assert "purged by CDC retention" in message
    assert "re-snapshot needed" in message
    assert "dstream state reset orders-task" in message
    with pytest.raises(Purged, match="re-snapshot needed"):
        stream.windows(cleaned)  # the same during a run, when cleanup overtakes the stream
    # Exactly at the oldest retained change is fine.
    Stream([cursor("dbo.Orders", Position(L(T3)))], 10).check_start(cleaned)


def test_a_checkpoint_past_the_databases_max_lsn_is_an_error() -> None:
    stream = Stream([cursor("dbo.Orders", Position(increment_lsn(increment_lsn(L(T4)))))], 10)
    with pytest.raises(Purged, match=r"past the database's latest captured LSN .* restored"):
        stream.check_start(STATE)
    Stream([cursor("dbo.Orders", Position(increment_lsn(L(T4))))], 10).check_start(STATE)  # caught up: fine


def test_a_second_capture_instance_is_followed_from_its_start_lsn() -> None:
    state = ServerState(L(T6), (ORDERS, ORDERS_V2))
    run = Run(Stream([cursor("dbo.Orders", Position(increment_lsn(L(T3))))], 100), state)
    run.poll()
    assert run.windows[0].instance.name == "dbo_Orders"
    assert run.windows[0].end == decrement_lsn(L(V2_START))  # the old instance up to the new one's start
    assert [r.data["id"] for r in run.records] == [4]
    assert run.stream.heartbeat() is None  # the heartbeat already moved to the new instance's start
    assert run.checkpoints[-1] == {"tables": {"dbo.Orders": {"lsn": format_lsn(L(V2_START))}}}
    run.all()
    assert run.windows[1].instance.name == "dbo_Orders_v2"
    assert run.windows[1].start == L(V2_START)
    switched = run.records[1]
    assert data(switched) == {"id": 5, "customer": "eve", "amount": 6.0, "note": None, "channel": "web"}
    assert switched.metadata["CaptureInstance"] == "dbo_Orders_v2"
    assert [r.data["id"] for r in run.records] == [4, 5]  # T6 is in both instances: emitted once


def test_without_the_old_instance_changes_before_the_new_ones_start_are_reported_lost() -> None:
    only_new = ServerState(L(T6), (ORDERS_V2,))
    with pytest.raises(Purged, match="capture instance that held them was disabled"):
        Stream([cursor("dbo.Orders", Position(increment_lsn(L(T3))))], 10).check_start(only_new)


def test_choose_instance_picks_the_newest_instance_at_or_below_the_position() -> None:
    instances = ServerState(0, (ORDERS_V2, ORDERS)).of_table(ORDERS_ID)
    assert [i.name for i in instances] == ["dbo_Orders", "dbo_Orders_v2"]
    assert choose_instance("dbo.Orders", instances, L(T1), "t") == (ORDERS, L(V2_START))
    assert choose_instance("dbo.Orders", instances, L(V2_START), "t") == (ORDERS_V2, None)
    tied = CaptureInstance("dbo_Orders_v2", "dbo", "Orders", ORDERS_ID, ORDERS.min_lsn, datetime(2024, 6, 1), 13)
    same_start = ServerState(0, (tied, ORDERS)).of_table(ORDERS_ID)  # cleanup raised both to one watermark
    assert choose_instance("dbo.Orders", same_start, L(T2), "t") == (tied, None)
    pending = CaptureInstance("dbo_Orders", "dbo", "Orders", ORDERS_ID, 0)
    assert choose_instance("dbo.Orders", [pending], L(T2), "t") is None  # no low endpoint yet: wait


def test_a_table_without_capture_instance_names_the_procedure_to_enable_it() -> None:
    with pytest.raises(CdcError, match=r"sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'Orders'"):
        choose_instance("dbo.Orders", [], L(T1), "t")
    with pytest.raises(CdcError, match="dstream init orders-task"):
        Stream([cursor("dbo.Orders")], 10).windows(ServerState(L(T4), (CUSTOMERS,)))


def test_no_window_while_cdc_has_captured_nothing() -> None:
    stream = Stream([cursor("dbo.Orders", Position(L(T1)))], 10)
    assert stream.windows(ServerState(None, (ORDERS,))) == []


def test_checkpoint_parsing_rejects_what_is_not_ours() -> None:
    assert parse_checkpoint(None) == {}
    parsed = parse_checkpoint({"tables": {"dbo.Orders": {"lsn": "0x0000002A000001F00003", "index": 2}}})
    assert parsed == {"dbo.Orders": Position(0x0000002A000001F00003, 2)}
    bad: Any
    for bad in ({"lsn": "0/16B3748"}, {"value": 3}, [], {"tables": []}):
        with pytest.raises(PositionError, match="not a SQL Server CDC position"):
            parse_checkpoint(bad)
    with pytest.raises(PositionError, match="not a SQL Server LSN"):
        parse_checkpoint({"tables": {"dbo.Orders": {"lsn": "0/16B3748"}}})
    with pytest.raises(PositionError, match="snapshot"):
        parse_checkpoint({"tables": {"dbo.Orders": {"lsn": "00", "snapshot": {"done": []}}}})
