"""Every table's stream, poll by poll: bounded windows, one commit order across tables, the
checkpoint, schema-change envelopes.

A poll takes ``sys.fn_cdc_get_max_lsn()`` M once and gives every table a window from its
position. Windows are bounded so one query's cost does not grow with the backlog (as
Debezium bounds each iteration by ``max.iteration.transactions``): a table that may be
behind is asked for the LSN of its ``batch_size``-th change from its position (a cheap
``TOP (n)`` in index order, sql.py), and the poll's end E is the lowest such LSN (or M).
Every table then reads ``[its position, E]`` (less where an older capture instance ends),
so the poll's windows share one end and the records of successive polls stay in commit
order across tables. A window holds whole transactions: a transaction larger than
``batch_size`` is read in one window, streamed.

The tables' changes are merged by ``(__$start_lsn, __$command_id, __$seqval,
__$operation)``, as Debezium compares positions (TxLogPosition with the command id before
the seqval, debezium/debezium#2012): commit order, then the order of operations inside the
transaction. Without the command id (the query function does not return it, and rows
captured before KB3030352 have none) the seqval decides. Each record carries every
table's position as of it: ``{"tables": {"dbo.Orders": {"lsn": ...}, ...}}``.

Schema changes: when a table moves to another capture instance whose columns or types
differ (Debezium's migrateTable compares the schemas the same way), or the change query
reports other column types than before (a column's type altered in place), a
``SchemaChange`` envelope comes before the first row of the new shape; a table's first
capture also starts with one, so a consumer always knows the columns and their types.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dstream.sdk import Record
from dstream.sdk.cdc import SCHEMA_CHANGE
from dstream_mssql_cdc.changes import pair_updates
from dstream_mssql_cdc.lsn import format_lsn

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from dstream_mssql_cdc.catalog import CaptureInstance, Column, ServerState
    from dstream_mssql_cdc.changes import ChangeRow, Layout, RecordBuilder
    from dstream_mssql_cdc.windows import TableCursor, Window

_log = logging.getLogger("mssql-cdc-input-provider")

if TYPE_CHECKING:
    # probe(instance, n, from, to) → (changes found, at most n; the LSN of the last of them)
    Probe = Callable[[CaptureInstance, int, int, int], tuple[int, int | None]]

# probe(instance, n, from, to) → (changes found, at most n; the LSN of the last of them)


@dataclass
class Shape:
    """How one capture instance's rows are read and built: its columns (after the
    columns/exclude_columns option), the query's layout, the record builder."""

    instance: CaptureInstance
    columns: list[Column]
    layout: Layout
    builder: RecordBuilder

    def describe(self) -> list[dict[str, Any]]:
        return [c.describe() for c in self.columns]


@dataclass
class Poll:
    windows: list[Window] = field(default_factory=list)
    schema: list[Record] = field(default_factory=list)  # SchemaChange envelopes, before the rows
    full: bool = False  # more is waiting: poll again at once


class Stream:
    """Every table's cursor; one poll's windows; records in commit order with checkpoints."""

    def __init__(self, batch_size: int, shape: Callable[[CaptureInstance], Shape], order: str = "seqval") -> None:
        self.cursors: dict[str, TableCursor] = {}
        self.order = order  # how changes inside a transaction are ordered (what an index counts)
        self.batch_size = batch_size
        self.shape = shape
        self._positions: dict[str, dict[str, Any]] = {}
        self._extra: dict[str, dict[str, Any]] = {}  # positions of tables not streaming now (inside a snapshot)
        self._unreported = False
        # table → its incremental snapshot cursor (JSON), added to its position in every checkpoint
        self.incremental: dict[str, dict[str, Any]] = {}
        self._announced: set[str] = set()  # tables whose first SchemaChange went out
        self._known: dict[str, Shape] = {}  # the shape each capture instance was last read with

    # -- tables -----------------------------------------------------------------------------

    def add(self, cursor: TableCursor, announced: bool = True) -> None:
        """Stream ``cursor``'s table; ``announced = False``: its capture starts here, so its
        first window comes after a SchemaChange envelope with its columns."""
        self.cursors[cursor.table] = cursor
        self._extra.pop(cursor.table, None)
        if announced:
            self._announced.add(cursor.table)
        position = cursor.position_json()
        if position is not None:
            self._positions[cursor.table] = position
            self._unreported = True

    def remove(self, table: str) -> None:
        self.cursors.pop(table, None)
        self._positions.pop(table, None)
        self._announced.discard(table)

    def hold(self, table: str, position: dict[str, Any]) -> None:
        """Keep a table that is not streaming (inside its snapshot) in the checkpoint."""
        self.cursors.pop(table, None)
        self._positions.pop(table, None)
        self._extra[table] = position

    def checkpoint(self, **override: dict[str, Any]) -> dict[str, Any]:
        return {"tables": {**self._tables(self._positions), **override}, "order": self.order}

    def report(self) -> None:
        """Something the checkpoint holds moved without a record (a signal row, a chunk's cursor)."""
        self._unreported = True

    def _tables(self, positions: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        tables = {**self._extra, **positions}
        for table, cursor in self.incremental.items():
            if table in tables:
                tables[table] = {**tables[table], "incremental": cursor}
        return tables

    # -- a poll -----------------------------------------------------------------------------

    def plan(self, state: ServerState, probe: Probe) -> Poll:
        """The poll's windows (sharing one end), and the SchemaChange envelopes due first."""
        poll = Poll()
        reaches: list[tuple[TableCursor, CaptureInstance, int, int]] = []
        end = state.max_lsn
        for cursor in self.cursors.values():
            reach = cursor.reach(state)
            if reach is None:
                continue
            instance, start, cap = reach
            reaches.append((cursor, instance, start, cap))
            if cursor.probe:
                found, last = probe(instance, self.batch_size, start, cap)
                if found >= self.batch_size and last is not None and end is not None and last < end:
                    end = last  # this table has a full window's worth of changes up to here
        if end is None:
            return poll
        for cursor, instance, start, cap in reaches:
            window_end = min(end, cap)
            if start > window_end:
                continue
            self._schema(cursor, instance, start, poll.schema)
            poll.windows.append(self._window(cursor, instance, start, window_end))
            if window_end == cap < end:
                poll.full = True  # the older capture instance is done: switch at once
        poll.full = poll.full or (state.max_lsn is not None and end < state.max_lsn)
        return poll

    def finish(self, poll: Poll) -> dict[str, Any] | None:
        """After the poll's records: which tables bound their next window (busy ones, and all
        while more is waiting), and the heartbeat checkpoint."""
        for cursor in self.cursors.values():
            cursor.probe = poll.full or cursor.last_rows >= max(1, self.batch_size // 4)
            cursor.last_rows = 0
        return self.heartbeat()

    def _window(self, cursor: TableCursor, instance: CaptureInstance, start: int, end: int) -> Window:
        from dstream_mssql_cdc.windows import Window

        return Window(cursor.table, instance, start, end)

    def _schema(self, cursor: TableCursor, instance: CaptureInstance, start: int, out: list[Record]) -> None:
        previous = cursor.instance
        cursor.instance = instance.name
        shape = self.shape(instance)
        if cursor.table not in self._announced:
            self._announced.add(cursor.table)
            out.append(self.schema_change(cursor.table, shape, None, start, "capture started"))
        elif previous is not None and previous != instance.name:
            old = self._known.get(previous)
            if old is None or old.describe() != shape.describe() or old.instance.key != instance.key:
                out.append(self.schema_change(cursor.table, shape, old, start, "capture instance switch"))
            else:
                _log.info("%s: capture instance %s has the same columns as %s", cursor.table, instance.name, previous)
            _log.info(
                "%s: switching from capture instance %s to %s at LSN %s",
                cursor.table,
                previous,
                instance.name,
                format_lsn(start),
            )
        self._known[instance.name] = shape

    def schema_change(self, table: str, shape: Shape, old: Shape | None, lsn: int, reason: str) -> Record:
        """A ``SchemaChange`` envelope: the columns (and types) rows of ``table`` have from ``lsn`` on."""
        meta: dict[str, Any] = {
            "TableName": table,
            "OperationType": SCHEMA_CHANGE,
            "LSN": format_lsn(lsn),
            "CaptureInstance": shape.instance.name,
            "Reason": reason,
            "Columns": shape.describe(),
            "KeyColumns": list(shape.instance.key),
        }
        if old is not None:
            meta["PreviousCaptureInstance"] = old.instance.name
            meta["PreviousColumns"] = old.describe()
        return Record({}, meta)  # no position of its own: it moves no table

    def retyped(self, window: Window, old: Shape, new: Shape) -> Record:
        """The envelope for a column type altered in place (the same capture instance)."""
        self._known[new.instance.name] = new
        return self.schema_change(window.table, new, old, window.start, "column types changed")

    def merge(self, opened: Sequence[tuple[Window, Iterable[ChangeRow]]]) -> Iterator[Record]:
        """The poll's records, each table's in query order, merged across tables in commit
        order (module docstring), each carrying every table's position as of it."""
        order = {table: i for i, table in enumerate(self.cursors)}
        streams = []
        for window, rows in opened:
            cursor = self.cursors[window.table]
            builder = self.shape(window.instance).builder
            items = cursor.feed(window, pair_updates(rows), builder.record)
            streams.append(_ranked(items, order[window.table], window.table))
        positions = self._positions
        for _key, _rank, record, position, table in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
            positions[table] = position
            record.position = {"tables": self._tables(positions), "order": self.order}
            yield record

    def heartbeat(self) -> dict[str, Any] | None:
        """The checkpoint, when a table's position moved without a record (heartbeats, new tables)."""
        changed, self._unreported = self._unreported, False
        for table, cursor in self.cursors.items():
            position = cursor.position_json()
            if position is not None and self._positions.get(table) != position:
                self._positions[table] = position
                changed = True
        return self.checkpoint() if changed else None


def _ranked(
    items: Iterable[tuple[Any, Record, Any]], rank: int, table: str
) -> Iterator[tuple[Any, int, Record, Any, str]]:
    for key, record, position in items:
        yield key, rank, record, position, table
