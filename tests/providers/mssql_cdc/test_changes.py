"""Recorded change-query rows → changes (update pairs) → envelopes, and value conversion."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from dstream_mssql_cdc.changes import (
    Change,
    Layout,
    RecordBuilder,
    datetimeoffset,
    pair_updates,
    trim_split_update,
)
from dstream_mssql_cdc.errors import CdcError

from dstream import protocol

from .fixtures import (
    CUSTOMERS_COLUMNS,
    CUSTOMERS_ROWS,
    DATETIMEOFFSET,
    ORDERS_COLUMNS,
    ORDERS_ROWS,
    REF,
)

pytestmark = pytest.mark.unit


def changes_of(columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> tuple[Layout, list[Change]]:
    layout = Layout.of(columns)
    return layout, pair_updates(layout.parse(rows))


def wire(builder: RecordBuilder, layout: Layout, change: Change) -> dict[str, Any]:
    """The envelope as the output receives it (encoded by the SDK's protocol module)."""
    record = builder.record(change, layout.names, "dbo_Orders")
    return json.loads(protocol.data(record.data, record.metadata))  # type: ignore[no-any-return]


def test_layout_finds_the_cdc_columns_and_keeps_the_tables_columns_in_order() -> None:
    layout = Layout.of(ORDERS_COLUMNS)
    assert layout.names == ("id", "customer", "amount", "note")
    rows = layout.parse(ORDERS_ROWS)
    assert [r.operation for r in rows] == [2, 3, 4, 2, 2, 1]
    assert rows[0].start_lsn == 0x0000002A000001F00003
    assert rows[0].key == (0x0000002A000001F00003, 1, 0x0000002A000001E80002, 2)
    assert rows[0].values == (1, "alice", Decimal("9.99"), None)


def test_a_result_without_command_id_says_which_server_version_is_needed() -> None:
    without = tuple(c for c in ORDERS_COLUMNS if c != "__$command_id")
    with pytest.raises(CdcError, match=r"__\$command_id.*SQL Server 2016 SP2, 2017 or later"):
        Layout.of(without)


def test_update_images_are_paired_and_every_row_is_accounted_for() -> None:
    _, changes = changes_of(ORDERS_COLUMNS, ORDERS_ROWS)
    assert [c.operation for c in changes] == ["Insert", "Update", "Insert", "Insert", "Delete"]
    update = changes[1]
    assert update.row.operation == 4
    assert update.before is not None
    assert update.before.operation == 3
    assert update.before.values[2] == Decimal("9.99")
    assert update.row.values[2] == Decimal("12.50")
    assert changes[4].before is changes[4].row  # a delete's only image is the row as it was


def test_an_after_image_alone_is_an_update_without_before_and_a_lone_before_image_is_an_error() -> None:
    layout = Layout.of(ORDERS_COLUMNS)
    rows = layout.parse(ORDERS_ROWS)
    alone = pair_updates([rows[2]])
    assert alone[0].operation == "Update"
    assert alone[0].before is None
    with pytest.raises(CdcError, match=r"before-image .* is not followed by its after-image"):
        pair_updates([rows[1], rows[3]])
    with pytest.raises(CdcError, match="before-image"):
        pair_updates([rows[1]])
    odd = layout.parse([(*ORDERS_ROWS[0][:2], 5, *ORDERS_ROWS[0][3:])])
    with pytest.raises(CdcError, match="unexpected __\\$operation 5"):
        pair_updates(odd)


def test_a_full_batch_that_ends_between_an_updates_images_leaves_the_before_image_for_the_next() -> None:
    rows = Layout.of(ORDERS_COLUMNS).parse(ORDERS_ROWS)
    assert trim_split_update(rows[:2]) == rows[:1]
    assert trim_split_update(rows[:3]) == rows[:3]
    assert trim_split_update([]) == []


def test_envelopes_carry_upstream_metadata_names_and_formats() -> None:
    layout, changes = changes_of(ORDERS_COLUMNS, ORDERS_ROWS)
    builder = RecordBuilder("dbo.Orders")
    insert, update, _, _, delete = (wire(builder, layout, c) for c in changes)
    assert insert == {
        "data": {"id": 1, "customer": "alice", "amount": 9.99, "note": None},
        "metadata": {
            "TableName": "dbo.Orders",
            "OperationType": "Insert",
            "OperationID": 2,
            "LSN": "0000002A000001F00003",
            "Seq": "0000002A000001E80002",
            "SeqVal": "0000002A000001E80002",
            "CommandId": 1,
            "CommitTime": "2024-05-01T10:00:00.123",
            "CaptureInstance": "dbo_Orders",
        },
    }
    assert update["metadata"]["OperationType"] == "Update"
    assert update["metadata"]["OperationID"] == 4
    assert update["data"]["amount"] == 12.5
    assert update["metadata"]["Before"] == {"id": 1, "customer": "alice", "amount": 9.99, "note": None}
    assert delete["metadata"]["OperationType"] == "Delete"
    assert delete["metadata"]["OperationID"] == 1
    assert (
        delete["data"] == delete["metadata"]["Before"] == {"id": 1, "customer": "alice", "amount": 12.5, "note": None}
    )


def test_decimals_are_exact_json_numbers_or_strings_when_asked() -> None:
    layout, changes = changes_of(ORDERS_COLUMNS, ORDERS_ROWS)
    big = changes[3]
    exact = protocol.data(RecordBuilder("dbo.Orders").record(big, layout.names, "i").data)
    assert b'"amount":100000000000000.01' in exact  # no float rounding (a double gives ...0.02)
    text = RecordBuilder("dbo.Orders", numeric_as_string=True).record(big, layout.names, "i").data
    assert text["amount"] == "100000000000000.01"
    assert RecordBuilder("t", True).values(("a", "b"), (Decimal("1E+3"), Decimal("-0.00"))) == {
        "a": "1000",
        "b": "-0.00",
    }


def test_binary_is_base64_dates_iso_and_uniqueidentifier_text() -> None:
    layout, changes = changes_of(CUSTOMERS_COLUMNS, CUSTOMERS_ROWS)
    builder = RecordBuilder("dbo.Customers")
    first = json.loads(protocol.data(builder.record(changes[0], layout.names, "dbo_Customers").data))["data"]
    assert first == {"id": 7, "name": "Zoë", "photo": "iVBORw==", "joined": "2020-02-29", "ref": REF}
    assert [c.operation for c in changes] == ["Insert", "Update"]


def test_datetimeoffset_from_the_drivers_struct_keeps_its_offset() -> None:
    value = datetimeoffset(DATETIMEOFFSET)
    assert value == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert json.loads(protocol.data({"t": value}))["data"]["t"] == "2024-05-01T10:00:00.123456+02:00"
    assert datetimeoffset(None) is None
    text = "2024-05-01 10:00:00.1234567 +02:00"  # a driver that renders the value as text
    assert datetimeoffset(text.encode()) == text
    assert datetimeoffset(text.encode("utf-16-le")) == text


def test_unknown_value_types_become_their_text() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    assert RecordBuilder("t").values(("a", "b", "c"), (Odd(), True, 1.5)) == {"a": "odd", "b": True, "c": 1.5}
