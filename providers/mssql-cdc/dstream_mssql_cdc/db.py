"""Everything that talks to SQL Server (the only pyodbc user): thin methods, one statement
each, returning plain values; the logic lives in stream.py, windows.py, snapshot.py,
health.py and infra.py, the SQL text of change and snapshot queries in sql.py.

What ``run`` uses is what a least-privileged login may run (Microsoft's CDC security
model): ``sys.sp_cdc_help_change_data_capture``, ``sys.sp_cdc_get_captured_columns``, the
``sys.fn_cdc_*`` functions, ``cdc.fn_cdc_get_all_changes_<instance>``, catalog views of
the tables it may read and the permission functions. ``cdc.<instance>_CT`` only in direct
mode, where the login was found to have SELECT on it. Health checks that need more
(``sys.dm_db_log_stats``, ``msdb``) are skipped quietly without the right.

Connections are autocommit (each query sees what is committed), have a login and a
query timeout, and convert ``datetimeoffset`` (which pyodbc cannot read by itself). The
connection string is used for ``pyodbc.connect`` only: never logged, never in a message.
Every ``pyodbc.Error`` becomes a :class:`~dstream_mssql_cdc.errors.CdcError` (errors.py).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import pyodbc

from dstream_mssql_cdc.admin import OFFSET_TIME, AdminQueries
from dstream_mssql_cdc.catalog import (
    BYTE_TYPES,
    CaptureInstance,
    Column,
    DatabaseInfo,
    Login,
    ServerState,
    SourceTable,
)
from dstream_mssql_cdc.changes import ResultSet, datetimeoffset
from dstream_mssql_cdc.errors import CdcError, ConnectionLost, Denied, InstanceGone, translate
from dstream_mssql_cdc.lsn import from_bytes, to_bytes
from dstream_mssql_cdc.names import quote_name, split_column_list
from dstream_mssql_cdc.sql import window_end_query

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from datetime import datetime

    from dstream_mssql_cdc.config import Target

T = TypeVar("T")

pyodbc.pooling = False  # a pooled connection may be a dead one after a failover
SQL_SS_TIMESTAMPOFFSET = -155
FETCH = 2000  # rows per fetch of a streamed result


class Session(AdminQueries):
    """One connection, reconnected on demand, with every error translated (health and
    lifecycle statements: admin.py)."""

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
            raise self.translate(exc, connecting=True) from None
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

    def translate(self, exc: pyodbc.Error, connecting: bool = False) -> CdcError:
        state = str(exc.args[0]) if exc.args else ""
        text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        drivers: list[str] = []
        with contextlib.suppress(Exception):
            drivers = list(pyodbc.drivers())
        error = translate(state, text, self.target, drivers, connecting)
        if isinstance(error, ConnectionLost):
            self.close()
        return error

    def cursor(self) -> pyodbc.Cursor:
        if self._conn is None:
            self.connect()
        assert self._conn is not None
        return self._conn.cursor()

    @contextlib.contextmanager
    def _statement(self) -> Iterator[pyodbc.Cursor]:
        """A cursor, closed after use; pyodbc errors become CdcErrors (a lost connection is dropped)."""
        try:
            cur = self.cursor()
            try:
                yield cur
            finally:
                cur.close()
        except pyodbc.Error as exc:
            raise self.translate(exc) from None

    def query(self, sql: str, *params: Any) -> ResultSet:
        """The first result set of ``sql`` (later ones, and messages, are drained)."""
        with self._statement() as cur:
            cur.execute(sql, *params)
            while cur.description is None:
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

    def records(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        result = self.query(sql, *params)
        return [dict(zip(result.columns, row, strict=True)) for row in result.rows]

    def optional(self, read: Callable[[], T]) -> T | None:
        """``read()``, or None when it fails other than by a lost connection (e.g. msdb not readable)."""
        try:
            return read()
        except ConnectionLost:
            raise
        except CdcError:
            return None

    # -- the database, its capture instances and permissions ----------------------------

    def database(self) -> DatabaseInfo:
        row = self.query(
            "SELECT DB_NAME(), CAST(d.is_cdc_enabled AS int), CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128)),"
            " CAST(d.snapshot_isolation_state AS int) FROM sys.databases AS d WHERE d.database_id = DB_ID()"
        ).rows[0]
        return DatabaseInfo(str(row[0]), bool(row[1]), str(row[2] or ""), row[3] == 1)

    def login(self) -> Login:
        row = self.query("SELECT SUSER_SNAME(), USER_NAME()").rows[0]
        return Login(str(row[0] or ""), str(row[1] or ""))

    def max_lsn(self) -> int | None:
        raw = self.value("SELECT sys.fn_cdc_get_max_lsn()")
        value = from_bytes(raw) if raw is not None else 0
        return value or None

    def instances(self) -> tuple[CaptureInstance, ...]:
        """The capture instances this login may read (``sys.sp_cdc_help_change_data_capture``)."""
        found = []
        for r in self.records("EXEC sys.sp_cdc_help_change_data_capture"):
            start = r.get("start_lsn")
            found.append(
                CaptureInstance(
                    name=str(r["capture_instance"]),
                    schema=str(r["source_schema"]),
                    table=str(r["source_table"]),
                    object_id=int(r["source_object_id"]),
                    min_lsn=from_bytes(start) if start is not None else 0,
                    create_date=r.get("create_date"),
                    change_table_id=int(r.get("object_id") or 0),
                    role=r.get("role_name"),
                    key=split_column_list(r.get("index_column_list")),
                    captured=split_column_list(r.get("captured_column_list")),
                )
            )
        return tuple(found)

    def state(self) -> ServerState:
        row = self.query(
            "SELECT sys.fn_cdc_get_max_lsn(), "
            + OFFSET_TIME.format("sys.fn_cdc_map_lsn_to_time(sys.fn_cdc_get_max_lsn())")
        ).rows[0]
        raw = from_bytes(row[0]) if row[0] is not None else 0
        return ServerState(raw or None, self.instances(), row[1])

    def captured_columns(self, instance: CaptureInstance) -> list[Column]:
        """The instance's captured columns with their types; large objects with their
        change-table ordinal (``sys.fn_cdc_get_column_ordinal``, for ``sys.fn_cdc_is_bit_set``).

        An instance dropped since the help procedure listed it: error 22981 "Object does not exist
        or access is denied" (sys.sp_cdc_get_captured_columns, "Remarks"), or a NULL ordinal (the
        function's page documents no NULL; it is what a missing instance or column gives), both
        :class:`InstanceGone`, so the caller reads the instances again (a revoked right then shows
        as the instance missing from the help procedure, the named error)."""
        try:
            records = self.records("EXEC sys.sp_cdc_get_captured_columns @capture_instance = ?", instance.name)
        except Denied as exc:
            if "does not exist or access is denied" not in str(exc).lower():
                raise
            raise InstanceGone(f"capture instance {instance.name} is gone ({exc})", instance.name) from None
        columns = [
            Column(
                name=str(r["column_name"]),
                type=str(r["data_type"]).lower(),
                max_length=r.get("character_maximum_length"),
                precision=r.get("numeric_precision"),
                scale=r.get("numeric_scale") if r.get("numeric_scale") is not None else r.get("datetime_precision"),
                ordinal=int(r.get("column_ordinal") or 0),
            )
            for r in records
        ]
        if any(c.type in BYTE_TYPES and c.max_length is None for c in columns):
            columns = self._byte_lengths(instance, columns)
        out = []
        for found in columns:
            column = found
            if column.lob:
                ordinal = self.value("SELECT sys.fn_cdc_get_column_ordinal(?, ?)", instance.name, column.name)
                if ordinal is None:
                    raise InstanceGone(
                        f"capture instance {instance.name} has no column {column.name} any more "
                        "(sys.fn_cdc_get_column_ordinal returned NULL)",
                        instance.name,
                    )
                column = replace(column, ordinal=int(ordinal))
            out.append(column)
        return out

    def _byte_lengths(self, instance: CaptureInstance, columns: list[Column]) -> list[Column]:
        """binary/varbinary lengths from ``sys.columns`` (bytes, -1 for max): the help procedure's
        ``character_maximum_length`` is documented as NULL for columns that are not
        character-based (sys.sp_cdc_get_captured_columns, "Result sets")."""
        rows = self.query(
            "SELECT c.name, c.max_length FROM sys.columns AS c WHERE c.object_id = ?", instance.object_id
        ).rows
        lengths = {str(r[0]): int(r[1]) for r in rows}
        return [
            replace(c, max_length=lengths.get(c.name)) if c.type in BYTE_TYPES and c.max_length is None else c
            for c in columns
        ]

    def table(self, schema: str | None, name: str) -> SourceTable | None:
        qualified = f"{quote_name(schema)}.{quote_name(name)}" if schema else quote_name(name)
        rows = self.query(
            "SELECT t.object_id, SCHEMA_NAME(t.schema_id), t.name, CAST(t.is_tracked_by_cdc AS int)"
            " FROM sys.tables AS t WHERE t.object_id = OBJECT_ID(?)",
            qualified,
        ).rows
        return SourceTable(int(rows[0][0]), str(rows[0][1]), str(rows[0][2]), bool(rows[0][3])) if rows else None

    def column_names(self, schema: str, table: str) -> set[str]:
        """The columns the table has now (a captured column may have been dropped since)."""
        rows = self.query(
            "SELECT c.name FROM sys.columns AS c WHERE c.object_id = OBJECT_ID(?)",
            f"{quote_name(schema)}.{quote_name(table)}",
        ).rows
        return {str(r[0]) for r in rows}

    def tracked_tables(self) -> list[SourceTable]:
        """Tables CDC captures that this login can see (capture instance visible to it or not)."""
        rows = self.query(
            "SELECT object_id, SCHEMA_NAME(schema_id), name FROM sys.tables WHERE is_tracked_by_cdc = 1"
        ).rows
        return [SourceTable(int(r[0]), str(r[1]), str(r[2]), True) for r in rows]

    def denied_columns(self, table: SourceTable) -> list[str]:
        """The table's columns this login may not SELECT."""
        rows = self.query(
            "SELECT c.name FROM sys.columns AS c WHERE c.object_id = ?"
            " AND ISNULL(HAS_PERMS_BY_NAME(QUOTENAME(OBJECT_SCHEMA_NAME(?)) + N'.' + QUOTENAME(OBJECT_NAME(?)),"
            " N'OBJECT', N'SELECT', c.name, N'COLUMN'), 0) = 0 ORDER BY c.column_id",
            table.object_id,
            table.object_id,
            table.object_id,
        ).rows
        return [str(r[0]) for r in rows]

    def is_role_member(self, role: str) -> bool:
        return bool(self.value("SELECT ISNULL(IS_ROLEMEMBER(?), 0)", role))

    def can_select(self, securable: str) -> bool:
        return bool(self.value("SELECT ISNULL(HAS_PERMS_BY_NAME(?, N'OBJECT', N'SELECT'), 0)", securable))

    def row_estimate(self, object_id: int) -> int | None:
        """The table's approximate row count, the 100% of an incremental snapshot's progress:
        ``sys.partitions.rows`` ("Approximate number of rows in this partition") of the heap or
        clustered index (``index_id`` 0 or 1), summed over partitions. No VIEW DATABASE STATE
        needed: the view "Requires membership in the public role" and shows the partitions of
        tables the login has some permission on (Microsoft, "sys.partitions", Permissions;
        "Metadata Visibility Configuration"); for any other table SUM over no rows is NULL."""
        value = self.value(
            "SELECT SUM(p.rows) FROM sys.partitions AS p WHERE p.object_id = ? AND p.index_id IN (0, 1)", object_id
        )
        return int(value) if value is not None else None

    def signal_row(self, table: str, row_id: str) -> str | None:
        """The ``data`` of the signal table's row ``row_id`` (a task's mark), None when absent."""
        from dstream_mssql_cdc.incremental import signal_select_sql

        rows = self.query(signal_select_sql(table), row_id).rows
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def min_lsn(self, instance: str) -> int:
        raw = self.value("SELECT sys.fn_cdc_get_min_lsn(?)", instance)
        return from_bytes(raw) if raw is not None else 0

    # -- changes --------------------------------------------------------------------------

    def window_end(
        self, instance: CaptureInstance, direct: bool, n: int, start: int, end: int
    ) -> tuple[int, int | None]:
        """How many changes (at most ``n``) follow ``start`` up to ``end``, and the last one's LSN."""
        row = self.query(window_end_query(instance, direct), n, to_bytes(start), to_bytes(end)).rows[0]
        return int(row[0]), from_bytes(row[1]) if row[1] is not None else None

    def commit_times(self, lsns: Sequence[int]) -> dict[int, datetime | None]:
        """``sys.fn_cdc_map_lsn_to_time`` of each commit LSN, with the server's UTC offset."""
        out: dict[int, datetime | None] = {}
        for i in range(0, len(lsns), 500):
            part = lsns[i : i + 500]
            values = ", ".join("(?)" for _ in part)
            rows = self.query(
                f"SELECT v.l, {OFFSET_TIME.format('sys.fn_cdc_map_lsn_to_time(v.l)')} FROM (VALUES {values}) AS v(l)",  # noqa: S608
                *[to_bytes(lsn) for lsn in part],
            ).rows
            out.update((from_bytes(r[0]), r[1]) for r in rows)
        return out

    def stream(self, sql: str, *params: Any) -> Rows:
        """Execute ``sql`` and hand its rows over as they are fetched (:class:`Rows`)."""
        cur = self.cursor()
        try:
            cur.execute(sql, *params)
            first = cur.fetchmany(FETCH)
        except pyodbc.Error as exc:
            with contextlib.suppress(Exception):
                cur.close()
            raise self.translate(exc) from None
        except BaseException:
            with contextlib.suppress(Exception):
                cur.close()
            raise
        columns, signature = tuple(str(d[0]) for d in cur.description), _signature(cur.description)
        if len(first) < FETCH:  # all of it: the connection is free at once
            with contextlib.suppress(Exception):
                cur.close()
            cur = None
        return Rows(self, cur, first, columns, signature)

    def paged(self, pages: Pages) -> PagedRows:
        """A function-mode window in pages of ``pages.size`` rows (sql.function_pages)."""
        return PagedRows(self, pages)

    # -- snapshots ------------------------------------------------------------------------

    def begin_snapshot(self, isolation: str) -> int | None:
        """Start the snapshot's transaction and return the CDC max LSN it is consistent with.

        SNAPSHOT isolation (Debezium's snapshot.isolation.mode = snapshot): the first read is
        ``sys.fn_cdc_get_max_lsn()``; every transaction at or below that LSN was harvested, so
        it committed before the transaction's view and is in the rows read later in it.
        read_committed: the LSN is read first, then each chunk in its own statement (rows
        changed meanwhile come again as changes).
        """
        if isolation == "snapshot":
            self.execute("SET TRANSACTION ISOLATION LEVEL SNAPSHOT")
            self.execute("BEGIN TRANSACTION")
        return self.max_lsn()

    def end_snapshot(self) -> None:
        with contextlib.suppress(CdcError):
            self.execute("IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION")
            self.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")


def _signature(description: Any) -> tuple[Any, ...]:
    """What the driver says about a result's columns: a change tells a type altered in place."""
    return tuple((d[0], getattr(d[1], "__name__", str(d[1])), d[3], d[4], d[5]) for d in description)


class Rows:
    """An executed statement whose rows are fetched as the consumer asks (``FETCH`` at a
    time), so a window of a million changes never sits in memory whole; the session is
    released (``on_done``) when the rows are exhausted or the iteration is closed."""

    def __init__(
        self, session: Session, cursor: Any, first: list[Any], columns: tuple[str, ...], signature: Any
    ) -> None:
        self.session = session
        self.columns = columns
        self.signature = signature
        self._cursor: Any = cursor
        self._first = first
        self.on_chunk: Callable[[Sequence[Any]], None] | None = None
        self.on_done: Callable[[Session], None] | None = None

    @property
    def complete(self) -> bool:
        """Every row is fetched already (the statement's connection is not held)."""
        return self._cursor is None

    def __iter__(self) -> Iterator[Any]:
        chunk = self._first
        self._first = []
        try:
            while chunk:
                if self.on_chunk is not None:
                    self.on_chunk(chunk)
                yield from chunk
                if self._cursor is None:
                    return
                try:
                    chunk = self._cursor.fetchmany(FETCH)
                except pyodbc.Error as exc:
                    raise self.session.translate(exc) from None
        finally:
            self.close()

    def close(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is None:
            return
        with contextlib.suppress(Exception):
            cursor.close()
        if self.on_done is not None:
            self.on_done(self.session)


@dataclass(frozen=True)
class Pages:
    """A window read in pages: the first page's SQL, the SQL of the page after a row, the
    window's parameters (@from, @to), the page size."""

    first: str
    after: str
    params: tuple[Any, ...]
    size: int


class PagedRows(Rows):
    """:class:`Rows`' interface over pages: the first page is fetched at once (its description is
    the result's signature), each next one after the last row's (start_lsn, seqval, operation)
    when the consumer gets there; the session is held until the last page."""

    def __init__(self, session: Session, pages: Pages) -> None:
        self.session = session
        self.columns = ()
        self.pages = pages
        first = session.stream(pages.first, pages.size, *pages.params)
        self.signature = first.signature
        self._page: list[Any] = list(first)
        self._last = len(self._page) < pages.size
        self._held = not self._last
        self.on_chunk: Callable[[Sequence[Any]], None] | None = None
        self.on_done: Callable[[Session], None] | None = None

    @property
    def complete(self) -> bool:
        return not self._held

    def __iter__(self) -> Iterator[Any]:
        page, self._page = self._page, []
        try:
            while page:
                if self.on_chunk is not None:
                    self.on_chunk(page)
                yield from page
                if self._last:
                    return
                lsn, seqval, operation = page[-1][0], page[-1][1], page[-1][2]
                page = list(
                    self.session.stream(
                        self.pages.after, self.pages.size, *self.pages.params, lsn, lsn, seqval, seqval, operation
                    )
                )
                self._last = len(page) < self.pages.size
        finally:
            self.close()

    def close(self) -> None:
        if self._held:
            self._held = False
            if self.on_done is not None:
                self.on_done(self.session)
