"""What providers yield and receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dstream import protocol
from dstream.protocol import Resource

__all__ = ["Checkpoint", "Envelope", "Raw", "Record", "Reject", "Resource"]


@dataclass(slots=True)
class Record:
    """One envelope from an input: ``data`` and ``metadata``.

    ``position`` (optional) is where the source is after this record. The SDK turns the
    latest position into a ``{"checkpoint": …}`` line every ``checkpoint_every`` records,
    every ``checkpoint_interval`` seconds, and when the input stops, so providers rarely
    emit checkpoints themselves.
    """

    data: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    position: Any = None


@dataclass(slots=True)
class Raw:
    """Already-encoded protocol lines, sent as they are (replaying a JSONL file, say).

    ``line`` may hold several ``\n``-separated lines (emitted together, as one item). The
    orchestrator still validates each: a malformed line meets the task's ``on_error``.
    """

    line: bytes
    position: Any = None


@dataclass(slots=True)
class Checkpoint:
    """An explicit checkpoint: everything yielded before it is covered by ``position``."""

    position: Any


class Envelope:
    """One envelope as an output receives it. Parsed lazily: ``raw`` costs nothing."""

    __slots__ = ("_value", "raw")

    def __init__(self, raw: bytes, value: dict[str, Any] | None = None) -> None:
        self.raw = raw  # the exact line, without its newline
        self._value = value

    @property
    def value(self) -> dict[str, Any]:
        if self._value is None:
            self._value = protocol.decode_object(self.raw)
        return self._value

    @property
    def data(self) -> Any:
        return self.value.get("data")

    @property
    def metadata(self) -> dict[str, Any]:
        meta = self.value.get("metadata")
        return meta if isinstance(meta, dict) else {}

    def __repr__(self) -> str:
        return f"Envelope({self.raw[:80]!r})"


class Reject(Exception):
    """Raised by ``TransformProvider.transform`` to set a record aside with a reason.

    The SDK turns it into a ``{"dead_letter": …}`` line; the task's ``on_error`` decides
    what happens next (the dead-letter file, or stopping the run).
    """
