"""Newline framing over a byte stream read in large chunks.

The relay never looks at one line at a time unless it has to: :meth:`LineFramer.feed`
returns the run of complete lines in a chunk as one ``bytes`` block, and keeps the
unfinished tail. A tail that grows past ``max_line_bytes`` is an oversized line: its
bytes go to an :class:`OversizeSink` as they arrive instead of being buffered, so memory
stays bounded whatever a provider prints.
"""

from __future__ import annotations

from typing import Protocol


class OversizeSink(Protocol):
    """Receives an oversized line in pieces: ``begin`` (with its 1-based line number), ``write``…, ``end``."""

    def begin(self, line_number: int) -> None: ...
    def write(self, data: bytes) -> None: ...
    def end(self, size: int) -> None: ...


class DiscardSink:
    """Drops oversized lines, counting them (for streams where they only get a warning)."""

    def __init__(self) -> None:
        self.count = 0

    def begin(self, line_number: int) -> None:
        self.count += 1

    def write(self, data: bytes) -> None:
        return None

    def end(self, size: int) -> None:
        return None


class LineFramer:
    def __init__(self, max_line_bytes: int, sink: OversizeSink | None = None) -> None:
        self.max_line_bytes = max_line_bytes
        self.sink: OversizeSink = sink or DiscardSink()
        self.lines = 0  # complete lines seen so far, oversized ones included
        self._tail = bytearray()
        self._skipped = -1  # bytes of the oversized line being skipped, -1 when not skipping

    def feed(self, chunk: bytes) -> bytes:
        """Append ``chunk``; return every complete line now available (``b""`` if none)."""
        if self._skipped >= 0:
            newline = chunk.find(b"\n")
            if newline < 0:
                self._skip(chunk)
                return b""
            self._skip(chunk[:newline])
            self._end_skip()
            chunk = chunk[newline + 1 :]
        last = chunk.rfind(b"\n")
        if last < 0:
            self._tail += chunk
            self._check_tail()
            return b""
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
        self._tail = bytearray(chunk[last + 1 :])
        if len(block) > self.max_line_bytes:
            block = self._drop_long_lines(block)
        else:
            self.lines += block.count(b"\n")
        self._check_tail()
        return block

    def _drop_long_lines(self, block: bytes) -> bytes:
        """A block bigger than the limit may hold a too-long line: route those to the sink."""
        kept: list[bytes] = []
        start = 0
        limit = self.max_line_bytes
        while start < len(block):
            end = block.index(b"\n", start)
            if end - start > limit:
                self._skipped = 0
                self.sink.begin(self.lines + 1)
                self._skip(block[start:end])
                self._end_skip()
            else:
                kept.append(block[start : end + 1])
                self.lines += 1
            start = end + 1
        return b"".join(kept)

    def finish(self) -> bytes:
        """At end of stream: the last line if it had no newline (newline added), else ``b""``."""
        if self._skipped >= 0:
            self._end_skip()
            return b""
        if not self._tail:
            return b""
        line = bytes(self._tail) + b"\n"
        self._tail = bytearray()
        self.lines += 1
        return line

    @property
    def pending(self) -> int:
        """Bytes held for an unfinished line."""
        return len(self._tail)

    def _check_tail(self) -> None:
        if len(self._tail) > self.max_line_bytes:
            self._begin_skip()

    def _begin_skip(self) -> None:
        held, self._tail = bytes(self._tail), bytearray()
        self._skipped = 0
        self.sink.begin(self.lines + 1)
        self._skip(held)

    def _skip(self, data: bytes) -> None:
        if data:
            self._skipped += len(data)
            self.sink.write(data)

    def _end_skip(self) -> None:
        size, self._skipped = self._skipped, -1
        self.lines += 1
        self.sink.end(size)
