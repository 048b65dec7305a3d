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
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from dstream import log
from dstream.errors import BadDataError, DStreamError, Interrupted, LeaseLost, StateError
from dstream.redact import Redactor
from dstream.relay.acks import AckReader
from dstream.relay.hop import Hop, SinkGone
from dstream.relay.ledger import CheckpointLedger, OrderViolation
from dstream.runtime.base import READ_CHUNK
from dstream.task import failures
from dstream.task.flow import AttemptStats, PipelineEvents
from dstream.task.persister import Persister

if TYPE_CHECKING:
    from dstream.config.models import Task
    from dstream.relay.deadletter import DeadLetterWriter
    from dstream.runtime.base import ProviderProcess
    from dstream.state.base import CheckpointStore
    from dstream.state.lease import LeaseGuard
    from dstream.task.launch import Opened

_log = log.get("relay")


@dataclass
class _Supervision:
    """What the supervisor of one attempt tracks: the hops still running, what else it waits
    for, the first failure (the one reported) and the drain deadline, once there is one."""

    hop_tasks: dict[asyncio.Task[None], Hop]
    out_exit: asyncio.Task[int]
    failure: DStreamError | None = None
    drain_deadline: float | None = None
    remaining: set[asyncio.Task[None]] = field(default_factory=set)
    watched: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.remaining = set(self.hop_tasks)
        self.watched = {self.out_exit}

    def fail(self, failure: DStreamError) -> None:
        self.failure = self.failure or failure  # the first one is the cause; the rest follow from it

    def start_drain(self, seconds: float) -> None:
        if self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + seconds

    def time_left(self) -> float | None:
        return None if self.drain_deadline is None else max(self.drain_deadline - time.monotonic(), 0)


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
        self.ledger = CheckpointLedger(len(stages) - 1, task.max_in_flight, task.max_in_flight_bytes, self.output_acks)
        self.persister = Persister(
            ledger=self.ledger,
            store=store,
            guard=guard,
            task=task.name,
            run_id=run_id,
            commit_interval=task.commit_interval,
            source=self.input,
            commits=self.input_commits,
        )
        self.events = PipelineEvents(
            ledger=self.ledger,
            persister=self.persister,
            stats=self.stats,
            guard=guard,
            last_hop=len(stages) - 2,
            output_acks=self.output_acks,
            max_in_flight=task.max_in_flight,
        )
        self.gauges = self.events.gauges
        self.hops = [
            Hop(
                index,
                self.procs[index],
                self.procs[index + 1],
                events=self.events,
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
            on_ack=self.events.on_ack,
            on_gauge=lambda value: self.events.record_gauge(self.output.role, value),
            stdout=stdout,
        )
        self._force = asyncio.Event()
        self._stop_requested = False
        self._stopper: asyncio.Task[None] | None = None
        self._abort: DStreamError | None = None

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
        # A detached run has no terminal to press Ctrl-C in: `dstream stop` asked, and a second SIGTERM forces.
        force = "a second SIGTERM forces it" if os.environ.get("DSTREAM_DETACHED") else "Ctrl-C again to force"
        _log.info("stopping: asking the input to finish, then draining to the output (%s)", force)
        self._stopper = asyncio.create_task(self._stop(self.input))

    def current_stats(self) -> AttemptStats:
        stats = self.stats
        first = self.hops[0].stats
        stats.envelopes, stats.bytes = first.envelopes, first.bytes
        stats.delivered, stats.delivered_bytes = self.ledger.acked_envelopes, self.ledger.acked_bytes
        stats.checkpoints = self.ledger.recorded
        stats.dead_letters = sum(h.stats.dead_letters for h in self.hops)
        stats.stage_envelopes = {h.role: h.stats.envelopes for h in self.hops}
        stats.stage_dead_letters = {h.role: h.stats.dead_letters for h in self.hops}
        stats.persisted, stats.last_persist = self.persister.count, self.persister.last
        stats.store_stalled_since = self.persister.stalled_since
        return stats

    # -- the attempt -----------------------------------------------------------------

    async def run(self) -> AttemptResult:
        hop_tasks = {asyncio.create_task(hop.run(), name=f"hop-{hop.index}"): hop for hop in self.hops}
        ack_task = asyncio.create_task(self.acks.run(), name="acks")
        persister = asyncio.create_task(self.persister.run(self.abort), name="persister")
        out_exit = asyncio.create_task(self.output.wait(), name="output-exit")
        forced = asyncio.create_task(self._force.wait(), name="forced")
        failure: DStreamError | None = None
        try:
            failure = await self._supervise(hop_tasks, out_exit, forced, ack_task)
            if self._force.is_set():
                raise _Forced
            try:
                await self.persister.persist()
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
            failure = failures.after_exit(self.procs, self.hops, self.ledger, self._stop_requested, self.redactor)
        persisted = self.ledger.persisted
        return AttemptResult(
            stats=self.current_stats(),
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
        """Until every hop has ended: hand each event to the method that handles it (a hop done,
        the output gone, the drain deadline passed), then let the output finish."""
        run = _Supervision(hop_tasks, out_exit)
        while run.remaining:
            done, _ = await asyncio.wait(
                run.remaining | run.watched | {forced}, timeout=run.time_left(), return_when=asyncio.FIRST_COMPLETED
            )
            if forced in done:
                raise _Forced
            if not done:  # the drain deadline passed with data still in the pipeline
                await self._on_deadline(run)
                break
            for finished in sorted(done & run.remaining, key=lambda t: hop_tasks[t].index):
                await self._on_hop_done(run, finished)
            if out_exit in done:
                await self._on_output_exit(run)
        await self._let_output_finish(run, forced)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ack_task), 10)
        return run.failure

    async def _on_deadline(self, run: _Supervision) -> None:
        run.fail(failures.drain_timeout(self.output, self.task.drain_timeout, self.redactor))
        await self._cut(len(self.procs) - 2, run.remaining, run.hop_tasks)

    async def _on_hop_done(self, run: _Supervision, finished: asyncio.Task[None]) -> None:
        """A hop ended: its source finished (the input's end starts the drain deadline; a
        transform ending before its input did is a failure), or it failed: cut upstream."""
        run.remaining.discard(finished)
        hop = run.hop_tasks[finished]
        exc = None if finished.cancelled() else finished.exception()
        if exc is None:
            if hop.index == 0:
                run.start_drain(self.task.drain_timeout)
            if any(run.hop_tasks[t].index == hop.index - 1 for t in run.remaining):
                # A transform closed its stdout while its input was still coming.
                run.fail(await failures.died(hop.source, self.hops[0].stats.envelopes, self.redactor))
                run.start_drain(self.task.drain_timeout)
                await self._cut(hop.index - 1, run.remaining, run.hop_tasks)
            return
        if isinstance(exc, LeaseLost):
            self.abort(self._redacted(exc))
            raise _Forced
        if isinstance(exc, BadDataError):
            found: DStreamError = self._redacted(exc)
        elif isinstance(exc, SinkGone):
            found = await self._died(self.procs[hop.index + 1])
        elif isinstance(exc, OrderViolation):
            found = failures.out_of_order(self.procs[exc.hop], exc)
        else:
            raise exc
        run.fail(found)
        run.start_drain(self.task.drain_timeout)
        await self._cut(hop.index, run.remaining, run.hop_tasks)

    async def _on_output_exit(self, run: _Supervision) -> None:
        run.watched.discard(run.out_exit)
        if run.remaining and not self.hops[-1].sink_closed:
            # The output exited while data was still on its way to it.
            run.fail(await self._died(self.output))
            await self._cut(len(self.procs) - 2, run.remaining, run.hop_tasks)

    async def _let_output_finish(self, run: _Supervision, forced: asyncio.Task[Any]) -> None:
        """Every hop has ended: the output gets what is left of the drain deadline to exit."""
        if self.output.returncode is not None:
            return
        left = self.task.drain_timeout if run.drain_deadline is None else run.time_left()
        done, _ = await asyncio.wait({run.out_exit, forced}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if forced in done:
            raise _Forced
        if run.out_exit not in done:
            run.fail(failures.drain_timeout(self.output, self.task.drain_timeout, self.redactor))
            await self._stop(self.output)

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
        return await failures.died(proc, self.hops[0].stats.envelopes, self.redactor)

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


async def _discard(proc: ProviderProcess) -> None:
    while await proc.read(READ_CHUNK):
        pass


def _interrupted() -> DStreamError:
    return Interrupted("stopped by a second interrupt; in-flight data was not checkpointed and will be sent again")
