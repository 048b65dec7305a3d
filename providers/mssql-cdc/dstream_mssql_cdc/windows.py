"""One table's stream: its position, the capture instance it reads, and its part of a poll.

A table's position is a ``dstream.sdk.cdc.Position`` (the checkpoint holds one per table):

- ``{"lsn": L}``: every transaction whose commit LSN is below L was emitted. After a
  transaction committed at C, L = ``sys.fn_cdc_increment_lsn(C)``; after a window that read
  everything up to its end E, L = increment(E) (a heartbeat). So L is exactly the
  ``@from_lsn`` of the table's next window.
- ``{"lsn": C, "index": k}``: inside the transaction committed at C, after its k-th change
  (an update's two images are one change). Resuming reads from C and skips k changes.
- ``{"lsn": L, "snapshot": {...}}``: inside the table's snapshot, whose changes start at L.

Capture instances: a table has one, or two after a schema change (``sp_cdc_enable_table``
with a second ``@capture_instance``). Both capture every change from the newer one's start
LSN on, so a table is read from the instance with the highest start LSN at or below its
position, and its windows on the older instance end just before the newer one's start: the
stream switches to the new instance (and its columns) there, losing and repeating nothing
(Debezium's SqlServerStreamingChangeEventSource reads the older table up to the newer
one's start LSN the same way). Start LSNs come from ``sys.sp_cdc_help_change_data_capture``
(what ``sys.fn_cdc_get_min_lsn`` returns); CDC cleanup raises them.

Safety: a position below the lowest start LSN of the table's instances means changes the
stream needs were deleted (CDC retention) or never kept (the instance holding them was
disabled): :class:`Purged`, never a silent jump (``snapshot = "when_needed"`` snapshots the
table again instead). So is a position past the database's max LSN (a restored database).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dstream.sdk.cdc import Position, PositionError, TransactionAssembler, parse_tables
from dstream_mssql_cdc.errors import CdcError, Purged
from dstream_mssql_cdc.lsn import decrement_lsn, format_lsn, increment_lsn, parse_lsn

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence
    from datetime import datetime

    from dstream.sdk import Record
    from dstream_mssql_cdc.catalog import CaptureInstance, ServerState
    from dstream_mssql_cdc.changes import Change, RowKey

StartMode = Literal["earliest", "latest"]
Item = tuple["RowKey", "Record"]


@dataclass(frozen=True)
class Window:
    """One query: every change of ``instance`` committed in ``[start, end]``."""

    table: str
    instance: CaptureInstance
    start: int
    end: int


def purge_message(table: str, lsn: int, oldest: CaptureInstance, task: str) -> str:
    return (
        f"{table}: the stream is at LSN {format_lsn(lsn)}, older than the oldest change CDC still holds for the "
        f"table (LSN {format_lsn(oldest.min_lsn)}, capture instance {oldest.name}): changes were purged by CDC "
        f"retention (the cleanup job) while the task was stopped or behind, or the capture instance that held them "
        f'was disabled; re-snapshot needed: snapshot = "when_needed" snapshots the table again by itself, or reload '
        f"it downstream and `dstream state reset {task}`. Nothing was skipped silently"
    )


def no_instance_message(table: str, task: str) -> str:
    schema, _, name = table.partition(".")
    return (
        f"{table} has no CDC capture instance (CDC is not enabled on the table): set enable_cdc = true and run "
        f"`dstream init {task}`, or EXEC sys.sp_cdc_enable_table @source_schema = N'{schema}', "
        f"@source_name = N'{name}', @role_name = NULL"
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


def parse_checkpoint(value: Any) -> dict[str, Position]:
    """``{"tables": {"dbo.Orders": {"lsn": ..., "index": k}, ...}, "order": ...}`` → positions by table."""
    if value is None:
        return {}
    tables = value.get("tables") if isinstance(value, dict) else None
    if tables is None or not set(value) <= {"tables", "order"}:
        raise PositionError(f'checkpoint {value!r} is not a SQL Server CDC position (expected {{"tables": {{...}}}})')
    return parse_tables(tables, parse_lsn)


def checkpoint_order(value: Any) -> str:
    """How the run that wrote the checkpoint ordered changes inside a transaction: an
    ``index`` counts changes in that order. Checkpoints of the provider before query modes
    were ordered by __$command_id."""
    order = value.get("order") if isinstance(value, dict) else None
    return str(order) if order else "command_id"


def reorder(positions: dict[str, Position], stored: str, current: str) -> tuple[dict[str, Position], list[str]]:
    """Positions inside a transaction, counted in another order than this run's, go back to
    the transaction's start (its changes come again; none is skipped), as Debezium repeats
    the last transaction when the query mode changed (debezium/debezium#2012)."""
    if stored == current:
        return positions, []
    moved = [name for name, p in positions.items() if p.index and p.snapshot is None]
    return {name: (Position(p.lsn) if name in moved else p) for name, p in positions.items()}, moved


def initial_position(state: ServerState, instances: Sequence[CaptureInstance], mode: StartMode) -> Position | None:
    """Where a table without a position or a snapshot starts (None while capture has not started)."""
    established = [i.min_lsn for i in instances if i.min_lsn > 0]
    if not established:
        return None
    if mode == "latest" and state.max_lsn is not None:
        return Position(max(increment_lsn(state.max_lsn), min(established)))
    return Position(min(established))


class TableCursor:
    """One table's stream: its position, the instance it reads, its lag."""

    def __init__(self, table: str, object_id: int, start: Position | None, task: str = "TASK") -> None:
        self.table = table
        self.object_id = object_id
        self.task = task
        self.asm: TransactionAssembler[Item] | None = None
        if start is not None:
            self.start_at(start)
        self.instance: str | None = None  # the instance of its last window
        self.probe = True  # ask how far a bounded window reaches (first poll, and while busy)
        self.commit_time: datetime | None = None  # of the last transaction handed out (for lag)
        self.caught_up = False
        self.last_rows = 0  # changes in its last window

    def start_at(self, position: Position) -> None:
        self.asm = TransactionAssembler(position, format_lsn)

    @property
    def position(self) -> Position | None:
        return self.asm.done if self.asm is not None else None

    def position_json(self) -> dict[str, Any] | None:
        position = self.position
        return position.to_json(format_lsn) if position is not None else None

    def reach(self, state: ServerState) -> tuple[CaptureInstance, int, int] | None:
        """(instance, from, the furthest this table may read in this poll), or None when
        there is nothing to read (nothing new, capture not started, no position yet)."""
        if self.asm is None or state.max_lsn is None:
            return None
        lsn = self.asm.done.lsn
        chosen = choose_instance(self.table, state.of_table(self.object_id), lsn, self.task)
        if chosen is None:
            return None
        instance, next_start = chosen
        cap = state.max_lsn if next_start is None else min(state.max_lsn, decrement_lsn(next_start))
        self.caught_up = lsn > state.max_lsn
        if lsn > cap:
            return None
        return instance, lsn, cap

    def feed(self, window: Window, changes: Iterable[Change], record: Any) -> Iterator[tuple[RowKey, Record, Any]]:
        """A window's changes → (merge key, record, this table's position after it), lazily;
        when the window is exhausted every transaction up to its end was read."""
        asm = self.asm
        assert asm is not None, "feed() before the table has a position"
        current: int | None = None
        rows = 0
        for change in changes:
            rows += 1
            commit = change.row.start_lsn
            if commit != current:
                if current is not None:
                    yield from _handed(asm.commit())
                asm.begin(commit, increment_lsn(commit))
                current = commit
            if asm.next_change() == 0:
                continue  # emitted before this run's checkpoint
            yield from _handed(asm.change((change.key, record(change))))
        if current is not None:
            yield from _handed(asm.commit())
        asm.reached(increment_lsn(window.end))
        self.last_rows = rows


def _handed(handed: tuple[Item, dict[str, Any]] | None) -> Iterator[tuple[RowKey, Record, Any]]:
    if handed is not None:
        (key, record), position = handed
        yield key, record, position
