"""Per-table lag as provider gauges and a periodic log line."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable


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
