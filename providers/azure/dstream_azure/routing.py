"""Which queue an envelope goes to, and the settings every routing output shares.

An output either sends everything to one fixed ``queue`` (or Service Bus ``topic``), or
routes each envelope by its table (``metadata.TableName``; upstream's lowercase
``table`` is accepted too) to the queue named by ``queue_name_pattern``. The tables in
``tables`` (usually ``local.tables``, shared with the CDC input) are the queues that
``dstream init`` creates, plans and destroys; at run time the table comes from each
envelope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, SecretStr, field_validator

from dstream.sdk import ProviderConfig
from dstream_azure.naming import Case, NamingError, TableRef, check_pattern, parse_table, render

if TYPE_CHECKING:
    from collections.abc import Callable

    from dstream.sdk import Envelope

TABLE_KEYS = ("TableName", "table", "Table")
SCHEMA_KEYS = ("SchemaName", "Schema", "schema")


class RoutingError(ValueError):
    """An envelope that cannot be routed (no table and no fixed queue)."""


def first_string(metadata: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first non-blank string among ``keys`` in ``metadata``."""
    for key in keys:
        value = metadata.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


class AzureConfig(ProviderConfig):
    connection_string: SecretStr = Field(description="the account's or namespace's connection string (a secret)")
    retry_total: int | None = Field(
        default=None, ge=0, description="retries of a failed request (default: the Azure SDK's, with its backoff)"
    )

    def client_options(self) -> dict[str, Any]:
        return {} if self.retry_total is None else {"retry_total": self.retry_total}


class RoutingConfig(AzureConfig):
    tables: list[str] = Field(
        default_factory=list,
        description="tables whose queues init/plan/destroy manage, e.g. local.tables (dbo.Orders or Orders)",
    )
    queue: str | None = Field(default=None, description="send everything to this one queue instead of routing")
    queue_name_pattern: str = Field(
        default="{table}_cdc_events",
        description="queue per table; placeholders {host}, {database}, {schema}, {table}",
    )
    queue_name_case: Case = Field(
        default="preserve", description='"preserve", "lower", or "kebab" (lowercase, other characters become -)'
    )
    host: str = Field(default="", description="value of {host} in queue_name_pattern")
    database: str = Field(default="", description="value of {database} in queue_name_pattern")
    default_schema: str = Field(default="", description="{schema} for table names without one")
    default_table: str | None = Field(
        default=None, description="table for envelopes without metadata.TableName (default: such envelopes fail)"
    )
    create_missing: bool = Field(
        default=False,
        description="create the queue of a table not created by init on first use (marked as owned by this task)",
    )

    @field_validator("queue_name_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return check_pattern(value)


class Router:
    """Envelope → target entity name, cached per table."""

    def __init__(self, config: RoutingConfig, make_name: Callable[[str], str], fixed: str | None = None) -> None:
        self.config = config
        self.make_name = make_name
        fixed = fixed if fixed is not None else config.queue
        self.fixed = make_name(fixed) if fixed else None
        self._cache: dict[tuple[str, str], str] = {}
        # A table name without a schema (upstream's TableName) takes its schema from the
        # configured table of that name, when exactly one matches.
        by_table: dict[str, set[str]] = {}
        for table in config.tables:
            ref = parse_table(table, config.default_schema)
            by_table.setdefault(ref.table.lower(), set()).add(ref.schema)
        self._schemas = {name: schemas.pop() for name, schemas in by_table.items() if len(schemas) == 1}

    def name_for(self, table: TableRef) -> str:
        cfg = self.config
        return self.make_name(render(cfg.queue_name_pattern, table, cfg.host, cfg.database, cfg.queue_name_case))

    def wanted(self) -> dict[str, list[str]]:
        """The entities the config asks for, each with the tables that map to it."""
        tables = list(self.config.tables)
        if self.fixed:
            return {self.fixed: tables}
        if self.config.default_table and self.config.default_table not in tables:
            tables.append(self.config.default_table)
        out: dict[str, list[str]] = {}
        for table in tables:
            out.setdefault(self.name_for(parse_table(table, self.config.default_schema)), []).append(table)
        return out

    def table_of(self, metadata: dict[str, Any]) -> str | None:
        return first_string(metadata, TABLE_KEYS) or self.config.default_table

    def route(self, metadata: dict[str, Any]) -> tuple[str, str | None]:
        """``(target name, table)`` for an envelope's metadata."""
        table = self.table_of(metadata)
        if self.fixed:
            return self.fixed, table
        if table is None:
            keys = sorted(metadata)
            raise RoutingError(
                f"an envelope has no metadata.TableName (metadata keys: {keys}); set default_table, "
                "or queue for one fixed queue"
            )
        schema = first_string(metadata, SCHEMA_KEYS) or ""
        key = (table, schema)
        name = self._cache.get(key)
        if name is None:
            ref = parse_table(table, schema)
            if not ref.schema:
                ref = TableRef(self._schemas.get(ref.table.lower(), self.config.default_schema), ref.table)
            try:
                name = self.name_for(ref)
            except NamingError as exc:
                raise RoutingError(f"table {table!r}: {exc}") from None
            self._cache[key] = name
        return name, table

    def group(self, batch: list[Envelope]) -> dict[str, list[tuple[Envelope, str | None]]]:
        """Split a batch by target, keeping each target's envelopes in order."""
        groups: dict[str, list[tuple[Envelope, str | None]]] = {}
        for env in batch:
            target, table = self.route(env.metadata)
            groups.setdefault(target, []).append((env, table))
        return groups
