"""The provider's checkpoint: the stream's position and each table's, to and from JSON.

::

    {"lsn": "0/1A2B3C8", "index": 17,                     the stream (dstream.sdk.cdc.Position)
     "tables": {"public.a": {"lsn": "0/19F0000"},         where a's changes start
                "public.b": {"lsn": "0/1A00000",          b is inside its snapshot: rows up to
                             "snapshot": {"after": ["42"], "rows": 42}}}}   key 42 were emitted

One slot carries every table, so the stream position is shared; a table's own ``lsn`` is
where its changes start: the point of the snapshot its rows came from (transactions that
committed below it are in those rows). It matters for a table snapshotted after the stream
began (added to ``tables`` later): its changes below that point are dropped, the rest flow
with the others'. A table not in ``tables`` of the checkpoint is new to the task.

Checkpoints written before tables were tracked are read too: ``{"lsn": L[, "index": k]}``
(every configured table streams from L) and ``{"lsn": P, "snapshot": {"done": [...],
"table": T, "after": [...]}}`` (inside the initial snapshot taken at P).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dstream.sdk.cdc import ChunkCursor, Position, PositionError, parse_tables, tables_json
from dstream_postgres_cdc.lsn import format_lsn, parse_lsn

if TYPE_CHECKING:
    from collections.abc import Sequence


@dataclass
class Stored:
    """A parsed checkpoint: the stream's position (None: a first run) and each table's."""

    stream: Position | None = None
    tables: dict[str, Position] = field(default_factory=dict)


def parse_checkpoint(value: Any, configured: Sequence[str]) -> Stored:
    if value is None:
        return Stored()
    if not isinstance(value, dict):
        raise PositionError(f'checkpoint {value!r} is not a PostgreSQL CDC position (expected {{"lsn": ...}})')
    legacy = value.get("snapshot")
    stream = Position.from_json({k: v for k, v in value.items() if k in ("lsn", "index")}, parse_lsn)
    if "tables" in value:
        extra = set(value) - {"lsn", "index", "tables"}
        if extra:
            raise PositionError(f"checkpoint {value!r}: unexpected {', '.join(sorted(extra))}")
        return Stored(stream, parse_tables(value["tables"], parse_lsn))
    if legacy is None:
        return Stored(stream, {table: Position(0) for table in configured})
    return _legacy_snapshot(stream, legacy, configured)


def _legacy_snapshot(stream: Position, cursor: Any, configured: Sequence[str]) -> Stored:
    if not isinstance(cursor, dict) or not isinstance(cursor.get("done", []), list):
        raise PositionError(f"snapshot cursor {cursor!r} is not a position inside a snapshot")
    done = {str(t) for t in cursor.get("done") or []}
    current, after = cursor.get("table"), cursor.get("after")
    tables: dict[str, Position] = {}
    for table in configured:
        if table in done:
            tables[table] = Position(stream.lsn)
        elif table == current and isinstance(after, list):
            tables[table] = Position(stream.lsn, snapshot=ChunkCursor(tuple(str(v) for v in after)))
        else:
            tables[table] = Position(stream.lsn, snapshot=ChunkCursor())
    return Stored(Position(stream.lsn), tables)


def checkpoint_json(stream: dict[str, Any], tables: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint of a record: the stream's position (its JSON) and the tables' (their JSON)."""
    return {**stream, "tables": tables}


def positions_json(tables: dict[str, Position]) -> dict[str, Any]:
    return tables_json(tables, format_lsn)
