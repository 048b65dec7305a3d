"""Change rows → envelopes: update pairing (also across fetches), metadata names and formats,
Key, the large-object marker (defect 4), values."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from dstream_mssql_cdc.catalog import Column
from dstream_mssql_cdc.changes import Layout, RecordBuilder, Values, datetimeoffset, pair_updates
from dstream_mssql_cdc.errors import CdcError
from dstream_mssql_cdc.lsn import to_bytes

from dstream import protocol

from .fixtures import DATETIMEOFFSET, ORDERS_COLUMNS, REF, T1, T2

pytestmark = pytest.mark.unit

MARK = "__unavailable__"
DOCS = [
    Column("id", "int", None, 10, 0, 1),
    Column("title", "nvarchar", 20, None, None, 2),
    Column("body", "nvarchar", -1, None, None, 3),  # nvarchar(max)
    Column("scan", "image", None, None, None, 4),  # text/ntext/image: never in deletes and before-images
    Column("blob", "varbinary", -1, None, None, 5),
]


def raw(
    op: int, values: list[Any], changed: list[bool], lsn: int = T1, seqval: int = 7, command: int | None = 1
) -> tuple[Any, ...]:
    """A change query's row: metadata, the large objects' changed flags, the values."""
    return (to_bytes(lsn), to_bytes(seqval), op, b"\x1f", command, *changed, *values)


def build(
    columns: list[Column], key: tuple[str, ...] = ("id",), numeric_as_string: bool = False
) -> tuple[Layout, RecordBuilder]:
    layout = Layout(columns)
    times = {T1: datetime(2024, 5, 1, 10, 0, 0, 123000, tzinfo=timezone(timedelta(hours=2)))}

    def commit_time(lsn: int) -> str | None:
        value = times.get(lsn)
        return value.isoformat(timespec="milliseconds") if value else None

    builder = RecordBuilder("dbo.Docs", "dbo_Docs", layout, key, Values(numeric_as_string), MARK, commit_time)
    return layout, builder


def records(columns: list[Column], rows: list[tuple[Any, ...]], **options: Any) -> list[dict[str, Any]]:
    layout, builder = build(columns, **options)
    return [
        json.loads(protocol.data(r.data, r.metadata)) for r in map(builder.record, pair_updates(layout.parse(rows)))
    ]


def test_update_images_are_paired_also_across_fetches_and_a_lone_image_is_an_error() -> None:
    layout = Layout(ORDERS_COLUMNS)
    rows = [
        raw(2, [1, "a", Decimal(1), None], [True]),
        raw(3, [1, "a", Decimal(1), None], [False], seqval=8),
        raw(4, [1, "a", Decimal(2), None], [False], seqval=8),
        raw(1, [1, "a", Decimal(2), None], [True], seqval=9),
    ]

    def in_chunks() -> Any:  # a stream: the before-image ends one fetch, its after-image starts the next
        yield from layout.parse(rows[:2])
        yield from layout.parse(rows[2:])

    changes = list(pair_updates(in_chunks()))
    assert [c.operation for c in changes] == ["Insert", "Update", "Delete"]
    assert changes[1].before is not None
    assert changes[1].before.operation == 3
    assert changes[2].before is changes[2].row
    with pytest.raises(CdcError, match="not followed by its after-image"):
        list(pair_updates(layout.parse([rows[1], rows[0]])))
    with pytest.raises(CdcError, match="without its after-image"):
        list(pair_updates(layout.parse(rows[:2])))
    with pytest.raises(CdcError, match="unexpected __\\$operation 5"):
        list(pair_updates(layout.parse([raw(5, [1, "a", Decimal(1), None], [True])])))


def test_envelopes_carry_upstream_names_formats_key_and_commit_time_with_its_offset() -> None:
    insert, update, delete = records(
        ORDERS_COLUMNS,
        [
            raw(2, [1, "alice", Decimal("9.99"), "n"], [True]),
            raw(3, [1, "alice", Decimal("9.99"), "n"], [True], seqval=8, command=2),
            raw(4, [2, "alice", Decimal("12.50"), "n"], [True], seqval=8, command=2),
            raw(1, [2, "alice", Decimal("12.50"), "n"], [True], lsn=T2, seqval=9, command=None),
        ],
    )
    assert insert == {
        "data": {"id": 1, "customer": "alice", "amount": 9.99, "note": "n"},
        "metadata": {
            "TableName": "dbo.Docs",
            "OperationType": "Insert",
            "OperationID": 2,
            "LSN": "0000002A000001F00003",
            "Seq": "00000000000000000007",
            "SeqVal": "00000000000000000007",
            "CommandID": 1,
            "CommitTime": "2024-05-01T10:00:00.123+02:00",  # TODATETIMEOFFSET: the offset is there
            "CaptureInstance": "dbo_Docs",
            "Key": {"id": 1},
        },
    }
    assert update["metadata"]["Key"] == {"id": 2}  # an update that changes the key: the new key
    assert update["metadata"]["Before"]["id"] == 1
    assert delete["metadata"]["Key"] == {"id": 2}
    assert delete["metadata"]["CommandID"] is None  # the query function does not return it
    assert delete["metadata"]["CommitTime"] is None  # not in cdc.lsn_time_mapping (here: not recorded)
    keyless = records(ORDERS_COLUMNS, [raw(2, [1, "a", Decimal(1), None], [True])], key=())
    assert "Key" not in keyless[0]["metadata"]


def test_large_objects_cdc_did_not_record_carry_the_unavailable_marker_not_a_null() -> None:
    """Microsoft (cdc.<capture_instance>_CT): image/text/ntext are NULL in every delete and
    before-image; (n)varchar(max)/varbinary(max) are NULL in before-images unless changed."""
    update, delete, insert = records(
        DOCS,
        [
            # an update of the title only: body and blob unchanged (bits clear), NULL in the before-image
            raw(3, [1, "old", None, None, None], [False, False, False], seqval=8),
            raw(4, [1, "new", "text", None, b"\x01"], [False, False, False], seqval=8),
            raw(1, [1, "new", "text", None, b"\x01"], [True, True, True], seqval=9),
            raw(2, [2, "x", None, None, None], [True, True, True], seqval=10),
        ],
    )
    before = update["metadata"]["Before"]
    assert before == {"id": 1, "title": "old", "body": MARK, "scan": MARK, "blob": MARK}
    assert update["metadata"]["BeforeUnavailable"] == ["body", "scan", "blob"]
    # after-image: the image column, NULL and unchanged, is unavailable; values that are there stay
    assert update["data"] == {"id": 1, "title": "new", "body": "text", "scan": MARK, "blob": "AQ=="}
    assert update["metadata"]["Unavailable"] == ["scan"]
    # a delete: image is never recorded; nvarchar(max) has its value at the time of the delete
    assert delete["data"]["scan"] == MARK
    assert delete["data"]["body"] == "text"
    assert delete["metadata"]["Unavailable"] == ["scan"]
    # an insert records everything: a NULL is a NULL
    assert insert["data"] == {"id": 2, "title": "x", "body": None, "scan": None, "blob": None}
    assert "Unavailable" not in insert["metadata"]
    # a large object changed to NULL (its bit set) is a real NULL
    changed = records(
        DOCS,
        [
            raw(3, [1, "t", "a", None, None], [True, False, True]),
            raw(4, [1, "t", None, None, None], [True, False, True]),
        ],
    )
    assert changed[0]["data"]["body"] is None
    assert changed[0]["data"]["blob"] is None


def test_decimals_are_exact_json_numbers_or_strings_when_asked() -> None:
    layout, builder = build(ORDERS_COLUMNS)
    row = raw(2, [3, "carol", Decimal("100000000000000.01"), None], [True])
    change = next(pair_updates(layout.parse([row])))
    assert b'"amount":100000000000000.01' in protocol.data(builder.record(change).data)  # no float rounding
    _, text = build(ORDERS_COLUMNS, numeric_as_string=True)
    assert text.record(change).data["amount"] == "100000000000000.01"
    assert Values(True).row(("a", "b"), (Decimal("1E+3"), Decimal("-0.00"))) == {"a": "1000", "b": "-0.00"}


def test_binary_is_base64_dates_iso_uniqueidentifier_text_and_unknown_types_their_text() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd"

    values = Values().row(("b", "d", "u", "o", "t"), (b"\x89PNG", date(2020, 2, 29), REF, Odd(), True))
    assert json.loads(protocol.data(values))["data"] == {
        "b": "iVBORw==",
        "d": "2020-02-29",
        "u": REF,
        "o": "odd",
        "t": True,
    }


def test_datetimeoffset_from_the_drivers_struct_keeps_its_offset() -> None:
    value = datetimeoffset(DATETIMEOFFSET)
    assert value == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert json.loads(protocol.data({"t": value}))["data"]["t"] == "2024-05-01T10:00:00.123456+02:00"
    assert datetimeoffset(None) is None
    text = "2024-05-01 10:00:00.1234567 +02:00"  # a driver that renders the value as text
    assert datetimeoffset(text.encode()) == text
    assert datetimeoffset(text.encode("utf-16-le")) == text
