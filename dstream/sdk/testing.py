"""Run a provider in-process and look at what it says: no Docker, no subprocess.

Example::

    from dstream.sdk.testing import run_input

    result = run_input(Counter, {"max_count": 3})
    assert [m["data"]["value"] for m in result.data] == [1, 2, 3]
"""

from __future__ import annotations

import io
import queue
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dstream import protocol
from dstream.sdk.host import Host

if TYPE_CHECKING:
    from collections.abc import Callable

    from dstream.sdk.base import Provider


@dataclass
class ProviderRun:
    """What a provider printed: the handshake, then every message, and its exit code."""

    exit_code: int
    handshake: dict[str, Any] | None
    messages: list[dict[str, Any]] = field(default_factory=list)
    raw: bytes = b""
    other: list[bytes] = field(default_factory=list)

    @property
    def data(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if "data" in m]

    @property
    def checkpoints(self) -> list[Any]:
        return [m["checkpoint"] for m in self.messages if "checkpoint" in m and "data" not in m]

    @property
    def acks(self) -> list[Any]:
        return [m["ack"] for m in self.messages if "ack" in m]

    @property
    def dead_letters(self) -> list[dict[str, Any]]:
        """What a transform rejected: ``{"reason": …, "envelope": …}`` each."""
        return [m["dead_letter"] for m in self.messages if "dead_letter" in m]

    @property
    def gauges(self) -> list[dict[str, Any]]:
        """What the provider reported with ``ctx.gauge`` (name, value, labels), in order."""
        return [m["gauge"] for m in self.messages if "gauge" in m]

    @property
    def resources(self) -> list[dict[str, Any]]:
        return [m["resource"] for m in self.messages if "resource" in m]

    @property
    def error(self) -> str | None:
        if self.handshake and self.handshake.get("status") == "error":
            return str(self.handshake.get("message"))
        return None


def run_provider(
    cls: type[Provider[Any]],
    config: dict[str, Any],
    command: str = "run",
    checkpoint: Any = None,
    stdin_lines: list[bytes] | None = None,
    task: str = "test-task",
) -> ProviderRun:
    # Announced as dstream's orchestrator does, so ctx.gauge() reports are collected.
    envelope = protocol.command_envelope(command, config, checkpoint, task, protocol.ORCHESTRATOR_FEATURES)
    stdout: io.BytesIO
    if stdin_lines is None and command == "run" and getattr(cls, "wants_commits", lambda: False)():
        # An input that listens for ``committed``: stdin stays open for the run (its end
        # means "the orchestrator went away"), and every checkpoint is acknowledged at once,
        # as an orchestrator whose output and store never lag would.
        feed = _Feed(envelope)
        stdout = _Acknowledging()
        host = Host(cls, feed, stdout)  # type: ignore[arg-type]
        # Straight into the provider's queue as each checkpoint is written (stdout is not
        # buffered here): delivered at its next record or sleep, never later by a thread's whim.
        stdout.acknowledge = host.ctx._committed.put
        try:
            code = host.run()
        finally:
            feed.put(b"")
    else:
        stdout = io.BytesIO()
        code = Host(cls, io.BytesIO(envelope + b"".join(stdin_lines or [])), stdout).run()
    raw = stdout.getvalue()
    lines: list[dict[str, Any]] = []
    other: list[bytes] = []
    for line in raw.splitlines():
        try:
            lines.append(protocol.decode_object(line))
        except protocol.DecodeError:
            other.append(line)  # user-facing output, e.g. the console provider's
    handshake = lines.pop(0) if lines and "status" in lines[0] else None
    return ProviderRun(exit_code=code, handshake=handshake, messages=lines, raw=raw, other=other)


def run_input(cls: type[Provider[Any]], config: dict[str, Any], checkpoint: Any = None) -> ProviderRun:
    """Run an input provider to completion and collect what it emitted."""
    return run_provider(cls, config, "run", checkpoint)


def run_output(cls: type[Provider[Any]], config: dict[str, Any], lines: list[bytes]) -> ProviderRun:
    """Feed an output provider protocol lines (data and checkpoints) and collect its acks."""
    return run_provider(cls, config, "run", None, [line if line.endswith(b"\n") else line + b"\n" for line in lines])


def run_transform(cls: type[Provider[Any]], config: dict[str, Any], lines: list[bytes]) -> ProviderRun:
    """Feed a transform protocol lines (data and checkpoints); collect what it emits.

    ``run.data`` holds the envelopes it emitted, ``run.checkpoints`` the checkpoints it
    forwarded and ``run.dead_letters`` the records it rejected, all in the order printed.
    """
    return run_provider(cls, config, "run", None, [line if line.endswith(b"\n") else line + b"\n" for line in lines])


def envelope(data: Any, metadata: dict[str, Any] | None = None) -> bytes:
    return protocol.data(data, metadata)


def checkpoint(position: Any) -> bytes:
    return protocol.checkpoint(position)


class _Feed:
    """A provider's stdin that stays open until the run ends (its end would mean "the
    orchestrator went away"): the command envelope, then ``b""`` once the run is over."""

    def __init__(self, first: bytes) -> None:
        self._queue: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._queue.put(first)
        self._ended = False

    def put(self, data: bytes) -> None:
        self._queue.put(data)

    def read(self, size: int = -1) -> bytes:
        if self._ended:
            return b""
        data = self._queue.get()
        self._ended = not data
        return data


class _Acknowledging(io.BytesIO):
    """Collects what a provider prints; acknowledges each checkpoint as it is written."""

    def __init__(self) -> None:
        super().__init__()
        self.acknowledge: Callable[[Any], None] = lambda position: None
        self._partial = b""

    def write(self, data: Any) -> int:
        written = super().write(data)
        *lines, self._partial = (self._partial + bytes(data)).split(b"\n")
        for line in lines:
            try:
                value = protocol.decode_object(line)
            except protocol.DecodeError:
                continue
            is_checkpoint, position = protocol.control_value(value, "checkpoint")
            if not is_checkpoint and "data" in value and "checkpoint" in value:
                is_checkpoint, position = True, value["checkpoint"]
            if is_checkpoint:
                self.acknowledge(position)
        return written
