"""Engine-agnostic pieces of change-data-capture (CDC) input providers.

A CDC source (PostgreSQL logical decoding, SQL Server CDC tables, ...) delivers changes
grouped in transactions, in commit order, and a provider usually starts with a snapshot of
the rows that already exist. Whatever the engine, a provider needs the same few things,
which live here so every CDC provider shares them (this module imports only the standard
library, pydantic and ``dstream.sdk``: it ships in provider images):

- :class:`Position`: where a stream is. ``lsn`` is an *exclusive* bound on commit
  positions (every transaction whose commit position is below it was emitted), and
  ``index`` counts the changes already emitted of the transaction whose commit position
  is exactly ``lsn``. So a checkpoint can sit inside a large transaction and a restart
  neither skips nor repeats a change. ``snapshot`` (a :class:`ChunkCursor`) marks a table
  inside its snapshot, whose stream starts at ``lsn`` once the snapshot is done. The
  engine supplies how a commit position looks in JSON (PostgreSQL: ``"0/16B3748"``);
  comparisons are always numeric. :func:`parse_tables` / :func:`tables_json` turn the
  per-table positions of a checkpoint (``{"tables": {name: position}}``) to and from JSON.
- Snapshots: :func:`plan_snapshots` decides which tables are snapshotted (``snapshot =
  "initial" | "when_needed" | "never"``, Debezium's modes; tables added to ``tables``
  later are snapshotted on their own), :func:`read_chunks` reads a table in key-ordered
  chunks and gives each row the cursor after it, so a run killed inside a snapshot
  resumes after the last acknowledged row, not from the start, and :func:`read_metadata`
  gives each snapshot row a position unique within its table (its ``Key``; for a table
  without a key, ``Seq`` = the pass and the row's number in it).
- :class:`TransactionAssembler`: fed ``begin``/change/``commit`` events, it drops what an
  earlier run (or the connection before a reconnect) already emitted and hands back
  each change with the position *after* it. It looks one change ahead, so the last change
  of a transaction carries the position past the whole transaction, and it turns
  transactions with no captured change (other tables) into heartbeats.
- :class:`LagReporter`: per-table lag as provider gauges (``lag_seconds``, and
  ``lag_lsn_bytes`` where the engine's positions are byte offsets) and a periodic log line.
- :class:`PollInterval` (adaptive polling), :class:`Backoff` (reconnect delays with a
  total time budget) and :class:`CdcConfig` (the settings every CDC provider shares).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, Self, TypeVar

from pydantic import BeforeValidator, Field, field_validator, model_validator

from dstream.sdk import ProviderConfig
from dstream.sdk.units import Duration

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Collection, Iterator, Mapping, Sequence

__all__ = [
    "DELETE",
    "INSERT",
    "READ",
    "SCHEMA_CHANGE",
    "TRUNCATE",
    "UPDATE",
    "Backoff",
    "CdcConfig",
    "ChunkCursor",
    "LagReporter",
    "PollInterval",
    "Position",
    "PositionError",
    "SnapshotMode",
    "SnapshotPlan",
    "TransactionAssembler",
    "new_pass_id",
    "parse_tables",
    "plan_snapshots",
    "read_chunks",
    "read_metadata",
    "row_key",
    "tables_json",
]

# OperationType values (upstream names, PascalCase).
INSERT = "Insert"
UPDATE = "Update"
DELETE = "Delete"
READ = "Read"  # a row of a snapshot
TRUNCATE = "Truncate"
SCHEMA_CHANGE = "SchemaChange"  # a table's captured columns changed (no row)

SnapshotMode = Literal["initial", "when_needed", "never"]

T = TypeVar("T")
R = TypeVar("R")
E = TypeVar("E", bound=Exception)


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
        return cls(lsn, index or None, cursor)


def parse_tables(value: Any, parse_lsn: Callable[[str], int]) -> dict[str, Position]:
    """The ``"tables"`` object of a checkpoint → each table's position."""
    if not isinstance(value, dict):
        raise PositionError(f"checkpoint tables {value!r} is not an object of table → position")
    return {str(table): Position.from_json(raw, parse_lsn) for table, raw in value.items()}


def tables_json(positions: Mapping[str, Position], format_lsn: Callable[[int], str]) -> dict[str, Any]:
    return {table: position.to_json(format_lsn) for table, position in positions.items()}


# -- snapshots -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SnapshotPlan:
    """The tables a run snapshots before it streams: ``start`` from their first row,
    ``resume`` after the cursor their stored position holds (in ``tables`` order)."""

    start: tuple[str, ...] = ()
    resume: tuple[str, ...] = ()

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

    A table whose stored position is inside its snapshot resumes it in every mode: its
    stream starts at that snapshot's point, so leaving it unfinished would lose rows.
    """
    start: list[str] = []
    resume: list[str] = []
    for table in tables:
        position = stored.get(table)
        if position is not None and position.snapshot is not None:
            resume.append(table)
        elif mode != "never" and (position is None or (mode == "when_needed" and table in expired)):
            start.append(table)
    return SnapshotPlan(tuple(start), tuple(resume))


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


# -- transactions --------------------------------------------------------------------------

_SKIP_ALL = 1 << 62


class TransactionAssembler(Generic[T]):
    """Commit-ordered transactions in, ``(change, position after it)`` out.

    Call :meth:`begin` at each transaction's start with its commit position (``commit``)
    and the exclusive bound just past it (``end``: the next transaction's commit position
    can be no lower), :meth:`next_change` before decoding each change (0 means "emitted
    before: drop it undecoded", else the change's 1-based number in its transaction),
    :meth:`change` with the decoded change, and :meth:`commit` at its end. Each call may
    return the *previous* change with its position: positions are JSON-ready dicts.
    Between transactions, :meth:`reached` records that everything committed below a
    position was read (a heartbeat), and :meth:`checkpoint` returns the position when no
    explicit checkpoint carried it yet.

    ``done`` is where the stream is: what was handed out. It starts at the resume
    position (for a position inside a snapshot taken at ``lsn``: ``lsn``, where the
    stream after that snapshot starts), and it is what a reconnect re-reads the source up to.
    """

    def __init__(self, start: Position | None, format_lsn: Callable[[int], str]) -> None:
        self._format = format_lsn
        self._done = (start.lsn, start.index or 0) if start is not None else (0, 0)
        self._reported: tuple[int, int] = self._done
        self._commit = 0
        self._commit_text = ""
        self._end = 0
        self._end_text = ""
        self._seen = 0
        self._skip = 0
        self._pending: T | None = None
        self._in_txn = False

    @property
    def done(self) -> Position:
        lsn, index = self._done
        return Position(lsn, index or None)

    @property
    def in_transaction(self) -> bool:
        return self._in_txn

    def begin(self, commit: int, end: int, commit_text: str | None = None, end_text: str | None = None) -> bool:
        """Start a transaction; False when all of it was emitted before (drop its changes)."""
        self._commit, self._end = commit, end
        self._commit_text = commit_text if commit_text is not None else self._format(commit)
        self._end_text = end_text if end_text is not None else self._format(end)
        self._seen = 0
        self._pending = None
        self._in_txn = True
        done_lsn, done_index = self._done
        if commit < done_lsn:
            self._skip = _SKIP_ALL
            return False
        self._skip = done_index if commit == done_lsn else 0
        return True

    def next_change(self) -> int:
        """The next change's number in its transaction (from 1), or 0 when it was emitted before."""
        self._seen += 1
        return 0 if self._seen <= self._skip else self._seen

    def change(self, item: T) -> tuple[T, dict[str, Any]] | None:
        """Hold ``item``; return the previous change of the transaction with its position."""
        previous, self._pending = self._pending, item
        if previous is None:
            return None
        index = self._seen - 1
        self._done = (self._commit, index)
        return previous, {"lsn": self._commit_text, "index": index}

    def commit(self) -> tuple[T, dict[str, Any]] | None:
        """End the transaction; return its last change with the position past the transaction."""
        self._in_txn = False
        previous, self._pending = self._pending, None
        self._done = max(self._done, (self._end, 0))
        if previous is None:
            return None  # nothing captured in it: a heartbeat, see checkpoint()
        return previous, {"lsn": self._end_text}

    def abandon(self) -> None:
        """Forget a transaction cut short (the connection dropped): it is read again."""
        self._in_txn = False
        self._pending = None

    def reached(self, lsn: int) -> None:
        """Every transaction committed below ``lsn`` has been read (between transactions)."""
        if not self._in_txn and (lsn, 0) > self._done:
            self._done = (lsn, 0)

    def checkpoint(self) -> dict[str, Any] | None:
        """The current position, if no explicit checkpoint carried it yet (between transactions).

        Call it when caught up: the last change handed out may not have been checkpointed
        (the SDK checkpoints every N records or seconds, on the next record), and heartbeats
        move the position without any change.
        """
        if self._in_txn or self._done == self._reported:
            return None
        self._reported = self._done
        return self.done.to_json(self._format)


# -- lag -----------------------------------------------------------------------------------


class LagReporter:
    """Per-table lag behind the source's newest captured change, as provider gauges
    (``lag_seconds``; ``lag_lsn_bytes`` when given) at most every ``every`` seconds per table,
    and as one log line every ``log_every`` seconds."""

    def __init__(
        self,
        gauge: Callable[..., None],
        log: logging.Logger,
        every: float = 1.0,
        log_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gauge = gauge
        self._log = log
        self._every = every
        self._log_every = log_every
        self._clock = clock
        self._sent: dict[str, float] = {}
        self._logged = clock()
        self.current: dict[str, tuple[float | None, int | None]] = {}

    def observe(self, table: str, seconds: float | None, lsn_bytes: int | None = None) -> None:
        """The table's lag now (None: not known yet)."""
        seconds = None if seconds is None else max(0.0, seconds)
        lsn_bytes = None if lsn_bytes is None else max(0, lsn_bytes)
        self.current[table] = (seconds, lsn_bytes)
        now = self._clock()
        if now - self._sent.get(table, -self._every) < self._every:
            return
        self._sent[table] = now
        if seconds is not None:
            self._gauge("lag_seconds", seconds, table=table)
        if lsn_bytes is not None:
            self._gauge("lag_lsn_bytes", float(lsn_bytes), table=table)

    def forget(self, table: str) -> None:
        self.current.pop(table, None)
        self._sent.pop(table, None)

    def log_due(self) -> None:
        """Log every table's lag when ``log_every`` seconds have passed since the last line."""
        now = self._clock()
        if now - self._logged < self._log_every or not self.current:
            return
        self._logged = now
        self._log.info("lag behind the newest captured change: %s", self.summary())

    def summary(self) -> str:
        parts = []
        for table, (seconds, lsn_bytes) in sorted(self.current.items()):
            text = "unknown" if seconds is None else f"{seconds:.1f}s"
            if lsn_bytes is not None:
                text += f", {lsn_bytes} bytes of WAL"
            parts.append(f"{table} {text}")
        return "; ".join(parts)


# -- polling and reconnecting --------------------------------------------------------------


class PollInterval:
    """Adaptive polling: ``initial`` after data, doubling up to ``maximum`` while idle."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = max(maximum, initial)
        self._idle = initial

    def after_poll(self, changes: int, full: bool) -> float:
        """Seconds to wait before the next poll: 0 after a full batch (there is more)."""
        if full:
            self._idle = self.initial
            return 0.0
        if changes:
            self._idle = self.initial
            return self.initial
        wait = self._idle
        self._idle = min(self._idle * 2, self.maximum)
        return wait


class Backoff:
    """Exponential reconnect delays within a total time budget.

    :meth:`next_delay` returns the next wait, or None once ``timeout`` seconds have passed
    since the first failure (give up); :meth:`wait` does the usual log-and-sleep around it.
    :meth:`reset` after a success.
    """

    def __init__(
        self,
        timeout: float,
        initial: float = 0.5,
        maximum: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.initial = initial
        self.maximum = maximum
        self._clock = clock
        self._started: float | None = None
        self._delay = initial
        self.attempts = 0

    @property
    def elapsed(self) -> float:
        return 0.0 if self._started is None else self._clock() - self._started

    def next_delay(self) -> float | None:
        now = self._clock()
        if self._started is None:
            self._started = now
        self.attempts += 1
        left = self.timeout - (now - self._started)
        if left <= 0:
            return None
        delay = min(self._delay, left)
        self._delay = min(self._delay * 2, self.maximum)
        return delay

    def wait(
        self,
        exc: E,
        give_up: Callable[[E], Exception],
        log: logging.Logger,
        sleep: Callable[[float], bool],
        message: str = "%s; reconnecting in %.1fs",
    ) -> bool:
        """After the failure ``exc``: log ``message`` (``exc``, delay) and sleep the next delay.

        Returns ``sleep``'s answer (False: stop). Raises ``give_up(exc)`` once the budget is spent.
        """
        delay = self.next_delay()
        if delay is None:
            raise give_up(exc) from None
        # stacklevel: the record names the provider's loop, as when it logged this itself
        log.warning(message, exc, delay, stacklevel=2)
        return sleep(delay)

    def summary(self) -> str:
        """How the retries went, for the give-up message."""
        return f"gave up after {self.attempts} attempts in {self.elapsed:.0f}s (reconnect_timeout = {self.timeout:g})"

    def reset(self) -> None:
        self._started = None
        self._delay = self.initial
        self.attempts = 0


# -- config ----------------------------------------------------------------------------------


def _snapshot_mode(value: Any) -> Any:
    return "never" if value == "none" else value  # "none": the name this setting had before


class CdcConfig(ProviderConfig):
    """Settings every CDC input provider takes (engines add their connection settings)."""

    tables: list[str] = Field(
        min_length=1, description='tables to capture, as "schema.table" (or "table" for the default schema)'
    )
    snapshot: Annotated[SnapshotMode, BeforeValidator(_snapshot_mode)] = Field(
        default="initial",
        description=(
            "initial: a table without a position in the checkpoint (all of them on the first run, tables added "
            "later alone) first gets its existing rows (OperationType Read), then its changes; when_needed: also "
            'when the stored position is no longer held by the source; never: changes only ("none" is never)'
        ),
    )
    poll_interval: Duration = Field(
        default=0.2, gt=0, description='time between polls while changes arrive ("200ms", or seconds)'
    )
    max_poll_interval: Duration = Field(
        default=5.0, gt=0, description='polls back off (doubling) up to this while idle ("5s", or seconds)'
    )
    batch_size: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="changes read per poll and rows per snapshot chunk (a larger transaction comes whole)",
    )
    reconnect_timeout: Duration = Field(
        default=60.0, ge=0, description='how long to keep reconnecting (with backoff) after losing the server ("1m")'
    )

    @field_validator("tables")
    @classmethod
    def _unique_tables(cls, tables: list[str] | None) -> list[str] | None:
        if tables is None:  # a provider may make tables optional (e.g. "every captured table")
            return None
        cleaned = [t.strip() for t in tables]
        if any(not t for t in cleaned):
            raise ValueError("table names must not be empty")
        seen: set[str] = set()
        for name in cleaned:
            if name in seen:
                raise ValueError(f"table {name!r} is listed twice")
            seen.add(name)
        return cleaned

    @model_validator(mode="after")
    def _intervals(self) -> Self:
        if self.max_poll_interval < self.poll_interval:
            raise ValueError(
                f"max_poll_interval ({self.max_poll_interval:g}s) is shorter than poll_interval "
                f"({self.poll_interval:g}s)"
            )
        return self
