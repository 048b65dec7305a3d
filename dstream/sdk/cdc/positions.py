"""Where a CDC stream is: operation names, :class:`Position`, :class:`ChunkCursor`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


INSERT = "Insert"
UPDATE = "Update"
DELETE = "Delete"
READ = "Read"  # a row of a snapshot
TRUNCATE = "Truncate"
SCHEMA_CHANGE = "SchemaChange"  # a table's captured columns changed (no row)

SnapshotMode = Literal["initial", "when_needed", "never", "incremental"]
# The modes of an engine without incremental snapshots yet (its config's type refuses the other).
BlockingSnapshotMode = Literal["initial", "when_needed", "never"]


class PositionError(ValueError):
    """A checkpoint that is not a CDC position (another provider's, or edited by hand)."""


# -- positions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkCursor:
    """How far one table's snapshot got: ``rows`` emitted, and the key of the last one.

    ``after`` holds the engine's text of each key column (in key order), which the engine
    turns back into a bound of its chunk query exactly (PostgreSQL: each type's output text
    and a cast; SQL Server: ``CONVERT`` with a round-trip style). None before the first row,
    and always for a table without a key: such a table restarts from its first row.
    """

    after: tuple[str, ...] | None = None
    rows: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"after": None if self.after is None else list(self.after), "rows": self.rows}

    @classmethod
    def from_json(cls, value: Any) -> ChunkCursor:
        if not isinstance(value, dict) or set(value) - {"after", "rows"}:
            raise PositionError(f'snapshot cursor {value!r} is not {{"after": [key...] | null, "rows": n}}')
        after, rows = value.get("after"), value.get("rows", 0)
        if after is not None and (not isinstance(after, list) or not all(isinstance(v, str) for v in after)):
            raise PositionError(f"snapshot cursor {value!r}: 'after' is not a key (a list of texts)")
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise PositionError(f"snapshot cursor {value!r}: 'rows' must be a non-negative integer")
        return cls(None if after is None else tuple(after), rows)


@dataclass(frozen=True, slots=True)
class IncrementalCursor:
    """How far a table's incremental snapshot got (kept in the table's checkpoint position).

    ``after``: the engine's text of the last key read (None: from the first row); ``rows``
    emitted and ``chunks`` read so far; ``where``: the filter of a partial snapshot;
    ``total``: the table's estimated row count when it started (for the percentage);
    ``started``: when it started (Unix time, seconds), for ``dstream status``'s rate.
    """

    after: tuple[str, ...] | None = None
    rows: int = 0
    chunks: int = 0
    where: str | None = None
    total: int | None = None
    started: float | None = None

    @property
    def percent(self) -> float | None:
        if not self.total:
            return None
        return min(100.0, 100.0 * self.rows / self.total)

    def rate(self, now: float) -> float | None:
        """Rows per second since the snapshot started (stops and restarts included)."""
        if self.started is None or now <= self.started:
            return None
        return self.rows / (now - self.started)

    def status(self, now: float) -> dict[str, Any]:
        """What ``dstream status`` shows of a snapshot under way (both CDC providers)."""
        out: dict[str, Any] = {"snapshot_rows": self.rows, "snapshot_chunks": self.chunks}
        if self.percent is not None:
            out["snapshot_percent"] = round(self.percent, 1)
        rate = self.rate(now)
        if rate is not None:
            out["snapshot_rows_per_second"] = round(rate, 1)
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "after": None if self.after is None else list(self.after),
            "rows": self.rows,
            "chunks": self.chunks,
        }
        if self.where is not None:
            out["where"] = self.where
        if self.total is not None:
            out["total"] = self.total
        if self.started is not None:
            out["started"] = self.started
        return out

    @classmethod
    def from_json(cls, value: Any) -> IncrementalCursor:
        if not isinstance(value, dict) or set(value) - {"after", "rows", "chunks", "where", "total", "started"}:
            raise PositionError(f"incremental snapshot cursor {value!r} is not {{'after': [...], 'rows': n, ...}}")
        after = value.get("after")
        if after is not None and (not isinstance(after, list) or not all(isinstance(v, str) for v in after)):
            raise PositionError(f"incremental snapshot cursor {value!r}: 'after' is not a key (a list of texts)")
        counts = [value.get("rows", 0), value.get("chunks", 0)]
        total = value.get("total")
        if total is not None:
            counts.append(total)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
            raise PositionError(f"incremental snapshot cursor {value!r}: counts must be non-negative integers")
        where = value.get("where")
        if where is not None and not isinstance(where, str):
            raise PositionError(f"incremental snapshot cursor {value!r}: 'where' must be a text")
        started = value.get("started")
        if started is not None and (isinstance(started, bool) or not isinstance(started, int | float)):
            raise PositionError(f"incremental snapshot cursor {value!r}: 'started' must be a Unix time")
        return cls(
            None if after is None else tuple(after),
            counts[0],
            counts[1],
            where,
            total if total is not None else None,
            None if started is None else float(started),
        )


@dataclass(frozen=True, slots=True)
class Position:
    """A point in a CDC stream; see the module docstring for the meaning of each field.

    JSON form (the checkpoint): ``{"lsn": "0/16B3748"}`` (between transactions),
    ``{"lsn": "0/16B3748", "index": 17}`` (inside the transaction that commits at that
    position, after its 17th change), ``{"lsn": ..., "snapshot": {"after": [...], "rows": n}}``
    (inside a table's snapshot; the table's stream starts at ``lsn`` when it is done).
    """

    lsn: int
    index: int | None = None
    snapshot: ChunkCursor | None = None
    # Inside an incremental snapshot (the table streams meanwhile; dstream.sdk.cdc.incremental).
    incremental: IncrementalCursor | None = None

    @property
    def key(self) -> tuple[int, int]:
        """Numeric order: snapshot positions come before the stream at the same ``lsn``."""
        return (self.lsn, -1 if self.snapshot is not None else (self.index or 0))

    def to_json(self, format_lsn: Callable[[int], str]) -> dict[str, Any]:
        out: dict[str, Any] = {"lsn": format_lsn(self.lsn)}
        if self.index:
            out["index"] = self.index
        if self.snapshot is not None:
            out["snapshot"] = self.snapshot.to_json()
        if self.incremental is not None:
            out["incremental"] = self.incremental.to_json()
        return out

    @classmethod
    def from_json(cls, value: Any, parse_lsn: Callable[[str], int]) -> Position:
        if not isinstance(value, dict) or not isinstance(value.get("lsn"), str):
            raise PositionError(f'checkpoint {value!r} is not a CDC position (expected {{"lsn": ...}})')
        try:
            lsn = parse_lsn(value["lsn"])
        except ValueError as exc:
            raise PositionError(f"checkpoint {value!r}: {exc}") from None
        index = value.get("index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
            raise PositionError(f"checkpoint {value!r}: 'index' must be a non-negative integer")
        snapshot = value.get("snapshot")
        cursor = ChunkCursor.from_json(snapshot) if snapshot is not None else None
        incremental = value.get("incremental")
        chunks = IncrementalCursor.from_json(incremental) if incremental is not None else None
        return cls(lsn, index or None, cursor, chunks)


def parse_tables(value: Any, parse_lsn: Callable[[str], int]) -> dict[str, Position]:
    """The ``"tables"`` object of a checkpoint → each table's position."""
    if not isinstance(value, dict):
        raise PositionError(f"checkpoint tables {value!r} is not an object of table → position")
    return {str(table): Position.from_json(raw, parse_lsn) for table, raw in value.items()}


def tables_json(positions: Mapping[str, Position], format_lsn: Callable[[int], str]) -> dict[str, Any]:
    return {table: position.to_json(format_lsn) for table, position in positions.items()}
