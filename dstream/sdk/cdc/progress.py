"""How far each table's incremental snapshot got, as provider gauges: the same four for every engine.

``snapshot_rows`` and ``snapshot_chunks`` (from the table's :class:`IncrementalCursor`),
``snapshot_percent`` (its rows against ``total``, the engine's row estimate when the snapshot
started; 100 when it finished; absent while there is no estimate) and
``snapshot_rows_per_second`` (rows emitted since this run started or resumed the snapshot,
over the time since: a restart does not count the time the task was down).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from dstream.sdk.cdc.positions import IncrementalCursor


class SnapshotProgress:
    """The gauges of every table's incremental snapshot, and a log line when one finishes."""

    def __init__(
        self,
        gauge: Callable[..., None],
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gauge = gauge
        self.log = log
        self.clock = clock
        self._since: dict[str, tuple[float, int]] = {}  # table → (when this run took it up, rows then)

    def started(self, table: str, rows: int = 0) -> None:
        """This run starts ``table``'s snapshot (``rows`` 0) or resumes it after ``rows``."""
        self._since[table] = (self.clock(), rows)

    def rate(self, table: str, rows: int) -> float:
        began, rows_then = self._since.setdefault(table, (self.clock(), rows))
        elapsed = self.clock() - began
        return (rows - rows_then) / elapsed if elapsed > 0 else 0.0

    def report(self, table: str, cursor: IncrementalCursor, finished: bool) -> None:
        """After a chunk of ``table`` went out: ``cursor`` is the table's cursor after it."""
        rate = self.rate(table, cursor.rows)
        self.gauge("snapshot_rows", float(cursor.rows), table=table)
        self.gauge("snapshot_chunks", float(cursor.chunks), table=table)
        self.gauge("snapshot_rows_per_second", rate, table=table)
        percent = 100.0 if finished else cursor.percent
        if percent is not None:
            self.gauge("snapshot_percent", percent, table=table)
        if finished:
            self._since.pop(table, None)
            self.log.info(
                "incremental snapshot of %s done: %d rows in %d chunks (%.0f rows/s)",
                table,
                cursor.rows,
                cursor.chunks,
                rate,
            )
