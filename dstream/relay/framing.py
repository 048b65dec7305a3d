"""Newline framing over a byte stream read in large chunks.

The relay never looks at one line at a time unless it has to: :meth:`LineFramer.feed`
returns the run of complete lines in a chunk as one :class:`Block`, and keeps the
unfinished tail. A line longer than ``max_line_bytes`` is not buffered: it comes out as
:class:`Oversize` events (``start``, ``data``…, ``end``) carrying its bytes piece by
piece, in stream order with the blocks around it, so memory stays bounded whatever a
provider prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(slots=True)
class Block:
    """Complete lines, newline-terminated. (Not counted here: the relay counts them only
    when it has to, to keep one pass over the data off the hot path.)"""

    data: bytes


@dataclass(slots=True)
class Oversize:
    stage: Literal["start", "data", "end"]
    data: bytes = b""
    size: int = 0  # set on "end": the whole line's length


Event = Block | Oversize


class LineFramer:
    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._tail = bytearray()
        self._skipped = -1  # bytes of the oversized line being skipped, -1 when not skipping
        self._events: list[Event] = []

    def feed(self, chunk: bytes) -> list[Event]:
        """Append ``chunk``; return what is now complete, in stream order."""
        events = self._events = []
        if self._skipped >= 0:
            newline = chunk.find(b"\n")
            if newline < 0:
                self._skip(chunk)
                return events
            self._skip(chunk[:newline])
            self._end_skip()
            chunk = chunk[newline + 1 :]
        last = chunk.rfind(b"\n")
        if last < 0:
            self._tail += chunk
            self._check_tail()
            return events
        if self._tail:
            first = chunk.find(b"\n")
            if len(self._tail) + first > self.max_line_bytes:
                self._begin_skip()
                self._skip(chunk[:first])
                self._end_skip()
                block = chunk[first + 1 : last + 1]
            else:
                self._tail += chunk[: last + 1]
                block = bytes(self._tail)
        else:
            block = chunk[: last + 1]
        # The tail is the next line's start: set it only once the long lines before it are
        # cut out (they begin their own skip, which would take the tail as theirs).
        self._tail = bytearray()
        if len(block) > self.max_line_bytes:
            self._split_long_lines(block)
        elif block:
            self._emit(block)
        self._tail = bytearray(chunk[last + 1 :])
        self._check_tail()
        return events

    def finish(self) -> list[Event]:
        """At end of stream: the last line if it had no newline (one is added)."""
        events = self._events = []
        if self._skipped >= 0:
            self._end_skip()
        elif self._tail:
            line = bytes(self._tail) + b"\n"
            self._tail = bytearray()
            self._emit(line)
        return events

    @property
    def pending(self) -> int:
        """Bytes held for an unfinished line."""
        return len(self._tail)

    def _emit(self, block: bytes) -> None:
        self._events.append(Block(block))

    def _split_long_lines(self, block: bytes) -> None:
        """A block bigger than the limit may hold too-long lines: cut them out, in order."""
        start = 0
        run_start = 0
        limit = self.max_line_bytes
        while start < len(block):
            end = block.index(b"\n", start)
            if end - start > limit:
                if run_start < start:
                    self._emit(block[run_start:start])
                self._begin_skip()
                self._skip(block[start:end])
                self._end_skip()
                run_start = end + 1
            start = end + 1
        if run_start < len(block):
            self._emit(block[run_start:])

    def _check_tail(self) -> None:
        if len(self._tail) > self.max_line_bytes:
            self._begin_skip()

    def _begin_skip(self) -> None:
        held, self._tail = bytes(self._tail), bytearray()
        self._skipped = 0
        self._events.append(Oversize("start"))
        self._skip(held)

    def _skip(self, data: bytes) -> None:
        if data:
            self._skipped += len(data)
            self._events.append(Oversize("data", data))

    def _end_skip(self) -> None:
        size, self._skipped = self._skipped, -1
        self._events.append(Oversize("end", size=size))
