"""One poll's change queries, several tables at once, each on its own connection, their
rows streamed while the tables' changes are merged (stream.py).

FreeTDS, like the ODBC drivers without MARS, has one active result per connection, and
the merge needs the head of every table's result at once, so each open window holds a
connection until its rows are exhausted. Queries are started ``parallelism`` at a time
(the server works on them together); a window's connection goes back to the pool when
its rows run out, so small windows share a few connections and only windows larger than
one fetch keep theirs during the merge.
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from dstream_mssql_cdc.db import Pages

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from dstream_mssql_cdc.db import Rows, Session
    from dstream_mssql_cdc.windows import Window

Query = tuple[str, list[Any]] | Pages  # a statement and its parameters, or a window read in pages


class Readers:
    """Pooled sessions for change queries."""

    def __init__(self, factory: Callable[[], Session], parallelism: int) -> None:
        self.parallelism = parallelism
        self._factory = factory
        self._sessions: list[Session] = []
        self._idle: queue.SimpleQueue[Session] = queue.SimpleQueue()
        self._pool: ThreadPoolExecutor | None = None

    def open(self, windows: Sequence[Window], query: Callable[[Window], Query]) -> list[Rows]:
        """Start every window's query; return their rows (lazy), in ``windows`` order.

        Every query ends before a failure is reported, and then all of them are closed.
        """
        if not windows:
            return []
        if len(windows) == 1 or self.parallelism <= 1:
            opened: list[Rows] = []
            try:
                for window in windows:
                    opened.append(self._one(window, query))
            except BaseException:
                for rows in opened:
                    rows.close()
                raise
            return opened
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.parallelism, thread_name_prefix="mssql-cdc")
        futures = [self._pool.submit(self._one, w, query) for w in windows]
        wait(futures)
        failures = [f.exception() for f in futures if f.exception() is not None]
        if failures:
            for future in futures:
                if future.exception() is None:
                    future.result().close()
            raise failures[0]  # type: ignore[misc]
        return [f.result() for f in futures]

    def _one(self, window: Window, query: Callable[[Window], Query]) -> Rows:
        try:
            session = self._idle.get_nowait()
        except queue.Empty:
            session = self._factory()
            self._sessions.append(session)
        spec = query(window)
        try:
            rows = session.paged(spec) if isinstance(spec, Pages) else session.stream(spec[0], *spec[1])
        except BaseException:
            self._idle.put(session)
            raise
        if rows.complete:
            self._idle.put(session)
        else:
            rows.on_done = self._idle.put
        return rows

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for session in self._sessions:
            session.close()
        self._sessions.clear()
