"""The runtime contract: start a provider, talk to its stdin/stdout, stop it.

Every runtime (local subprocess, Docker container, in-memory fake) gives the relay the
same :class:`ProviderProcess`, so the relay never knows where a provider runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from dstream.config.models import ProviderBlock

StderrSink = Callable[[str], None]

# What a run labels its providers with (containers; ``dstream ps`` and leftover checks read them).
LABEL_TASK = "io.dstream.task"
LABEL_ROLE = "io.dstream.role"
LABEL_RUN = "io.dstream.run-id"
STDERR_TAIL_LINES = 20
READ_CHUNK = 256 * 1024


@dataclass(frozen=True)
class ProviderSpec:
    """Everything a runtime needs to start one provider."""

    role: str  # "input" | "output"
    task: str
    run_id: str
    block: ProviderBlock
    base_dir: Path
    # What distribution resolved provider_ref to: an image id, or a local executable path.
    image: str | None = None
    executable: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.block.source


class ProviderProcess(Protocol):
    role: str
    description: str

    async def read(self, n: int = READ_CHUNK) -> bytes:
        """Up to ``n`` bytes of stdout; ``b""`` at end of stream."""

    async def write(self, data: bytes) -> None:
        """Write to stdin, waiting while the provider is not reading (backpressure).

        Raises BrokenPipeError/ConnectionError once the provider's stdin is gone.
        """

    async def close_stdin(self) -> None:
        """Deliver end-of-file on stdin."""

    async def wait(self) -> int:
        """Wait for exit; the exit status (negative signal number when killed by one)."""

    @property
    def returncode(self) -> int | None: ...

    async def terminate(self) -> None:
        """Ask the provider to stop (SIGTERM)."""

    async def kill(self) -> None:
        """Stop the provider now (SIGKILL)."""

    async def cleanup(self) -> None:
        """Release everything (remove the container); safe to call twice."""

    def stderr_tail(self) -> list[str]:
        """The provider's last stderr lines, for error messages."""


class Runtime(Protocol):
    async def start(self, spec: ProviderSpec, on_stderr: StderrSink) -> ProviderProcess: ...


class StderrTail:
    """Collects stderr into complete lines, keeps the last few, forwards each to a sink."""

    def __init__(self, sink: StderrSink, keep: int = STDERR_TAIL_LINES) -> None:
        self._sink = sink
        self._lines: deque[str] = deque(maxlen=keep)
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        if len(self._partial) > 64 * 1024:  # a runaway line: emit it in pieces
            lines.append(self._partial)
            self._partial = b""
        for raw in lines:
            self._emit(raw)

    def close(self) -> None:
        if self._partial:
            self._emit(self._partial)
            self._partial = b""

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        if not text.strip():
            return
        self._lines.append(text)
        self._sink(text)

    def tail(self) -> list[str]:
        return list(self._lines)
