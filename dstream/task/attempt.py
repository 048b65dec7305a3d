"""One attempt of a task: its N stages running, N-1 hops between them, one ledger.

The supervisor here wires the pieces of :mod:`dstream.relay` together and decides what a
failure means for the rest of the pipeline:

- the input ends (or is asked to stop): end-of-file travels down the hops; the output gets
  ``drain_timeout`` from then to finish; the last acknowledged checkpoint is persisted;
- a stage sends a bad line, or a transform rejects a record, with ``on_error = "fail"``; a
  stage dies mid-stream; a transform drops or reorders a checkpoint: every stage upstream
  of that point is stopped at once (its output discarded), the stages downstream drain
  what they already have, and what they acknowledge is persisted. Nothing unacknowledged
  is ever persisted, so the next attempt resends it;
- the lease is lost, or a second stop request comes: every stage is killed, nothing more
  is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from dstream import log, protocol
from dstream.errors import BadDataError, DStreamError, Interrupted, LeaseLost, ProtocolError, ProviderError, StateError
from dstream.redact import Redactor
from dstream.relay.acks import AckReader
from dstream.relay.exits import STOPPED_CODES, describe_exit
from dstream.relay.handshake import stderr_excerpt
from dstream.relay.hop import Hop, SinkGone
from dstream.relay.ledger import CheckpointLedger, OrderViolation
from dstream.runtime.base import READ_CHUNK

if TYPE_CHECKING:
    from dstream.config.models import Task
    from dstream.relay.deadletter import DeadLetterWriter
    from dstream.runtime.base import ProviderProcess
    from dstream.state.base import CheckpointStore
    from dstream.state.lease import LeaseGuard
    from dstream.task.launch import Opened

_log = log.get("relay")


@dataclass
class AttemptStats:
    """Counts of one attempt, read by the status line and the metrics (nothing on the hot path)."""

    started: float = field(default_factory=time.monotonic)
    envelopes: int = 0  # read from the input
    bytes: int = 0
    delivered: int = 0  # input envelopes covered by an acknowledged checkpoint
    delivered_bytes: int = 0
    checkpoints: int = 0
    persisted: int = 0
    dead_letters: int = 0
    last_persist: float | None = None
    paused: float = 0.0  # seconds the input spent waiting for the output (window full)
    waiting: bool = False  # paused right now
    stage_envelopes: dict[str, int] = field(default_factory=dict)  # data lines out of each stage


@dataclass
class AttemptResult:
    stats: AttemptStats
    last_checkpoint: Any
    persisted: bool
    stopped_by_request: bool
    failure: DStreamError | None = None


class _Forced(Exception):
    pass


class Attempt:
    def __init__(
        self,
        *,
        task: Task,
        run_id: str,
        stages: list[Opened],
        store: CheckpointStore | None,
        resume_from: Any = None,
        dead_letters: DeadLetterWriter | None = None,
        redactor: Redactor | None = None,
        stdout: BinaryIO | None = None,
        guard: LeaseGuard | None = None,
    ) -> None:
        self.task = task
        self.run_id = run_id
        self.procs: list[ProviderProcess] = [opened.proc for opened in stages]
        self.input = self.procs[0]
        self.output = self.procs[-1]
        self.input_commits = stages[0].handshake.commits
        self.output_acks = stages[-1].handshake.acks
        self.store = store
        self.guard = guard
        self.redactor = redactor or Redactor()
        self.stats = AttemptStats()
        self.gauges: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        self.ledger = CheckpointLedger(len(stages) - 1, task.max_in_flight, task.max_in_flight_bytes, self.output_acks)
        self.hops = [
            Hop(
                index,
                self.procs[index],
                self.procs[index + 1],
                events=self,
                leftover=stages[index].leftover,
                max_line_bytes=task.max_line_bytes,
                stop_timeout=task.stop_timeout,
                from_transform=index > 0,
                dead_letters=dead_letters,
                redactor=self.redactor,
                resume_from=resume_from,
            )
            for index in range(len(stages) - 1)
        ]
        self.acks = AckReader(
            self.output,
            leftover=stages[-1].leftover,
            max_line_bytes=task.max_line_bytes,
            on_ack=self._on_ack,
            on_gauge=lambda value: self._gauge(self.output.role, value),
            stdout=stdout,
        )
        self._window = asyncio.Event()
        self._ack_event = asyncio.Event()
        self._persist_lock = asyncio.Lock()
        self._force = asyncio.Event()
        self._stop_requested = False
        self._stopper: asyncio.Task[None] | None = None
        self._abort: DStreamError | None = None
        self._warned: set[str] = set()

    # -- control from outside (signals, the lease) ---------------------------------------

    def abort(self, failure: DStreamError) -> None:
        """Stop now, drain nothing, persist nothing more (a lost lease, a failing store)."""
        if self._abort is None:
            self._abort = failure
            _log.error("%s", self.redactor(str(failure)))
        self._force.set()

    def request_stop(self) -> None:
        """First call: stop gracefully (the input stops, in-flight data drains). Second: now."""
        if self._stop_requested:
            _log.warning("second stop request: stopping the providers now")
            self._force.set()
            return
        self._stop_requested = True
        _log.info("stopping: asking the input to finish, then draining to the output (Ctrl-C again to force)")
        self._stopper = asyncio.create_task(self._stop(self.input))

    def snapshot_stats(self) -> AttemptStats:
        stats = self.stats
        first = self.hops[0].stats
        stats.envelopes, stats.bytes = first.envelopes, first.bytes
        stats.delivered, stats.delivered_bytes = self.ledger.acked_envelopes, self.ledger.acked_bytes
        stats.checkpoints = self.ledger.recorded
        stats.dead_letters = sum(h.stats.dead_letters for h in self.hops)
        stats.stage_envelopes = {h.role: h.stats.envelopes for h in self.hops}
        return stats

    # -- the attempt -----------------------------------------------------------------

    async def run(self) -> AttemptResult:
        hop_tasks = {asyncio.create_task(hop.run(), name=f"hop-{hop.index}"): hop for hop in self.hops}
        ack_task = asyncio.create_task(self.acks.run(), name="acks")
        persister = asyncio.create_task(self._persister(), name="persister")
        out_exit = asyncio.create_task(self.output.wait(), name="output-exit")
        forced = asyncio.create_task(self._force.wait(), name="forced")
        failure: DStreamError | None = None
        try:
            failure = await self._supervise(hop_tasks, out_exit, forced, ack_task)
            if self._force.is_set():
                raise _Forced
            try:
                await self._persist()
            except StateError as exc:  # LeaseLost included
                failure = failure or self._redacted(exc)
        except _Forced:
            await asyncio.gather(*(proc.kill() for proc in self.procs))
            failure = self._abort or failure or _interrupted()
        finally:
            for t in [*hop_tasks, ack_task, persister, out_exit, forced]:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*hop_tasks, ack_task, persister, out_exit, forced, return_exceptions=True)
            if self._stopper is not None and not self._stopper.done():
                self._stopper.cancel()
            self.acks.flush()
        if failure is None:
            failure = self._exit_status_failure()
        persisted = self.ledger.persisted
        return AttemptResult(
            stats=self.snapshot_stats(),
            last_checkpoint=persisted.value if persisted else None,
            persisted=persisted is not None,
            stopped_by_request=self._stop_requested,
            failure=failure,
        )

    async def _supervise(
        self,
        hop_tasks: dict[asyncio.Task[None], Hop],
        out_exit: asyncio.Task[int],
        forced: asyncio.Task[Any],
        ack_task: asyncio.Task[None],
    ) -> DStreamError | None:
        failure: DStreamError | None = None
        drain_deadline: float | None = None
        remaining = set(hop_tasks)
        watched = {out_exit, forced}
        while remaining:
            timeout = None if drain_deadline is None else max(drain_deadline - time.monotonic(), 0)
            done, _ = await asyncio.wait(remaining | watched, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if forced in done:
                raise _Forced
            if not done:  # the drain deadline passed with data still in the pipeline
                failure = failure or self._drain_timeout()
                await self._cut(len(self.procs) - 2, remaining, hop_tasks)
                break
            for finished in sorted(done & remaining, key=lambda t: hop_tasks[t].index):
                remaining.discard(finished)
                hop = hop_tasks[finished]
                exc = None if finished.cancelled() else finished.exception()
                if exc is None:
                    if hop.index == 0 and drain_deadline is None:
                        drain_deadline = time.monotonic() + self.task.drain_timeout
                    upstream = [t for t in remaining if hop_tasks[t].index == hop.index - 1]
                    if upstream:
                        # A transform closed its stdout while its input was still coming.
                        failure = failure or await self._died(hop.source)
                        drain_deadline = drain_deadline or time.monotonic() + self.task.drain_timeout
                        await self._cut(hop.index - 1, remaining, hop_tasks)
                    continue
                if isinstance(exc, LeaseLost):
                    self.abort(self._redacted(exc))
                    raise _Forced
                if isinstance(exc, BadDataError):
                    found: DStreamError = self._redacted(exc)
                elif isinstance(exc, SinkGone):
                    found = await self._died(self.procs[hop.index + 1])
                elif isinstance(exc, OrderViolation):
                    found = self._order_failure(exc)
                else:
                    raise exc
                failure = failure or found
                if drain_deadline is None:
                    drain_deadline = time.monotonic() + self.task.drain_timeout
                await self._cut(hop.index, remaining, hop_tasks)
            if out_exit in done:
                watched.discard(out_exit)
                if remaining and not self.hops[-1].sink_closed:
                    # The output exited while data was still on its way to it.
                    failure = failure or await self._died(self.output)
                    await self._cut(len(self.procs) - 2, remaining, hop_tasks)
        if self.output.returncode is None:
            left = self.task.drain_timeout if drain_deadline is None else max(drain_deadline - time.monotonic(), 0)
            done, _ = await asyncio.wait({out_exit, forced}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if forced in done:
                raise _Forced
            if out_exit not in done:
                failure = failure or self._drain_timeout()
                await self._stop(self.output)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ack_task), 10)
        return failure

    async def _cut(
        self, index: int, remaining: set[asyncio.Task[None]], hop_tasks: dict[asyncio.Task[None], Hop]
    ) -> None:
        """Stop stages 0..index now, with the hops reading them, and let the ones after drain."""
        upstream = [t for t in remaining if hop_tasks[t].index <= index]
        for t in upstream:
            t.cancel()
            remaining.discard(t)
        await asyncio.gather(*upstream, return_exceptions=True)
        await asyncio.gather(*(self._stop_now(proc) for proc in self.procs[: index + 1]))
        with contextlib.suppress(BrokenPipeError, ConnectionError, OSError):
            await self.procs[index + 1].close_stdin()

    # -- failures --------------------------------------------------------------------

    async def _died(self, proc: ProviderProcess) -> DStreamError:
        try:
            code: int | None = await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(proc.wait())), 10)
        except TimeoutError:
            code = None
        how = "stopped reading its input" if code is None else describe_exit(code)
        return ProviderError(
            f"{proc.description} {how} while data was still on its way to it "
            f"({self.hops[0].stats.envelopes} envelopes read from the input; nothing unacknowledged "
            f"was checkpointed)." + stderr_excerpt(proc, self.redactor)
        )

    def _order_failure(self, exc: OrderViolation) -> DStreamError:
        proc = self.procs[exc.hop]
        if exc.expected is None:
            what = f"forwarded a checkpoint it was never sent, or forwarded one twice: {_short(exc.got)}"
        else:
            what = f"forwarded checkpoint {_short(exc.got)} while {_short(exc.expected)} was due"
        return ProtocolError(
            f"{proc.description} {what}. A transform must forward every checkpoint line unchanged and in "
            f"order, after what it emitted for the lines before it; the checkpoint stays before this point."
        )

    def _drain_timeout(self) -> DStreamError:
        return ProviderError(
            f"{self.output.description} did not finish within drain_timeout ({self.task.drain_timeout:g}s) "
            f"after its input ended; stopping it." + stderr_excerpt(self.output, self.redactor)
        )

    def _exit_status_failure(self) -> DStreamError | None:
        out_code = self.output.returncode
        if out_code not in (0, None):
            return ProviderError(
                f"{self.output.description} {describe_exit(out_code)}." + stderr_excerpt(self.output, self.redactor)
            )
        for hop in reversed(self.hops[1:]):  # transforms, nearest the output first
            code = hop.source.returncode
            if code not in (0, None) and not (self._stop_requested and code in STOPPED_CODES):
                return ProviderError(
                    f"{hop.source.description} {describe_exit(code)}." + stderr_excerpt(hop.source, self.redactor)
                )
        in_code = self.input.returncode
        if in_code not in (0, None) and not (self._stop_requested and in_code in STOPPED_CODES):
            return ProviderError(
                f"{self.input.description} {describe_exit(in_code)}." + stderr_excerpt(self.input, self.redactor)
            )
        for hop in self.hops[1:]:
            lost = self.ledger.unforwarded(hop.index)
            if lost:
                return ProtocolError(
                    f"{hop.source.description} ended without forwarding {len(lost)} checkpoint(s) "
                    f"(first: {_short(lost[0])}). A transform must forward every checkpoint line unchanged; "
                    f"the checkpoint stays before them."
                )
        if self.output_acks and self.ledger.pending:
            _log.warning(
                "the output exited without acknowledging %d checkpoint(s); data after the last "
                "acknowledged one will be sent again on the next run",
                self.ledger.pending,
            )
        return None

    def _redacted(self, exc: BaseException) -> DStreamError:
        assert isinstance(exc, DStreamError)
        exc.args = (self.redactor(str(exc)),)
        return exc

    # -- stopping stages ---------------------------------------------------------------

    async def _stop(self, proc: ProviderProcess) -> None:
        await proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), self.task.stop_timeout)
        except TimeoutError:
            _log.warning("%s did not stop within %gs; killing it", proc.description, self.task.stop_timeout)
            await proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)

    async def _stop_now(self, proc: ProviderProcess) -> None:
        """Stop a stage, discarding what it still prints so it is not stuck writing."""
        if proc.returncode is not None:
            return
        discard = asyncio.create_task(_discard(proc))
        try:
            await self._stop(proc)
        finally:
            discard.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await discard

    # -- HopEvents ---------------------------------------------------------------------

    async def gate(self, hop: Hop) -> None:
        """The input's hop waits while the in-flight window is full."""
        if hop.index != 0:
            return
        first = hop.stats
        state = self.ledger.window(first.envelopes, first.bytes)
        if state == "open":
            return
        if state == "unenforceable":
            if "window" not in self._warned:
                self._warned.add("window")
                _log.warning(
                    "%d envelopes are in flight with no checkpoint to acknowledge; the in-flight "
                    "window cannot be enforced (the input emits checkpoints too rarely, or the "
                    "output does not ack). Backpressure still applies.",
                    first.envelopes - self.ledger.acked_envelopes,
                )
            return
        started = time.monotonic()
        if "paused" not in self._warned:
            self._warned.add("paused")
            _log.info(
                "the output is behind: pausing the input (%d envelopes in flight, max_in_flight %d)",
                first.envelopes - self.ledger.acked_envelopes,
                self.task.max_in_flight,
            )
        self.stats.waiting = True
        while self.ledger.window(first.envelopes, first.bytes) == "full":
            self._window.clear()
            await self._window.wait()
        self.stats.waiting = False
        self.stats.paused += time.monotonic() - started

    def before_write(self, hop: Hop, checkpoints: list[tuple[Any, int, int]]) -> None:
        if self.guard is not None:
            self.guard.check()  # never relay once the lease may be someone else's
        if hop.index == 0:
            for value, envelopes, nbytes in checkpoints:
                self.ledger.emitted(value, envelopes, nbytes)
        else:
            for value, _, _ in checkpoints:
                self.ledger.passed(hop.index, value)

    def after_write(self, hop: Hop, checkpoints: list[tuple[Any, int, int]]) -> None:
        if self.output_acks or hop.index != len(self.hops) - 1:
            return
        # A legacy output never acks: count data handed over as delivered (weaker).
        if "legacy-ack" not in self._warned:
            self._warned.add("legacy-ack")
            _log.warning(
                "the output does not acknowledge checkpoints; checkpoints are saved once data is "
                "handed to it (at-most-once for what it had not written when it stops)"
            )
        for value, _, _ in checkpoints:
            self._on_ack(value)

    def gauge(self, hop: Hop, value: Any) -> None:
        self._gauge(hop.role, value)

    def _gauge(self, role: str, value: Any) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return
        try:
            number = float(value.get("value"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
        raw_labels = value.get("labels")
        labels = tuple(sorted((str(k), str(v)) for k, v in raw_labels.items())) if isinstance(raw_labels, dict) else ()
        self.gauges[(role, value["name"], labels)] = number

    # -- acks and persisting -----------------------------------------------------------

    def _on_ack(self, value: Any) -> None:
        before = self.ledger.acks
        if not self.ledger.ack(value):
            if "unknown-ack" not in self._warned:
                self._warned.add("unknown-ack")
                _log.warning("the output acknowledged a checkpoint it was never sent: %s", _short(value))
            return
        if self.ledger.acks != before:
            self._ack_event.set()
            self._window.set()

    async def _persister(self) -> None:
        while True:
            await self._ack_event.wait()
            self._ack_event.clear()
            try:
                await self._persist()
            except StateError as exc:  # LeaseLost included
                self.abort(exc)
                return
            await asyncio.sleep(self.task.commit_interval)  # rate limit, not synchronisation

    async def _persist(self) -> None:
        async with self._persist_lock:
            target = self.ledger.to_persist()
            if target is None:
                return
            if self.store is not None:
                await asyncio.to_thread(self._save, target.value)
            self.ledger.mark_persisted(target)
            self.stats.persisted += 1
            self.stats.last_persist = time.monotonic()
            if self.input_commits and self.input.returncode is None:
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


async def _discard(proc: ProviderProcess) -> None:
    while await proc.read(READ_CHUNK):
        pass


def _short(value: Any, limit: int = 120) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _interrupted() -> DStreamError:
    return Interrupted("stopped by a second interrupt; in-flight data was not checkpointed and will be sent again")
