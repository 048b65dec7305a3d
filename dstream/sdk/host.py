"""The stdio host: speaks the wire protocol for a provider class.

Reads the command envelope, validates ``config`` with the provider's pydantic model
(answering ``{"status": "error"}`` naming the field when it is wrong), prints the
handshake, then runs the verb. SIGTERM/SIGINT ask the provider to stop: an input stops
at the next record and emits a last checkpoint; an output finishes its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, BinaryIO

from pydantic import ValidationError

from dstream import protocol
from dstream.sdk.base import Context, InfrastructureProvider, InputProvider, OutputProvider, Provider, supported_verbs
from dstream.sdk.types import Checkpoint, Envelope, Raw, Record

FLUSH_INTERVAL = 0.02
READ_CHUNK = 1024 * 1024


class _StopNow(Exception):
    """Raised from the signal handler to break a provider out of an idle blocking read."""


class _Reader:
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


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        elif error["type"] == "missing":
            message = "required setting is missing"
        problems.append(f"config.{where}: {message}" if where else message)
    return "invalid config: " + "; ".join(problems)


class Host:
    def __init__(
        self,
        cls: type[Provider[Any]],
        stdin: BinaryIO,
        stdout: BinaryIO,
        install_signals: bool = False,
    ) -> None:
        self.cls = cls
        self.reader = _Reader(stdin)
        self.out = stdout
        self.ctx = Context(cls.name)
        self.ctx._stdout = self._send
        self.install_signals = install_signals
        self._idle = False
        self._signalled = False
        self._dirty = False

    # -- plumbing ---------------------------------------------------------------------

    def _send(self, line: bytes) -> None:
        self.out.write(line)
        self._dirty = True

    def _flush(self) -> None:
        if self._dirty:
            self._dirty = False
            self.out.flush()

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Several SIGTERMs can arrive at once (the parent-death signal fires once per
        # thread of a dying orchestrator). A handler that ran while another was inside
        # Event.set() would deadlock on the event's lock: only the first one sets it.
        if not self._signalled:
            self._signalled = True
            self.ctx.stopping.set()
        if self._idle:
            raise _StopNow

    def _flusher(self) -> None:
        # Bounded latency for providers that block outside ctx.sleep().
        while not self._finished.wait(FLUSH_INTERVAL):
            try:
                self._flush()
            except (OSError, ValueError):
                return

    # -- entry ---------------------------------------------------------------------

    def run(self) -> int:
        if self.install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._idle = True
            first = self.reader.readline()
            self._idle = False
        except _StopNow:
            return 0
        if not first.strip():
            self.ctx.log.error("no command envelope on stdin (this program is a dstream provider)")
            return 2
        try:
            envelope = protocol.decode_object(first)
        except protocol.DecodeError as exc:
            self._send(protocol.handshake_error(f"the first stdin line is not a command envelope: {exc}"))
            self._flush()
            return 2
        command = str(envelope.get("command") or "run")
        self.ctx.task = envelope.get("task")
        self.ctx.command = command
        self.ctx.checkpoint = envelope.get("checkpoint")
        self.ctx._gauges = protocol.FEATURE_GAUGE in (envelope.get("features") or ())
        verbs = supported_verbs(self.cls)
        if command not in verbs:
            self.ctx.log.info("verb %r is not supported by %s (supports: %s)", command, self.cls.name, verbs)
            self._send(protocol.handshake_ready(verbs, self._features()))
            self._flush()
            return 0
        try:
            config = self.cls.Config.model_validate(envelope.get("config") or {})
        except ValidationError as exc:
            self._send(protocol.handshake_error(describe_validation_error(exc)))
            self._flush()
            return 1
        try:
            provider = self.cls(config, self.ctx)
        except Exception as exc:  # a provider's own start-up failure → error handshake
            self.ctx.log.exception("could not start")
            self._send(protocol.handshake_error(f"{type(exc).__name__}: {exc}"))
            self._flush()
            return 1
        self._send(protocol.handshake_ready(verbs, self._features()))
        self._flush()
        self._finished = threading.Event()
        flusher = threading.Thread(target=self._flusher, daemon=True)
        flusher.start()
        try:
            if command == "run":
                if isinstance(provider, InputProvider):
                    return self._run_input(provider, envelope.get("checkpoint"))
                assert isinstance(provider, OutputProvider)
                return self._run_output(provider)
            return self._run_lifecycle(provider, command)
        except BrokenPipeError:
            self.ctx.log.warning("stdout closed by the orchestrator; stopping")
            return 1
        except _StopNow:
            return 0
        except Exception:
            self.ctx.log.exception("%s failed", self.cls.name)
            return 1
        finally:
            self._finished.set()
            try:
                provider.close()
            finally:
                with contextlib.suppress(BrokenPipeError, ValueError):
                    self._flush()

    def _features(self) -> list[str]:
        features: list[str] = []
        if issubclass(self.cls, OutputProvider):
            features.append(protocol.FEATURE_ACK)
        if issubclass(self.cls, InputProvider) and self.cls.wants_commits():
            features.append(protocol.FEATURE_COMMIT)
        return features

    # -- inputs --------------------------------------------------------------------------

    def _run_input(self, provider: InputProvider[Any], checkpoint: Any) -> int:
        ctx = self.ctx
        self._state = _CheckpointState(provider)
        # Going idle: checkpoint what was emitted so far, then flush, so it can be acked.
        ctx._before_sleep.append(self._checkpoint_now)
        ctx._before_sleep.append(self._flush)
        if provider.wants_commits():
            ctx._on_committed = provider.on_committed
            threading.Thread(target=self._read_commits, daemon=True).start()
        items = provider.read(checkpoint)
        if inspect.isasyncgen(items):
            asyncio.run(self._consume_async(items))
        else:
            assert isinstance(items, Iterator)
            self._consume(items)
        return 0

    def _read_commits(self) -> None:
        while True:
            line = self.reader.readline()
            if not line:
                self.ctx.stopping.set()  # the orchestrator went away
                return
            try:
                value = protocol.decode_object(line)
            except protocol.DecodeError:
                continue
            is_commit, position = protocol.control_value(value, "committed")
            if is_commit:
                self.ctx._committed.put(position)

    def _checkpoint_now(self) -> None:
        """Before idling: the time-based checkpoint that a next record would have triggered."""
        state = self._state
        if state.unsaved and state.position is not None and state.interval_elapsed():
            self._save(state)

    def _consume(self, items: Iterator[Any]) -> None:
        state = self._state
        try:
            for item in items:
                self._emit(item, state)
                if self.ctx._on_committed is not None:
                    self.ctx.deliver_commits()
                if self.ctx.stopping.is_set():
                    break
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        self._finish_input(state)

    async def _consume_async(self, items: AsyncIterator[Any]) -> None:
        state = self._state
        try:
            async for item in items:
                self._emit(item, state)
                if self.ctx._on_committed is not None:
                    self.ctx.deliver_commits()
                if self.ctx.stopping.is_set():
                    break
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
        self._finish_input(state)

    def _emit(self, item: Any, state: _CheckpointState) -> None:
        if isinstance(item, Record):
            self._send(protocol.data(item.data, item.metadata))
        elif isinstance(item, Raw):
            line = item.line
            self._send(line if line.endswith(b"\n") else line + b"\n")
        elif isinstance(item, Checkpoint):
            state.position = item.position
            self._save(state)
            return
        elif isinstance(item, dict):
            self._send(protocol.encode(item))
            return
        else:
            raise TypeError(f"read() yielded {type(item).__name__}; yield Record, Raw, Checkpoint or dict")
        if item.position is not None:  # a Record or Raw that carries its position
            state.position = item.position
            state.unsaved += 1
            if state.due():
                self._save(state)

    def _save(self, state: _CheckpointState) -> None:
        self._send(protocol.checkpoint(state.position))
        state.saved()

    def _finish_input(self, state: _CheckpointState) -> None:
        if state.unsaved and state.position is not None:
            self._save(state)
        self._flush()

    # -- outputs -------------------------------------------------------------------------

    def _run_output(self, provider: OutputProvider[Any]) -> int:
        size = max(1, provider.batch_size)
        while not self.ctx.stopping.is_set():
            self._idle = True
            try:
                block = self.reader.read_block()
            finally:
                self._idle = False
            if not block:
                break
            batch: list[Envelope] = []
            has_control = protocol.CHECKPOINT_TOKEN in block
            for line in block.split(b"\n")[:-1]:
                if not line.strip():
                    continue
                if has_control and protocol.CHECKPOINT_TOKEN in line:
                    value = protocol.decode_object(line)
                    is_cp, position = protocol.control_value(value, "checkpoint")
                    if is_cp:
                        if batch:
                            provider.write(batch)
                            batch = []
                        self._send(protocol.ack(position))
                        continue
                    batch.append(Envelope(line, value))
                else:
                    batch.append(Envelope(line))
                if len(batch) >= size:
                    provider.write(batch)
                    batch = []
            if batch:
                provider.write(batch)
            self._flush()
        return 0

    # -- lifecycle -----------------------------------------------------------------------

    def _run_lifecycle(self, provider: Provider[Any], command: str) -> int:
        assert isinstance(provider, InfrastructureProvider)
        for res in getattr(provider, command)() or []:
            self._send(protocol.resource(res))
        self._flush()
        return 0


class _CheckpointState:
    def __init__(self, provider: InputProvider[Any]) -> None:
        self.every = provider.checkpoint_every
        self.interval = provider.checkpoint_interval
        self.position: Any = None
        self.unsaved = 0
        self.last = time.monotonic()

    def due(self) -> bool:
        return (self.every is not None and self.unsaved >= self.every) or self.interval_elapsed()

    def interval_elapsed(self) -> bool:
        return self.interval is not None and time.monotonic() - self.last >= self.interval

    def saved(self) -> None:
        self.unsaved = 0
        self.last = time.monotonic()


def main(cls: type[Provider[Any]]) -> None:
    level = os.environ.get("DSTREAM_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(stream=sys.stderr, level=level, format="%(levelname)s %(name)s: %(message)s")
    stdout = io.BufferedWriter(io.FileIO(sys.stdout.fileno(), "wb", closefd=False), buffer_size=256 * 1024)
    stdin = io.BufferedReader(io.FileIO(sys.stdin.fileno(), "rb", closefd=False), buffer_size=READ_CHUNK)
    code = Host(cls, stdin, stdout, install_signals=True).run()
    with contextlib.suppress(BrokenPipeError, ValueError):
        stdout.flush()
    # Skip interpreter teardown that could block on a dead stdout.
    sys.stderr.flush()
    os._exit(code)
