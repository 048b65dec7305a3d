"""The provider's side of stdio: line reads that keep what was read ahead, buffered
writes with a flush that is cheap when nothing changed, and the interruptible idle read."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, BinaryIO

from dstream.sdk.validation import describe_error

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pydantic import ValidationError

READ_CHUNK = 1024 * 1024


class StopNow(Exception):
    """Raised from the signal handler to break a provider out of an idle blocking read."""


class LineReader:
    """Line-oriented reads over a binary stream, keeping what was read ahead."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._buffer = b""
        self.eof = False

    def _read(self) -> bytes:
        read1 = getattr(self._stream, "read1", None)
        chunk: bytes = read1(READ_CHUNK) if read1 is not None else self._stream.read(READ_CHUNK)
        if not chunk:
            self.eof = True
        return chunk

    def readline(self) -> bytes:
        while b"\n" not in self._buffer and not self.eof:
            self._buffer += self._read()
        line, sep, rest = self._buffer.partition(b"\n")
        self._buffer = rest
        return line + sep

    def read_block(self) -> bytes:
        """Complete lines available now (at least one, waiting if needed); ``b""`` at the end."""
        while True:
            last = self._buffer.rfind(b"\n")
            if last >= 0:
                block, self._buffer = self._buffer[: last + 1], self._buffer[last + 1 :]
                return block
            if self.eof:
                # A last line without its newline was cut off (the orchestrator died
                # mid-write). It lies after the last checkpoint and will be sent again.
                if self._buffer.strip():
                    logging.getLogger("dstream.sdk").warning(
                        "dropped an incomplete last line (%d bytes) at end of input", len(self._buffer)
                    )
                self._buffer = b""
                return b""
            self._buffer += self._read()


class Wire:
    """stdin and stdout of one provider process."""

    def __init__(self, stdin: BinaryIO, stdout: BinaryIO) -> None:
        self.reader = LineReader(stdin)
        self.out = stdout
        self.idle = False  # blocked reading stdin: a stop signal may interrupt (StopNow)
        self._dirty = False

    def send(self, line: bytes) -> None:
        self.out.write(line)
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            self._dirty = False
            self.out.flush()

    def read_block(self) -> bytes:
        """The next complete lines from stdin; a stop signal interrupts the wait."""
        self.idle = True
        try:
            return self.reader.read_block()
        finally:
            self.idle = False


def describe_validation_error(exc: ValidationError, known: Iterable[str] = ()) -> str:
    """A provider config the provider refuses, in the task file's wording (``known``: its
    settings, for "did you mean")."""
    return "invalid config: " + "; ".join(describe_error(error, "config", known) for error in exc.errors())
