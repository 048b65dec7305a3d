"""Incremental snapshots on PostgreSQL: chunks between the changes of the stream, and signals.

The algorithm is ``dstream.sdk.cdc.IncrementalSnapshots`` (DBLog); this module adds
PostgreSQL's side:

- **Chunks**: each is read in a REPEATABLE READ, READ ONLY transaction of its own
  (:class:`~dstream_postgres_cdc.source.ChunkSession`), ended before the next poll: no
  transaction outlives one chunk.
- **The low watermark** is where the stream reader stopped when the chunk is read: the
  provider reads chunks in the same thread as the stream, between polls, so every change
  the stream hands out after that point is fed to the window. The one thing an LSN alone
  cannot tell is a transaction whose commit record was already decoded while it was still
  in-progress in the read's snapshot (the instant between writing a commit record and
  leaving the proc array): the read's ``pg_current_snapshot()`` is checked against the xids
  decoded since the last chunk, and the chunk is read again if it misses one of them
  (Debezium's read-only PostgreSQL variant uses the same xmin/xmax/xip test as its watermarks).
- **The high watermark** is a transactional logical decoding message written after the
  read ended: ``pg_logical_emit_message(true, 'dstream.watermark', '{"slot": ..., "id": ...}')``,
  which wal2json (format-version 2) decodes as ``{"action": "M", "transactional": true,
  "prefix": ..., "content": ...}`` inside its own B/C: no signal table, no write to a user
  table. At its commit the rows left in the chunk go out as ``Read``.
- **Signals** (``dstream snapshot``, or a DBA): a transactional message with the prefix
  ``dstream.signal`` and the content ``{"slot": "<slot>", "type": "execute-snapshot" |
  "stop-snapshot", "tables": [...], "where": {"<table>": "<condition>"}}``. It travels in the
  stream, so a running task acts on it in order, and a stopped one when it next runs.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from dstream.sdk import Record
from dstream.sdk.cdc import (
    IncrementalCursor,
    IncrementalSnapshots,
    Position,
    SnapshotProgress,
    key_of,
    read_metadata,
    row_key,
)
from dstream.sdk.cdc.pacing import ChunkPacer
from dstream_postgres_cdc.decode import converters
from dstream_postgres_cdc.lsn import format_lsn, parse_lsn

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from dstream_postgres_cdc.source import ChunkSession, Session, Table

WATERMARK = "dstream.watermark"
SIGNAL = "dstream.signal"
RETRIES = 50  # chunk reads that missed a decoded transaction, in a row, before giving up
_EPOCH = 1 << 32


def signal_sql() -> str:
    """The statement that sends a signal (what `dstream snapshot` runs, and a DBA can)."""
    return "SELECT pg_logical_emit_message(true, %s, %s)::text"


def signal_content(slot: str, kind: str, tables: list[str], where: dict[str, str] | None = None) -> str:
    body: dict[str, Any] = {"slot": slot, "type": kind, "tables": tables}
    if where:
        body["where"] = where
    return json.dumps(body)


def invisible(snapshot: str, xids: set[int]) -> set[int]:
    """The 32-bit xids (as wal2json prints them) that ``snapshot`` (``xmin:xmax:xip,...``,
    64-bit) does not see: in progress when it was taken, or started after it."""
    _, xmax_text, xip_text = snapshot.split(":")
    xmax = int(xmax_text)
    xip = {int(x) for x in xip_text.split(",") if x}
    unseen: set[int] = set()
    for xid in xids:
        full = (xmax & ~(_EPOCH - 1)) | xid  # in xmax's epoch, or the one before it
        if full > xmax + (_EPOCH >> 1):
            full -= _EPOCH
        if full >= xmax or full in xip:
            unseen.add(xid)
    return unseen


class Incremental:
    """The provider's incremental snapshots: fed by the decoder, read between polls."""

    def __init__(
        self,
        tables: list[Table],
        cursors: dict[str, IncrementalCursor],
        positions: dict[str, Position],
        slot: str,
        db: Session,
        chunks: ChunkSession,
        chunk_size: int,
        pause: float,
        numeric_as_string: bool,
        log: logging.Logger,
        gauge: Callable[..., None],
        sleep: Callable[[float], bool],
    ) -> None:
        self.tables = {t.qualified: t for t in tables}
        self.snaps: IncrementalSnapshots[Record] = IncrementalSnapshots(cursors)
        self.positions = positions  # every table's position (the provider's dict, updated here)
        self.slot = slot
        self.db = db
        self.chunks = chunks
        self.chunk_size = chunk_size
        self.pacer = ChunkPacer(pause, log=log)
        self.numeric_as_string = numeric_as_string
        self.log = log
        self.gauge = gauge
        self.sleep = sleep
        self.recent_xids: set[int] = set()  # transactions with captured changes decoded since the last read
        self._closing: str | None = None
        self._signals: list[dict[str, Any]] = []
        self.progress = SnapshotProgress(gauge, log)
        self.changed_positions = False

    # -- the stream ------------------------------------------------------------------------

    def change(self, xid: Any, record: Record) -> None:
        """A change the stream hands out (before any later watermark is seen)."""
        if isinstance(xid, int):
            self.recent_xids.add(xid)
        table = record.metadata.get("TableName")
        if not isinstance(table, str) or self.snaps.window != table:
            return
        if record.metadata.get("OperationType") == "Truncate":
            self.snaps.truncated(table)
            return
        key = self.tables[table].key
        self.snaps.changed(table, [key_of(record.metadata.get("Before"), key), key_of(record.data, key)])

    def message(self, row: dict[str, Any]) -> None:
        """A logical decoding message (wal2json's ``"M"``): a watermark or a signal of this slot."""
        prefix = row.get("prefix")
        if prefix not in (WATERMARK, SIGNAL):
            return
        try:
            content = json.loads(row.get("content") or "")
        except ValueError:
            self.log.warning("ignoring a %s message that is not JSON: %.200r", prefix, row.get("content"))
            return
        if not isinstance(content, dict) or content.get("slot") != self.slot:
            return  # another task's (every slot of the database sees every message)
        if prefix == WATERMARK:
            self._closing = str(content.get("id"))
        else:
            self._signals.append(content)

    def apply_signals(self) -> None:
        """At a transaction's commit, before its last change gets its position: its signals."""
        for signal in self._signals:
            self._apply(signal)
        self._signals.clear()

    def after_commit(self, stream: dict[str, Any], commit_lsn: str) -> list[Record]:
        """After a transaction was handed out: at a high watermark, the chunk's rows."""
        if self._closing is None:
            return []
        watermark, self._closing = self._closing, None
        return self._close(watermark, stream, commit_lsn)

    def positions_json(self) -> dict[str, Any] | None:
        """Every table's position as JSON when it changed since the last call, else None."""
        if not self.changed_positions:
            return None
        self.changed_positions = False
        return self._positions_json()

    def _close(self, watermark: str, stream: dict[str, Any], commit_lsn: str) -> list[Record]:
        closed = self.snaps.close(watermark)
        if closed is None:
            return []  # an earlier run's chunk: read again from the checkpoint's cursor
        name = closed.table
        start = self.positions[name].lsn
        pass_id = watermark[:8]
        out: list[Record] = []
        for record, cursor in closed.rows:
            record.metadata = read_metadata(name, commit_lsn, record.metadata.get("Key"), pass_id, cursor.rows)
            self.positions[name] = Position(start, incremental=cursor)
            record.position = {**stream, "tables": self._positions_json()}
            out.append(record)
        self.positions[name] = Position(start) if closed.finished else Position(start, incremental=closed.cursor)
        self.changed_positions = True
        self.pacer.released((parse_lsn(stream["lsn"]), int(stream.get("index") or 0)), name, closed.cursor.rows)
        self.progress.report(name, closed.cursor, closed.finished)
        return out

    def committed(self, position: dict[str, Any]) -> None:
        """The orchestrator persisted ``position`` (one of ours, its ``lsn`` already checked)."""
        tables = position.get("tables")
        stream = (parse_lsn(position["lsn"]), int(position.get("index") or 0))
        self.pacer.committed(stream, tables if isinstance(tables, dict) else {})

    def abandon(self) -> None:
        """The connection dropped: the open chunk is read again, and the transaction cut
        short (with its messages) is read again from its start."""
        self.snaps.abandon()
        self._closing = None
        self._signals.clear()
        self.chunks.close()

    # -- reading chunks (between polls) ----------------------------------------------------

    def due(self) -> bool:
        """A chunk can be read now: none is open, a table waits, and the pacer allows it
        (the throttle, and fewer than two released chunks unacknowledged by the output)."""
        return self.snaps.next_chunk() is not None and self.pacer.ready()

    def read_chunk(self) -> bool:
        """Read the next chunk and write its high watermark; False when there is nothing to do."""
        nxt = self.snaps.next_chunk()
        if nxt is None:
            return False
        name, cursor = nxt
        table = self.tables[name]
        for _ in range(RETRIES):
            snapshot, rows = self.chunks.read(table, cursor.after, self.chunk_size, cursor.where)
            missed = invisible(snapshot, self.recent_xids)
            if not missed:
                break
            # Decoded, so committed, but not yet visible to a snapshot taken after: only for an
            # instant. Reading now would give rows older than changes already emitted.
            self.log.debug("chunk of %s missed transactions %s; reading it again", name, sorted(missed))
            if not self.sleep(0.01):
                return False
        else:
            self.log.warning("chunk of %s kept missing decoded transactions; trying at the next poll", name)
            return False
        self.recent_xids.clear()
        watermark = uuid.uuid4().hex
        self.snaps.open(watermark, name, self._records(table, rows), self.chunk_size)
        self.db.query(
            "SELECT pg_logical_emit_message(true, %s, %s)",
            (WATERMARK, json.dumps({"slot": self.slot, "id": watermark})),
        )
        self.pacer.read()
        return True

    def _records(self, table: Table, rows: list[tuple[Any, ...]]) -> list[tuple[Any, tuple[str, ...], Record]]:
        convert = converters(table, self.numeric_as_string)
        names = [c.name for c in table.columns]
        width = len(table.key)
        out = []
        for row in rows:
            data = {
                column: (value if conv is None or value is None else conv(value))
                for column, conv, value in zip(names, convert, row[width:], strict=True)
            }
            key = row_key(data, table.key)
            out.append((key_of(data, table.key), tuple(row[:width]), Record(data, {"Key": key})))
        return out

    # -- signals and progress --------------------------------------------------------------

    def start(self, name: str, where: str | None) -> bool:
        """Snapshot ``name`` (again) from its first row; False (logged) when it cannot be."""
        table = self.tables.get(name)
        if table is None:
            self.log.error("snapshot signal for %s ignored: the task does not capture it", name)
            return False
        if not table.key:
            self.log.error(
                "snapshot signal for %s ignored: it has no primary key (nor REPLICA IDENTITY USING INDEX) to read "
                'it in key order; snapshot it with snapshot = "initial" (a new task) instead',
                name,
            )
            return False
        total = self.chunks.estimate(table)
        self.snaps.start(name, where, total)
        self.positions[name] = Position(self.positions.get(name, Position(0)).lsn, incremental=self.snaps.cursors[name])
        self.progress.started(name)
        self.changed_positions = True
        self.log.info("incremental snapshot of %s%s starts", name, f" where {where}" if where else "")
        return True

    def _apply(self, signal: dict[str, Any]) -> None:
        tables = signal.get("tables")
        where = signal.get("where") or {}
        if not isinstance(tables, list) or not isinstance(where, dict):
            self.log.warning("ignoring a malformed signal: %.300r", signal)
            return
        kind = signal.get("type")
        for name in (str(t) if "." in str(t) else f"public.{t}" for t in tables):
            if kind == "execute-snapshot":
                condition = where.get(name)
                self.start(name, str(condition) if condition else None)
            elif kind == "stop-snapshot":
                if self.snaps.stop(name):
                    self.positions[name] = Position(self.positions[name].lsn)
                    self.changed_positions = True
                    self.log.info("incremental snapshot of %s stopped by a signal", name)
            else:
                self.log.warning("ignoring a signal of unknown type %r", kind)
                return

    def _positions_json(self) -> dict[str, Any]:
        return {name: position.to_json(format_lsn) for name, position in self.positions.items()}
