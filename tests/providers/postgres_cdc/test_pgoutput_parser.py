"""pgoutput.py's binary parser against a tiny reference encoder written from PostgreSQL's
docs ("Logical Replication Message Formats", protocol version 1), and against garbage.

Random transactions of Relation, Insert, Update ('K'/'O' old tuples or none), Delete,
Truncate, Message, Type and Origin messages are encoded, fed to the decoder, and the records
compared with what the rules in decode.py's docstring give when applied to the generated
values directly (not to the bytes). Cut-short or garbled payloads raise one
MalformedMessage, never another exception.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from dstream_postgres_cdc.lsn import format_lsn
from dstream_postgres_cdc.pgoutput import MalformedMessage, PgoutputDecoder
from dstream_postgres_cdc.source import Column, Table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dstream.sdk.cdc import TransactionAssembler

if TYPE_CHECKING:
    from dstream.sdk import Record

# -- the reference encoder (from the docs' message layouts) ----------------------------------


def _s(text: str) -> bytes:
    return text.encode() + b"\0"  # String: NUL-terminated


def begin(final_lsn: int, micros: int, xid: int) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, micros, xid)


def commit(lsn: int, end: int, micros: int) -> bytes:
    return b"C" + struct.pack(">BQQq", 0, lsn, end, micros)


def relation(relid: int, schema: str, name: str, identity: str, columns: list[tuple[int, str, int]]) -> bytes:
    out = b"R" + struct.pack(">I", relid) + _s(schema) + _s(name) + identity.encode() + struct.pack(">h", len(columns))
    for flags, column, oid in columns:
        out += struct.pack(">B", flags) + _s(column) + struct.pack(">Ii", oid, -1)
    return out


Cell = tuple[str, bytes | None]  # ('n', None) | ('u', None) | ('t', text)


def tuple_data(cells: list[Cell]) -> bytes:
    out = struct.pack(">h", len(cells))
    for kind, value in cells:
        out += kind.encode()
        if kind == "t":
            assert value is not None
            out += struct.pack(">i", len(value)) + value
    return out


def insert(relid: int, new: list[Cell]) -> bytes:
    return b"I" + struct.pack(">I", relid) + b"N" + tuple_data(new)


def update(relid: int, old: tuple[str, list[Cell]] | None, new: list[Cell]) -> bytes:
    head = b"U" + struct.pack(">I", relid)
    if old is not None:
        head += old[0].encode() + tuple_data(old[1])
    return head + b"N" + tuple_data(new)


def delete(relid: int, old: tuple[str, list[Cell]]) -> bytes:
    return b"D" + struct.pack(">I", relid) + old[0].encode() + tuple_data(old[1])


def truncate(relids: list[int], options: int) -> bytes:
    return b"T" + struct.pack(">iB", len(relids), options) + b"".join(struct.pack(">I", r) for r in relids)


def message(transactional: bool, lsn: int, prefix: str, content: bytes) -> bytes:
    return b"M" + struct.pack(">BQ", int(transactional), lsn) + _s(prefix) + struct.pack(">i", len(content)) + content


def type_message(oid: int, schema: str, name: str) -> bytes:
    return b"Y" + struct.pack(">I", oid) + _s(schema) + _s(name)


def origin(lsn: int, name: str) -> bytes:
    return b"O" + struct.pack(">Q", lsn) + _s(name)


# -- generated transactions -----------------------------------------------------------------

# Column types: (oid, text strategy, the value wal2json's rules give for that text).
TYPES: dict[int, tuple[st.SearchStrategy[str], Any]] = {
    23: (st.integers(-(2**31), 2**31 - 1).map(str), int),
    25: (st.text(max_size=8), lambda t: t),
    16: (st.sampled_from(["t", "f"]), lambda t: t == "t"),
    17: (st.binary(max_size=4).map(lambda b: "\\x" + b.hex()), lambda t: t[2:]),
    701: (st.sampled_from(["1.5", "-0", "NaN", "Infinity", "-Infinity", "1e+300"]), None),
}
NUMBER = {"NaN": None, "Infinity": None, "-Infinity": None, "1.5": 1.5, "-0": -0.0, "1e+300": 1e300}
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _value(oid: int, text: str) -> Any:
    return NUMBER[text] if oid == 701 else TYPES[oid][1](text)


@st.composite
def transactions(draw: st.DrawFn) -> dict[str, Any]:
    ncols = draw(st.integers(1, 5))
    oids = draw(st.lists(st.sampled_from(sorted(TYPES)), min_size=ncols, max_size=ncols))
    names = [f"c{i}" for i in range(ncols)]
    identity = draw(st.sampled_from(["d", "f"]))
    key = draw(st.lists(st.integers(0, ncols - 1), unique=True, min_size=1, max_size=ncols)) if identity == "d" else []
    flags = [1 if identity == "f" or i in key else 0 for i in range(ncols)]
    row = st.lists(
        st.one_of(st.just(("n", None)), st.just(("u", None)), st.just(("t", None))), min_size=ncols, max_size=ncols
    )
    changes = []
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from("IUDTM"))
        cells: list[Cell] = []
        for i, (kind, _) in enumerate(draw(row)):
            if kind == "t" or (op == "I" and kind == "u"):  # an insert has every value
                cells.append(("t", draw(TYPES[oids[i]][0]).encode()))
            else:
                cells.append((kind, None))
        old_kind = "O" if identity == "f" else "K"
        old: tuple[str, list[Cell]] | None = None
        if op == "D" or (op == "U" and (identity == "f" or draw(st.booleans()))):
            old_cells: list[Cell] = [
                ("t", draw(TYPES[oids[i]][0]).encode()) if flags[i] else ("n", None) for i in range(ncols)
            ]
            old = (old_kind, old_cells)
        text = draw(st.text(max_size=6)) if op == "M" else ""
        changes.append((op, cells, old, text))
    commit_lsn = draw(st.integers(1, 2**40))
    return {
        "oids": oids,
        "names": names,
        "identity": identity,
        "flags": flags,
        "changes": changes,
        "commit": commit_lsn,
        "end": commit_lsn + draw(st.integers(1, 1000)),
        "micros": draw(st.integers(-(2**50), 2**52)),
        "xid": draw(st.integers(0, 2**32 - 1)),
    }


def encode(txn: dict[str, Any]) -> list[bytes]:
    columns = [(f, n, o) for f, n, o in zip(txn["flags"], txn["names"], txn["oids"], strict=True)]
    out = [
        begin(txn["commit"], txn["micros"], txn["xid"]),
        origin(txn["commit"] - 1, "elsewhere"),
        type_message(90000, "public", "mood"),
        relation(7, "public", "orders", txn["identity"], columns),
    ]
    for op, cells, old, text in txn["changes"]:
        if op == "I":
            out.append(insert(7, cells))
        elif op == "U":
            out.append(update(7, old, cells))
        elif op == "D":
            assert old is not None
            out.append(delete(7, old))
        elif op == "T":
            out.append(truncate([7], 0))
        else:
            out.append(message(True, txn["commit"] - 1, "other.prefix", text.encode()))
    out.append(commit(txn["commit"], txn["end"], txn["micros"]))
    return out


def expected(txn: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The records by the rules, straight from the generated values."""
    names, oids, flags = txn["names"], txn["oids"], txn["flags"]
    keys = [n for n, f in zip(names, flags, strict=True) if f]
    when = (EPOCH + timedelta(microseconds=txn["micros"])).isoformat()
    common = {"TableName": "public.orders", "LSN": format_lsn(txn["commit"]), "TxId": txn["xid"], "CommitTime": when}

    def values(cells: list[Cell], only: list[str] | None = None) -> dict[str, Any]:
        row = {}
        for name, oid, (kind, raw) in zip(names, oids, cells, strict=True):
            if only is not None and name not in only:
                continue
            if kind == "t":
                assert raw is not None
                row[name] = _value(oid, raw.decode())
            elif kind == "n":
                row[name] = None
        return row

    out = []
    seq = 0
    for op, cells, old, _ in txn["changes"]:
        if op == "M":
            continue
        seq += 1
        meta: dict[str, Any] = {**common, "Seq": seq}
        operation = {"I": "Insert", "U": "Update", "D": "Delete", "T": "Truncate"}[op]
        meta["OperationType"] = operation
        table_key = table_key_of(txn)
        if op == "T":
            out.append(({}, meta))
            continue
        before = None
        if old is not None:
            before = values(old[1], keys if old[0] == "K" else None)
        if op == "D":
            meta["Key"] = {k: (before or {}).get(k) for k in table_key}
            meta["Before"] = before
            out.append((before, meta))
            continue
        data = values(cells)
        if op == "U":
            if before is None:  # no old key logged: wal2json takes the identity from the new row
                before = {k: data[k] for k in keys if k in data}
            if len(before) > len(data):  # unchanged TOAST values: the old row has them
                data = {**data, **{k: v for k, v in before.items() if k not in data}}
            meta["Key"] = {k: data[k] if k in data else before.get(k) for k in table_key}
            meta["Before"] = before
        else:
            meta["Key"] = {k: data.get(k) for k in table_key}
        out.append((data, meta))
    return out


def table_key_of(txn: dict[str, Any]) -> tuple[str, ...]:
    """The task's key for the table (from the catalogue): the identity's columns, or c0 with FULL."""
    keys = tuple(n for n, f in zip(txn["names"], txn["flags"], strict=True) if f)
    return keys if txn["identity"] == "d" else ("c0",)


def _decoder(txn: dict[str, Any] | None = None) -> PgoutputDecoder:
    names, key = (txn["names"], table_key_of(txn)) if txn is not None else (["id"], ("id",))
    table = Table(1, "public", "orders", "r", "default", tuple(Column(n, 25, "text") for n in names), key)
    return PgoutputDecoder([table])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transactions())
def test_decoded_records_follow_the_rules(txn: dict[str, Any]) -> None:
    decoder = _decoder(txn)
    asm: TransactionAssembler[Record] = TransactionAssembler(None, format_lsn)
    out: list[Record] = []
    decoder.feed(encode(txn), asm, out)
    want = expected(txn)
    assert [(r.data, r.metadata) for r in out] == want
    if out:  # the last change carries the end of the transaction (from Commit), the others their index
        assert out[-1].position == {"lsn": format_lsn(txn["end"]), "tables": {}}
        assert [r.position for r in out[:-1]] == [
            {"lsn": format_lsn(txn["commit"]), "index": i, "tables": {}} for i in range(1, len(out))
        ]
    assert asm.done.lsn == txn["end"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transactions(), st.data())
def test_cut_short_or_garbled_messages_raise_one_clear_error(txn: dict[str, Any], data: st.DataObject) -> None:
    payloads = encode(txn)
    victim = data.draw(st.integers(0, len(payloads) - 1))
    original = payloads[victim]
    cut = data.draw(st.integers(0, len(original) - 1))
    garbled = data.draw(st.booleans())
    if garbled:  # one byte changed: the message may still parse (a different value), or fail clearly
        payloads[victim] = original[:cut] + bytes([data.draw(st.integers(0, 255))]) + original[cut + 1 :]
    else:
        payloads[victim] = original[:cut]
    decoder = _decoder(txn)
    asm: TransactionAssembler[Record] = TransactionAssembler(None, format_lsn)
    try:
        decoder.feed(payloads, asm, [])
    except MalformedMessage as exc:
        text = str(exc)
        assert "\n" not in text
        assert text.startswith("malformed pgoutput message")
    else:
        assert garbled, "a cut-short message was accepted"


def test_a_change_of_an_undescribed_relation_and_an_unknown_kind_are_clear_errors() -> None:
    asm: TransactionAssembler[Record] = TransactionAssembler(None, format_lsn)
    decoder = _decoder()
    with pytest.raises(MalformedMessage, match="relation 9 was not described by a Relation message"):
        decoder.feed([begin(10, 0, 1), insert(9, [("t", b"1")])], asm, [])
    with pytest.raises(MalformedMessage, match=r"kind 'Z', 3 bytes\): unknown message kind"):
        decoder.feed([b"Zzz"], asm, [])
    with pytest.raises(MalformedMessage, match=r"kind '\(empty\)'"):
        decoder.feed([b""], asm, [])


def test_changes_of_tables_outside_the_task_are_not_counted() -> None:
    """A publication may hold more tables than the task names: their changes are skipped
    before they are numbered, as wal2json's add-tables leaves them out."""
    asm: TransactionAssembler[Record] = TransactionAssembler(None, format_lsn)
    out: list[Record] = []
    decoder = _decoder()
    cols = [(1, "id", 23)]
    payloads = [
        begin(100, 0, 5),
        relation(7, "public", "orders", "d", cols),
        relation(8, "public", "other", "d", cols),
        insert(8, [("t", b"1")]),
        insert(7, [("t", b"2")]),
        truncate([8, 7], 1),
        commit(100, 120, 0),
    ]
    decoder.feed(payloads, asm, out)
    assert [(r.metadata["TableName"], r.metadata["OperationType"], r.metadata["Seq"]) for r in out] == [
        ("public.orders", "Insert", 1),
        ("public.orders", "Truncate", 2),
    ]
