"""Rows of ``cdc.fn_cdc_get_all_changes_<instance>(@from, @to, N'all update old')`` → changes
→ dstream records. Pure: fed the column names and rows pyodbc returned.

The query (db.py) selects the function's columns (``__$start_lsn``, ``__$seqval``,
``__$operation``, ``__$update_mask`` and the captured columns), ``__$command_id`` from the
change table (the function does not return it; ``(__$start_lsn, __$seqval, __$operation)``
identifies the row there) and the commit time (``__$dstream_commit_time``: what
``sys.fn_cdc_map_lsn_to_time`` returns for the commit LSN), ordered by ``__$start_lsn,
__$command_id, __$seqval, __$operation``: commit order, then statement order, then log
order; an update's before-image (operation 3) comes right before its after-image (4).

Envelopes:

- ``data``: the row after the change; for a delete, the row as it was.
- ``metadata``: ``TableName`` (schema.table), ``OperationType`` (Insert/Update/Delete),
  ``OperationID`` (``__$operation``: 1 delete, 2 insert, 4 update), ``LSN`` (the commit
  LSN), ``Seq`` and ``SeqVal`` (``__$seqval``, the change's LSN, ordering changes within a
  transaction), all as 20 hex digits without ``0x`` (upstream's names and format),
  ``CommandId`` (``__$command_id``), ``CommitTime`` (ISO 8601, the server's local time, as
  ``sys.fn_cdc_map_lsn_to_time`` gives it), ``CaptureInstance``, and ``Before`` (the old
  row) for updates and deletes.

Values: numbers, strings and booleans as they are; decimal/numeric/money as exact JSON
numbers (or strings with ``numeric_as_string``); binary as base64; date/time types as ISO
8601 (datetimeoffset with its offset); uniqueidentifier as its text.
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
from dstream_mssql_cdc.errors import CdcError
from dstream_mssql_cdc.lsn import format_lsn, from_bytes

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

START_LSN = "__$start_lsn"
SEQVAL = "__$seqval"
OPERATION = "__$operation"
COMMAND_ID = "__$command_id"
COMMIT_TIME = "__$dstream_commit_time"  # added by the query: the commit time of __$start_lsn
REQUIRED = (START_LSN, SEQVAL, OPERATION, COMMAND_ID, COMMIT_TIME)

OP_DELETE, OP_INSERT, OP_BEFORE, OP_AFTER = 1, 2, 3, 4

RowKey = tuple[int, int, int, int]  # (start_lsn, command_id, seqval, operation): the query's order


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
    command_id: int
    commit_time: datetime | None
    values: tuple[Any, ...]

    @property
    def key(self) -> RowKey:
        return (self.start_lsn, self.command_id, self.seqval, self.operation)


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


@dataclass(frozen=True)
class Layout:
    """Where the CDC columns and the table's columns sit in a result set."""

    start_lsn: int
    seqval: int
    operation: int
    command_id: int
    commit_time: int
    data: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def of(cls, columns: Sequence[str]) -> Layout:
        index = {name: i for i, name in enumerate(columns)}
        missing = [c for c in REQUIRED if c not in index]
        if missing:
            raise CdcError(
                f"the change query returned no {', '.join(missing)} column (SQL Server 2016 SP2, 2017 or later "
                f"is needed: change tables have __$command_id there)"
            )
        data = tuple(i for i, name in enumerate(columns) if not name.startswith("__$"))
        return cls(
            index[START_LSN],
            index[SEQVAL],
            index[OPERATION],
            index[COMMAND_ID],
            index[COMMIT_TIME],
            data,
            tuple(columns[i] for i in data),
        )

    def parse(self, rows: Sequence[Any]) -> list[ChangeRow]:
        data = self.data
        return [
            ChangeRow(
                from_bytes(row[self.start_lsn]),
                from_bytes(row[self.seqval]),
                int(row[self.operation]),
                int(row[self.command_id] or 0),
                row[self.commit_time],
                tuple(row[i] for i in data),
            )
            for row in rows
        ]


def trim_split_update(rows: list[ChangeRow]) -> list[ChangeRow]:
    """A full batch may end between an update's two images: leave its before-image for the next."""
    if rows and rows[-1].operation == OP_BEFORE:
        return rows[:-1]
    return rows


def pair_updates(rows: Sequence[ChangeRow]) -> list[Change]:
    """Rows in query order → changes, each update's before- and after-image in one change."""
    changes: list[Change] = []
    i, n = 0, len(rows)
    while i < n:
        row = rows[i]
        op = row.operation
        if op == OP_BEFORE:
            after = rows[i + 1] if i + 1 < n else None
            if (
                after is None
                or after.operation != OP_AFTER
                or (after.start_lsn, after.seqval) != (row.start_lsn, row.seqval)
            ):
                raise CdcError(
                    f"an update's before-image (LSN {format_lsn(row.start_lsn)}, seqval {format_lsn(row.seqval)}) "
                    f"is not followed by its after-image in the change function's result"
                )
            changes.append(Change(after, row))
            i += 2
            continue
        if op == OP_DELETE:
            changes.append(Change(row, row))
        elif op in (OP_INSERT, OP_AFTER):
            changes.append(Change(row))
        else:
            raise CdcError(f"unexpected __$operation {op} at LSN {format_lsn(row.start_lsn)} (expected 1 to 4)")
        i += 1
    return changes


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


class RecordBuilder:
    """Changes of one table → records."""

    def __init__(self, table: str, numeric_as_string: bool = False) -> None:
        self.table = table
        self._convert = value_converters(numeric_as_string)

    def values(self, names: tuple[str, ...], values: tuple[Any, ...]) -> dict[str, Any]:
        convert = self._convert
        out: dict[str, Any] = {}
        for name, value in zip(names, values, strict=True):
            if value is None:
                out[name] = None
            else:
                conv = convert.get(type(value))
                out[name] = conv(value) if conv is not None else str(value)
        return out

    def record(self, change: Change, names: tuple[str, ...], instance: str) -> Record:
        row = change.row
        seq = format_lsn(row.seqval)
        meta: dict[str, Any] = {
            "TableName": self.table,
            "OperationType": change.operation,
            "OperationID": row.operation,
            "LSN": format_lsn(row.start_lsn),
            "Seq": seq,
            "SeqVal": seq,
            "CommandId": row.command_id,
            "CommitTime": row.commit_time.isoformat(timespec="milliseconds") if row.commit_time else None,
            "CaptureInstance": instance,
        }
        data = self.values(names, row.values)
        if change.before is not None:
            meta["Before"] = data if change.before is row else self.values(names, change.before.values)
        return Record(data, meta)
