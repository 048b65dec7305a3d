"""Snapshots: the rows the tables already hold, consistent with where their changes start.

The engine-agnostic part (which tables, chunked reads that resume after the last emitted
key, the handoff to the stream, row positions that never collide) is
``dstream.sdk.cdc``; this module adds PostgreSQL's: a temporary replication slot exports a
snapshot at its consistent point P (``CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT``), a
second session imports it, and each table is read from it in key order, ``batch_size``
rows per query. Every transaction committed below P is in those rows and every later one
is in the stream, so a table's changes start at P (its position's ``lsn``).

A pass snapshots the tables of its plan one after the other. On a first run that is
every table and the stream starts at P; later, a table added to ``tables`` is snapshotted
alone at its own P while the stream resumes where it was (changes of that table below its
P are dropped by the decoder). A run that stops inside a pass resumes it with a new
exported snapshot at P2 >= P: the rest of the rows come as of P2 while the table's changes
still start at P, so the changes between P and P2 come after rows that include them
(replaying by key still ends in the table's state, and nothing is missing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dstream.sdk import Checkpoint, Record
from dstream.sdk.cdc import (
    ChunkCursor,
    Position,
    new_pass_id,
    read_chunks,
    read_metadata,
    restart_point,
    row_key,
)
from dstream_postgres_cdc.checkpoint import checkpoint_json, positions_json
from dstream_postgres_cdc.decode import converters
from dstream_postgres_cdc.lsn import format_lsn

if TYPE_CHECKING:
    import logging
    from collections.abc import Iterator

    from dstream.sdk.cdc import SnapshotPlan
    from dstream_postgres_cdc.source import SnapshotSession, Table


def snapshot_pass(
    snap: SnapshotSession,
    point: int,
    tables: list[Table],
    plan: SnapshotPlan,
    positions: dict[str, Position],
    stream: Position,
    batch_size: int,
    numeric_as_string: bool,
    log: logging.Logger,
) -> Iterator[Record | Checkpoint]:
    """Emit the rows of the plan's tables from ``snap`` (exported at ``point``).

    ``positions`` is updated as rows go out (it is where a retry resumes) and ends with
    every table of the plan handed over to the stream: ``Position(its snapshot's point)``.
    """
    for name in plan.start:
        positions[name] = Position(point, snapshot=ChunkCursor())
    stream_json = stream.to_json(format_lsn)
    wanted = set(plan.tables)
    for table in [t for t in tables if t.qualified in wanted]:
        name = table.qualified
        # A table read again from its first row (no key, or nothing emitted yet) is snapshotted
        # at this pass's point, and its changes start there (defect 7 of issue 22).
        start = positions[name] = restart_point(positions[name], point, bool(table.key))
        cursor = start.snapshot or ChunkCursor()
        _log_start(log, table, start, cursor, point)
        yield from _table_rows(snap, table, start.lsn, cursor, positions, stream_json, batch_size, numeric_as_string)
        positions[name] = Position(start.lsn)
    yield Checkpoint(checkpoint_json(stream_json, positions_json(positions)))


def _table_rows(
    snap: SnapshotSession,
    table: Table,
    lsn: int,
    cursor: ChunkCursor,
    positions: dict[str, Position],
    stream_json: dict[str, Any],
    batch_size: int,
    numeric_as_string: bool,
) -> Iterator[Record]:
    name = table.qualified
    others = positions_json({t: p for t, p in positions.items() if t != name})
    convert = converters(table, numeric_as_string)
    names = [c.name for c in table.columns]
    width = len(table.key) or 1  # the key's texts (or the ctid, without a key) lead each row
    lsn_text = format_lsn(lsn)
    pass_id = new_pass_id()

    def chunk(after: tuple[str, ...] | None, limit: int) -> list[tuple[Any, ...]]:
        return snap.rows(table, after, limit)

    def key_text(row: tuple[Any, ...]) -> tuple[str, ...]:
        return tuple(row[:width])

    for row, done in read_chunks(chunk, key_text, cursor, batch_size, resumable=bool(table.key)):
        data = {
            column: (value if conv is None or value is None else conv(value))
            for column, conv, value in zip(names, convert, row[width:], strict=True)
        }
        meta = read_metadata(name, lsn_text, row_key(data, table.key), pass_id, done.rows)
        position = Position(lsn, snapshot=done)
        positions[name] = position
        yield Record(data, meta, position=checkpoint_json(stream_json, {**others, name: position.to_json(format_lsn)}))


def _log_start(log: logging.Logger, table: Table, start: Position, cursor: ChunkCursor, point: int) -> None:
    if start.lsn == point:
        log.info("snapshot of %s as of %s", table.qualified, format_lsn(point))
    elif cursor.after is not None:
        log.info(
            "resuming the snapshot of %s (taken at %s) with a new snapshot at %s, after %d rows",
            table.qualified,
            format_lsn(start.lsn),
            format_lsn(point),
            cursor.rows,
        )
    else:
        log.info(
            "resuming the snapshot of %s (taken at %s) with a new snapshot at %s, from its first row%s",
            table.qualified,
            format_lsn(start.lsn),
            format_lsn(point),
            "" if table.key else " (no key to resume by)",
        )
