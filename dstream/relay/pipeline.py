"""The relay between two running providers.

Data moves in large chunks: the input's stdout is read up to 1 MiB at a time, cut at
the last newline, validated in one orjson call, and written to the output's stdin as
one block. Lines are looked at one by one only when a block fails validation.

Checkpoints (``{"checkpoint": …}`` from the input) are forwarded in-band and remembered
in order. The output answers ``{"ack": …}`` once everything before a checkpoint is
durable; the relay persists the highest checkpoint below which everything is acked
(acks may come out of order; a missing ack holds the checkpoint back), then sends
``{"committed": …}`` to inputs that asked for it. A bounded in-flight window stops
reading the input while the output lags.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from dstream import log, protocol
from dstream.errors import BadDataError, DStreamError, LeaseLost, ProtocolError, ProviderError, StateError
from dstream.redact import Redactor
from dstream.relay.framing import Block, LineFramer, Oversize
from dstream.relay.handshake import stderr_excerpt
from dstream.runtime.base import READ_CHUNK, ProviderProcess

if TYPE_CHECKING:
    from dstream.config.models import Task
    from dstream.relay.deadletter import DeadLetterWriter
    from dstream.state.base import CheckpointStore
    from dstream.state.lease import LeaseGuard

_log = log.get("relay")
MAX_PENDING_CHECKPOINTS = 100_000


class OutputGone(Exception):
    """Writing to the output failed: its stdin is gone."""


@dataclass
class _Pending:
    key: bytes
    value: Any
    envelopes: int
    nbytes: int
    acked: bool = False


@dataclass
class RelayStats:
    started: float = field(default_factory=time.monotonic)
    envelopes: int = 0
    bytes: int = 0
    checkpoints: int = 0
    acked: int = 0
    persisted: int = 0
    dead_letters: int = 0
    skipped_blank: int = 0
    last_persist: float | None = None
    paused: float = 0.0  # seconds spent waiting for the output (window full)
    waiting: bool = False  # paused right now
    acked_envelopes: int = 0  # delivered: covered by an acknowledged checkpoint
    acked_bytes: int = 0


@dataclass
class RelayResult:
    stats: RelayStats
    last_checkpoint: Any
    persisted: bool
    stopped_by_request: bool
    failure: DStreamError | None = None


class Relay:
    def __init__(
        self,
        *,
        task: Task,
        run_id: str,
        input_proc: ProviderProcess,
        output_proc: ProviderProcess,
        input_handshake: protocol.Handshake,
        output_handshake: protocol.Handshake,
        input_leftover: bytes = b"",
        output_leftover: bytes = b"",
        store: CheckpointStore | None,
        resume_from: Any = None,
        dead_letters: DeadLetterWriter | None = None,
        redactor: Redactor | None = None,
        stdout: BinaryIO | None = None,
        guard: LeaseGuard | None = None,
    ) -> None:
        self.guard = guard
        self.task = task
        self.run_id = run_id
        self.input = input_proc
        self.output = output_proc
        self.input_hs = input_handshake
        self.output_hs = output_handshake
        self.store = store
        self.dead_letters = dead_letters
        self.redactor = redactor or Redactor()
        self.stdout = stdout
        self.stats = RelayStats()
        self.last_seen_checkpoint: Any = resume_from
        self._input_leftover = input_leftover
        self._output_leftover = output_leftover
        self._framer = LineFramer(task.max_line_bytes)
        self._pending: deque[_Pending] = deque()
        self._acked: _Pending | None = None
        self._persisted: _Pending | None = None
        self._window = asyncio.Event()
        self._ack_event = asyncio.Event()
        self._persist_lock = asyncio.Lock()
        self._stop_requested = False
        self._force = asyncio.Event()
        self._stopper: asyncio.Task[None] | None = None
        self._warned: set[str] = set()
        self._stdout_broken = False
        self._fatal: BadDataError | None = None
        self._abort: DStreamError | None = None
        self._line = 1  # the number of the next line from the input (for error messages)

    # -- control from outside (signals) ------------------------------------------------

    def abort(self, failure: DStreamError) -> None:
        """Stop now, drain nothing, persist nothing more (a lost lease, a failing store)."""
        if self._abort is None:
            self._abort = failure
            _log.error("%s", self.redactor(str(failure)))
        self._force.set()

    def request_stop(self) -> None:
        """First call: stop gracefully (input stops, in-flight data drains). Second: stop now."""
        if self._stop_requested:
            _log.warning("second stop request: stopping the providers now")
            self._force.set()
            return
        self._stop_requested = True
        _log.info("stopping: asking the input to finish, then draining to the output (Ctrl-C again to force)")
        self._stopper = asyncio.create_task(self._stop_input())

    async def _stop_input(self) -> None:
        await self.input.terminate()
        try:
            await asyncio.wait_for(self.input.wait(), self.task.stop_timeout)
        except TimeoutError:
            _log.warning("%s did not stop within %gs; killing it", self.input.description, self.task.stop_timeout)
            await self.input.kill()

    # -- the relay ---------------------------------------------------------------------

    async def run(self) -> RelayResult:
        pump_in = asyncio.create_task(self._pump_input(), name="pump-input")
        pump_out = asyncio.create_task(self._pump_output(), name="pump-output")
        persister = asyncio.create_task(self._persister(), name="persister")
        out_exit = asyncio.create_task(self.output.wait(), name="output-exit")
        forced = asyncio.create_task(self._force.wait(), name="forced")
        failure: DStreamError | None = None
        tasks = [pump_in, pump_out, persister, out_exit, forced]
        try:
            await asyncio.wait({pump_in, out_exit, forced}, return_when=asyncio.FIRST_COMPLETED)
            if forced.done():
                raise _Forced
            if pump_in.done() and not pump_in.cancelled() and pump_in.exception() is None:
                failure = await self._drain(out_exit, pump_out, forced)
            elif pump_in.done() and isinstance(pump_in.exception(), BadDataError):
                failure = self._redacted(pump_in.exception())
                await self._stop_input_now()
                # Deliver what came before the bad line, so its checkpoints can still be acked.
                await self._drain(out_exit, pump_out, forced)
            elif pump_in.done() and isinstance(pump_in.exception(), LeaseLost):
                self.abort(self._redacted(pump_in.exception()))
                raise _Forced
            elif pump_in.done() and not isinstance(pump_in.exception(), OutputGone):
                exc = pump_in.exception()
                assert exc is not None
                raise exc
            else:
                failure = await self._output_died(out_exit)
                pump_in.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump_in
                await self._stop_input_now()
            if self._force.is_set():
                raise _Forced
            try:
                await self._persist()
            except (StateError, LeaseLost) as exc:
                failure = failure or self._redacted(exc)
        except _Forced:
            for proc in (self.input, self.output):
                await proc.kill()
            failure = self._abort or failure or _interrupted()
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._stopper is not None and not self._stopper.done():
                self._stopper.cancel()
            if self.stdout is not None and not self._stdout_broken:
                with contextlib.suppress(OSError, ValueError):
                    self.stdout.flush()
        if failure is None:
            failure = await self._exit_status_failure()
        last = self._persisted.value if self._persisted else None
        return RelayResult(
            stats=self.stats,
            last_checkpoint=last,
            persisted=self._persisted is not None,
            stopped_by_request=self._stop_requested,
            failure=failure,
        )

    async def _drain(
        self, out_exit: asyncio.Task[int], pump_out: asyncio.Task[None], forced: asyncio.Task[Any]
    ) -> DStreamError | None:
        """The input's stream ended: let the output finish what it has and exit."""
        await self.output.close_stdin()
        await self._wait_input_exit()
        done, _ = await asyncio.wait(
            {out_exit, forced}, timeout=self.task.drain_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if forced in done:
            raise _Forced
        failure: DStreamError | None = None
        if out_exit not in done:
            failure = ProviderError(
                f"{self.output.description} did not finish within drain_timeout "
                f"({self.task.drain_timeout:g}s) after its input ended; stopping it."
                + stderr_excerpt(self.output, self.redactor)
            )
            await self._stop(self.output)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pump_out), 10)
        return failure

    async def _wait_input_exit(self) -> None:
        try:
            await asyncio.wait_for(self.input.wait(), self.task.stop_timeout)
        except TimeoutError:
            _log.warning(
                "%s closed its stdout but did not exit within %gs; stopping it",
                self.input.description,
                self.task.stop_timeout,
            )
            await self._stop(self.input)

    async def _stop(self, proc: ProviderProcess) -> None:
        await proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), self.task.stop_timeout)
        except TimeoutError:
            await proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)

    async def _stop_input_now(self) -> None:
        """Stop the input, discarding what it still prints so it is not stuck writing."""
        if self.input.returncode is None:
            discard = asyncio.create_task(self._discard_input())
            try:
                await self._stop(self.input)
            finally:
                discard.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await discard

    async def _discard_input(self) -> None:
        while await self.input.read(READ_CHUNK):
            pass

    async def _output_died(self, out_exit: asyncio.Task[int]) -> DStreamError:
        try:
            code: int | None = await asyncio.wait_for(asyncio.shield(out_exit), 10)
        except TimeoutError:
            code = None
        how = "stopped reading its input" if code is None else _describe_exit(code)
        return ProviderError(
            f"{self.output.description} {how} while the input was still sending "
            f"({self.stats.envelopes} envelopes relayed; nothing unacknowledged was checkpointed)."
            + stderr_excerpt(self.output, self.redactor)
        )

    async def _exit_status_failure(self) -> DStreamError | None:
        in_code = self.input.returncode
        out_code = self.output.returncode
        if out_code not in (0, None):
            return ProviderError(
                f"{self.output.description} {_describe_exit(out_code)}." + stderr_excerpt(self.output, self.redactor)
            )
        if in_code not in (0, None) and not (self._stop_requested and in_code in (-15, 143, -9, 137)):
            return ProviderError(
                f"{self.input.description} {_describe_exit(in_code)}." + stderr_excerpt(self.input, self.redactor)
            )
        if self.output_hs.acks and self._pending:
            _log.warning(
                "the output exited without acknowledging %d checkpoint(s); data after the last "
                "acknowledged one will be sent again on the next run",
                len(self._pending),
            )
        return None

    def _redacted(self, exc: BaseException | None) -> DStreamError:
        assert isinstance(exc, DStreamError)
        exc.args = (self.redactor(str(exc)),)
        return exc

    # -- input → output ------------------------------------------------------------------

    async def _pump_input(self) -> None:
        framer = self._framer
        if self._input_leftover:
            await self._handle(framer.feed(self._input_leftover))
            self._input_leftover = b""
        while True:
            if self._window_full():
                await self._wait_window()
            chunk = await self.input.read(READ_CHUNK)
            if not chunk:
                break
            await self._handle(framer.feed(chunk))
        if framer.pending:
            # A last line without a newline: relay it only if the input ended cleanly. From
            # a crashed input it is a torn write, after its last checkpoint, so it is resent.
            try:
                code: int | None = await asyncio.wait_for(
                    asyncio.shield(asyncio.ensure_future(self.input.wait())), self.task.stop_timeout
                )
            except TimeoutError:
                code = None
            if code != 0:
                _log.warning(
                    "dropped an incomplete last line (%d bytes) from %s, which %s; it comes after the "
                    "last checkpoint, so it will be sent again",
                    framer.pending,
                    self.input.description,
                    "did not exit" if code is None else _describe_exit(code),
                )
                return
        await self._handle(framer.finish())

    async def _handle(self, events: list[Block | Oversize]) -> None:
        for event in events:
            if isinstance(event, Block):
                await self._forward(event)
            else:
                self._oversize(event)
                if event.stage == "end":
                    self._line += 1

    def _oversize(self, event: Oversize) -> None:
        """A line over max_line_bytes: fail at its start, or stream it into the dead letters."""
        limit = self.task.max_line_bytes
        if self.dead_letters is None:
            raise BadDataError(
                f"{self.input.description} printed a line longer than max_line_bytes ({limit} bytes) "
                f'at line {self._line}; raise max_line_bytes or set on_error = "dead_letter".',
                "oversized_line",
                event.data,
                self._line,
            )
        if event.stage == "start":
            detail = f"line longer than max_line_bytes ({limit} bytes)"
            self.dead_letters.begin("oversized_line", self._line, self.last_seen_checkpoint, detail)
        elif event.stage == "data":
            self.dead_letters.write_raw(event.data)
        else:
            self.dead_letters.end()
            self.stats.dead_letters += 1
            _log.warning("dead-lettered an oversized line (%d bytes) to %s", event.size, self.dead_letters.path)

    async def _forward(self, block: Block) -> None:
        if self.guard is not None:
            self.guard.check()  # never relay once the lease may be someone else's
        self._fatal = None
        out, checkpoints, envelopes = self._process(block)
        if not out:
            if self._fatal is not None:
                raise self._fatal
            return
        base_env, base_bytes = self.stats.envelopes, self.stats.bytes
        # Registered before the write: the output may ack before write() returns.
        registered = [self._register(value, base_env + env, base_bytes + size) for value, env, size in checkpoints]
        try:
            await self.output.write(out)
        except (BrokenPipeError, ConnectionError, OSError) as exc:
            raise OutputGone(str(exc)) from None
        self.stats.envelopes = base_env + envelopes
        self.stats.bytes = base_bytes + len(out)
        if registered and not self.output_hs.acks:
            # A legacy output never acks: count data handed over as delivered (weaker).
            if "legacy-ack" not in self._warned:
                self._warned.add("legacy-ack")
                _log.warning(
                    "the output does not acknowledge checkpoints; checkpoints are saved once data is "
                    "handed to it (at-most-once for what it had not written when it stops)"
                )
            for pending in registered:
                self._on_ack_key(pending.key)
        if self._fatal is not None:
            raise self._fatal  # after forwarding the good lines before it

    def _process(self, block: Block) -> tuple[bytes, list[tuple[Any, int, int]], int]:
        """Validate a block of complete lines.

        Returns what to forward, its checkpoints (each with the envelopes and bytes of the
        block up to it) and its envelope count. Only checkpoint lines are parsed; the rest
        is validated in bulk (see :func:`protocol.valid_block`).
        """
        data = block.data
        count = protocol.valid_block(data)
        if count < 0:
            lines = data.split(b"\n")
            lines.pop()  # the block ends with a newline
            first = self._line
            self._line += len(lines)
            return self._process_slowly(lines, first)
        self._line += count
        checkpoints: list[tuple[Any, int, int]] = []
        if protocol.CHECKPOINT_TOKEN in data:
            token = protocol.CHECKPOINT_TOKEN
            at = data.find(token)
            line_index = 0
            counted_to = 0
            while at >= 0:
                start = data.rfind(b"\n", 0, at) + 1
                end = data.index(b"\n", at)
                is_cp, position = protocol.control_value(protocol.decode(data[start:end]), "checkpoint")
                if is_cp:
                    line_index += data.count(b"\n", counted_to, start)
                    counted_to = start
                    checkpoints.append((position, line_index - len(checkpoints), end + 1))
                at = data.find(token, end)
            if checkpoints:
                self.last_seen_checkpoint = checkpoints[-1][0]
        return data, checkpoints, count - len(checkpoints)

    def _process_slowly(self, lines: list[bytes], first_line: int) -> tuple[bytes, list[tuple[Any, int, int]], int]:
        keep: list[bytes] = []
        checkpoints: list[tuple[Any, int, int]] = []
        envelopes = 0
        size = 0
        for offset, line in enumerate(lines):
            if not line.strip():
                self.stats.skipped_blank += 1
                continue
            reason, detail, value = _check_line(line)
            if reason:
                self._fatal = self._bad_line(reason, detail, line, first_line + offset)
                if self._fatal is not None:
                    break
                continue
            keep.append(line)
            size += len(line) + 1
            is_cp, position = protocol.control_value(value, "checkpoint")
            if is_cp:
                checkpoints.append((position, envelopes, size))
                self.last_seen_checkpoint = position
            else:
                envelopes += 1
        out = b"\n".join(keep) + b"\n" if keep else b""
        return out, checkpoints, envelopes

    def _bad_line(self, reason: str, detail: str, line: bytes, number: int) -> BadDataError | None:
        """Dead-letter a bad line, or (on_error = "fail") return the error to stop with."""
        if self.dead_letters is None:
            shown = self.redactor(line[:120].decode("utf-8", "replace"))
            return BadDataError(
                f"{self.input.description} sent a bad line {number} ({reason.replace('_', ' ')}: "
                f"{detail}): {shown!r}. The checkpoint stays before it. Fix the provider, or set "
                f'on_error = "dead_letter" to set such lines aside and go on.',
                reason,
                line,
                number,
            )
        self.dead_letters.write(reason, line, number, self.last_seen_checkpoint, detail)
        self.stats.dead_letters += 1
        _log.warning("dead-lettered line %d (%s) to %s", number, reason.replace("_", " "), self.dead_letters.path)
        return None

    # -- checkpoints and acks ------------------------------------------------------------

    def _register(self, value: Any, envelopes: int, nbytes: int) -> _Pending:
        pending = _Pending(protocol.canonical(value), value, envelopes, nbytes)
        self._pending.append(pending)
        self.stats.checkpoints += 1
        return pending

    def _on_ack(self, value: Any) -> bool:
        return self._on_ack_key(protocol.canonical(value))

    def _on_ack_key(self, key: bytes) -> bool:
        """Mark a checkpoint acked; False when no such checkpoint is pending."""
        for pending in self._pending:
            if not pending.acked and pending.key == key:
                pending.acked = True
                break
        else:
            if "unknown-ack" not in self._warned:
                self._warned.add("unknown-ack")
                _log.warning("the output acknowledged a checkpoint it was never sent: %s", key[:200].decode())
            return False
        advanced: _Pending | None = None
        while self._pending and self._pending[0].acked:
            advanced = self._pending.popleft()
        if advanced is not None:
            self._acked = advanced
            self.stats.acked += 1
            self.stats.acked_envelopes = advanced.envelopes
            self.stats.acked_bytes = advanced.nbytes
            self._ack_event.set()
            self._window.set()
        return True

    def _window_full(self) -> bool:
        if len(self._pending) >= MAX_PENDING_CHECKPOINTS:
            return True
        in_flight = self.stats.envelopes - self.stats.acked_envelopes
        in_bytes = self.stats.bytes - self.stats.acked_bytes
        if in_flight < self.task.max_in_flight and in_bytes < self.task.max_in_flight_bytes:
            return False
        if not self._pending or not self.output_hs.acks:
            # Nothing can be acked to open the window: rely on pipe backpressure alone.
            if "window" not in self._warned:
                self._warned.add("window")
                _log.warning(
                    "%d envelopes are in flight with no checkpoint to acknowledge; the in-flight "
                    "window cannot be enforced (the input emits checkpoints too rarely, or the "
                    "output does not ack). Backpressure still applies.",
                    in_flight,
                )
            return False
        return True

    async def _wait_window(self) -> None:
        started = time.monotonic()
        in_flight = self.stats.envelopes - self.stats.acked_envelopes
        if "paused" not in self._warned:
            self._warned.add("paused")
            _log.info(
                "the output is behind: pausing the input (%d envelopes in flight, max_in_flight %d)",
                in_flight,
                self.task.max_in_flight,
            )
        self.stats.waiting = True
        while self._window_full():
            self._window.clear()
            await self._window.wait()
        self.stats.waiting = False
        self.stats.paused += time.monotonic() - started

    async def _persister(self) -> None:
        while True:
            await self._ack_event.wait()
            self._ack_event.clear()
            try:
                await self._persist()
            except (StateError, LeaseLost) as exc:
                self.abort(exc)
                return
            await asyncio.sleep(self.task.commit_interval)  # rate limit, not synchronisation

    async def _persist(self) -> None:
        async with self._persist_lock:
            target = self._acked
            if target is None or target is self._persisted:
                return
            if self.store is not None:
                await asyncio.to_thread(self._save, target.value)
            self._persisted = target
            self.stats.persisted += 1
            self.stats.last_persist = time.monotonic()
            if self.input_hs.commits and self.input.returncode is None:
                # If the input is gone, it resumes from the store next run.
                with contextlib.suppress(BrokenPipeError, ConnectionError, OSError):
                    await self.input.write(protocol.committed(target.value))

    def _save(self, value: Any) -> None:
        """Write a checkpoint, fenced by the task lease when there is one (worker thread)."""
        assert self.store is not None
        if self.guard is None:
            self.store.save(self.task.name, value, self.run_id)
            return
        self.guard.check()
        with self.guard.lease.fenced() as token:
            self.store.save(self.task.name, value, self.run_id, fence=token)

    # -- output → orchestrator --------------------------------------------------------

    async def _pump_output(self) -> None:
        framer = LineFramer(self.task.max_line_bytes)
        data = self._output_leftover
        while True:
            if data:
                self._output_events(framer.feed(data))
            data = await self.output.read(READ_CHUNK)
            if not data:
                self._output_events(framer.finish())
                break

    def _output_events(self, events: list[Block | Oversize]) -> None:
        for event in events:
            if isinstance(event, Block):
                self._output_block(event.data)
            elif event.stage == "start":
                _log.warning("the output printed a stdout line over max_line_bytes; it was dropped")

    def _output_block(self, block: bytes) -> None:
        if protocol.ACK_TOKEN not in block:
            self._passthrough(block)
            return
        other: list[bytes] = []
        for line in block.split(b"\n")[:-1]:
            if protocol.ACK_TOKEN in line:
                try:
                    value = protocol.decode(line)
                except protocol.DecodeError:
                    value = None
                is_ack, position = protocol.control_value(value, "ack")
                if is_ack and self._on_ack(position):
                    continue
            other.append(line)
        if other:
            self._passthrough(b"\n".join(other) + b"\n")

    def _passthrough(self, data: bytes) -> None:
        """The output's own stdout (e.g. the console provider) goes to dstream's stdout."""
        if self.stdout is None or self._stdout_broken:
            return
        try:
            self.stdout.write(data)
            self.stdout.flush()
        except (BrokenPipeError, ValueError, OSError):
            self._stdout_broken = True


class _Forced(Exception):
    pass


def _interrupted() -> DStreamError:
    from dstream.errors import Interrupted

    return Interrupted("stopped by a second interrupt; in-flight data was not checkpointed and will be sent again")


def _check_line(line: bytes) -> tuple[str, str, Any]:
    """``("", "", value)`` for a good line, else ``(reason, detail, None)``."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "invalid_utf8", f"{exc.reason} at byte {exc.start}", None
    try:
        value = protocol.decode(line)
    except protocol.DecodeError as exc:
        return "malformed_json", str(exc), None
    if not isinstance(value, dict):
        return "not_an_object", f"a JSON {type(value).__name__}, not an object", None
    return "", "", value


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by signal {-code}"
    if code in (137, 143):
        return f"exited with code {code} (killed by signal {code - 128})"
    return f"exited with code {code}"


__all__ = ["ProtocolError", "Relay", "RelayResult", "RelayStats"]
