"""Incremental snapshots while streaming: the DBLog watermark algorithm, engine-agnostic.

A table's rows are read in key-ordered chunks *between* the changes of the stream, each in
a short transaction of its own, instead of in one transaction held open for the whole table
(Andreakis and Papapanagiotou, "DBLog: A Watermark Based Change-Data-Capture Framework",
2020; Debezium's ``AbstractIncrementalSnapshotChangeEventSource``). Per chunk the engine:

1. reads the chunk (rows with a key above the table's cursor, optional ``where``, key order,
   ``chunk_size`` rows) while the stream is caught up to some point W (the low watermark:
   here implicit, the stream reader is where it stopped; see :meth:`IncrementalSnapshots.open`),
2. writes a high watermark H into the source's change stream, after the read's transaction,
3. streams on: every change to a key of the chunk between W and H drops that row from the
   chunk (:meth:`IncrementalSnapshots.changed`): the change carries a state at least as new,
4. at H (:meth:`IncrementalSnapshots.close`) emits the rows left as ``Read``, each with the
   cursor after it, so a checkpoint after any of them resumes after that key.

A consumer that applies the envelopes in order ends with the source's rows: every change
is emitted where the stream has it, and a chunk row goes out only if no change to its key
came between the read and H, so it is never older than what was emitted before it, and
every change after H is newer than it. Memory is one chunk; no transaction outlives a read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dstream.sdk.cdc.positions import IncrementalCursor

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

R = TypeVar("R")
Key = tuple[Any, ...]  # a row's key values, as the stream's changes carry them


@dataclass
class _Window(Generic[R]):
    watermark: str
    table: str
    rows: dict[Key, tuple[tuple[str, ...], R]]  # key → (key text, row), in key order
    last: tuple[str, ...] | None  # the key text of the chunk's last row read
    complete: bool  # fewer rows than asked: the table's last chunk
    read: int = 0


@dataclass
class Closed(Generic[R]):
    """What a high watermark releases: the rows left in the chunk, each with the cursor
    after it; ``cursor`` after the whole chunk; ``finished`` when the table is done."""

    table: str
    rows: list[tuple[R, IncrementalCursor]] = field(default_factory=list)
    cursor: IncrementalCursor = field(default_factory=IncrementalCursor)
    finished: bool = False
    dropped: int = 0


class IncrementalSnapshots(Generic[R]):
    """The tables being snapshotted incrementally (a queue, one at a time) and the open chunk.

    No I/O: the engine reads chunks, writes watermarks and feeds the stream's changes in.
    ``cursors`` comes from the checkpoint (tables whose snapshot is under way) and stays in
    the order the snapshots were asked for.
    """

    def __init__(self, cursors: Mapping[str, IncrementalCursor] | None = None) -> None:
        self.cursors: dict[str, IncrementalCursor] = dict(cursors or {})
        self._window: _Window[R] | None = None

    @property
    def window(self) -> str | None:
        """The table whose chunk is open (read, its high watermark not yet streamed)."""
        return None if self._window is None else self._window.table

    def __bool__(self) -> bool:
        return bool(self.cursors)

    def start(self, table: str, where: str | None = None, total: int | None = None) -> None:
        """Snapshot ``table`` (again) from its first row; an open chunk of it is forgotten.

        A table whose snapshot is under way starts again with the rows of both requests
        (``where`` of either, none when one has none), so no request narrows another: a
        filtered backfill asked during a full snapshot must not cut the rest of it short.
        """
        if self._window is not None and self._window.table == table:
            self._window = None
        current = self.cursors.pop(table, None)
        if current is not None and where != current.where:
            where = None if where is None or current.where is None else f"({current.where}) OR ({where})"
        self.cursors[table] = IncrementalCursor(where=where, total=total, started=round(time.time(), 3))

    def stop(self, table: str) -> bool:
        """Stop snapshotting ``table`` (its rows so far stay emitted); False: it was not."""
        if self._window is not None and self._window.table == table:
            self._window = None
        return self.cursors.pop(table, None) is not None

    def next_chunk(self) -> tuple[str, IncrementalCursor] | None:
        """The table and cursor of the next chunk to read; None while a chunk is open or when done."""
        if self._window is not None or not self.cursors:
            return None
        table = next(iter(self.cursors))
        return table, self.cursors[table]

    def open(
        self,
        watermark: str,
        table: str,
        rows: Iterable[tuple[Key, tuple[str, ...], R]],
        chunk_size: int,
    ) -> None:
        """The chunk was read: ``rows`` as (key, key text, row), in key order.

        Call it with the stream caught up to a point W such that every transaction the
        read's snapshot sees is at or before W in the stream, and every change the stream
        hands out after W is fed to :meth:`changed` until the high watermark ``watermark``
        (written after the read's transaction ended) reaches :meth:`close`.
        """
        if table not in self.cursors:
            raise ValueError(f"{table} is not being snapshotted")
        held: dict[Key, tuple[tuple[str, ...], R]] = {}
        last: tuple[str, ...] | None = None
        for key, text, row in rows:
            held[key] = (text, row)
            last = text
        self._window = _Window(watermark, table, held, last, len(held) < chunk_size, len(held))

    def changed(self, table: str, keys: Iterable[Key | None]) -> None:
        """A change the stream handed out touched these keys of ``table`` (old and new key)."""
        window = self._window
        if window is None or window.table != table:
            return
        for key in keys:
            if key is not None:
                window.rows.pop(key, None)

    def truncated(self, table: str) -> None:
        """``table`` was truncated: no row of the open chunk is current any more."""
        if self._window is not None and self._window.table == table:
            self._window.rows.clear()

    def abandon(self) -> None:
        """Forget the open chunk (the connection dropped: its watermark may never come); the
        chunk is read again from the table's cursor."""
        self._window = None

    def close(self, watermark: str) -> Closed[R] | None:
        """The high watermark ``watermark`` was streamed: the chunk's rows left, with cursors.

        None for a watermark that is not the open chunk's (an earlier run's, read again
        after a restart): such a chunk is read again, from the checkpoint's cursor.
        """
        window = self._window
        if window is None or window.watermark != watermark:
            return None
        self._window = None
        cursor = self.cursors[window.table]
        out: Closed[R] = Closed(window.table, dropped=window.read - len(window.rows))
        rows = cursor.rows
        for text, row in window.rows.values():
            rows += 1
            out.rows.append((row, replace(cursor, after=text, rows=rows)))
        after = window.last if window.last is not None else cursor.after
        out.cursor = replace(cursor, after=after, rows=rows, chunks=cursor.chunks + 1)
        if window.complete:
            out.finished = True
            del self.cursors[window.table]
        else:
            self.cursors[window.table] = out.cursor
        return out


def key_of(values: Mapping[str, Any] | None, columns: Sequence[str]) -> Key | None:
    """A row's key values (None when a column is missing: not a row of a keyed table)."""
    if not values or not columns or any(c not in values for c in columns):
        return None
    return tuple(values[c] for c in columns)
