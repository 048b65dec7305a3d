"""Decoded changes → dstream records (plugin-neutral), and column text → values.

Two front-ends feed :class:`Decoder`'s events (begin, change, message, commit): wal2json.py
(format version 2 rows) and pgoutput.py (the binary logical replication messages). Both
render values by wal2json's rules, which the snapshot also mirrors from each column's text
(:func:`converter`): integer, float and numeric types are JSON numbers (NaN and
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
from dstream_postgres_cdc.lsn import format_lsn

if TYPE_CHECKING:
    from collections.abc import Callable

    from dstream.sdk.cdc import TransactionAssembler
    from dstream_postgres_cdc.incremental import Incremental
    from dstream_postgres_cdc.source import Table

OPERATIONS = {"I": INSERT, "U": UPDATE, "D": DELETE, "T": TRUNCATE}
# int8, int2, int4, oid, float4, float8, numeric: printed unquoted by wal2json.
NUMBER_OIDS = frozenset({20, 21, 23, 26, 700, 701, 1700})
INTEGER_OIDS = frozenset({20, 21, 23, 26})  # int8, int2, int4, oid: 64 bits at most
BOOL_OID = 16
BYTEA_OID = 17


def loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        # A numeric too large for a double (1e400, or an integer past 64 bits, which the
        # envelope's JSON encoder refuses): keep its text rather than fail.
        return json.loads(text, parse_float=_float_or_text, parse_int=_int_or_text)


def loads_exact(text: str) -> Any:
    """Like :func:`loads`, with every number kept as its text."""
    return json.loads(text, parse_float=str, parse_int=str)


def _int_or_text(text: str) -> int | str:
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 64) else text


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
    """Transactions of decoded changes → records, through a :class:`TransactionAssembler`.

    Plugin-neutral: a front-end (wal2json.py, pgoutput.py) parses its plugin's output and
    calls :meth:`begin`, :meth:`dropped` and ``asm.next_change`` before decoding a change,
    :meth:`emit` with the record (:meth:`make` builds it), :meth:`message` and :meth:`commit`.

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
        self.numeric_as_string = numeric_as_string
        self.starts = {name: lsn for name, lsn in (starts or {}).items() if lsn > 0}
        self._latest_start: int = max(self.starts.values(), default=0)
        self.positions = positions if positions is not None else {}
        self._txn: tuple[str, Any, str | None] = ("", None, None)  # commit LSN text, xid, commit time
        self._commit = 0
        self.last_commit_time: str | None = None  # of the last transaction handed out (for lag)
        self.incremental = incremental  # incremental snapshots: fed every change, message and commit
        self._replayed = False  # the current transaction was handed out before (a restart or reconnect)

    def position(self, stream: dict[str, Any]) -> dict[str, Any]:
        return {**stream, "tables": self.positions}

    # -- events ---------------------------------------------------------------------------

    def begin(
        self,
        asm: TransactionAssembler[Record],
        commit: int,
        commit_text: str,
        end: int | None,
        end_text: str | None,
        xid: Any,
        when: str | None,
    ) -> None:
        """A transaction starts (``end``: None when the plugin tells it only at the commit)."""
        self._commit = commit
        if self.starts and commit >= self._latest_start:
            self.starts = {}  # the stream has passed every table's start
        self._replayed = not asm.begin(commit, end, commit_text, end_text)
        self._txn = (commit_text, xid, when)

    @property
    def filtering(self) -> bool:
        """Some table's start is past this transaction: call :meth:`dropped` for each change."""
        return bool(self.starts) and self._commit < self._latest_start

    def dropped(self, table: str) -> bool:
        """A table snapshotted after this commit has the change in its rows: drop it before
        it is counted, so the transaction's change numbers stay what they were before the
        table joined (a checkpoint's index counts them)."""
        return self._commit < self.starts.get(table, 0)

    def emit(self, record: Record, asm: TransactionAssembler[Record], out: list[Record]) -> int:
        """Hand ``record`` to the assembler; append the change it releases (with its position)."""
        if self.incremental is not None:
            self.incremental.change(self._txn[1], record)
        ready = asm.change(record)
        if ready is None:
            return 0
        previous, position = ready
        previous.position = {**position, "tables": self.positions}
        out.append(previous)
        return 1

    def message(self, asm: TransactionAssembler[Record], message: dict[str, Any], lsn: int) -> None:
        """A logical decoding message (``prefix``, ``content``) written at ``lsn``."""
        if self.incremental is None:
            return
        # Not one handed out before this restart or reconnect (its signal was applied then).
        replayed = self._replayed if asm.in_transaction else lsn < asm.done.lsn
        if not replayed:
            self.incremental.message(message)  # a watermark or a signal (else ignored)

    def commit(
        self, asm: TransactionAssembler[Record], out: list[Record], end: int | None = None, end_text: str | None = None
    ) -> int:
        """The transaction ends; return how many records were appended to ``out``."""
        emitted = 0
        if self.incremental is not None:
            self.incremental.apply_signals()  # the transaction's last change carries their effect
            self._sync_positions()
        ready = asm.commit(end, end_text)
        self.last_commit_time = self._txn[2]
        if ready is not None:
            record, position = ready
            record.position = {**position, "tables": self.positions}
            out.append(record)
            emitted += 1
        if self.incremental is not None:
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

    # -- envelopes ------------------------------------------------------------------------

    def make(self, kind: str, table: str, data: dict[str, Any], before: dict[str, Any] | None, seq: int) -> Record:
        """The record of a change: ``data`` the new row (a delete: None), ``before`` the old
        row or its replica identity's columns (None when the plugin sent none)."""
        # The hot path of a backlog (py-spy, docs/performance.md): one call per change, so
        # lookups are local and the key is built inline (what row_key does: value or None).
        commit, xid, when = self._txn
        meta: dict[str, Any] = {
            "TableName": table,
            "OperationType": OPERATIONS[kind],
            "LSN": commit,
            "Seq": seq,
            "TxId": xid,
            "CommitTime": when,
        }
        key = self.keys.get(table, ())
        if kind == "I":
            if key:
                meta["Key"] = {k: data.get(k) for k in key}
            return Record(data, meta)
        if kind == "U":
            if before is None:
                if key:
                    meta["Key"] = {k: data.get(k) for k in key}
                return Record(data, meta)
            if len(before) > len(data):  # unchanged TOAST values: the old row has them
                for column, value in before.items():
                    data.setdefault(column, value)
            if key:  # the new key (a key column is never left out), else the old row's value
                meta["Key"] = {k: data[k] if k in data else before.get(k) for k in key}
            meta["Before"] = before
            return Record(data, meta)
        if kind == "D":
            before = before if before is not None else {}
            if key:
                meta["Key"] = {k: before.get(k) for k in key}
            meta["Before"] = before
            return Record(before, meta)
        return Record({}, meta)  # "T": the table was truncated


def converters(table: Table, numeric_as_string: bool) -> list[Callable[[str], Any] | None]:
    """Per column, how a snapshot's text becomes the value wal2json would print (None: as is)."""
    return [converter(column.type_oid, numeric_as_string) for column in table.columns]


def converter(type_oid: int, numeric_as_string: bool) -> Callable[[str], Any] | None:
    """How a column's output text becomes the value wal2json prints (None: the text as is).

    By the column's own type, as wal2json does: a domain over a number is text.
    """
    if type_oid in NUMBER_OIDS:
        if numeric_as_string:
            return _number_text
        return int if type_oid in INTEGER_OIDS else _number  # an integer's text is never NaN
    if type_oid == BOOL_OID:
        return _bool
    if type_oid == BYTEA_OID:
        return _bytea
    return None


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
