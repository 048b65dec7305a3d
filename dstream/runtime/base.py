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
    from dstream.redact import Redactor

StderrSink = Callable[[str], None]

# What a run labels its providers with (containers; ``dstream ps`` and leftover checks read them).
LABEL_TASK = "io.dstream.task"
LABEL_ROLE = "io.dstream.role"
LABEL_RUN = "io.dstream.run-id"
STDERR_TAIL_LINES = 20
RUNAWAY_LINE = 64 * 1024  # a stderr line longer than this is forwarded in pieces
READ_CHUNK = 256 * 1024


@dataclass(frozen=True)
class ProviderSpec:
    """Everything a runtime needs to start one provider."""

    role: str  # "input", "transform-1" … "transform-N", "output"
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


class RedactingSink:
    """A stderr sink that redacts each line before handing it on; :class:`StderrTail`
    also uses its redactor to cut a runaway line where no secret straddles the cut."""

    def __init__(self, redactor: Redactor, sink: StderrSink) -> None:
        self.redactor = redactor
        self._sink = sink

    def __call__(self, line: str) -> None:
        self._sink(self.redactor(line))


class StderrTail:
    """Collects stderr into complete lines, keeps the last few, forwards each to a sink.

    With a :class:`RedactingSink` the kept lines are redacted too, and a runaway line is
    cut at a point that splits no secret (the text after the cut waits for the next piece).
    """

    def __init__(self, sink: StderrSink, keep: int = STDERR_TAIL_LINES) -> None:
        self._sink = sink
        self._redactor = sink.redactor if isinstance(sink, RedactingSink) else None
        self._lines: deque[str] = deque(maxlen=keep)
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        for raw in lines:
            self._emit(raw.decode("utf-8", "replace"))
        while len(self._partial) > RUNAWAY_LINE + self._lookahead():
            self._emit_piece()

    def _lookahead(self) -> int:
        return self._redactor.longest + 128 if self._redactor is not None else 0

    def _emit_piece(self) -> None:
        text = self._partial.decode("utf-8", "replace")
        cut = RUNAWAY_LINE
        if self._redactor is not None:
            cut = min(RUNAWAY_LINE, max(1, len(text) - self._lookahead()))
            cut = self._redactor.safe_cut(text, cut) or cut
        self._emit(text[:cut])
        self._partial = text[cut:].encode("utf-8", "surrogatepass")

    def close(self) -> None:
        if self._partial:
            self._emit(self._partial.decode("utf-8", "replace"))
            self._partial = b""

    def _emit(self, text: str) -> None:
        text = text.rstrip("\r")
        if not text.strip():
            return
        self._lines.append(self._redactor(text) if self._redactor is not None else text)
        self._sink(text)

    def tail(self) -> list[str]:
        return list(self._lines)
