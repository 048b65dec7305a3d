"""The health and lifecycle statements of db.Session (its connection, query helpers and
error translation are in db.py): the capture job, retention and log position checks, and
what init and destroy run (db_owner; sysadmin to enable or disable CDC on a database)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar

from dstream_mssql_cdc.catalog import PROPERTY_PREFIX, Tag
from dstream_mssql_cdc.errors import CdcError, ConnectionLost
from dstream_mssql_cdc.lsn import from_bytes, parse_log_lsn, to_bytes
from dstream_mssql_cdc.names import quote_name

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from dstream_mssql_cdc.catalog import SourceTable
    from dstream_mssql_cdc.changes import ResultSet

T = TypeVar("T")
OFFSET_TIME = "TODATETIMEOFFSET({0}, DATEPART(TZOFFSET, SYSDATETIMEOFFSET()))"  # Debezium's LSN_TIMESTAMP_SELECT


class AdminQueries:
    """Mixed into db.Session, which supplies the four query helpers."""

    _log_stats = True  # False once sys.dm_db_log_stats turned out not to be readable

    def query(self, sql: str, *params: Any) -> ResultSet:
        raise NotImplementedError

    def execute(self, sql: str, *params: Any) -> None:
        raise NotImplementedError

    def value(self, sql: str, *params: Any) -> Any:
        raise NotImplementedError

    def optional(self, read: Callable[[], T]) -> T | None:
        raise NotImplementedError

    # -- health ---------------------------------------------------------------------------

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

    def commit_time(self, lsn: int) -> datetime | None:
        value: datetime | None = self.value(
            f"SELECT {OFFSET_TIME.format('sys.fn_cdc_map_lsn_to_time(?)')}", to_bytes(lsn)
        )
        return value

    def increment_lsn(self, lsn: int) -> int:
        """``sys.fn_cdc_increment_lsn`` itself (tests compare it with lsn.increment_lsn)."""
        return from_bytes(self.value("SELECT sys.fn_cdc_increment_lsn(?)", to_bytes(lsn)))

    def capture_latency(self) -> float | None:
        """Seconds since the newest capture (``sys.fn_cdc_map_lsn_to_time`` of the max LSN)."""
        value = self.value(
            "SELECT DATEDIFF_BIG(millisecond, sys.fn_cdc_map_lsn_to_time(sys.fn_cdc_get_max_lsn()), GETDATE())"
        )
        return max(0.0, int(value) / 1000.0) if value is not None else None

    def retention_minutes(self) -> int | None:
        """The cleanup job's retention (``msdb.dbo.cdc_jobs``), or None when unknown or not readable."""
        value = self.optional(
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

        return self.optional(read)

    # -- lifecycle (db_owner; sysadmin for the database) ----------------------------------

    def enable_database(self) -> None:
        self.execute("EXEC sys.sp_cdc_enable_db")

    def disable_database(self) -> None:
        self.execute("EXEC sys.sp_cdc_disable_db")

    def allow_snapshot_isolation(self, database: str) -> None:
        self.execute(f"ALTER DATABASE {quote_name(database)} SET ALLOW_SNAPSHOT_ISOLATION ON")

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
