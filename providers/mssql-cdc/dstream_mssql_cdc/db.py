"""Everything that talks to SQL Server (the only pyodbc user): thin methods, one statement
each, returning plain values or :class:`ResultSet`; the logic lives in stream.py,
health.py and infra.py.

Connections are autocommit (each query sees what is committed), have a login and a
query timeout, and convert ``datetimeoffset`` (which pyodbc cannot read by itself). The
connection string is used for ``pyodbc.connect`` only: never logged, never in a message.
Every ``pyodbc.Error`` becomes a :class:`~dstream_mssql_cdc.errors.CdcError` (errors.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, TypeVar

import pyodbc

from dstream_mssql_cdc.changes import COMMAND_ID, COMMIT_TIME, ResultSet, datetimeoffset
from dstream_mssql_cdc.config import quote_name
from dstream_mssql_cdc.errors import CdcError, ConnectionLost, translate
from dstream_mssql_cdc.infra import PROPERTY_PREFIX, DatabaseInfo, SourceTable, Tag
from dstream_mssql_cdc.lsn import from_bytes, parse_log_lsn, to_bytes
from dstream_mssql_cdc.stream import CaptureInstance, ServerState

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from datetime import datetime

    from dstream_mssql_cdc.config import Target
    from dstream_mssql_cdc.stream import Window

T = TypeVar("T")

pyodbc.pooling = False  # a pooled connection may be a dead one after a failover
SQL_SS_TIMESTAMPOFFSET = -155


class Session:
    """One connection, reconnected on demand, with every error translated."""

    def __init__(self, connection_string: str, target: Target, login_timeout: float, query_timeout: float) -> None:
        self._connection_string = connection_string
        self.target = target
        self.login_timeout = max(1, math.ceil(login_timeout))
        self.query_timeout = math.ceil(query_timeout)
        self._conn: pyodbc.Connection | None = None
        self._log_stats = True  # False once sys.dm_db_log_stats turned out not to be readable

    # -- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        self.close()
        try:
            conn = pyodbc.connect(self._connection_string, autocommit=True, timeout=self.login_timeout)
        except pyodbc.Error as exc:
            raise self._translate(exc, connecting=True) from None
        conn.timeout = self.query_timeout
        conn.add_output_converter(SQL_SS_TIMESTAMPOFFSET, datetimeoffset)
        self._conn = conn

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _translate(self, exc: pyodbc.Error, connecting: bool = False) -> CdcError:
        state = str(exc.args[0]) if exc.args else ""
        text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        drivers: list[str] = []
        with contextlib.suppress(Exception):
            drivers = list(pyodbc.drivers())
        return translate(state, text, self.target, drivers, connecting)

    def _cursor(self) -> pyodbc.Cursor:
        if self._conn is None:
            self.connect()
        assert self._conn is not None
        return self._conn.cursor()

    @contextlib.contextmanager
    def _statement(self) -> Iterator[pyodbc.Cursor]:
        """A cursor, closed after use; pyodbc errors become CdcErrors (a lost connection is dropped)."""
        try:
            cur = self._cursor()
            try:
                yield cur
            finally:
                cur.close()
        except pyodbc.Error as exc:
            error = self._translate(exc)
            if isinstance(error, ConnectionLost):
                self.close()
            raise error from None

    def query(self, sql: str, *params: Any) -> ResultSet:
        """The first result set of ``sql`` (later ones, and messages, are drained)."""
        with self._statement() as cur:
            cur.execute(sql, *params)
            while not _has_columns(cur):
                if not cur.nextset():
                    return ResultSet((), [])
            columns = tuple(str(d[0]) for d in cur.description)
            rows = cur.fetchall()
            while cur.nextset():
                pass
            return ResultSet(columns, rows)

    def execute(self, sql: str, *params: Any) -> None:
        """Run a statement or procedure to its end (its errors surface from any result set)."""
        with self._statement() as cur:
            cur.execute(sql, *params)
            while cur.nextset():
                pass

    def value(self, sql: str, *params: Any) -> Any:
        result = self.query(sql, *params)
        return result.rows[0][0] if result.rows else None

    def _optional(self, read: Callable[[], T]) -> T | None:
        """``read()``, or None when it fails other than by a lost connection (e.g. msdb not readable)."""
        try:
            return read()
        except ConnectionLost:
            raise
        except CdcError:
            return None

    # -- the database and its capture instances -----------------------------------------

    def database(self) -> DatabaseInfo:
        row = self.query(
            "SELECT DB_NAME(), CAST(d.is_cdc_enabled AS int), CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128))"
            " FROM sys.databases AS d WHERE d.database_id = DB_ID()"
        ).rows[0]
        return DatabaseInfo(str(row[0]), bool(row[1]), str(row[2] or ""))

    def max_lsn(self) -> int | None:
        raw = self.value("SELECT sys.fn_cdc_get_max_lsn()")
        value = from_bytes(raw) if raw is not None else 0
        return value or None

    def instances(self) -> tuple[CaptureInstance, ...]:
        result = self.query(
            "SELECT ct.capture_instance, OBJECT_SCHEMA_NAME(ct.source_object_id), OBJECT_NAME(ct.source_object_id),"
            " ct.source_object_id, sys.fn_cdc_get_min_lsn(ct.capture_instance), ct.create_date, ct.object_id,"
            " OBJECT_NAME(ct.object_id) FROM cdc.change_tables AS ct"
        )
        return tuple(
            CaptureInstance(
                name=str(r[0]),
                schema=str(r[1] or ""),
                table=str(r[2] or ""),
                object_id=int(r[3]),
                min_lsn=from_bytes(r[4]) if r[4] is not None else 0,
                create_date=r[5],
                change_table_id=int(r[6] or 0),
                change_table=str(r[7] or ""),
            )
            for r in result.rows
        )

    def state(self) -> ServerState:
        return ServerState(self.max_lsn(), self.instances())

    def log_end(self) -> int | None:
        """The end of the transaction log (``sys.dm_db_log_stats``), or None when not readable
        (it needs VIEW DATABASE STATE, or VIEW DATABASE PERFORMANCE STATE on SQL Server 2022)."""
        if not self._log_stats:
            return None
        try:
            text = self.value("SELECT log_end_lsn FROM sys.dm_db_log_stats(DB_ID())")
        except ConnectionLost:
            raise
        except CdcError:
            self._log_stats = False
            return None
        return parse_log_lsn(str(text)) if text is not None else None

    def table(self, schema: str | None, name: str) -> SourceTable | None:
        qualified = f"{quote_name(schema)}.{quote_name(name)}" if schema else quote_name(name)
        rows = self.query(
            "SELECT o.object_id, SCHEMA_NAME(o.schema_id), o.name FROM sys.objects AS o"
            " WHERE o.object_id = OBJECT_ID(?) AND o.type = 'U'",
            qualified,
        ).rows
        return SourceTable(int(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None

    # -- changes --------------------------------------------------------------------------

    def changes(self, window: Window) -> ResultSet:
        """At most ``window.limit`` rows of ``fn_cdc_get_all_changes`` in the window, in order."""
        function = "cdc." + quote_name("fn_cdc_get_all_changes_" + window.instance.name)
        change_table = "cdc." + quote_name(window.instance.change_table_name)
        params: list[Any] = [window.limit, to_bytes(window.start), to_bytes(window.end)]
        where = ""
        if window.after is not None:
            lsn, command, seqval, operation = window.after
            where = (
                " WHERE c.__$start_lsn > ? OR (c.__$start_lsn = ? AND (ct.__$command_id > ?"
                " OR (ct.__$command_id = ? AND (c.__$seqval > ? OR (c.__$seqval = ? AND c.__$operation > ?)))))"
            )
            params += [to_bytes(lsn), to_bytes(lsn), command, command, to_bytes(seqval), to_bytes(seqval), operation]
        # Identifiers are bracket-quoted (quote_name); every value is a parameter.
        sql = (
            f"SELECT TOP (?) c.*, ct.__$command_id AS {quote_name(COMMAND_ID)},"  # noqa: S608
            f" m.tran_end_time AS {quote_name(COMMIT_TIME)}"
            f" FROM {function}(?, ?, N'all update old') AS c"
            f" JOIN {change_table} AS ct ON ct.__$start_lsn = c.__$start_lsn AND ct.__$seqval = c.__$seqval"
            " AND ct.__$operation = c.__$operation"
            " LEFT JOIN cdc.lsn_time_mapping AS m ON m.start_lsn = c.__$start_lsn"
            f"{where}"
            " ORDER BY c.__$start_lsn, ct.__$command_id, c.__$seqval, c.__$operation"
        )
        return self.query(sql, *params)

    def increment_lsn(self, lsn: int) -> int:
        """``sys.fn_cdc_increment_lsn`` itself (tests compare it with lsn.increment_lsn)."""
        return from_bytes(self.value("SELECT sys.fn_cdc_increment_lsn(?)", to_bytes(lsn)))

    def commit_time(self, lsn: int) -> datetime | None:
        """``sys.fn_cdc_map_lsn_to_time``."""
        value: datetime | None = self.value("SELECT sys.fn_cdc_map_lsn_to_time(?)", to_bytes(lsn))
        return value

    # -- health ---------------------------------------------------------------------------

    def lag_seconds(self, lsn: int) -> float | None:
        """Seconds between the oldest commit at or after ``lsn`` and the newest capture (0: none)."""
        value = self.value(
            "SELECT DATEDIFF_BIG(millisecond, (SELECT TOP (1) tran_end_time FROM cdc.lsn_time_mapping"
            " WHERE start_lsn >= ? ORDER BY start_lsn), sys.fn_cdc_map_lsn_to_time(sys.fn_cdc_get_max_lsn()))",
            to_bytes(lsn),
        )
        return max(0.0, int(value) / 1000.0) if value is not None else 0.0

    def capture_latency(self) -> float | None:
        """Seconds since the newest capture (``sys.fn_cdc_map_lsn_to_time`` of the max LSN)."""
        value = self.value(
            "SELECT DATEDIFF_BIG(millisecond, sys.fn_cdc_map_lsn_to_time(sys.fn_cdc_get_max_lsn()), GETDATE())"
        )
        return max(0.0, int(value) / 1000.0) if value is not None else None

    def retention_minutes(self) -> int | None:
        """The cleanup job's retention (``msdb.dbo.cdc_jobs``), or None when unknown or not readable."""
        value = self._optional(
            lambda: self.value(
                "SELECT retention FROM msdb.dbo.cdc_jobs WHERE database_id = DB_ID() AND job_type = N'cleanup'"
            )
        )
        return int(value) if value is not None else None

    def capture_job(self) -> str | None:
        """ "running", "stopped", "absent" (no capture job), or None when msdb is not readable."""

        def read() -> str:
            jobs = self.query(
                "SELECT j.job_id FROM msdb.dbo.cdc_jobs AS j WHERE j.database_id = DB_ID() AND j.job_type = N'capture'"
            ).rows
            if not jobs:
                return "absent"
            running = self.value(
                "SELECT TOP (1) CASE WHEN a.start_execution_date IS NOT NULL AND a.stop_execution_date IS NULL"
                " THEN 1 ELSE 0 END FROM msdb.dbo.sysjobactivity AS a WHERE a.job_id = ? ORDER BY a.session_id DESC",
                jobs[0][0],
            )
            return "running" if running else "stopped"

        return self._optional(read)

    # -- lifecycle ------------------------------------------------------------------------

    def enable_database(self) -> None:
        self.execute("EXEC sys.sp_cdc_enable_db")

    def disable_database(self) -> None:
        self.execute("EXEC sys.sp_cdc_disable_db")

    def enable_table(self, table: SourceTable) -> None:
        self.execute(
            "EXEC sys.sp_cdc_enable_table @source_schema = ?, @source_name = ?, @role_name = NULL,"
            " @supports_net_changes = 0",
            table.schema,
            table.name,
        )

    def disable_table(self, table: SourceTable, instance: str) -> None:
        self.execute(
            "EXEC sys.sp_cdc_disable_table @source_schema = ?, @source_name = ?, @capture_instance = ?",
            table.schema,
            table.name,
            instance,
        )

    def tags(self) -> list[Tag]:
        """Our extended properties: on the database (object_id 0) and on source tables."""
        result = self.query(
            "SELECT ep.major_id, ISNULL(OBJECT_SCHEMA_NAME(ep.major_id), N''), ISNULL(OBJECT_NAME(ep.major_id), N''),"
            " ep.name, CAST(ep.value AS nvarchar(4000)) FROM sys.extended_properties AS ep"
            " WHERE ep.class IN (0, 1) AND ep.minor_id = 0 AND ep.name LIKE ?",
            PROPERTY_PREFIX + "%",
        )
        tags = []
        for object_id, schema, table, name, raw in result.rows:
            try:
                value = json.loads(raw) if raw else {}
            except ValueError:
                value = {}
            tags.append(
                Tag(int(object_id), str(schema), str(table), str(name), value if isinstance(value, dict) else {})
            )
        return tags

    def add_tag(self, table: SourceTable | None, name: str, value: dict[str, Any]) -> None:
        text = json.dumps(value, separators=(",", ":"))
        if table is None:
            self.execute("EXEC sys.sp_addextendedproperty @name = ?, @value = ?", name, text)
        else:
            self.execute(
                "EXEC sys.sp_addextendedproperty @name = ?, @value = ?, @level0type = N'SCHEMA', @level0name = ?,"
                " @level1type = N'TABLE', @level1name = ?",
                name,
                text,
                table.schema,
                table.name,
            )

    def drop_tag(self, tag: Tag) -> None:
        if tag.object_id == 0:
            self.execute("EXEC sys.sp_dropextendedproperty @name = ?", tag.name)
        else:
            self.execute(
                "EXEC sys.sp_dropextendedproperty @name = ?, @level0type = N'SCHEMA', @level0name = ?,"
                " @level1type = N'TABLE', @level1name = ?",
                tag.name,
                tag.schema,
                tag.table,
            )


class Readers:
    """Change queries of several tables at once, one connection each (``parallelism``)."""

    def __init__(self, main: Session, factory: Any, parallelism: int) -> None:
        self.main = main
        self.parallelism = parallelism
        self._factory = factory
        self._sessions: list[Session] = []
        self._idle: queue.SimpleQueue[Session] = queue.SimpleQueue()
        self._pool: ThreadPoolExecutor | None = None

    def fetch(self, windows: Sequence[Window]) -> list[tuple[Window, ResultSet]]:
        if len(windows) <= 1 or self.parallelism <= 1:
            return [(w, self.main.changes(w)) for w in windows]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.parallelism, thread_name_prefix="mssql-cdc")
        futures = [self._pool.submit(self._one, w) for w in windows]
        wait(futures)  # every query ends before the first failure is reported
        for future in futures:
            failure = future.exception()
            if failure is not None:
                raise failure
        return [(w, f.result()) for w, f in zip(windows, futures, strict=True)]

    def _one(self, window: Window) -> ResultSet:
        try:
            session = self._idle.get_nowait()
        except queue.Empty:
            session = self._factory()
            self._sessions.append(session)
        try:
            return session.changes(window)
        finally:
            self._idle.put(session)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for session in self._sessions:
            session.close()


def _has_columns(cursor: Any) -> bool:
    """Whether the current result is a result set (pyodbc's description is None for statements)."""
    return cursor.description is not None
