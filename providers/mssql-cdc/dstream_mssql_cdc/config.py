"""The provider's config: the shared CDC settings plus SQL Server's.

The connection string is a secret: it is a :class:`pydantic.SecretStr`, and neither the
validation errors here nor any message of the provider repeat it. What messages name is
the :class:`Target` (server, port and database), never the credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from dstream.sdk import Duration  # noqa: TC001 - pydantic reads the annotation at runtime
from dstream.sdk.cdc import IncrementalCdcConfig
from dstream_mssql_cdc.names import parse_connection_string, parse_table_name, quote_name, table_key

__all__ = ["MssqlCdcConfig", "Target", "parse_connection_string", "parse_table_name", "quote_name"]

_SERVER_KEYS = ("server", "address", "addr", "data source", "host", "servername")
_DATABASE_KEYS = ("database", "initial catalog")
UNAVAILABLE = "__dstream_unavailable_value"


class MssqlCdcConfig(IncrementalCdcConfig):
    connection_string: SecretStr = Field(
        description=(
            "ODBC connection string (a secret), e.g. DRIVER={FreeTDS};SERVER=db;PORT=1433;DATABASE=Sales;"
            "UID=dstream;PWD=...;TDS_Version=7.4;ClientCharset=UTF-8 (the image's driver is FreeTDS; "
            "with ODBC Driver 18: DRIVER={ODBC Driver 18 for SQL Server};SERVER=db,1433;...;Encrypt=yes;"
            "TrustServerCertificate=yes for a self-signed server certificate)"
        )
    )
    tables: list[str] | None = Field(  # type: ignore[assignment]
        default=None,
        min_length=1,
        description=(
            'tables to capture, as "schema.table" (or "table" for the default schema); '
            "omitted: every table with a CDC capture instance the login may read (and tables enabled later)"
        ),
    )
    snapshot_isolation: Literal["snapshot", "read_committed"] = Field(
        default="snapshot",
        description=(
            "snapshot: the snapshot reads one SNAPSHOT-isolation transaction with the CDC max LSN it is consistent "
            "with (needs ALLOW_SNAPSHOT_ISOLATION, which init sets); read_committed: no such transaction, rows "
            "changed while the snapshot runs come again as changes"
        ),
    )
    start: Literal["earliest", "latest"] = Field(
        default="earliest",
        description=(
            'where a table without a checkpoint position and without a snapshot (snapshot = "never") starts: '
            "earliest = every change still in the change tables, latest = only changes captured after the first start"
        ),
    )
    columns: dict[str, list[str]] = Field(
        default_factory=dict,
        description='per table, the only captured columns to emit, e.g. {"dbo.Orders" = ["id", "amount"]}',
    )
    exclude_columns: dict[str, list[str]] = Field(
        default_factory=dict,
        description='per table, captured columns not to emit, e.g. {"dbo.Docs" = ["body"]} (never a key column)',
    )
    query_mode: Literal["auto", "function", "direct"] = Field(
        default="auto",
        description=(
            "function: cdc.fn_cdc_get_all_changes_<instance> (a least-privileged login), ordered inside a transaction "
            "by __$seqval; direct: the change table cdc.<instance>_CT (SELECT on it), ordered by __$command_id as "
            "Microsoft documents; auto: direct where the login may read every change table, else function"
        ),
    )
    unavailable_value: str = Field(
        default=UNAVAILABLE,
        description=(
            "the value of a large-object column CDC did not record (text/ntext/image in deletes and before-images, "
            "an unchanged (n)varchar(max)/varbinary(max)/xml in updates): unchanged, keep the value you have"
        ),
    )
    enable_cdc: bool = Field(
        default=False,
        description=(
            "dstream init enables CDC on the database (sys.sp_cdc_enable_db) and on the listed tables "
            "(sys.sp_cdc_enable_table) where it is off, and records that this task did it; dstream destroy "
            "disables only what this task enabled"
        ),
    )
    signal_table: str = Field(
        default="dbo.dstream_signals",
        description=(
            'snapshot = "incremental": the CDC-enabled table (schema.table) that init creates, which carries the '
            "chunks' watermarks and the execute-snapshot / stop-snapshot signals (an INSERT by dstream snapshot or "
            "a DBA); destroy drops it"
        ),
    )
    parallelism: int = Field(default=4, ge=1, le=32, description="tables queried at the same time (connections)")
    numeric_as_string: bool = Field(
        default=False, description="decimal, numeric and money values as strings (default: exact JSON numbers)"
    )
    capture_job_timeout: Duration = Field(
        default=60.0,
        gt=0,
        description=(
            "how long the CDC max LSN may stay frozen while the transaction log moves before the capture job "
            'is reported as not running ("1m")'
        ),
    )
    query_timeout: Duration = Field(default=120.0, ge=0, description='how long a query may take ("2m"; 0: no limit)')
    login_timeout: Duration = Field(default=15.0, gt=0, description='how long to wait for a connection ("15s")')

    @field_validator("connection_string")
    @classmethod
    def _parsable(cls, value: SecretStr) -> SecretStr:
        attributes = parse_connection_string(value.get_secret_value())  # errors never quote the string
        if "driver" not in attributes and "dsn" not in attributes:
            raise ValueError("the connection string names no DRIVER (e.g. DRIVER={FreeTDS}, the image's driver) or DSN")
        return value

    @field_validator("tables")
    @classmethod
    def _unique_tables(cls, tables: list[str] | None) -> list[str] | None:  # replaces CdcConfig's
        if tables is None:
            return None
        seen: dict[tuple[str | None, str], str] = {}
        cleaned: list[str] = []
        for raw in tables:
            name = raw.strip()
            key = table_key(name)
            if key in seen:
                raise ValueError(f"table {name!r} is listed twice (as {seen[key]!r})")
            seen[key] = name
            cleaned.append(name)
        return cleaned

    @field_validator("columns", "exclude_columns")
    @classmethod
    def _column_lists(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for table, names in value.items():
            table_key(table)  # a valid table name
            if not names or any(not n.strip() for n in names):
                raise ValueError(f"{table}: the column list must name at least one column, none empty")
            lowered = [n.strip().lower() for n in names]
            if len(set(lowered)) != len(lowered):
                raise ValueError(f"{table}: a column is listed twice")
        return {table: [n.strip() for n in names] for table, names in value.items()}

    @field_validator("signal_table")
    @classmethod
    def _signal_table(cls, value: str) -> str:
        table_key(value)  # a valid table name
        return value.strip()

    @model_validator(mode="after")
    def _incremental(self) -> Self:
        if self.snapshot == "incremental" and self.tables is None:
            raise ValueError('snapshot = "incremental" needs the tables listed in `tables`')
        if self.tables is not None and table_key(self.signal_table) in {table_key(t) for t in self.tables}:
            raise ValueError(f"{self.signal_table} is the signal table: it cannot be one of `tables`")
        return self

    @model_validator(mode="after")
    def _column_options(self) -> Self:
        both = {table_key(t) for t in self.columns} & {table_key(t) for t in self.exclude_columns}
        if both:
            names = ", ".join(t for t in self.columns if table_key(t) in both)
            raise ValueError(f"{names}: set either columns or exclude_columns for a table, not both")
        if self.tables is not None:
            listed = {table_key(t) for t in self.tables}
            for table in [*self.columns, *self.exclude_columns]:
                if table_key(table) not in listed:
                    raise ValueError(f"{table} has a column list but is not in tables")
        return self

    def column_filter(self, schema: str, table: str) -> tuple[str, list[str]] | None:
        """("only", names) / ("except", names) for a table, or None: every captured column."""
        key = (schema.lower(), table.lower())
        for options, kind in ((self.columns, "only"), (self.exclude_columns, "except")):
            for name, names in options.items():
                wanted = table_key(name)
                if wanted == key or (wanted[0] is None and wanted[1] == key[1]):
                    return kind, names
        return None


@dataclass(frozen=True)
class Target:
    """What messages say about the source: server and database, never the credentials."""

    server: str
    database: str
    task_hint: str

    @classmethod
    def from_config(cls, config: MssqlCdcConfig, task: str | None) -> Target:
        attributes = parse_connection_string(config.connection_string.get_secret_value())
        server = next((attributes[k] for k in _SERVER_KEYS if attributes.get(k)), "")
        if not server and attributes.get("dsn"):
            server = f"DSN {attributes['dsn']}"
        port = attributes.get("port")
        if port and "," not in server:
            server = f"{server},{port}"
        database = next((attributes[k] for k in _DATABASE_KEYS if attributes.get(k)), "")
        return cls(server or "(default server)", database or "(default database)", task or "TASK")

    def __str__(self) -> str:
        return f"{self.server}/{self.database}"
