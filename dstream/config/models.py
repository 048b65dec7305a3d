"""The validated shape of a task file (pydantic models).

Durations and sizes are the SDK's (:mod:`dstream.sdk.units`), so the task file and provider
configs read them alike: ``"1m30s"``, ``"500ms"`` or seconds; ``"512m"`` (MiB, as
``docker run -m``), ``"8MiB"`` or bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dstream.sdk.units import ByteSize as Size
from dstream.sdk.units import Duration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContainerSettings(_Strict):
    """Per-provider container overrides. Unset fields keep the hardened defaults."""

    network: str | None = None
    memory: Size | None = None  # "512m" is 512 MiB, as `docker run -m`
    init: bool | None = None  # default true: an init process (docker --init) as PID 1
    cpus: float | None = Field(default=None, gt=0)
    pids_limit: int | None = Field(default=None, gt=0)
    read_only: bool | None = None
    user: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    mounts: list[str] = Field(default_factory=list)


class ProviderBlock(_Strict):
    provider_path: str | None = None
    provider_ref: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    # Legacy providers that never print {"status": "ready"}: don't wait for one.
    handshake: bool = True
    container: ContainerSettings = Field(default_factory=ContainerSettings)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ProviderBlock:
        if bool(self.provider_path) == bool(self.provider_ref):
            which = "both are" if self.provider_path else "neither is"
            raise ValueError(
                f"set exactly one of provider_path (a local executable) or provider_ref (an OCI reference); {which} set"
            )
        return self

    @property
    def source(self) -> str:
        return self.provider_ref or self.provider_path or ""


class RestartPolicy(_Strict):
    max_attempts: int = Field(default=3, ge=0)
    backoff: Duration = 1.0
    max_backoff: Duration = 60.0


class DeadLetterSettings(_Strict):
    path: str | None = None


class StateSettings(_Strict):
    """Where checkpoints live: SQLite beside the task file, or Azure Blob Storage (shared)."""

    backend: Literal["sqlite", "azure_blob"] = "sqlite"
    path: str | None = None
    connection_string: str | None = None
    container: str = "dstream-state"
    prefix: str = "checkpoints/"

    @model_validator(mode="after")
    def _azure_needs_a_connection(self) -> StateSettings:
        if self.backend == "azure_blob" and not self.connection_string:
            raise ValueError(
                'backend = "azure_blob" needs connection_string (e.g. env("AZURE_STORAGE_CONNECTION_STRING"))'
            )
        return self


class LeaseSettings(_Strict):
    """Active/standby replicas: only the holder of the task lease runs providers."""

    backend: Literal["azure_blob", "file"] = "file"
    duration: Duration = 30.0
    # azure_blob: defaults to the state block's connection and container.
    connection_string: str | None = None
    container: str | None = None
    # file: a lease file shared by replicas on one machine (default beside the state).
    path: str | None = None

    @model_validator(mode="after")
    def _valid_duration(self) -> LeaseSettings:
        if self.backend == "azure_blob" and not 15 <= self.duration <= 60:
            raise ValueError("an azure_blob lease lasts 15s to 60s (an Azure Storage limit)")
        if self.duration < 1:
            raise ValueError("a lease must last at least 1s")
        return self


class Stage(NamedTuple):
    """One provider of a task's pipeline, in data order."""

    role: str  # "input", "transform-1" … "transform-N", "output"
    block: ProviderBlock
    path: str  # where its settings sit in the file ("transform/0"), for lines and messages


class StageBlock(NamedTuple):
    """A provider block with its place in the file, whether or not its task is valid."""

    task: str
    role: str
    block: ProviderBlock
    path: str


class Task(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    type: Literal["providers"] = "providers"
    description: str | None = None
    input: ProviderBlock
    # Zero or more `transform { }` blocks, run in file order between input and output.
    transforms: list[ProviderBlock] = Field(default_factory=list, alias="transform")
    output: ProviderBlock
    on_error: Literal["fail", "dead_letter"] = "fail"
    dead_letter: DeadLetterSettings = Field(default_factory=DeadLetterSettings)
    restart: RestartPolicy | None = None
    lease: LeaseSettings | None = None
    max_in_flight: int = Field(default=50_000, gt=0)
    max_in_flight_bytes: Size = 64 * 1024 * 1024
    max_line_bytes: Size = 8 * 1024 * 1024
    handshake_timeout: Duration = 30.0
    stop_timeout: Duration = 10.0
    drain_timeout: Duration = 60.0
    commit_interval: Duration = 0.2

    @property
    def stages(self) -> list[Stage]:
        """Input, transforms, output: the pipeline in the order data flows."""
        middle = [Stage(f"transform-{i}", block, f"transform/{i - 1}") for i, block in enumerate(self.transforms, 1)]
        return [Stage("input", self.input, "input"), *middle, Stage("output", self.output, "output")]

    def stage(self, role: str) -> Stage:
        for stage in self.stages:
            if stage.role == role:
                return stage
        raise KeyError(role)


class Document(BaseModel):
    """A loaded task file: its tasks plus what the loader learned about secrets."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    path: Path
    tasks: dict[str, Task]
    state: StateSettings = Field(default_factory=StateSettings)
    secrets: frozenset[str] = frozenset()
    env_names: frozenset[str] = frozenset()  # environment variables the file reads
    lines: dict[str, int] = Field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def task(self, name: str) -> Task:
        from dstream.errors import ConfigError

        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise ConfigError(f"{self.path}: no task named {name!r} (tasks: {known})") from None
