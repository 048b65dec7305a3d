"""Is CDC healthy? The capture job, and lag against the cleanup job's retention. Pure: fed
what the server reported and a clock.

Capture job: SQL Server Agent runs it (the replication log reader instead, on databases
that are also published). It reads the transaction log and records each commit it
processed in ``cdc.lsn_time_mapping``, also in quiet periods ("entries may also be logged
for which there are no change table entries"), so ``sys.fn_cdc_get_max_lsn()`` follows
the log. :class:`CaptureMonitor` reports the job as not running when the max LSN is NULL
(it never captured anything), or when the max LSN stays frozen for ``timeout`` seconds
while the end of the log (``sys.dm_db_log_stats``) keeps moving. The log's end is taken as
a baseline only ``settle`` seconds after the max LSN last moved, so the job's own writes
just after a capture do not count as "the log moves".

Retention: the cleanup job deletes changes older than ``retention`` minutes (default 4320,
three days) measured back from the newest capture. A table whose oldest unread commit is
that old loses changes at the next cleanup, and the next run stops with "purged"
(stream.py); :func:`lag_warning` warns once the lag passes ``ratio`` of the retention.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dstream_mssql_cdc.lsn import format_lsn

if TYPE_CHECKING:
    from collections.abc import Callable

HINT = (
    "is SQL Server Agent running (for the Linux image: MSSQL_AGENT_ENABLED=true) and the capture job started "
    "(EXEC sys.sp_cdc_start_job @job_type = N'capture')? Changes are not captured until it runs"
)


class CaptureMonitor:
    def __init__(self, timeout: float, settle: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.settle = settle
        self._clock = clock
        self._max: int | None = None
        self._max_changed: float | None = None
        self._log_base: int | None = None
        self._seen = False
        self.problem: str | None = None  # the current diagnosis, None when healthy
        self._warned: float | None = None

    def observe(self, max_lsn: int | None, log_end: int | None) -> tuple[str, str] | None:
        """Record one poll; return ("warning"|"info", message) when something should be logged."""
        now = self._clock()
        if not self._seen or max_lsn != self._max:
            self._seen = True
            self._max = max_lsn
            self._max_changed = now
            self._log_base = None
        problem: str | None = None
        since = now - (self._max_changed or now)
        if max_lsn is None:
            problem = (
                "the CDC capture job is not running: sys.fn_cdc_get_max_lsn() is NULL, no change has been captured "
                f"in this database yet; {HINT}"
            )
        elif log_end is not None:
            if self._log_base is None and since >= self.settle:
                self._log_base = log_end
            elif self._log_base is not None and log_end != self._log_base and since >= self.timeout:
                problem = (
                    f"the CDC capture job is not running: sys.fn_cdc_get_max_lsn() has stayed at "
                    f"{format_lsn(max_lsn)} for {since:.0f}s while the transaction log moved on (to "
                    f"{format_lsn(log_end)}); {HINT}"
                )
        return self._report(problem, now)

    def wants_log_end(self, max_lsn: int | None) -> bool:
        """Whether :meth:`observe` would use the log's end with this ``max_lsn`` (reading it is a query)."""
        if max_lsn is None:
            return False
        if not self._seen or max_lsn != self._max:
            return self.settle <= 0  # observe restarts the settle time: since = 0, no baseline
        now = self._clock()
        since = now - (self._max_changed or now)
        return since >= (self.settle if self._log_base is None else self.timeout)

    def _report(self, problem: str | None, now: float) -> tuple[str, str] | None:
        previous, self.problem = self.problem, problem
        if problem is None:
            self._warned = None
            return ("info", "the CDC capture job is capturing changes again") if previous is not None else None
        if self._warned is None or now - self._warned >= max(self.timeout, 60.0):
            self._warned = now
            return ("warning", problem)
        return None


def lag_warning(table: str, lag_seconds: float | None, retention_minutes: int | None, ratio: float = 0.8) -> str | None:
    """A warning when ``table`` lags close to the cleanup retention (None: all is well or unknown)."""
    if lag_seconds is None or not retention_minutes or retention_minutes <= 0:
        return None
    retention = retention_minutes * 60.0
    if lag_seconds < ratio * retention:
        return None
    return (
        f"{table} is {_duration(lag_seconds)} behind the newest captured change, close to the CDC cleanup "
        f"retention of {_duration(retention)} ({retention_minutes} minutes): changes older than that are deleted "
        f"and the stream would stop with a purge error; speed up the output, or raise the retention "
        f"(EXEC sys.sp_cdc_change_job @job_type = N'cleanup', @retention = <minutes>)"
    )


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.0f}min"
    return f"{seconds:.0f}s"
