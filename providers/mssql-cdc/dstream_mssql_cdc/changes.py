"""Rows of a change query (sql.py) → changes → dstream records. Pure: fed the rows pyodbc
returned, in the query's fixed column layout (``__$start_lsn, __$seqval, __$operation,
__$update_mask, __$command_id``, one changed flag per large-object column, the data columns).

Envelopes:

- ``data``: the row after the change; for a delete, the row as it was.
- ``metadata``: ``TableName`` (schema.table), ``OperationType`` (Insert/Update/Delete),
  ``OperationID`` (``__$operation``: 1 delete, 2 insert, 4 update), ``LSN`` (the commit LSN),
  ``Seq`` and ``SeqVal`` (``__$seqval``), both as 20 hex digits without ``0x`` (upstream's
  names and format), ``CommandID`` (``__$command_id``; null where the query function was
  read, which does not return it), ``CommitTime`` (ISO 8601 with the server's UTC offset),
  ``CaptureInstance``, ``Key`` (the capture instance's index columns → values, in index
  order: from the old row for a delete, the new key for an update; absent for a table
  captured without an index), ``Before`` (the old row) for updates and deletes, and
  ``Unavailable`` / ``BeforeUnavailable``: the columns of ``data`` / ``Before`` that hold
  the unavailable marker.
- Large objects: CDC does not record text/ntext/image in deletes and before-images, nor an
  unchanged (n)varchar(max)/varbinary(max) in before-images (Microsoft: cdc.<capture_instance>_CT,
  "Large Object Data Types"). Such a column holds ``unavailable_value`` instead of a NULL
  that would look real, as Debezium's ``unavailable.value.placeholder`` does: a NULL large
  value in an update image whose ``__$update_mask`` bit is clear, and every text/ntext/image
  of a delete or before-image. It means "unchanged: keep the value you have".

Values: numbers, strings and booleans as they are; decimal/numeric/money as exact JSON
numbers (or strings with ``numeric_as_string``); binary as base64; date/time types as ISO
8601 (datetimeoffset with its offset); uniqueidentifier as its text; the types converted in
SQL (sql.py) as that text.
"""

from __future__ import annotations

import base64
import struct
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from dstream.sdk import Record
from dstream.sdk.cdc import DELETE, INSERT, UPDATE
from dstream_mssql_cdc.catalog import ALWAYS_NULL_OLD
from dstream_mssql_cdc.errors import CdcError
from dstream_mssql_cdc.lsn import format_lsn, from_bytes

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from dstream_mssql_cdc.catalog import Column

OP_DELETE, OP_INSERT, OP_BEFORE, OP_AFTER = 1, 2, 3, 4
META = 5  # leading metadata columns of every change query
NO_COMMAND = -1  # a NULL __$command_id sorts before any real one (Debezium's COMMAND_ID_BEFORE_FIRST)

RowKey = tuple[int, int, int, int]  # (start_lsn, command_id, seqval, operation): the merge order


@dataclass(frozen=True, slots=True)
class ResultSet:
    """What one query returned: column names (``cursor.description``) and rows."""

    columns: tuple[str, ...]
    rows: Sequence[Any]  # pyodbc.Row (indexable like a tuple) or tuples


@dataclass(frozen=True, slots=True)
class ChangeRow:
    start_lsn: int
    seqval: int
    operation: int
    command_id: int | None
    changed: tuple[bool, ...]  # per large-object column (in column order): its __$update_mask bit
    values: tuple[Any, ...]

    @property
    def key(self) -> RowKey:
        command = NO_COMMAND if self.command_id is None else self.command_id
        return (self.start_lsn, command, self.seqval, self.operation)


@dataclass(frozen=True, slots=True)
class Change:
    """One change: an insert, a delete, or an update with its before-image."""

    row: ChangeRow  # the after-image (insert, update) or the deleted row
    before: ChangeRow | None = None

    @property
    def operation(self) -> str:
        if self.row.operation == OP_DELETE:
            return DELETE
        return INSERT if self.row.operation == OP_INSERT else UPDATE

    @property
    def key(self) -> RowKey:
        return self.row.key


class Layout:
    """Where the parts of a change query's row are, for one column list."""

    def __init__(self, columns: Sequence[Column]) -> None:
        self.columns = tuple(columns)
        self.names = tuple(c.name for c in columns)
        self.lobs = tuple(i for i, c in enumerate(columns) if c.lob)
        self.flags = len(self.lobs)
        self.data = META + self.flags

    def row(self, raw: Sequence[Any]) -> ChangeRow:
        command = raw[4]
        return ChangeRow(
            from_bytes(raw[0]),
            from_bytes(raw[1]),
            int(raw[2]),
            None if command is None else int(command),
            tuple(bool(raw[META + i]) for i in range(self.flags)),
            tuple(raw[self.data :]),
        )

    def parse(self, rows: Iterable[Sequence[Any]]) -> Iterator[ChangeRow]:
        for raw in rows:
            yield self.row(raw)


def pair_updates(rows: Iterable[ChangeRow]) -> Iterator[Change]:
    """Rows in query order → changes, each update's before- and after-image in one change
    (the two rows follow each other, also across fetches: this is a stream)."""
    pending: ChangeRow | None = None
    for row in rows:
        if pending is not None:
            if row.operation != OP_AFTER or (row.start_lsn, row.seqval) != (pending.start_lsn, pending.seqval):
                raise CdcError(
                    f"an update's before-image (LSN {format_lsn(pending.start_lsn)}, seqval "
                    f"{format_lsn(pending.seqval)}) is not followed by its after-image in the change query's result"
                )
            yield Change(row, pending)
            pending = None
            continue
        op = row.operation
        if op == OP_BEFORE:
            pending = row
        elif op == OP_DELETE:
            yield Change(row, row)
        elif op in (OP_INSERT, OP_AFTER):
            yield Change(row)
        else:
            raise CdcError(f"unexpected __$operation {op} at LSN {format_lsn(row.start_lsn)} (expected 1 to 4)")
    if pending is not None:
        raise CdcError(
            f"an update's before-image (LSN {format_lsn(pending.start_lsn)}) ends the change query's result "
            f"without its after-image"
        )


# -- values -------------------------------------------------------------------------------------


def _decimal_number(value: Decimal) -> Any:
    return orjson.Fragment(format(value, "f"))


def _decimal_text(value: Decimal) -> Any:
    return format(value, "f")


def _binary(value: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(bytes(value)).decode("ascii")


def _same(value: Any) -> Any:
    return value


def value_converters(numeric_as_string: bool) -> dict[type, Callable[[Any], Any]]:
    """How each Python type pyodbc returns becomes a JSON-ready value (the wire encoder
    writes datetime, date, time and UUID as ISO 8601 / text itself)."""
    return {
        str: _same,
        int: _same,
        float: _same,
        bool: _same,
        Decimal: _decimal_text if numeric_as_string else _decimal_number,
        bytes: _binary,
        bytearray: _binary,
        memoryview: _binary,
        datetime: _same,
        date: _same,
        time: _same,
        uuid.UUID: _same,
    }


def datetimeoffset(raw: bytes | None) -> datetime | str | None:
    """A ``datetimeoffset`` as the ODBC driver hands it (SQL_SS_TIMESTAMPOFFSET_STRUCT) →
    an aware datetime (pyodbc has no converter of its own for SQL type -155). A driver that
    hands over something else (text) gets its text through."""
    if raw is None:
        return None
    if len(raw) != struct.calcsize("<6hI2h"):
        return raw.decode("utf-16-le" if b"\x00" in raw else "utf-8", errors="replace").strip()
    year, month, day, hour, minute, second, fraction, tz_hour, tz_minute = struct.unpack("<6hI2h", raw)
    offset = timezone(timedelta(hours=tz_hour, minutes=tz_minute))
    return datetime(year, month, day, hour, minute, second, fraction // 1000, tzinfo=offset)


class Values:
    """Column values → JSON-ready values (shared by changes and snapshot rows)."""

    def __init__(self, numeric_as_string: bool = False) -> None:
        self._convert = value_converters(numeric_as_string)

    def row(self, names: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
        convert = self._convert
        out: dict[str, Any] = {}
        for name, value in zip(names, values, strict=True):
            if value is None:
                out[name] = None
            else:
                conv = convert.get(type(value))
                out[name] = conv(value) if conv is not None else str(value)
        return out


class RecordBuilder:
    """Changes of one capture instance → records."""

    def __init__(
        self,
        table: str,
        instance: str,
        layout: Layout,
        key: Sequence[str],
        values: Values,
        unavailable: str,
        commit_time: Callable[[int], str | None],
    ) -> None:
        self.table = table
        self.instance = instance
        self.layout = layout
        self.key = tuple(key)
        self.values = values
        self.unavailable = unavailable
        self.commit_time = commit_time

    def record(self, change: Change) -> Record:
        row = change.row
        seq = format_lsn(row.seqval)
        meta: dict[str, Any] = {
            "TableName": self.table,
            "OperationType": change.operation,
            "OperationID": row.operation,
            "LSN": format_lsn(row.start_lsn),
            "Seq": seq,
            "SeqVal": seq,
            "CommandID": row.command_id,
            "CommitTime": self.commit_time(row.start_lsn),
            "CaptureInstance": self.instance,
        }
        data, missing = self.image(row)
        if missing:
            meta["Unavailable"] = missing
        if self.key:
            meta["Key"] = {k: data.get(k) for k in self.key}
        if change.before is row:
            meta["Before"] = data
            if missing:
                meta["BeforeUnavailable"] = missing
        elif change.before is not None:
            before, old_missing = self.image(change.before)
            meta["Before"] = before
            if old_missing:
                meta["BeforeUnavailable"] = old_missing
        return Record(data, meta)

    def image(self, row: ChangeRow) -> tuple[dict[str, Any], list[str]]:
        """One image's values, with the large objects CDC did not record marked (module docstring)."""
        layout = self.layout
        data = self.values.row(layout.names, row.values)
        missing: list[str] = []
        if layout.lobs and row.operation != OP_INSERT:
            for flag, index in enumerate(layout.lobs):
                column = layout.columns[index]
                if row.values[index] is not None:
                    continue
                always = column.type in ALWAYS_NULL_OLD and row.operation in (OP_DELETE, OP_BEFORE)
                unchanged = row.operation in (OP_BEFORE, OP_AFTER) and not row.changed[flag]
                if always or unchanged:
                    data[column.name] = self.unavailable
                    missing.append(column.name)
        return data, missing
