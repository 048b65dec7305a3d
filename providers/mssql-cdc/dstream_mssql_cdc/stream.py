"""Windows, positions and capture instances: the logic of reading CDC, without SQL.

Per table, a :class:`TableCursor` holds a :class:`dstream.sdk.cdc.TransactionAssembler`,
whose position (``Position``: ``lsn`` + ``index``) is the table's checkpoint:

- ``{"lsn": L}``: every transaction whose commit LSN is below L was emitted. After a
  transaction committed at C, L = ``sys.fn_cdc_increment_lsn(C)``; after a window that read
  everything up to the max LSN M, L = increment(M) (a heartbeat). So L is exactly the
  ``@from_lsn`` of the table's next window.
- ``{"lsn": C, "index": k}``: inside the transaction committed at C, after its k-th change
  (an update's two images are one change). Resuming reads from C and skips k changes.

A poll takes the database's ``sys.fn_cdc_get_max_lsn()`` once and gives every table a
:class:`Window`: ``@from_lsn`` = its position, ``@to_lsn`` = the max LSN (or, while an
older capture instance is read, the LSN before the next instance's start), at most
``batch_size`` rows. A full window may stop inside a transaction: the transaction stays
open and the next window continues after the last row read (keyset on the query's order
``__$start_lsn, __$command_id, __$seqval, __$operation``), without re-reading it.

Capture instances: a table has one, or two after a schema change (``sp_cdc_enable_table``
with a second ``@capture_instance``). Both capture every change from the newer one's start
LSN on, so a table is read from the instance with the highest start LSN at or below its
position, and windows of the older instance end just before the newer one's start: the
stream switches to the new instance (and its columns) at that LSN, losing and repeating
nothing. Start LSNs are ``sys.fn_cdc_get_min_lsn(instance)``, which CDC cleanup raises.

Safety: a position below the lowest start LSN of the table's instances means changes the
stream needs were deleted (CDC retention) or never kept (the instance holding them was
disabled): :class:`Purged`, never a silent jump. So is a position past the database's
max LSN (a restored database, another server).

:class:`Stream` merges the tables' changes of one poll in commit order (then log order)
and gives each record the checkpoint of every table: ``{"tables": {"dbo.Orders":
{"lsn": ...}, ...}}``.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from dstream.sdk.cdc import Position, PositionError, TransactionAssembler
from dstream_mssql_cdc.changes import Layout, RecordBuilder, ResultSet, RowKey, pair_updates, trim_split_update
from dstream_mssql_cdc.errors import CdcError, Purged
from dstream_mssql_cdc.lsn import decrement_lsn, format_lsn, increment_lsn, parse_lsn

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from dstream.sdk import Record

StartMode = Literal["earliest", "latest"]
Item = tuple[RowKey, "Record"]
_log = logging.getLogger("mssql-cdc-input-provider")


@dataclass(frozen=True)
class CaptureInstance:
    """A row of ``cdc.change_tables`` with ``sys.fn_cdc_get_min_lsn`` of it."""

    name: str
    schema: str
    table: str
    object_id: int  # the source table's
    min_lsn: int  # 0 while the instance has no low endpoint yet
    create_date: datetime | None = None
    change_table_id: int = 0  # object_id of its change table
    change_table: str = ""  # its name in the cdc schema (<name>_CT)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def change_table_name(self) -> str:
        return self.change_table or f"{self.name}_CT"


@dataclass(frozen=True)
class ServerState:
    """What one poll starts from: the max LSN (None: CDC captured nothing yet) and the instances."""

    max_lsn: int | None
    instances: tuple[CaptureInstance, ...]

    def of_table(self, object_id: int) -> list[CaptureInstance]:
        found = [i for i in self.instances if i.object_id == object_id]
        return sorted(found, key=lambda i: (i.min_lsn, i.create_date or datetime.min, i.name))

    def tables(self) -> dict[int, str]:
        """object_id → schema.table of every table with a capture instance."""
        return {i.object_id: i.qualified for i in self.instances}


@dataclass(frozen=True)
class Window:
    """One query: ``fn_cdc_get_all_changes_<instance>(start, end)``, rows after ``after``."""

    table: str
    instance: CaptureInstance
    start: int
    end: int
    after: RowKey | None
    limit: int


def purge_message(table: str, lsn: int, oldest: CaptureInstance, task: str) -> str:
    return (
        f"{table}: the stream is at LSN {format_lsn(lsn)}, older than the oldest change CDC still holds for the "
        f"table (LSN {format_lsn(oldest.min_lsn)}, capture instance {oldest.name}): changes were purged by CDC "
        f"retention (the cleanup job) while the task was stopped or behind, or the capture instance that held them "
        f"was disabled; re-snapshot needed: reload the table downstream, then `dstream state reset {task}` to "
        f'start again (start = "earliest": from the oldest retained change). Nothing was skipped silently'
    )


def choose_instance(
    table: str, instances: Sequence[CaptureInstance], lsn: int, task: str
) -> tuple[CaptureInstance, int | None] | None:
    """The instance to read at ``lsn`` and the next instance's start (where to switch), or
    None while no instance has a low endpoint yet. Raises when ``lsn`` is below every start."""
    if not instances:
        raise CdcError(no_instance_message(table, task))
    established = [i for i in instances if i.min_lsn > 0]
    if not established:
        return None
    covering = [i for i in established if i.min_lsn <= lsn]
    if not covering:
        raise Purged(purge_message(table, lsn, established[0], task))
    later = [i.min_lsn for i in established if i.min_lsn > lsn]
    return covering[-1], (min(later) if later else None)


def no_instance_message(table: str, task: str) -> str:
    schema, _, name = table.partition(".")
    return (
        f"{table} has no CDC capture instance (CDC is not enabled on the table): set enable_cdc = true and run "
        f"`dstream init {task}`, or EXEC sys.sp_cdc_enable_table @source_schema = N'{schema}', "
        f"@source_name = N'{name}', @role_name = NULL"
    )


def parse_checkpoint(value: Any) -> dict[str, Position]:
    """``{"tables": {"dbo.Orders": {"lsn": ..., "index": k}, ...}}`` → positions by table."""
    if value is None:
        return {}
    tables = value.get("tables") if isinstance(value, dict) else None
    if not isinstance(tables, dict):
        raise PositionError(f'checkpoint {value!r} is not a SQL Server CDC position (expected {{"tables": {{...}}}})')
    out: dict[str, Position] = {}
    for table, raw in tables.items():
        position = Position.from_json(raw, parse_lsn)
        if position.snapshot is not None:
            raise PositionError(f"checkpoint of {table}: snapshot positions are not used by this provider")
        out[str(table)] = position
    return out


class TableCursor:
    """One table's progress: its position, its open transaction, the instance it reads."""

    def __init__(
        self,
        table: str,
        object_id: int,
        builder: RecordBuilder,
        start: Position | None = None,
        mode: StartMode = "earliest",
        task: str = "TASK",
    ) -> None:
        self.table = table
        self.object_id = object_id
        self.builder = builder
        self.mode = mode
        self.task = task
        self.asm: TransactionAssembler[Item] | None = None
        if start is not None:
            self.asm = TransactionAssembler(start, format_lsn)
        self.open: int | None = None  # commit LSN of a transaction read only in part
        self.after: RowKey | None = None  # the last row read of that transaction
        self.instance: str | None = None
        self._layouts: dict[tuple[str, ...], Layout] = {}

    @property
    def position(self) -> Position | None:
        return self.asm.done if self.asm is not None else None

    def position_json(self) -> dict[str, Any] | None:
        position = self.position
        return position.to_json(format_lsn) if position is not None else None

    def _initial(self, state: ServerState, instances: Sequence[CaptureInstance]) -> Position | None:
        established = [i.min_lsn for i in instances if i.min_lsn > 0]
        if not established:
            return None
        if self.mode == "latest" and state.max_lsn is not None:
            return Position(max(increment_lsn(state.max_lsn), min(established)))
        return Position(min(established))

    def window(self, state: ServerState, limit: int) -> Window | None:
        """The next query for this table, or None when there is nothing new (or nothing yet)."""
        instances = state.of_table(self.object_id)
        if self.asm is None:
            if not instances:
                raise CdcError(no_instance_message(self.table, self.task))
            initial = self._initial(state, instances)
            if initial is None:
                return None
            self.asm = TransactionAssembler(initial, format_lsn)
        lsn = self.open if self.open is not None else self.asm.done.lsn
        chosen = choose_instance(self.table, instances, lsn, self.task)
        if chosen is None or state.max_lsn is None:
            return None
        instance, next_start = chosen
        end = state.max_lsn if next_start is None else min(state.max_lsn, decrement_lsn(next_start))
        if lsn > end:
            return None
        if self.instance is not None and instance.name != self.instance:
            _log.info(
                "%s: switching from capture instance %s to %s at LSN %s",
                self.table,
                self.instance,
                instance.name,
                format_lsn(lsn),
            )
        self.instance = instance.name
        return Window(self.table, instance, lsn, end, self.after if self.open is not None else None, limit)

    def feed(self, window: Window, result: ResultSet) -> list[tuple[RowKey, Record, dict[str, Any]]]:
        """The window's rows → (order key, record, this table's position after it)."""
        asm = self.asm
        assert asm is not None, "feed() before window()"
        layout = self._layouts.get(result.columns)
        if layout is None:
            layout = self._layouts[result.columns] = Layout.of(result.columns)
        rows = layout.parse(result.rows)
        full = len(rows) >= window.limit
        if full:
            rows = trim_split_update(rows)
        out: list[tuple[RowKey, Record, dict[str, Any]]] = []

        def take(handed: tuple[Item, dict[str, Any]] | None) -> None:
            if handed is not None:
                (key, record), position = handed
                out.append((key, record, position))

        for change in pair_updates(rows):
            commit = change.row.start_lsn
            if commit != self.open:
                if self.open is not None:
                    take(asm.commit())
                end = increment_lsn(commit)
                asm.begin(commit, end)
                self.open = commit
            if asm.next_change() == 0:
                continue  # emitted before this run's checkpoint
            take(asm.change((change.key, self.builder.record(change, layout.names, window.instance.name))))
        if rows:
            self.after = rows[-1].key
        if not full:
            if self.open is not None:
                take(asm.commit())
                self.open = None
            self.after = None
            asm.reached(increment_lsn(window.end))
        return out


class Stream:
    """Every table's cursor; one poll's windows; records in commit order with checkpoints."""

    def __init__(self, cursors: Iterable[TableCursor], batch_size: int) -> None:
        self.cursors: dict[str, TableCursor] = {}
        self.limit = max(batch_size, 2)  # room for an update's two images
        self._positions: dict[str, dict[str, Any]] = {}
        self._unreported = False  # a table got its first position: the next heartbeat says so
        for cursor in cursors:
            self.add(cursor)

    def add(self, cursor: TableCursor) -> None:
        self.cursors[cursor.table] = cursor
        position = cursor.position_json()
        if position is not None:
            self._positions[cursor.table] = position

    def remove(self, table: str) -> None:
        self.cursors.pop(table, None)
        self._positions.pop(table, None)

    def check_start(self, state: ServerState) -> None:
        """Before emitting anything: every stored position is still readable (all problems at once)."""
        problems: list[str] = []
        for cursor in self.cursors.values():
            position = cursor.position
            if position is None:
                continue
            if state.max_lsn is not None and position.lsn > increment_lsn(state.max_lsn):
                problems.append(
                    f"{cursor.table}: the checkpoint (LSN {format_lsn(position.lsn)}) is past the database's latest "
                    f"captured LSN {format_lsn(state.max_lsn)}: was the database restored, or the task pointed at "
                    f"another database? `dstream state reset {cursor.task}` starts over"
                )
                continue
            try:
                choose_instance(cursor.table, state.of_table(cursor.object_id), position.lsn, cursor.task)
            except Purged as exc:
                problems.append(str(exc))
        if problems:
            raise Purged("\n".join(problems))

    def windows(self, state: ServerState) -> list[Window]:
        found = []
        for table, cursor in self.cursors.items():
            window = cursor.window(state, self.limit)
            if table not in self._positions:  # the first plan gave it its starting position
                position = cursor.position_json()
                if position is not None:
                    self._positions[table] = position
                    self._unreported = True
            if window is not None:
                found.append(window)
        return found

    def feed(self, results: Iterable[tuple[Window, ResultSet]]) -> Iterator[Record]:
        """Records of one poll, each table's in query order, merged across tables by (commit LSN,
        seqval) (``__$command_id`` is numbered per capture instance: it orders one table's
        changes only), each carrying every table's position as of it."""
        order = {table: i for i, table in enumerate(self.cursors)}
        streams = []
        for window, result in results:
            table = window.table
            items = self.cursors[table].feed(window, result)
            streams.append([(key, order[table], record, position, table) for key, record, position in items])
        merged = heapq.merge(*streams, key=lambda item: (item[0][0], item[0][2], item[1]))
        for _key, _order, record, position, table in merged:
            self._positions[table] = position
            record.position = {"tables": dict(self._positions)}
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

    def checkpoint(self) -> dict[str, Any]:
        return {"tables": dict(self._positions)}

    @staticmethod
    def full(windows_and_rows: Iterable[tuple[Window, ResultSet]]) -> bool:
        return any(len(result.rows) >= window.limit for window, result in windows_and_rows)
