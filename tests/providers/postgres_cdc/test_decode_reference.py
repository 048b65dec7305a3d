"""Wal2jsonDecoder._record (with Decoder.make, the backlog's hot path, built for speed) against a plain reference.

The reference is the rule the provider's README states, written the obvious way: ``data``
is the new row (a delete: the old row), an update's TOAST-unchanged columns come from the
old row when it has them, ``Key`` is the replica identity's columns in key order (an
update's from the new row, else the old; a delete's from the old row; a value missing from
both is null), ``Before`` is the old row when wal2json gives one.
"""

from __future__ import annotations

from typing import Any

from dstream_postgres_cdc.source import Column, Table
from dstream_postgres_cdc.wal2json import Wal2jsonDecoder
from hypothesis import given, settings
from hypothesis import strategies as st

from dstream.sdk.cdc import row_key

COLUMNS = ("id", "region", "note", "blob")
VALUES = st.one_of(st.none(), st.integers(-5, 5), st.text(max_size=3), st.booleans())


def _table(key: tuple[str, ...]) -> Table:
    return Table(1, "public", "orders", "r", "default", tuple(Column(c, 25, "text") for c in COLUMNS), key)


def _reference(kind: str, row: dict[str, Any], key: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    new = {c["name"]: c["value"] for c in row.get("columns", ())}
    old = {c["name"]: c["value"] for c in row["identity"]} if "identity" in row else None
    meta: dict[str, Any] = {}
    if kind == "I":
        data, key_from = new, new
    elif kind == "U":
        data = dict(new)
        if old is not None and len(old) > len(new):
            data.update({k: v for k, v in old.items() if k not in new})
        key_from = {**(old or {}), **data}
    else:
        data = key_from = old or {}
    found = row_key(key_from, key)
    if found is not None:
        meta["Key"] = found
    if kind == "D" or (kind == "U" and old is not None):
        meta["Before"] = old
    return data, meta


def _columns(draw: st.DrawFn, names: list[str]) -> list[dict[str, Any]]:
    return [{"name": n, "value": draw(VALUES)} for n in names]


@st.composite
def changes(draw: st.DrawFn) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    key = tuple(draw(st.lists(st.sampled_from(COLUMNS), unique=True, max_size=2)))
    kind = draw(st.sampled_from("IUD"))
    row: dict[str, Any] = {"action": kind, "schema": "public", "table": "orders"}
    subset = st.lists(st.sampled_from(COLUMNS), unique=True)
    if kind in "IU":
        row["columns"] = _columns(draw, draw(subset))  # a subset: TOAST-unchanged columns left out
    if kind == "D" or (kind == "U" and draw(st.booleans())):
        row["identity"] = _columns(draw, draw(subset))
    return kind, row, key


@settings(max_examples=400, deadline=None)
@given(changes())
def test_records_follow_the_reference(change: tuple[str, dict[str, Any], tuple[str, ...]]) -> None:
    kind, row, key = change
    decoder = Wal2jsonDecoder([_table(key)])
    decoder._txn = ("0/16B3748", 7, "2026-12-07T04:00:00+00:00")
    record = decoder._record(kind, row, 3)
    data, meta = _reference(kind, row, key)
    assert record.data == data
    fixed = {"TableName": "public.orders", "LSN": "0/16B3748", "Seq": 3, "TxId": 7}
    assert {k: record.metadata[k] for k in fixed} == fixed
    assert {k: v for k, v in record.metadata.items() if k in ("Key", "Before")} == meta
