"""wal2json (format version 2) rows → dstream records, and snapshot text → the same values.

wal2json prints one JSON object per row: ``B`` (begin: ``lsn`` is the commit LSN,
``nextlsn`` the end of the commit record), ``I``/``U``/``D``/``T`` (changes), ``C`` (commit),
``M`` (logical messages, ignored). Values follow wal2json's rules, which the snapshot
mirrors from each column's text: integer, float and numeric types are JSON numbers (NaN and
±Infinity become null), bool is true/false, bytea is hex without ``\\x``, everything else
(timestamps, json, arrays, domains, ...) is its text. With ``numeric_as_string`` numbers
keep their exact text (parsed here, as wal2json 2.5 has no such option): a numeric with
more digits than a double holds is otherwise rounded.

Envelopes: ``data`` is the row after the change (for a delete: the row as it was, as far
as the replica identity tells: its key, or every column with REPLICA IDENTITY FULL);
``metadata`` has ``TableName`` (schema.table), ``OperationType``, ``LSN`` (the commit LSN),
``Seq`` (the change's number in its transaction, from 1), ``TxId``, ``CommitTime`` (ISO
8601), ``Key`` (the replica identity's columns: the primary key or the REPLICA IDENTITY
USING INDEX index, in index order; for a delete from the old row, for an update the new
key; absent for a table with neither), and ``Before`` (the old row or its key) for updates
and deletes. An update that
left a TOASTed column unchanged carries no value for it from wal2json; with REPLICA
IDENTITY FULL the value is filled in from the old row.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from dstream.sdk import Record
from dstream.sdk.cdc import DELETE, INSERT, TRUNCATE, UPDATE
from dstream_postgres_cdc.lsn import format_lsn, parse_lsn

if TYPE_CHECKING:
    from collections.abc import Callable

    from dstream.sdk.cdc import TransactionAssembler
    from dstream_postgres_cdc.incremental import Incremental
    from dstream_postgres_cdc.source import Table

ACTION_AT = len('{"action":"')
_OPERATIONS = {"I": INSERT, "U": UPDATE, "D": DELETE, "T": TRUNCATE}
# int8, int2, int4, oid, float4, float8, numeric: printed unquoted by wal2json.
NUMBER_OIDS = frozenset({20, 21, 23, 26, 700, 701, 1700})
BOOL_OID = 16
BYTEA_OID = 17


def loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # A numeric too large for a double (1e400): keep its text rather than fail.
        return json.loads(text, parse_float=_float_or_text)


def loads_exact(text: str) -> Any:
    """Like :func:`loads`, with every number kept as its text."""
    return json.loads(text, parse_float=str, parse_int=str)


def _float_or_text(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


def commit_time(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        return text


class Decoder:
    """Feeds wal2json rows through a :class:`TransactionAssembler` and builds records.

    ``starts`` holds, per table, where its changes start (the point of the snapshot its
    rows came from): changes of transactions committed below it are dropped, as the
    snapshot has them. ``tables`` is the ``"tables"`` part of every position handed out.
    """

    def __init__(
        self,
        tables: list[Table],
        numeric_as_string: bool = False,
        starts: dict[str, int] | None = None,
        positions: dict[str, Any] | None = None,
        incremental: Incremental | None = None,
    ) -> None:
        self.names = {(t.schema, t.name): t.qualified for t in tables}
        self.keys = {t.qualified: t.key for t in tables}
        self.starts = {name: lsn for name, lsn in (starts or {}).items() if lsn > 0}
        self._latest_start = max(self.starts.values(), default=0)
        self.positions = positions if positions is not None else {}
        self._loads = loads_exact if numeric_as_string else loads
        self._txn: tuple[str, Any, str | None] = ("", None, None)  # commit LSN text, xid, commit time
        self._commit = 0
        self.last_commit_time: str | None = None  # of the last transaction handed out (for lag)
        self.incremental = incremental  # incremental snapshots: fed every change, message and commit
        self._replayed = False  # the current transaction was handed out before (a restart or reconnect)

    def position(self, stream: dict[str, Any]) -> dict[str, Any]:
        return {**stream, "tables": self.positions}

    def feed(self, rows: list[tuple[str]], asm: TransactionAssembler[Record], out: list[Record]) -> int:
        """Decode ``rows`` into ``out`` (records with their positions); return how many."""
        emitted = 0
        # Bound once per chunk: this loop runs once per change of a backlog.
        next_change, change, parse, build, incremental = (
            asm.next_change,
            asm.change,
            self._loads,
            self._record,
            self.incremental,
        )
        for (text,) in rows:
            kind = text[ACTION_AT]
            if kind in "IUDT":
                if self.starts and self._commit < self._latest_start:
                    # A table snapshotted after this commit has it in its rows: drop it before
                    # it is counted, so the transaction's change numbers stay what they were
                    # before the table joined (a checkpoint's index counts them).
                    row = parse(text)
                    if self._commit < self.starts.get(self._table(row), 0):
                        continue
                    seq = next_change()
                    if not seq:
                        continue
                else:
                    seq = next_change()
                    if not seq:
                        continue  # emitted before this restart or reconnect: not even decoded
                    row = parse(text)
                record = build(kind, row, seq)
                if incremental is not None:
                    incremental.change(self._txn[1], record)
                ready = change(record)
            elif kind == "B":
                row = loads(text)
                commit, end = row["lsn"], row["nextlsn"]
                self._commit = parse_lsn(commit)
                if self.starts and self._commit >= self._latest_start:
                    self.starts = {}  # the stream has passed every table's start
                self._replayed = not asm.begin(self._commit, parse_lsn(end), commit, end)
                self._txn = (commit, row.get("xid"), commit_time(row.get("timestamp")))
                continue
            elif kind == "C":
                if self.incremental is not None:
                    self.incremental.apply_signals()  # the transaction's last change carries their effect
                    self._sync_positions()
                ready = asm.commit()
                self.last_commit_time = self._txn[2]
            else:
                if self.incremental is not None and kind == "M":
                    message = loads(text)
                    # Not one handed out before this restart or reconnect (its signal was applied then).
                    replayed = self._replayed if asm.in_transaction else parse_lsn(message["lsn"]) < asm.done.lsn
                    if not replayed:
                        self.incremental.message(message)  # a watermark or a signal (else ignored)
                continue
            if ready is not None:
                record, position = ready
                record.position = {**position, "tables": self.positions}
                out.append(record)
                emitted += 1
            if kind == "C" and self.incremental is not None:
                released = self.incremental.after_commit(asm.done.to_json(format_lsn), self._txn[0])
                out.extend(released)
                emitted += len(released)
                self._sync_positions()
        return emitted

    def _sync_positions(self) -> None:
        assert self.incremental is not None
        changed = self.incremental.positions_json()
        if changed is not None:
            self.positions = changed  # a new dict: records handed out keep the one they had

    def _table(self, row: dict[str, Any]) -> str:
        schema, name = row["schema"], row["table"]
        return self.names.get((schema, name)) or f"{schema}.{name}"

    def _record(self, kind: str, row: dict[str, Any], seq: int) -> Record:
        # The hot path of a backlog (py-spy, docs/performance.md): one call per change, so
        # lookups are local and the key is built inline (what row_key does: value or None).
        commit, xid, when = self._txn
        schema, name = row["schema"], row["table"]
        table = self.names.get((schema, name)) or f"{schema}.{name}"
        meta: dict[str, Any] = {
            "TableName": table,
            "OperationType": _OPERATIONS[kind],
            "LSN": commit,
            "Seq": seq,
            "TxId": xid,
            "CommitTime": when,
        }
        key = self.keys.get(table, ())
        if kind == "I":
            data = {c["name"]: c["value"] for c in row["columns"]}
            if key:
                meta["Key"] = {k: data.get(k) for k in key}
            return Record(data, meta)
        if kind == "U":
            data = {c["name"]: c["value"] for c in row["columns"]}
            identity = row.get("identity")
            if identity is None:
                if key:
                    meta["Key"] = {k: data.get(k) for k in key}
                return Record(data, meta)
            before = {c["name"]: c["value"] for c in identity}
            if len(before) > len(data):  # unchanged TOAST values: the old row has them
                for column, value in before.items():
                    data.setdefault(column, value)
            if key:  # the new key (a key column is never left out), else the old row's value
                meta["Key"] = {k: data[k] if k in data else before.get(k) for k in key}
            meta["Before"] = before
            return Record(data, meta)
        if kind == "D":
            before = {c["name"]: c["value"] for c in row.get("identity") or ()}
            if key:
                meta["Key"] = {k: before.get(k) for k in key}
            meta["Before"] = before
            return Record(before, meta)
        return Record({}, meta)  # "T": the table was truncated


def converters(table: Table, numeric_as_string: bool) -> list[Callable[[str], Any] | None]:
    """Per column, how a snapshot's text becomes the value wal2json would print (None: as is)."""
    out: list[Callable[[str], Any] | None] = []
    for column in table.columns:
        if column.type_oid in NUMBER_OIDS:
            out.append(_number_text if numeric_as_string else _number)
        elif column.type_oid == BOOL_OID:
            out.append(_bool)
        elif column.type_oid == BYTEA_OID:
            out.append(_bytea)
        else:
            out.append(None)
    return out


def _number(text: str) -> Any:
    if text in ("NaN", "Infinity", "-Infinity"):
        return None
    return loads(text)


def _number_text(text: str) -> str | None:
    return None if text in ("NaN", "Infinity", "-Infinity") else text


def _bool(text: str) -> bool:
    return text == "t"


def _bytea(text: str) -> str:
    return text[2:]  # "\x54617069727573"
