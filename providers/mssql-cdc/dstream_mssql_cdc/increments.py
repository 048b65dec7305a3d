"""The provider's incremental snapshots at run time: the signal table's rows fed to the
watermarks, chunks read between polls (incremental.py has the algorithm's SQL Server side).

Between two polls, with the stream caught up to the poll's end, the next chunk is read:
INSERT the open row, one ``SELECT TOP (n)`` after the table's cursor, INSERT the close row
(each autocommitted, db.Session). The polls that follow read the signal table's change
table with the captured tables, merged in commit order; its rows are not emitted: the open
row opens the chunk's window, the changes of the table drop its keys, the close row
releases the rest as ``Read`` envelopes, each with the table's cursor after it in the
checkpoint (``{"lsn": ..., "incremental": {"after": [...], "rows": n, "chunks": c}}``).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from dstream.sdk import Record, Resource
from dstream.sdk.cdc import IncrementalCursor, Position, PositionError, SnapshotProgress, key_of, read_metadata
from dstream.sdk.cdc.pacing import ChunkPacer
from dstream_mssql_cdc.errors import CdcError
from dstream_mssql_cdc.incremental import (
    CLOSE,
    EXECUTE,
    MARK,
    OPEN,
    RUN,
    STOP,
    Watermarks,
    disable_signal_cdc_sql,
    drop_signal_table_sql,
    enable_signal_cdc_sql,
    mark_data,
    mark_id,
    parse_signal,
    signal_insert_sql,
    signal_table_ddl,
)
from dstream_mssql_cdc.lsn import format_lsn, increment_lsn, parse_lsn
from dstream_mssql_cdc.names import parse_table_name, quote_name
from dstream_mssql_cdc.sql import keyset_params, snapshot_query

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from dstream_mssql_cdc.changes import Values
    from dstream_mssql_cdc.db import Session
    from dstream_mssql_cdc.stream import Shape


def keyless_error(tables: list[str]) -> CdcError:
    return CdcError(
        f'snapshot = "incremental" reads each table in key order, and {", ".join(tables)} has no key to page by '
        "(CDC was enabled without a primary key or unique index, or the key's type has no exact text): add one, or "
        'snapshot it with snapshot = "initial"'
    )


class SignalTable:
    """init / plan / status / destroy of the signal table (the lifecycle verbs, db_owner)."""

    def __init__(self, db: Session, name: str) -> None:
        self.db = db
        self.name = name
        self.schema, self.table = parse_table_name(name)

    def _exists(self) -> bool:
        return self.db.table(self.schema, self.table) is not None

    def state(self, missing: str) -> Resource:
        found = self._exists()
        details = {"ddl": signal_table_ddl(self.name), "cdc": "enabled with no gating role"}
        return Resource(
            "signal_table", self.name, "none" if found else missing, "present" if found else "absent", details
        )

    def init(self, task: str | None) -> Resource:
        """Create the table and enable CDC on it (when absent), and record ``task``'s mark: the
        signals sent after it reach the task, even before its first run (incremental.py)."""
        details: dict[str, Any] = {}
        op = "none"
        if not self._exists():
            schema = self.schema or "dbo"
            self.db.execute(signal_table_ddl(self.name))
            self.db.execute(enable_signal_cdc_sql(), schema, self.table)
            details["cdc"] = "enabled"
            op = "create"
        if task:
            row_id = mark_id(task)
            if self.db.signal_row(self.name, row_id) is None:  # a task's first init: its signals start here
                lsn = format_lsn(0 if op == "create" else self._now())
                self.db.execute(signal_insert_sql(self.name), row_id, MARK, mark_data(task, lsn))
                details["signals_from"] = lsn
                op = "create" if op == "create" else "update"
        return Resource("signal_table", self.name, op, "present", details)

    def _now(self) -> int:
        """The first LSN a signal sent from now on can commit at: the log's end (db_owner reads
        sys.dm_db_log_stats), else past the capture job's last harvested LSN. A table init just
        created gets 0 instead: every signal it will ever hold was sent after this init."""
        end = self.db.log_end()
        if end is not None:
            return end
        harvested = self.db.max_lsn()
        return increment_lsn(harvested) if harvested else 0

    def destroy(self) -> Resource:
        if not self._exists():
            return Resource("signal_table", self.name, "none", "absent")
        schema = self.schema or "dbo"
        self.db.execute(disable_signal_cdc_sql(), schema, self.table)
        self.db.execute(drop_signal_table_sql(self.name))
        return Resource("signal_table", self.name, "delete", "absent")


class Incremental:
    """Incremental snapshots of one run: fed by the merged stream, read between polls."""

    def __init__(
        self,
        db: Session,
        signal_table: str,
        shapes: Callable[[str], Shape],
        values: Values,
        cursors: dict[str, IncrementalCursor],
        chunk_size: int,
        pause: float,
        log: logging.Logger,
        gauge: Callable[..., None],
    ) -> None:
        self.db = db
        self.signal_table = signal_table
        self.shapes = shapes  # table → how it is read now
        self.values = values
        self.marks: Watermarks[Record] = Watermarks(cursors, chunk_size)
        self.chunk_size = chunk_size
        # Paced like PostgreSQL's (dstream.sdk.cdc.pacing); the stream position a chunk's rows
        # carry is the signal table's, just after the chunk's close row.
        self.pacer = ChunkPacer(pause, log=log)
        self.log = log
        self.progress = SnapshotProgress(gauge, log)
        for name, cursor in cursors.items():
            self.progress.started(name, cursor.rows)  # resumed: the rate counts this run's rows
        self.tables: set[str] = set()  # the task's tables (signals name them)
        # This run's RUN row, until the stream reaches it: the signals before it were sent before
        # the run, and for the tables it snapshots from their first row (``planned``) that
        # snapshot, planned after them, stands (incremental.py's docstring).
        self.run_row: str | None = None
        self.planned: set[str] = set()

    def begin_run(self, planned: list[str]) -> None:
        """This run snapshots ``planned`` from their first row: mark where it starts in the stream."""
        if not planned:
            return
        self.planned = set(planned)
        self.run_row = f"dstream-run-{uuid.uuid4().hex}"
        self.db.execute(signal_insert_sql(self.signal_table), self.run_row, RUN, json.dumps({"tables": planned}))

    # -- checkpoint ------------------------------------------------------------------------

    def cursors_json(self) -> dict[str, dict[str, Any]]:
        return {table: cursor.to_json() for table, cursor in self.marks.snaps.cursors.items()}

    # -- the stream ------------------------------------------------------------------------

    def change(self, record: Record) -> None:
        """A change of a captured table, as the merged stream hands it out."""
        table = record.metadata.get("TableName")
        if not isinstance(table, str) or self.marks.snaps.window != table:
            return
        key = self.shapes(table).instance.key
        self.marks.changed(table, [key_of(record.metadata.get("Before"), key), key_of(record.data, key)])

    def signal_row(self, record: Record) -> list[Record]:
        """A row of the signal table (the stream reached it): what it releases, as Read envelopes."""
        if record.metadata.get("OperationType") != "Insert":
            return []
        row_id, kind = str(record.data.get("id") or ""), str(record.data.get("type") or "")
        if kind in (MARK, RUN):  # a task's mark, a run's start: no request
            if row_id == self.run_row:
                self.run_row = None
            return []
        if kind in (OPEN, CLOSE):
            closed = self.marks.signal(row_id, kind)
            if closed is None:
                return []
            name = closed.table
            lsn = str(record.metadata.get("LSN"))
            instance = self.shapes(name).instance.name
            base = record.position if isinstance(record.position, dict) else {"tables": {}}
            out = []
            for row, cursor in closed.rows:
                row.metadata = {
                    **read_metadata(name, lsn, row.metadata.get("Key"), row_id[:8], cursor.rows),
                    "CaptureInstance": instance,
                }
                tables = {**base.get("tables", {}), **self._decorated(base, name, cursor)}
                row.position = {**base, "tables": tables}
                out.append(row)
            at = self._signal_position(base)
            if at is not None:
                self.pacer.released(at, name, closed.cursor.rows)
            self.progress.report(name, closed.cursor, closed.finished)
            return out
        signal = parse_signal(kind, record.data.get("data"))
        if signal is None:
            self.log.warning("ignoring signal row %r of type %r", row_id, kind)
            return []
        for name in signal.tables:
            table = self._table(name)
            if table is None:
                self.log.error("%s signal for %s ignored: the task does not capture it", kind, name)
            elif self.run_row is not None and table in self.planned:
                self.log.info(
                    "%s signal %r for %s was sent before this run, which snapshots the table from its first row "
                    "anyway: that snapshot stands",
                    kind,
                    row_id,
                    table,
                )
            elif kind == EXECUTE:
                self.start(table, signal.where.get(name) or signal.where.get(table))
            elif kind == STOP and self.marks.stop(table):
                self.log.info("incremental snapshot of %s stopped by a signal", table)
        return []

    def _decorated(self, base: dict[str, Any], name: str, cursor: IncrementalCursor) -> dict[str, Any]:
        position = dict(base.get("tables", {}).get(name) or {})
        position["incremental"] = cursor.to_json()
        return {name: position}

    def _table(self, name: str) -> str | None:
        wanted = name.lower()
        for table in self.tables:
            if table.lower() == wanted or table.split(".", 1)[-1].lower() == wanted:
                return table
        return None

    def start(self, table: str, where: str | None = None) -> bool:
        from dstream_mssql_cdc.snapshot import resumable_by_key

        if not resumable_by_key(self.shapes(table)):
            self.log.error("%s", keyless_error([table]))
            return False
        shape = self.shapes(table)
        total = self.db.optional(lambda: self.db.row_estimate(shape.instance.object_id))
        self.marks.start(table, where, total)
        self.progress.started(table)
        self.log.info("incremental snapshot of %s%s starts", table, f" where {where}" if where else "")
        return True

    def abandon(self) -> None:
        self.marks.abandon()

    def committed(self, position: Any) -> None:
        """The orchestrator persisted ``position``: released chunks it covers are acknowledged."""
        at = self._signal_position(position)
        if at is not None:
            self.pacer.committed(at, position["tables"])

    def _signal_position(self, position: Any) -> tuple[int, int] | None:
        tables = position.get("tables") if isinstance(position, dict) else None
        if not isinstance(tables, dict):
            return None
        try:
            return Position.from_json(tables.get(self.signal_table), parse_lsn).key
        except PositionError:
            return None

    # -- reading chunks (between polls) ----------------------------------------------------

    def read_chunk(self) -> bool:
        """Open, read and close the next chunk; False when there is none to read now."""
        if not self.pacer.ready():
            return False
        nxt = self.marks.next_chunk()
        if nxt is None:
            return False
        chunk, table, cursor = nxt
        shape = self.shapes(table)
        insert = signal_insert_sql(self.signal_table)
        self.db.execute(insert, f"{chunk}-open", OPEN, table)
        rows = self._rows(shape, cursor)
        self.marks.read(chunk, table, rows)
        self.db.execute(insert, f"{chunk}-close", CLOSE, table)
        self.pacer.read()
        return True

    def _rows(self, shape: Shape, cursor: IncrementalCursor) -> list[tuple[Any, tuple[str, ...], Record]]:
        by_name = {c.name.lower(): c for c in shape.columns}
        keys = [by_name[k.lower()] for k in shape.instance.key]
        source = f"{quote_name(shape.instance.schema)}.{quote_name(shape.instance.table)}"
        sql = snapshot_query(source, shape.columns, keys, resume=cursor.after is not None, where=cursor.where)
        params = keyset_params(cursor.after) if cursor.after is not None else []
        found = self.db.query(sql, self.chunk_size, *params).rows
        names = [c.name for c in shape.columns]
        width = len(keys)
        out = []
        for row in found:
            data = self.values.row(names, tuple(row[width:]))
            key = {k: data.get(k) for k in shape.instance.key}
            text = tuple(str(v) for v in row[:width])
            out.append((key_of(data, shape.instance.key), text, Record(data, {"Key": key})))
        return out
