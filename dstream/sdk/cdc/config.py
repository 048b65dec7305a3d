"""The settings every CDC provider shares."""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BeforeValidator, Field, field_validator, model_validator

from dstream.sdk import ProviderConfig  # this name: ruff knows pydantic reads the annotations at run time
from dstream.sdk.cdc.positions import BlockingSnapshotMode, SnapshotMode
from dstream.sdk.units import Duration


def _snapshot_mode(value: Any) -> Any:
    return "never" if value == "none" else value  # "none": the name this setting had before


class CdcConfig(ProviderConfig):
    """Settings every CDC input provider takes (engines add their connection settings)."""

    tables: list[str] = Field(
        min_length=1, description='tables to capture, as "schema.table" (or "table" for the default schema)'
    )
    snapshot: Annotated[BlockingSnapshotMode, BeforeValidator(_snapshot_mode)] = Field(
        default="initial",
        description=(
            "initial: a table without a position in the checkpoint (all of them on the first run, tables added "
            "later alone) first gets its existing rows (OperationType Read), then its changes; when_needed: also "
            'when the stored position is no longer held by the source; never: changes only ("none" is never)'
        ),
    )
    poll_interval: Duration = Field(
        default=0.2, gt=0, description='time between polls while changes arrive ("200ms", or seconds)'
    )
    max_poll_interval: Duration = Field(
        default=5.0, gt=0, description='polls back off (doubling) up to this while idle ("5s", or seconds)'
    )
    batch_size: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="changes read per poll and rows per snapshot chunk (a larger transaction comes whole)",
    )
    reconnect_timeout: Duration = Field(
        default=60.0, ge=0, description='how long to keep reconnecting (with backoff) after losing the server ("1m")'
    )

    @field_validator("tables")
    @classmethod
    def _unique_tables(cls, tables: list[str] | None) -> list[str] | None:
        if tables is None:  # a provider may make tables optional (e.g. "every captured table")
            return None
        cleaned = [t.strip() for t in tables]
        if any(not t for t in cleaned):
            raise ValueError("table names must not be empty")
        seen: set[str] = set()
        for name in cleaned:
            if name in seen:
                raise ValueError(f"table {name!r} is listed twice")
            seen.add(name)
        return cleaned

    @model_validator(mode="after")
    def _intervals(self) -> Self:
        if self.max_poll_interval < self.poll_interval:
            raise ValueError(
                f"max_poll_interval ({self.max_poll_interval:g}s) is shorter than poll_interval "
                f"({self.poll_interval:g}s)"
            )
        return self


class IncrementalCdcConfig(CdcConfig):
    """:class:`CdcConfig` plus ``snapshot = "incremental"`` and its settings, for a provider
    that implements incremental snapshots (:mod:`dstream.sdk.cdc.incremental`)."""

    # The shared field with the incremental mode added (a subclass may widen the choices).
    snapshot: Annotated[SnapshotMode, BeforeValidator(_snapshot_mode)] = Field(  # type: ignore[assignment]
        default="initial",
        description=(
            "initial, when_needed, never: as CdcConfig; incremental: a table without a position streams at once and "
            "its rows come in key-ordered chunks between its changes (tables need a key)"
        ),
    )
    snapshot_chunk_size: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="incremental snapshots: rows per chunk (one short read, held in memory until its watermark)",
    )
    snapshot_chunk_pause: Duration = Field(
        default=0.0,
        ge=0,
        description='incremental snapshots: throttle, the least time between two chunks ("100ms"; 0: none)',
    )
    snapshot_where: dict[str, str] = Field(
        default_factory=dict,
        description=(
            'incremental snapshots: a filter per table ({"public.orders" = "created > now() - interval \'30 days\'"}),'
            " an SQL condition on the table's columns, for a partial snapshot"
        ),
    )
