"""Incremental snapshots on SQL Server: DBLog chunks between CDC changes, watermarks as
INSERTs into a CDC-enabled signal table (Debezium's design for SQL Server).

The algorithm is ``dstream.sdk.cdc.IncrementalSnapshots`` (DBLog); this module adds what
SQL Server needs, with no I/O (the provider runs the statements and feeds the change rows):

- **Explicit low and high watermarks.** SQL Server's CDC has no logical messages, and the
  capture job harvests the log some time after a commit, so "the stream is caught up to
  here" says nothing about what a read sees. Per chunk (Debezium's
  ``AbstractIncrementalSnapshotChangeEventSource.readChunk``: ``emitWindowOpen``, the chunk
  query, ``emitWindowClose``; ``SignalBasedIncrementalSnapshotChangeEventSource.insertOpenWindow``
  inserts ``<chunk id>-open`` with type ``snapshot-window-open``, the closer ``<chunk id>-close``,
  ``snapshot-window-close``, at debezium/debezium aad5519902):

  1. INSERT ``(<id>-open, 'snapshot-window-open', ...)`` into the signal table, committed;
  2. read the chunk (``sql.snapshot_query``; one statement, its own short transaction);
  3. INSERT ``(<id>-close, 'snapshot-window-close', ...)``, committed.

  The signal table's change table is read with the captured tables, merged in commit order
  (``__$start_lsn``, then the order inside a transaction). The chunk's rows are held until the
  stream reaches the open row (:meth:`Watermarks.signal`); every change between the open and
  the close row drops its keys' rows (old key and new: an update of the key both); at the
  close row the rows left go out as ``Read``. Why it holds: a row value the read returned is
  the latest committed when it was read, which is after the open row committed, so any newer
  change to that key commits after the open row: inside the window (the row is dropped and
  the change emitted) or after the close row (emitted after the row). A change committed
  before the open row is older than what the read saw, and was emitted before the row.
- **Restarts**: the checkpoint holds each table's cursor after its last emitted chunk row
  (``Position.incremental``); open/close rows of a chunk that never closed in this run are
  ignored (their id is not the pending chunk's) and that chunk is read again.
- **Signals**: ``execute-snapshot`` and ``stop-snapshot`` rows of the same table, with
  Debezium's ``data`` (``signalling.adoc``, "Ad hoc snapshot signals": ``{"data-collections":
  [...], "type": "incremental", "additional-conditions": [{"data-collection": ..., "filter":
  ...}]}``), act in stream order.
- **Signals sent before a task's first run** (a DBA's INSERT, or ``dstream snapshot`` on a task
  that never ran): ``dstream init`` writes the task's mark row (``MARK``, data ``{"task": ...,
  "lsn": <the first LSN a later signal can have>}``), and a run with no stored position for the
  signal table reads its changes from there, so every signal sent after ``init`` reaches the
  task, as one sent while
  it was stopped does. (Debezium does not: its first start streams from the max LSN,
  SqlServerSnapshotChangeEventSource.determineSnapshotOffset, and its initial snapshot skips
  the signal table, RelationalSnapshotChangeEventSource.prepareTables.) A run that snapshots
  tables from their first row (``snapshot = "incremental"``: a first run, tables added) also
  INSERTs a ``RUN`` row as it starts: a signal the stream hands out before it was sent before
  the run, and for such a table the run's own snapshot, planned after it, covers (execute) or
  overrides (stop) it, as if the signals had been read in order before the run started.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dstream.sdk.cdc import Closed, IncrementalCursor, IncrementalSnapshots
from dstream_mssql_cdc.names import quote_name

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from dstream.sdk.cdc import Key

R = TypeVar("R")

OPEN = "snapshot-window-open"  # Debezium's OpenIncrementalSnapshotWindow.NAME
CLOSE = "snapshot-window-close"  # Debezium's CloseIncrementalSnapshotWindow.NAME
EXECUTE = "execute-snapshot"
STOP = "stop-snapshot"
MARK = "dstream-task-init"  # a task's mark: the signals after it are the task's, even before its first run
RUN = "dstream-run-start"  # a run that snapshots tables from their first row started here
DEFAULT_SIGNAL_TABLE = "dbo.dstream_signals"


# -- the signal table's SQL ----------------------------------------------------------------


def _parts(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return schema or "dbo", name


def signal_table_ddl(table: str) -> str:
    """Debezium's signalling table (signalling.adoc: ``id VARCHAR(42) PRIMARY KEY, type
    VARCHAR(32) NOT NULL, data VARCHAR(2048) NULL``); ``id`` is 64 wide here, as Debezium's
    SQL Server IT creates it (IncrementalSnapshotIT.before: ``id varchar(64)``), since a
    chunk id and its ``-open`` suffix do not fit 42."""
    schema, name = _parts(table)
    return (
        f"CREATE TABLE {quote_name(schema)}.{quote_name(name)} "
        "(id VARCHAR(64) NOT NULL PRIMARY KEY, type VARCHAR(32) NOT NULL, data VARCHAR(2048) NULL)"
    )


def enable_signal_cdc_sql() -> str:
    """Enable CDC on the signal table (signalling.adoc: "enable CDC for the signaling
    table"); no gating role, so a least-privileged login reads it like the captured tables."""
    return (
        "EXEC sys.sp_cdc_enable_table @source_schema = ?, @source_name = ?, @role_name = NULL, "
        "@supports_net_changes = 0"
    )


def disable_signal_cdc_sql() -> str:
    """Disable CDC on the signal table (every capture instance of it), before dropping it."""
    return "EXEC sys.sp_cdc_disable_table @source_schema = ?, @source_name = ?, @capture_instance = N'all'"


def drop_signal_table_sql(table: str) -> str:
    schema, name = _parts(table)
    return f"DROP TABLE {quote_name(schema)}.{quote_name(name)}"


def signal_insert_sql(table: str) -> str:
    schema, name = _parts(table)
    return f"INSERT INTO {quote_name(schema)}.{quote_name(name)} (id, type, data) VALUES (?, ?, ?)"  # noqa: S608


def mark_id(task: str) -> str:
    """The id of a task's mark row (the signal table's ``id`` is 64 wide)."""
    text = f"dstream-init-{task}"
    return text if len(text) <= 64 else "dstream-init-" + hashlib.sha256(task.encode()).hexdigest()[:48]


def mark_data(task: str, lsn: str) -> str:
    return json.dumps({"task": task, "lsn": lsn})


def mark_lsn(data: str | None) -> str | None:
    """The LSN text a mark row holds (None: not a mark this provider wrote)."""
    try:
        body = json.loads(data or "")
    except ValueError:
        return None
    lsn = body.get("lsn") if isinstance(body, dict) else None
    return lsn if isinstance(lsn, str) else None


def signal_select_sql(table: str) -> str:
    schema, name = _parts(table)
    return f"SELECT data FROM {quote_name(schema)}.{quote_name(name)} WHERE id = ?"  # noqa: S608


def signal_data(tables: list[str], where: Mapping[str, str] | None = None) -> str:
    """An ``execute-snapshot``/``stop-snapshot`` row's ``data``, in Debezium's format."""
    body: dict[str, Any] = {"data-collections": tables, "type": "incremental"}
    if where:
        body["additional-conditions"] = [{"data-collection": t, "filter": f} for t, f in where.items()]
    return json.dumps(body)


@dataclass(frozen=True)
class Signal:
    kind: str  # execute-snapshot | stop-snapshot
    tables: tuple[str, ...]
    where: dict[str, str]


def parse_signal(kind: str, data: str | None) -> Signal | None:
    """A signal row's meaning; None when it is not a snapshot signal (or malformed)."""
    if kind not in (EXECUTE, STOP):
        return None
    try:
        body = json.loads(data or "{}")
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    tables = body.get("data-collections") or []
    conditions = body.get("additional-conditions") or []
    if not isinstance(tables, list) or not isinstance(conditions, list):
        return None
    where = {
        str(c["data-collection"]): str(c["filter"])
        for c in conditions
        if isinstance(c, dict) and c.get("data-collection") and c.get("filter")
    }
    return Signal(kind, tuple(str(t) for t in tables), where)


# -- the window state machine --------------------------------------------------------------


@dataclass
class Pending(Generic[R]):
    """A chunk read between its open and close INSERTs, waiting for the stream to reach its open row."""

    chunk: str
    table: str
    rows: list[tuple[Key, tuple[str, ...], R]]


class Watermarks(Generic[R]):
    """IncrementalSnapshots with explicit open/close watermark rows (SQL Server's capture lag)."""

    def __init__(self, cursors: Mapping[str, IncrementalCursor] | None, chunk_size: int) -> None:
        self.snaps: IncrementalSnapshots[R] = IncrementalSnapshots(cursors)
        self.chunk_size = chunk_size
        self.pending: Pending[R] | None = None

    def next_chunk(self) -> tuple[str, str, IncrementalCursor] | None:
        """(chunk id, table, cursor) of the chunk to read now; None while one is in flight."""
        if self.pending is not None:
            return None
        found = self.snaps.next_chunk()
        if found is None:
            return None
        return uuid.uuid4().hex, found[0], found[1]

    def read(self, chunk: str, table: str, rows: Iterable[tuple[Key, tuple[str, ...], R]]) -> None:
        """The chunk's rows, read after its open row committed (before its close row)."""
        self.pending = Pending(chunk, table, list(rows))

    def changed(self, table: str, keys: Iterable[Key | None]) -> None:
        """A change the stream handed out (only the open window's table counts)."""
        self.snaps.changed(table, keys)

    def truncated(self, table: str) -> None:
        self.snaps.truncated(table)

    def signal(self, row_id: str, kind: str) -> Closed[R] | None:
        """A watermark row the stream reached (in commit order with the changes)."""
        pending = self.pending
        if kind == OPEN and pending is not None and row_id == f"{pending.chunk}-open":
            if pending.table in self.snaps.cursors:  # not stopped meanwhile
                self.snaps.open(pending.chunk, pending.table, pending.rows, self.chunk_size)
            self.pending = None
            return None
        if kind == CLOSE and row_id.endswith("-close"):
            return self.snaps.close(row_id[: -len("-close")])
        return None

    def start(self, table: str, where: str | None = None, total: int | None = None) -> None:
        if self.pending is not None and self.pending.table == table:
            self.pending = None
        self.snaps.start(table, where, total)

    def stop(self, table: str) -> bool:
        if self.pending is not None and self.pending.table == table:
            self.pending = None
        return self.snaps.stop(table)

    def abandon(self) -> None:
        """The connection dropped (or the run restarts): the chunk in flight is read again."""
        self.pending = None
        self.snaps.abandon()
