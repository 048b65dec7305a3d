"""Incremental snapshot chunks paced by what the output has acknowledged.

Without pacing, a provider reads chunks as fast as the source answers and its rows queue in
the pipeline's buffers (its stdout, the relay, the output's batches): a live change emitted
behind them waits until they drain, seconds for a large table (issue 24 measured a 3.5-4 s
p99 on a 1M-row table). The orchestrator tells an input which positions it persisted after
the output acknowledged them (``committed``), so the provider knows how much of what it
handed out is still in flight. :class:`ChunkPacer` allows the next chunk only while fewer
than ``in_flight`` released chunks wait for that acknowledgement: at most about
``in_flight * chunk_size`` snapshot rows are ahead of a live change, however slow the output.

Pacing only orders work; it never decides what is emitted, so a lost or late
acknowledgement costs time, not data. A chunk unacknowledged for ``stall_after`` seconds
(an output that stalls, a store that does not answer) no longer holds the next one back,
with a warning, so a snapshot cannot hang on a bookkeeping mismatch.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Mapping

IN_FLIGHT = 2  # released chunks awaiting acknowledgement before the next read
STALL_AFTER = 30.0  # seconds a chunk may go unacknowledged before pacing gives way


@dataclass(frozen=True, slots=True)
class _Released:
    stream: tuple[int, int]  # the stream position (lsn, index) the chunk's rows carry
    table: str
    rows: int  # the table's snapshot rows once the whole chunk is emitted
    at: float


class ChunkPacer:
    """Whether the next chunk may be read: the throttle (``pause``) and the acknowledgements.

    Pacing by acknowledgement applies once :meth:`expect_commits` was called (the host
    delivers ``committed`` positions); without it only ``pause`` applies.
    """

    def __init__(
        self,
        pause: float = 0.0,
        in_flight: int = IN_FLIGHT,
        stall_after: float = STALL_AFTER,
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pause = pause
        self.in_flight = in_flight
        self.stall_after = stall_after
        self.log = log
        self.clock = clock
        self._pending: deque[_Released] = deque()
        self._last_read: float | None = None
        self._paced = False
        self._warned = False

    def expect_commits(self) -> None:
        self._paced = True

    @property
    def waiting(self) -> int:
        """Released chunks not acknowledged yet."""
        return len(self._pending)

    def read(self) -> None:
        """A chunk was read now (the throttle counts from here)."""
        self._last_read = self.clock()

    def released(self, stream: tuple[int, int], table: str, rows: int) -> None:
        """A chunk's rows were handed out carrying stream position ``stream``; once all of
        them are out, ``table``'s snapshot has emitted ``rows`` rows."""
        if self._paced:
            self._pending.append(_Released(stream, table, rows, self.clock()))

    def committed(self, stream: tuple[int, int], tables: Mapping[str, Any]) -> None:
        """The orchestrator persisted a position: ``stream`` (lsn, index) and its ``tables``
        part as JSON (a table inside an incremental snapshot has ``{"incremental": {"rows": n}}``)."""
        while self._pending and _covers(stream, tables, self._pending[0]):
            self._pending.popleft()
        if not self._pending:
            self._warned = False

    def ready(self) -> bool:
        now = self.clock()
        if self._last_read is not None and now - self._last_read < self.pause:
            return False
        if len(self._pending) < self.in_flight:
            return True
        oldest = self._pending[0]
        if now - oldest.at < self.stall_after:
            return False
        if not self._warned and self.log is not None:
            self.log.warning(
                "a snapshot chunk of %s has not been acknowledged by the output for %.0fs; reading on",
                oldest.table,
                now - oldest.at,
            )
            self._warned = True
        return True


def _covers(stream: tuple[int, int], tables: Mapping[str, Any], chunk: _Released) -> bool:
    """Does the persisted position come at or after the chunk's last row?"""
    if stream != chunk.stream:
        return stream > chunk.stream
    # At the chunk's own stream position: its rows, then the checkpoint after them, which
    # differ only in how many of the table's rows they count.
    entry = tables.get(chunk.table)
    incremental = entry.get("incremental") if isinstance(entry, dict) else None
    if not isinstance(incremental, dict):
        return True  # the table's snapshot ended with this chunk: only positions after it say so
    rows = incremental.get("rows")
    return isinstance(rows, int) and rows >= chunk.rows
