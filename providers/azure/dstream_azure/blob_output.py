"""azure-blob-output-provider: append envelopes as JSON lines to append blobs, per table and hour.

Blob names come from ``path_pattern`` (default ``{table}/{yyyy}/{MM}/{dd}/{HH}.jsonl``,
UTC processing time). Each batch is appended to each of its blobs in blocks that end at
a line boundary, so a crash never leaves a torn line; the batch is acked once every
block is committed. A blob that reaches the append-blob block limit continues in
``<name>.1.jsonl``, ``<name>.2.jsonl``, …. ``dstream init`` creates the container
(marked as owned by the task); ``destroy`` deletes it only if this task created it.
"""

from __future__ import annotations

import contextlib
import re
import string
import time
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient
from pydantic import Field, field_validator

from dstream.sdk import InfrastructureProvider, OutputProvider
from dstream_azure import checks, lifecycle
from dstream_azure.naming import parse_table, storage_name
from dstream_azure.routing import TABLE_KEYS, AzureConfig, first_string

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dstream.sdk import Envelope, Resource

BLOCK_BYTES = 4 * 1024 * 1024
MAX_BLOCKS = 50_000
PATH_PLACEHOLDERS = ("table", "schema", "host", "database", "yyyy", "MM", "dd", "HH", "date", "hour")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SLASHES = re.compile(r"/{2,}")


def _segment(value: str) -> str:
    """A value safe as one path segment: no slashes, never ``.`` or ``..``."""
    if not value:
        return ""
    cleaned = _UNSAFE.sub("_", value)
    return cleaned if cleaned.strip(".") else "_"


class BlobOutputConfig(AzureConfig):
    container: str = Field(description="the blob container (created by dstream init)")
    path_pattern: str = Field(
        default="{table}/{yyyy}/{MM}/{dd}/{HH}.jsonl",
        description="blob name; placeholders {table} {schema} {host} {database} {yyyy} {MM} {dd} {HH} {date} {hour}",
    )
    host: str = Field(default="", description="value of {host}")
    database: str = Field(default="", description="value of {database}")
    default_table: str = Field(default="events", description="{table} for envelopes without metadata.TableName")

    @field_validator("path_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        unknown = sorted(fields - set(PATH_PLACEHOLDERS))
        if unknown:
            raise ValueError(f"unknown placeholder(s) {unknown}; allowed: {', '.join(PATH_PLACEHOLDERS)}")
        return value


def chunks(lines: list[bytes], limit: int = BLOCK_BYTES) -> list[bytes]:
    """Lines (each ``\\n``-terminated) joined into blocks of at most ``limit`` bytes, split only between lines."""
    out: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if current and size + len(line) > limit:
            out.append(b"".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        out.append(b"".join(current))
    return out


def part_name(name: str, part: int) -> str:
    if part == 0:
        return name
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.{part}.{ext}" if dot and "/" not in ext else f"{name}.{part}"


class ContainerAdmin:
    resource_type = "storage_container"

    def __init__(self, service: BlobServiceClient) -> None:
        self.service = service

    def existing(self) -> dict[str, lifecycle.Existing]:
        return {
            c.name: lifecycle.Existing(c.name, lifecycle.owner_from_metadata(c.metadata))
            for c in self.service.list_containers(include_metadata=True)
        }

    def create(self, name: str, task: str) -> bool:
        try:
            self.service.create_container(name, metadata=lifecycle.ownership_metadata(task))
        except ResourceExistsError:
            return False
        return True

    def delete(self, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self.service.delete_container(name)

    def describe(self, name: str) -> dict[str, Any]:
        count = 0
        for _ in self.service.get_container_client(name).list_blobs():
            count += 1
            if count >= 10_000:
                return {"blobs": "10000+"}
        return {"blobs": count}


class AzureBlobOutputProvider(OutputProvider[BlobOutputConfig], InfrastructureProvider):
    name = "azure-blob-output-provider"
    version = "0.1.0"
    Config = BlobOutputConfig
    batch_size = 10_000

    def __init__(self, config: BlobOutputConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.container_name = storage_name(config.container, "container")
        self.service = BlobServiceClient.from_connection_string(
            config.connection_string.get_secret_value(), **config.client_options()
        )
        self.container: ContainerClient = self.service.get_container_client(self.container_name)
        self.admin = ContainerAdmin(self.service)
        self.parts: dict[str, int] = {}
        self.created: set[str] = set()

    def blob_for(self, metadata: dict[str, Any], now: time.struct_time) -> str:
        table = parse_table(first_string(metadata, TABLE_KEYS) or self.config.default_table)
        values = {
            "table": _segment(table.table),
            "schema": _segment(table.schema),
            "host": _segment(self.config.host),
            "database": _segment(self.config.database),
            "yyyy": f"{now.tm_year:04d}",
            "MM": f"{now.tm_mon:02d}",
            "dd": f"{now.tm_mday:02d}",
            "HH": f"{now.tm_hour:02d}",
            "date": time.strftime("%Y-%m-%d", now),
            "hour": f"{now.tm_hour:02d}",
        }
        return _SLASHES.sub("/", self.config.path_pattern.format(**values)).strip("/")

    def write(self, batch: list[Envelope]) -> None:
        now = time.gmtime()
        groups: dict[str, list[bytes]] = {}
        for env in batch:
            groups.setdefault(self.blob_for(env.metadata, now), []).append(env.raw + b"\n")
        for name, lines in groups.items():
            for block in chunks(lines):
                self._append(name, block)

    def _append(self, base: str, block: bytes) -> None:
        while True:
            name = part_name(base, self.parts.get(base, 0))
            blob = self.container.get_blob_client(name)
            if name not in self.created:
                self._create(name)
            try:
                result = blob.append_block(block)
            except HttpResponseError as exc:
                if getattr(exc, "error_code", None) == "BlockCountExceedsLimit":
                    self.parts[base] = self.parts.get(base, 0) + 1
                    continue
                raise
            if int(str(result.get("blob_committed_block_count") or 0)) >= MAX_BLOCKS:
                self.parts[base] = self.parts.get(base, 0) + 1
            return

    def _create(self, name: str) -> None:
        try:
            self.container.get_blob_client(name).create_append_blob(match_condition=MatchConditions.IfMissing)
        except ResourceExistsError:
            pass
        except ResourceNotFoundError:
            raise RuntimeError(
                f"container {self.container_name} does not exist: run `dstream init {self.ctx.task or 'TASK'}`"
            ) from None
        self.created.add(name)

    def close(self) -> None:
        self.service.close()

    # -- lifecycle ---------------------------------------------------------------------

    def _wanted(self) -> dict[str, list[str]]:
        return {self.container_name: []}

    def init(self) -> Iterator[Resource]:
        return lifecycle.init(self.admin, self._wanted(), self.ctx.task)

    def plan(self) -> Iterator[Resource]:
        return lifecycle.plan(self.admin, self._wanted(), self.ctx.task)

    def status(self) -> Iterator[Resource]:
        return lifecycle.status(self.admin, self._wanted(), self.ctx.task)

    def check(self) -> Iterator[Resource]:
        """``dstream check``: the account answers these credentials; the container as ``plan``
        sees it (nothing is created or changed)."""
        with checks.answered("the storage account"):
            yield from lifecycle.plan(self.admin, self._wanted(), self.ctx.task)

    def destroy(self) -> Iterator[Resource]:
        return lifecycle.destroy(self.admin, self._wanted(), self.ctx.task)


main = AzureBlobOutputProvider.main
