"""Snapshots: which tables, in key-ordered chunks, resumable, each row with a position unique in its table."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from dstream.sdk.cdc.positions import READ, ChunkCursor, Position

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Mapping, Sequence

    from dstream.sdk.cdc.positions import SnapshotMode

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class SnapshotPlan:
    """The tables a run snapshots before it streams: ``start`` from their first row,
    ``resume`` after the cursor their stored position holds (in ``tables`` order)."""

    start: tuple[str, ...] = ()
    resume: tuple[str, ...] = ()
    incremental: tuple[str, ...] = ()  # snapshot = "incremental": read in chunks while streaming

    @property
    def tables(self) -> tuple[str, ...]:
        return self.resume + self.start

    def __bool__(self) -> bool:
        return bool(self.start or self.resume)


def plan_snapshots(
    mode: SnapshotMode,
    tables: Sequence[str],
    stored: Mapping[str, Position],
    expired: Collection[str] = (),
) -> SnapshotPlan:
    """Which of ``tables`` to snapshot, given the positions of the checkpoint (``stored``).

    - ``initial`` (Debezium's default): every table without a stored position, that is all
      of them on a first run, and on later runs only tables added to ``tables`` since.
    - ``when_needed``: the same, and also tables whose stored position the source no longer
      holds (``expired``: CDC retention purged it, a slot lost its WAL), instead of failing.
    - ``never``: none; the engine streams from its configured start.
    - ``incremental``: the tables ``initial`` would snapshot go to ``incremental`` instead:
      they stream at once and their rows come in chunks between their changes
      (:mod:`dstream.sdk.cdc.incremental`).

    A table whose stored position is inside its snapshot resumes it in every mode: its
    stream starts at that snapshot's point, so leaving it unfinished would lose rows.
    """
    start: list[str] = []
    resume: list[str] = []
    incremental: list[str] = []
    for table in tables:
        position = stored.get(table)
        if position is not None and position.snapshot is not None:
            resume.append(table)
        elif mode == "incremental" and position is None:
            incremental.append(table)
        elif mode != "never" and (position is None or (mode == "when_needed" and table in expired)):
            start.append(table)
    return SnapshotPlan(tuple(start), tuple(resume), tuple(incremental))


def restart_point(position: Position, point: int, resumable: bool) -> Position:
    """Where a table's snapshot continues in a pass whose snapshot is taken at ``point``.

    A table resumed after an emitted key (``resumable``, ``after`` set) keeps its position:
    its stream still starts at the point of the rows already emitted. A table that reads
    again from its first row (it has no key to resume by, or no row went out yet) is a new
    snapshot taken at ``point``: its stream must start there too, or every change between
    the old point and ``point`` would arrive twice (once in the rows, once as a change).
    """
    cursor = position.snapshot or ChunkCursor()
    if resumable and cursor.after is not None:
        return position
    return Position(point, snapshot=ChunkCursor())


def read_chunks(
    chunk: Callable[[tuple[str, ...] | None, int], Sequence[R]],
    key_text: Callable[[R], tuple[str, ...]],
    start: ChunkCursor,
    chunk_size: int,
    resumable: bool = True,
) -> Iterator[tuple[R, ChunkCursor]]:
    """Every row of a table from ``start`` on, each with the cursor just after it.

    ``chunk(after, limit)`` returns up to ``limit`` rows whose key is above ``after`` (None:
    from the first row), in key order, all read in the engine's snapshot; ``key_text(row)``
    is the row's key as the engine's text (what ``after`` takes). Each query reads one
    chunk, so its cost does not grow with the table. ``resumable = False`` (a table without
    a key, paged by something only valid inside one snapshot, like PostgreSQL's ctid)
    starts from the first row whatever ``start`` says, and its cursors hold no key.
    """
    after = start.after if resumable else None
    rows = start.rows if after is not None else 0
    while True:
        found = chunk(after, chunk_size)
        for row in found:
            rows += 1
            yield row, ChunkCursor(key_text(row) if resumable else None, rows)
        if len(found) < chunk_size:
            return
        after = key_text(found[-1])


def new_pass_id() -> str:
    """A short random id of one snapshot pass (a start or a resume), for :func:`read_metadata`."""
    return secrets.token_hex(4)


def row_key(values: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any] | None:
    """The ``Key`` metadata: ``{column: value}`` of the key columns in key order (None: no key)."""
    if not columns:
        return None
    return {column: values.get(column) for column in columns}


def read_metadata(table: str, lsn: str, key: dict[str, Any] | None, pass_id: str, row: int) -> dict[str, Any]:
    """Metadata of a snapshot row: a position unique within its table, so message ids
    derived from (table, position, operation, key) never collide.

    Rows of a keyed table carry their ``Key``. A table without a key has nothing stable to
    name a row by, so ``Seq`` is ``"<pass>:<row number>"``: unique within the snapshot and
    different in every pass, so a restarted pass (which starts again from the first row)
    duplicates rows downstream rather than having two different rows share an id.
    """
    meta: dict[str, Any] = {"TableName": table, "OperationType": READ, "LSN": lsn}
    if key is not None:
        meta["Key"] = key
    else:
        meta["Seq"] = f"{pass_id}:{row}"
    return meta
