"""What the server says about CDC, as plain values: capture instances, their columns, and
why a login cannot see one. Pure: db.py fills these from the queries a least-privileged
login may run (``sys.sp_cdc_help_change_data_capture``, ``sys.sp_cdc_get_captured_columns``,
``sys.fn_cdc_get_max_lsn``, catalog views and permission functions).

Both procedures show a capture instance only to a login with SELECT on all its captured
columns and membership of its gating role (Microsoft's CDC security model), and
``sys.fn_cdc_get_min_lsn`` returns 0 both while capture has not started and when the
caller is not authorized. So "not visible, yet ``sys.tables.is_tracked_by_cdc`` = 1" is
told apart from "not started" (visible, ``start_lsn`` NULL) by :func:`access_message`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dstream_mssql_cdc.errors import CdcError
from dstream_mssql_cdc.names import quote_name

if TYPE_CHECKING:
    from collections.abc import Sequence

# Types pyodbc cannot read as they come, converted in SQL (sql.py), and large-object types.
LOB_TYPES = frozenset({"text", "ntext", "image", "xml"})
MAX_TYPES = frozenset({"varchar", "nvarchar", "varbinary"})
ALWAYS_NULL_OLD = frozenset({"text", "ntext", "image"})  # NULL in every delete and before-image
BYTE_TYPES = frozenset({"binary", "varbinary"})  # no character_maximum_length: sizes from sys.columns


# Extended properties of ours (which task enabled what) are named with this prefix.
PROPERTY_PREFIX = "dstream:cdc:"


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    cdc_enabled: bool
    version: str
    snapshot_isolation: bool = False  # ALLOW_SNAPSHOT_ISOLATION ON


@dataclass(frozen=True)
class Tag:
    """An extended property of ours: which task enabled what."""

    object_id: int  # 0 for the database
    schema: str
    table: str
    name: str
    value: dict[str, Any]


@dataclass(frozen=True)
class Column:
    """A captured column (``sys.sp_cdc_get_captured_columns``)."""

    name: str
    type: str  # data_type: int, nvarchar, decimal, sql_variant, ...
    max_length: int | None = None  # character_maximum_length: -1 for (n)varchar(max)/varbinary(max)
    precision: int | None = None
    scale: int | None = None
    ordinal: int = 0  # the column's ordinal in the change table: its bit in __$update_mask

    @property
    def lob(self) -> bool:
        """Large values CDC leaves out of some images (Microsoft: cdc.<capture_instance>_CT, large object types)."""
        return self.type in LOB_TYPES or (self.type in MAX_TYPES and self.max_length == -1)

    @property
    def sql_type(self) -> str:
        """The column's type as T-SQL spells it (for CONVERT and for schema-change envelopes)."""
        kind = self.type
        if kind in ("varchar", "nvarchar", "varbinary", "char", "nchar", "binary"):
            if self.max_length == -1:
                return f"{kind}(max)"
            if self.max_length:
                return f"{kind}({self.max_length})"
        if kind in ("decimal", "numeric") and self.precision is not None:
            return f"{kind}({self.precision}, {self.scale or 0})"
        if kind in ("datetime2", "datetimeoffset", "time") and self.scale is not None:
            return f"{kind}({self.scale})"
        return kind

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.sql_type}


@dataclass(frozen=True)
class CaptureInstance:
    """A row of ``sys.sp_cdc_help_change_data_capture``."""

    name: str
    schema: str
    table: str
    object_id: int  # the source table's
    min_lsn: int  # start_lsn: 0 while the low endpoint is not established (capture not started)
    create_date: datetime | None = None
    change_table_id: int = 0
    role: str | None = None  # the gating role, if any
    key: tuple[str, ...] = ()  # index_column_list: the primary key or the unique index given at enable time
    captured: tuple[str, ...] = ()  # captured_column_list

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def change_table(self) -> str:
        return f"cdc.{quote_name(self.name + '_CT')}"

    @property
    def function(self) -> str:
        return f"cdc.{quote_name('fn_cdc_get_all_changes_' + self.name)}"


@dataclass(frozen=True)
class ServerState:
    """What one poll starts from: the max LSN (None: CDC captured nothing yet), its commit
    time, and the capture instances this login may read."""

    max_lsn: int | None
    instances: tuple[CaptureInstance, ...]
    max_time: datetime | None = None

    def of_table(self, object_id: int) -> list[CaptureInstance]:
        """The table's instances, oldest first (two capture instances with the same start LSN:
        the newest counts as later, as Debezium's GET_CHANGE_TABLES picks it)."""
        found = [i for i in self.instances if i.object_id == object_id]
        return sorted(found, key=lambda i: (i.min_lsn, i.create_date or datetime.min, i.name))

    def tables(self) -> dict[int, str]:
        """object_id → schema.table of every table with a capture instance."""
        return {i.object_id: i.qualified for i in self.instances}


@dataclass(frozen=True)
class SourceTable:
    object_id: int
    schema: str
    name: str
    tracked: bool = False  # sys.tables.is_tracked_by_cdc: CDC captures it (visible to us or not)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Login:
    login: str  # SUSER_SNAME()
    user: str  # USER_NAME(): the database user GRANTs name


def select_columns(
    table: str, instance: CaptureInstance, columns: Sequence[Column], wanted: tuple[str, list[str]] | None
) -> list[Column]:
    """The captured columns to emit, in capture order, after the ``columns`` /
    ``exclude_columns`` option; the key columns always stay (they name each row)."""
    if wanted is None:
        return list(columns)
    kind, names = wanted
    by_name = {c.name.lower(): c for c in columns}
    unknown = [n for n in names if n.lower() not in by_name]
    if unknown:
        raise CdcError(
            f"{table}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not captured by capture instance "
            f"{instance.name} (its columns: {', '.join(c.name for c in columns)})"
        )
    chosen = {n.lower() for n in names}
    keys = {k.lower() for k in instance.key}
    if kind == "except":
        dropped_keys = sorted(k for k in instance.key if k.lower() in chosen)
        if dropped_keys:
            raise CdcError(
                f"{table}: exclude_columns names the key column(s) {', '.join(dropped_keys)}, which name each row "
                f"(the capture instance's index {', '.join(instance.key)}): keep them"
            )
        return [c for c in columns if c.name.lower() not in chosen]
    missing_keys = [k for k in instance.key if k.lower() not in chosen]
    if missing_keys:
        raise CdcError(
            f"{table}: columns must include the key column(s) {', '.join(missing_keys)}, which name each row "
            f"(the capture instance's index {', '.join(instance.key)})"
        )
    return [c for c in columns if c.name.lower() in chosen or c.name.lower() in keys]


def access_message(login: Login, table: SourceTable, denied: Sequence[str], task: str) -> str:
    """Why a table CDC captures shows no capture instance to this login, and the fix."""
    target = f"{quote_name(table.schema)}.{quote_name(table.name)}"
    user = quote_name(login.user)
    why = (
        f"login {login.login!r} (database user {login.user!r}) may not read the changes of {table.qualified}: "
        f"CDC captures the table (sys.tables.is_tracked_by_cdc = 1), but sys.sp_cdc_help_change_data_capture "
        f"shows none of its capture instances to this login, and sys.fn_cdc_get_min_lsn returns 0 for it as if "
        f"capture had not started. "
    )
    if denied:
        cols = ", ".join(quote_name(c) for c in denied)
        return why + (
            f"Missing: SELECT on {cols} (CDC needs SELECT on every captured column). "
            f"Fix: GRANT SELECT ON {target} TO {user}; (or GRANT SELECT ON {target} ({cols}) TO {user};) and, if the "
            f"capture instance has a gating role, ALTER ROLE [<gating role>] ADD MEMBER {user}; "
            f"(EXEC sys.sp_cdc_help_change_data_capture @source_schema = N'{table.schema}', "
            f"@source_name = N'{table.name}' run by db_owner shows its role_name)"
        )
    return why + (
        "It has SELECT on every column, so what is missing is membership of the capture instance's gating role. "
        f"Fix: ALTER ROLE [<gating role>] ADD MEMBER {user}; (EXEC sys.sp_cdc_help_change_data_capture "
        f"@source_schema = N'{table.schema}', @source_name = N'{table.name}' run by db_owner shows its role_name)"
    )


def gating_message(login: Login, instance: CaptureInstance) -> str:
    user = quote_name(login.user)
    role = quote_name(instance.role or "")
    return (
        f"login {login.login!r} (database user {login.user!r}) is not a member of {role}, the gating role of capture "
        f"instance {instance.name} ({instance.qualified}): reading its changes needs it. "
        f"Fix: ALTER ROLE {role} ADD MEMBER {user};"
    )
