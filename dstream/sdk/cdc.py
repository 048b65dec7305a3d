"""Engine-agnostic pieces of change-data-capture (CDC) input providers.

A CDC source (PostgreSQL logical decoding, SQL Server CDC tables, ...) delivers changes
grouped in transactions, in commit order. Whatever the engine, a provider needs the same
few things, which live here so every CDC provider shares them (this module imports only
the standard library, pydantic and ``dstream.sdk``: it ships in provider images):

- :class:`Position`: where the stream is. ``lsn`` is an *exclusive* bound on commit
  positions (every transaction whose commit position is below it was emitted), and
  ``index`` counts the changes already emitted of the transaction whose commit position
  is exactly ``lsn``. So a checkpoint can sit inside a large transaction and a restart
  neither skips nor repeats a change. ``snapshot`` marks a position inside an initial
  snapshot (by table and key). The engine supplies how a commit position looks in JSON
  (PostgreSQL: ``"0/16B3748"``); comparisons are always numeric.
- :class:`TransactionAssembler`: fed ``begin``/change/``commit`` events, it drops what an
  earlier run (or the connection before a reconnect) already emitted and hands back
  each change with the position *after* it. It looks one change ahead, so the last change
  of a transaction carries the position past the whole transaction, and it turns
  transactions with no captured change (other tables) into heartbeats.
- :class:`PollInterval`: adaptive polling, ``poll_interval`` doubling up to
  ``max_poll_interval`` while idle, back to ``poll_interval`` on data.
- :class:`Backoff`: reconnect delays with a total time budget.
- :class:`CdcConfig`: the config settings every CDC provider shares.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar

from pydantic import Field, field_validator, model_validator

from dstream.sdk.base import ProviderConfig

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

__all__ = [
    "DELETE",
    "INSERT",
    "READ",
    "TRUNCATE",
    "UPDATE",
    "Backoff",
    "CdcConfig",
    "PollInterval",
    "Position",
    "PositionError",
    "SnapshotCursor",
    "TransactionAssembler",
]

# OperationType values (upstream names, PascalCase).
INSERT = "Insert"
UPDATE = "Update"
DELETE = "Delete"
READ = "Read"  # a row of the initial snapshot
TRUNCATE = "Truncate"

T = TypeVar("T")
E = TypeVar("E", bound=Exception)


class PositionError(ValueError):
    """A checkpoint that is not a CDC position (another provider's, or edited by hand)."""


@dataclass(frozen=True, slots=True)
class SnapshotCursor:
    """Progress of an initial snapshot: ``done`` tables are complete; of ``table``, the rows
    up to and including the key ``after`` (the key's text form, in key order) are emitted."""

    done: tuple[str, ...] = ()
    table: str | None = None
    after: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"done": list(self.done)}
        if self.table is not None:
            out["table"] = self.table
            out["after"] = None if self.after is None else list(self.after)
        return out

    @classmethod
    def from_json(cls, value: Any) -> SnapshotCursor:
        if not isinstance(value, dict):
            raise PositionError(f"snapshot cursor {value!r} is not an object")
        done = value.get("done") or []
        table = value.get("table")
        after = value.get("after")
        if not isinstance(done, list) or not all(isinstance(t, str) for t in done):
            raise PositionError(f"snapshot cursor {value!r}: 'done' is not a list of table names")
        if table is not None and not isinstance(table, str):
            raise PositionError(f"snapshot cursor {value!r}: 'table' is not a table name")
        if after is not None and not isinstance(after, list):
            raise PositionError(f"snapshot cursor {value!r}: 'after' is not a key")
        return cls(tuple(done), table, None if after is None else tuple(str(v) for v in after))


@dataclass(frozen=True, slots=True)
class Position:
    """A point in a CDC stream; see the module docstring for the meaning of each field.

    JSON form (the checkpoint): ``{"lsn": "0/16B3748"}`` (between transactions),
    ``{"lsn": "0/16B3748", "index": 17}`` (inside the transaction that commits at that
    position, after its 17th change), ``{"lsn": ..., "snapshot": {...}}`` (inside the initial
    snapshot taken at ``lsn``).
    """

    lsn: int
    index: int | None = None
    snapshot: SnapshotCursor | None = None

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
        cursor = SnapshotCursor.from_json(snapshot) if snapshot is not None else None
        return cls(lsn, index or None, cursor)


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


class CdcConfig(ProviderConfig):
    """Settings every CDC input provider takes (engines add their connection settings)."""

    tables: list[str] = Field(
        min_length=1, description='tables to capture, as "schema.table" (or "table" for the default schema)'
    )
    snapshot: Literal["none", "initial"] = Field(
        default="none", description="initial: first emit the existing rows (OperationType Read), then the changes"
    )
    poll_interval: float = Field(default=0.2, gt=0, description="seconds between polls while changes arrive")
    max_poll_interval: float = Field(
        default=5.0, gt=0, description="polls back off (doubling) up to this many seconds while idle"
    )
    batch_size: int = Field(
        default=10_000, ge=1, le=1_000_000, description="changes read per poll (a larger transaction comes whole)"
    )
    reconnect_timeout: float = Field(
        default=60.0, ge=0, description="seconds to keep reconnecting (with backoff) after losing the server"
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
                f"max_poll_interval ({self.max_poll_interval:g}) is shorter than poll_interval ({self.poll_interval:g})"
            )
        return self
