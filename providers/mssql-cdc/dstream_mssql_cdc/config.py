"""The provider's config (the shared CDC settings plus SQL Server's), ODBC connection strings
and table names.

The connection string is a secret: it is a :class:`pydantic.SecretStr`, and neither the
validation errors here nor any message of the provider repeat it. What messages name is
the :class:`Target` (server, port and database), never the credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from dstream.sdk.cdc import CdcConfig

_SERVER_KEYS = ("server", "address", "addr", "data source", "host", "servername")
_DATABASE_KEYS = ("database", "initial catalog")


class MssqlCdcConfig(CdcConfig):
    connection_string: SecretStr = Field(
        description=(
            "ODBC connection string (a secret), e.g. DRIVER={FreeTDS};SERVER=db;PORT=1433;DATABASE=Sales;"
            "UID=dstream;PWD=...;TDS_Version=7.4;ClientCharset=UTF-8 (the image's driver is FreeTDS; "
            "with ODBC Driver 18: DRIVER={ODBC Driver 18 for SQL Server};SERVER=db,1433;...;Encrypt=yes)"
        )
    )
    tables: list[str] | None = Field(  # type: ignore[assignment]
        default=None,
        min_length=1,
        description=(
            'tables to capture, as "schema.table" (or "table" for the default schema); '
            "omitted: every table with a CDC capture instance (and tables enabled later)"
        ),
    )
    snapshot: Literal["none"] = Field(  # type: ignore[assignment]
        default="none",
        description=(
            'only "none": SQL Server CDC has no consistent initial snapshot here; start = "earliest" reads every '
            "change CDC still retains"
        ),
    )
    start: Literal["earliest", "latest"] = Field(
        default="earliest",
        description=(
            "where a task without a checkpoint starts: earliest = every change still in the change tables, "
            "latest = only changes captured after the first start"
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
    parallelism: int = Field(default=4, ge=1, le=32, description="tables queried at the same time (connections)")
    numeric_as_string: bool = Field(
        default=False, description="decimal, numeric and money values as strings (default: exact JSON numbers)"
    )
    capture_job_timeout: float = Field(
        default=60.0,
        gt=0,
        description=(
            "seconds the CDC max LSN may stay frozen while the transaction log moves before the capture job "
            "is reported as not running"
        ),
    )
    query_timeout: float = Field(default=120.0, ge=0, description="seconds a query may take (0: no limit)")
    login_timeout: float = Field(default=15.0, gt=0, description="seconds to wait for a connection")

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
        seen: dict[tuple[str, str], str] = {}
        cleaned: list[str] = []
        for raw in tables:
            name = raw.strip()
            schema, table = parse_table_name(name)
            key = ((schema or "").lower(), table.lower())
            if key in seen:
                raise ValueError(f"table {name!r} is listed twice (as {seen[key]!r})")
            seen[key] = name
            cleaned.append(name)
        return cleaned


def parse_connection_string(text: str) -> dict[str, str]:
    """ODBC ``KEY=value;KEY={value; with braces}`` → ``{key (lower case): value}``.

    Values in braces may hold ``;`` and ``=``; ``}}`` inside braces is a literal ``}``.
    Errors say where the problem is, never what the string holds.
    """
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in "; \t\r\n":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        stop = text.find(";", i)
        if eq < 0 or (0 <= stop < eq):
            raise ValueError(f"invalid connection string: attribute {len(out) + 1} has no '=' (expected KEY=value)")
        key = text[i:eq].strip().lower()
        if not key:
            raise ValueError(f"invalid connection string: attribute {len(out) + 1} has an empty name")
        i = eq + 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == "{":
            braced = _read_delimited(text, i + 1, "}")
            if braced is None:
                raise ValueError(f"invalid connection string: the value of {key.upper()} has no closing '}}'")
            value, i = braced
            while i < n and text[i] in " \t":
                i += 1
            if i < n and text[i] != ";":
                raise ValueError(f"invalid connection string: unexpected text after the braced value of {key.upper()}")
        else:
            end = text.find(";", i)
            end = n if end < 0 else end
            value = text[i:end].strip()
            i = end
        out[key] = value
    if not out:
        raise ValueError("the connection string is empty")
    return out


def parse_table_name(name: str) -> tuple[str | None, str]:
    """``dbo.Orders`` / ``Orders`` / ``[dbo].[Order Details]`` → (schema or None, table)."""
    parts: list[str] = []
    i, n = 0, len(name)
    if not name.strip():
        raise ValueError("table names must not be empty")
    while True:
        if i < n and name[i] == "[":
            bracketed = _read_delimited(name, i + 1, "]")
            if bracketed is None:
                raise ValueError(f"table name {name!r}: '[' has no closing ']'")
            part, i = bracketed
        else:
            end = name.find(".", i)
            end = n if end < 0 else end
            part = name[i:end].strip()
            i = end
        if not part:
            raise ValueError(f"table name {name!r} has an empty part (expected schema.table)")
        parts.append(part)
        if i >= n:
            break
        if name[i] != ".":
            raise ValueError(f"table name {name!r}: expected '.' after ']'")
        i += 1
    if len(parts) > 2:
        raise ValueError(
            f"table name {name!r} has {len(parts)} parts: use schema.table "
            f"(the database comes from the connection string)"
        )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def _read_delimited(text: str, start: int, close: str) -> tuple[str, int] | None:
    """The text from ``start`` to the first single ``close`` (a doubled one is a literal ``close``)
    and the index just past it; None when it is never closed."""
    chars: list[str] = []
    i, n = start, len(text)
    while i < n:
        if text[i] == close:
            if i + 1 < n and text[i + 1] == close:
                chars.append(close)
                i += 2
                continue
            return "".join(chars), i + 1
        chars.append(text[i])
        i += 1
    return None


def quote_name(name: str) -> str:
    """A SQL Server identifier in brackets (``]`` doubled): safe to splice into SQL."""
    return "[" + name.replace("]", "]]") + "]"


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
