"""The provider's config (shared CDC settings plus PostgreSQL's) and the names derived from it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import BeforeValidator, Field, SecretStr, field_validator

from dstream.sdk.cdc import IncrementalCdcConfig, SnapshotMode

SLOT_NAME = r"^[a-z0-9_]{1,56}$"
READER_SUFFIX = "_reader"  # the temporary slot a run reads through (see source.py)


def _snapshot_mode(value: object) -> object:
    return "never" if value == "none" else value  # "none": this setting's earlier name


class PostgresCdcConfig(IncrementalCdcConfig):
    # The default differs from CdcConfig's ("initial", Debezium's): `dstream init` creates the
    # slot, which already marks where the task's stream starts, and changing what a task without
    # `snapshot` emits would surprise its users. "initial" / "when_needed" add the rows.
    snapshot: Annotated[SnapshotMode, BeforeValidator(_snapshot_mode)] = Field(
        default="never",
        description=(
            "never (default): changes only, from the slot's position; initial: a table without a position in the "
            "checkpoint (all on the first run, tables added later alone) first gets its rows (OperationType Read); "
            "when_needed: also when the slot is past the checkpoint (instead of failing); incremental: such a "
            "table streams at once and its rows come in key-ordered chunks between its changes (tables need a key)"
        ),
    )
    dsn: SecretStr = Field(
        description=(
            "libpq connection string or URI (a secret), e.g. postgresql://user:password@host:5432/db; "
            "the role needs LOGIN and REPLICATION (and SELECT on the tables for snapshots)"
        )
    )
    slot_name: str | None = Field(
        default=None,
        pattern=SLOT_NAME,
        description="logical replication slot (lowercase letters, digits, _; at most 56); default dstream_<task>",
    )
    plugin: Literal["pgoutput", "wal2json"] | None = Field(
        default=None,
        description=(
            "logical decoding output plugin: pgoutput (built into PostgreSQL >= 10; init creates a publication "
            "named like the slot) or wal2json (an extension); default: the plugin of the task's existing slot, "
            "else pgoutput"
        ),
    )
    replica_identity_full: bool = Field(
        default=False,
        description="init sets REPLICA IDENTITY FULL on the tables: updates and deletes carry the whole old row",
    )
    timezone: str = Field(default="UTC", description="session TimeZone: how timestamptz values are rendered")
    numeric_as_string: bool = Field(
        default=False, description="render integer, float and numeric values as strings (exact decimals)"
    )

    @field_validator("dsn")
    @classmethod
    def _parsable(cls, dsn: SecretStr) -> SecretStr:
        try:
            conninfo_to_dict(dsn.get_secret_value())
        except psycopg.ProgrammingError:  # its text quotes the DSN, password included: not repeated
            raise ValueError("not a valid libpq connection string or URI") from None
        return dsn


def default_slot_name(task: str | None) -> str:
    if not task:
        raise ValueError("set slot_name: no task name was given to derive it from")
    cleaned = re.sub(r"[^a-z0-9_]+", "_", task.lower()).strip("_") or "task"
    return f"dstream_{cleaned}"[:56]


@dataclass(frozen=True)
class Target:
    """What error messages say about the source (never the password)."""

    server: str  # host:port/database
    user: str
    slot: str
    task_hint: str
    plugin: str = "wal2json"

    @classmethod
    def from_config(cls, config: PostgresCdcConfig, slot: str, task: str | None, plugin: str) -> Target:
        params = conninfo_to_dict(config.dsn.get_secret_value())
        host = str(params.get("host") or params.get("hostaddr") or "localhost")
        port = str(params.get("port") or "5432")
        user = str(params.get("user") or "")
        database = str(params.get("dbname") or user or "postgres")
        return cls(f"{host}:{port}/{database}", user or "(default)", slot, task or "TASK", plugin)
