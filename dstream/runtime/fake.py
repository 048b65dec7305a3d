"""An in-memory runtime for fast unit tests of the relay (like httpx's MockTransport).

A fake provider is an async function ``behaviour(io)`` that reads its stdin and writes
its stdout through :class:`FakeIO`; its return value is the exit code. Real-engine and
real-process tests exist beside these; this only makes relay logic cheap to exercise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from dstream import protocol
from dstream.runtime.base import READ_CHUNK, ProviderSpec, StderrSink, StderrTail


class _Pipe:
    """A bounded byte pipe: writers wait while more than ``capacity`` bytes are unread."""

    def __init__(self, capacity: int = 256 * 1024) -> None:
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._buffer = b""
        self._size = 0
        self._capacity = capacity
        self._space = asyncio.Event()
        self._space.set()
        self.closed = False
        self.broken = False

    async def write(self, data: bytes) -> None:
        if self.broken:
            raise BrokenPipeError("reader is gone")
        if self.closed:
            raise BrokenPipeError("pipe closed")
        while self._size > self._capacity:
            self._space.clear()
            await self._space.wait()
            if self.broken:
                raise BrokenPipeError("reader is gone")
        self._size += len(data)
        self._chunks.put_nowait(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._chunks.put_nowait(b"")

    def break_(self) -> None:
        self.broken = True
        self._space.set()

    async def read(self, n: int) -> bytes:
        if not self._buffer:
            chunk = await self._chunks.get()
            if not chunk:
                self._chunks.put_nowait(b"")  # stay at EOF for later readers
                return b""
            self._buffer = chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        self._size -= len(data)
        if self._size <= self._capacity:
            self._space.set()
        return data


class FakeIO:
    """The provider side of a fake process."""

    def __init__(self, stdin: _Pipe, stdout: _Pipe, stderr: StderrTail) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._buffer = b""
        self.terminated = asyncio.Event()

    async def readline(self) -> bytes:
        while b"\n" not in self._buffer:
            chunk = await self._stdin.read(READ_CHUNK)
            if not chunk:
                line, self._buffer = self._buffer, b""
                return line
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    async def read_message(self) -> dict[str, Any] | None:
        """The next JSON line on stdin, or None at end of file."""
        while True:
            line = await self.readline()
            if not line:
                return None
            if line.strip():
                return protocol.decode_object(line)

    async def write(self, data: bytes) -> None:
        await self._stdout.write(data)

    async def send(self, message: Any) -> None:
        await self._stdout.write(protocol.encode(message))

    def log(self, text: str) -> None:
        self._stderr.feed(text.encode() + b"\n")


Behaviour = Callable[[FakeIO], Awaitable[int]]


class FakeProcess:
    def __init__(self, role: str, behaviour: Behaviour, on_stderr: StderrSink) -> None:
        self.role = role
        self.description = f"{role} provider fake-{role}"
        self._stdin = _Pipe()
        self._stdout = _Pipe()
        self._tail = StderrTail(on_stderr)
        self.io = FakeIO(self._stdin, self._stdout, self._tail)
        self._code: int | None = None
        self._task = asyncio.create_task(self._main(behaviour))
        self.received = bytearray()  # everything written to stdin, for assertions

    async def _main(self, behaviour: Behaviour) -> int:
        try:
            code = await behaviour(self.io)
        except asyncio.CancelledError:
            code = self._code if self._code is not None else -15
        except (BrokenPipeError, ConnectionError):
            code = 1
        self._code = code
        self._stdout.close()
        self._stdin.break_()
        return code

    async def read(self, n: int = READ_CHUNK) -> bytes:
        return await self._stdout.read(n)

    async def write(self, data: bytes) -> None:
        if self._task.done():
            raise BrokenPipeError(f"{self.description} has exited")
        self.received += data
        await self._stdin.write(data)

    async def close_stdin(self) -> None:
        self._stdin.close()

    async def wait(self) -> int:
        return await asyncio.shield(self._task)

    @property
    def returncode(self) -> int | None:
        return self._code

    async def terminate(self) -> None:
        self.io.terminated.set()

    async def kill(self) -> None:
        if not self._task.done():
            self._code = -9
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def cleanup(self) -> None:
        await self.kill()

    def stderr_tail(self) -> list[str]:
        return self._tail.tail()


class FakeRuntime:
    """Starts fake providers by role: ``FakeRuntime(input=behaviour, output=behaviour)``."""

    def __init__(self, **behaviours: Behaviour) -> None:
        self.behaviours = behaviours
        self.started: dict[str, FakeProcess] = {}

    async def start(self, spec: ProviderSpec, on_stderr: StderrSink) -> FakeProcess:
        proc = FakeProcess(spec.role, self.behaviours[spec.role], on_stderr)
        self.started[spec.role] = proc
        return proc
