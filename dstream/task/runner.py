"""``dstream run``: one task, from checkpoint to checkpoint, with the restart policy.

An attempt (:mod:`dstream.task.attempt`) starts every stage of the pipeline, relays until
the input ends (or a stop is requested), and persists the last acknowledged checkpoint. A
failed attempt is retried from that checkpoint when the task has a ``restart`` block.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from dstream import log
from dstream.errors import BadDataError, DStreamError, Interrupted, LeaseLost, ProviderError, RuntimeFailure
from dstream.redact import Redactor
from dstream.relay.deadletter import DeadLetterWriter, default_path
from dstream.state import Lease, LeaseGuard, open_lease, open_store
from dstream.task.attempt import Attempt, AttemptResult
from dstream.task.flow import AttemptStats
from dstream.task.launch import LaunchOptions, new_run_id, open_stages
from dstream.task.progress import Progress

if TYPE_CHECKING:
    from dstream.config.models import Document, Task
    from dstream.state.base import CheckpointStore

_log = log.get("run")
_RETRYABLE = (ProviderError, RuntimeFailure)


@dataclass
class RunSummary:
    task: str
    run_id: str
    attempts: int
    envelopes: int
    bytes: int
    checkpoint: Any
    seconds: float
    dead_letters: int
    stopped: bool
    resumed: bool = False  # the run started from a stored checkpoint
    stages: dict[str, int] = field(default_factory=dict)  # data lines out of each stage but the output
    stage_dead_letters: dict[str, int] = field(default_factory=dict)


class TaskRun:
    def __init__(
        self,
        document: Document,
        task_name: str,
        options: LaunchOptions | None = None,
        stdout: BinaryIO | None = None,
    ) -> None:
        self.document = document
        self.task: Task = document.task(task_name)
        self.options = options or LaunchOptions()
        self.stdout = stdout if stdout is not None else sys.stdout.buffer
        self.redactor = Redactor(document.secrets)
        log.set_redactor(self.redactor)
        self.run_id = new_run_id()
        self._current: Attempt | None = None
        self._stop = asyncio.Event()
        self._stop_count = 0
        self._guard: LeaseGuard | None = None
        self._lost: LeaseLost | None = None
        self._acquired_at = 0.0
        self.state = "starting"
        self.restarts = 0
        self._done = AttemptStats()  # totals of finished attempts
        self._last_persist: float | None = None
        self._gauges: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}  # last attempt's

    def progress(self) -> Progress:
        attempt = self._current
        live = attempt.current_stats() if attempt is not None else AttemptStats()
        done = self._done
        last = live.last_persist or self._last_persist
        providers = {}
        if attempt is not None:
            for proc in attempt.procs:
                code = proc.returncode
                providers[proc.role] = "running" if code is None else f"exited {code}"
        lease = "" if self._guard is None else ("held" if self._guard.valid() else "lost")
        if self.state == "standby":
            lease = "waiting"
        return Progress(
            task=self.task.name,
            run_id=self.run_id,
            state=self.state,
            envelopes=done.envelopes + live.envelopes,
            bytes=done.bytes + live.bytes,
            delivered=done.delivered + live.delivered,
            delivered_bytes=done.delivered_bytes + live.delivered_bytes,
            checkpoints_persisted=done.persisted + live.persisted,
            dead_letters=done.dead_letters + live.dead_letters,
            restarts=self.restarts,
            in_flight=live.envelopes - live.delivered,
            waiting_for_output=live.waiting,
            last_checkpoint_age=None if last is None else time.monotonic() - last,
            providers=providers,
            lease=lease,
            stage_envelopes={r: done.stage_envelopes.get(r, 0) + n for r, n in live.stage_envelopes.items()}
            or dict(done.stage_envelopes),
            gauges=dict(attempt.gauges) if attempt is not None else dict(self._gauges),
            store_stalled=None if live.store_stalled_since is None else time.monotonic() - live.store_stalled_since,
        )

    def _fold(self, stats: AttemptStats) -> None:
        done = self._done
        done.envelopes += stats.envelopes
        done.bytes += stats.bytes
        done.delivered += stats.delivered
        done.delivered_bytes += stats.delivered_bytes
        done.persisted += stats.persisted
        done.dead_letters += stats.dead_letters
        for role, count in stats.stage_envelopes.items():
            done.stage_envelopes[role] = done.stage_envelopes.get(role, 0) + count
        self._last_persist = stats.last_persist or self._last_persist

    def request_stop(self) -> None:
        self._stop_count += 1
        self._stop.set()
        if self.state in ("running", "starting"):
            self.state = "stopping"
        if self._lost is not None:
            return
        if self._current is not None:
            self._current.request_stop()
        elif self._stop_count == 1:
            _log.info("stop requested")

    async def run(self) -> RunSummary:
        started = time.monotonic()
        lease = open_lease(self.document, self.task, self.run_id)
        if lease is None:
            return await self._run(started)
        if not await self._acquire(lease):
            return RunSummary(self.task.name, self.run_id, 0, 0, 0, None, time.monotonic() - started, 0, True)
        self._guard = LeaseGuard(lease)
        self._guard.acquired(self._acquired_at)
        renewer = asyncio.create_task(self._renew(self._guard))
        try:
            return await self._run(started)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            if self._guard.valid():
                await asyncio.to_thread(lease.release)
                _log.info("released the lease of task %s", self.task.name)

    async def _acquire(self, lease: Lease) -> bool:
        """Wait as a standby until this replica holds the lease; False if stopped first."""
        waited = False
        last_note = 0.0
        self.state = "standby"
        while not self._stop.is_set():
            self._acquired_at = time.monotonic()
            if await asyncio.to_thread(lease.try_acquire):
                if waited:
                    _log.info("took over the lease of task %s: this replica is now active", self.task.name)
                else:
                    _log.info(
                        "holding the lease of task %s (%gs, renewed every %gs)",
                        self.task.name,
                        lease.duration,
                        lease.duration / 3,
                    )
                return True
            if time.monotonic() - last_note > 60:
                holder = await asyncio.to_thread(lease.holder)
                _log.info(
                    "standby: the lease of task %s is held by %s; waiting for it",
                    self.task.name,
                    holder or "another replica",
                )
                last_note = time.monotonic()
            waited = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), min(lease.duration / 3, 5.0))
        _log.info("stopped while standby")
        return False

    async def _renew(self, guard: LeaseGuard) -> None:
        interval = guard.lease.duration / 3
        while True:
            await asyncio.sleep(interval)  # the renewal period, not synchronisation
            remaining = guard.deadline - time.monotonic()
            try:
                if remaining <= 0:
                    guard.check()
                await asyncio.wait_for(asyncio.to_thread(guard.renew_once), timeout=max(remaining, 0.01))
            except (LeaseLost, TimeoutError) as exc:
                reason = str(exc) if isinstance(exc, LeaseLost) else "renewing the lease took past its deadline"
                guard.lost = guard.lost or reason
                self._lease_lost(LeaseLost(f"task {self.task.name}: {reason}; stopping this replica now"))
                return

    def _lease_lost(self, failure: LeaseLost) -> None:
        self._lost = failure
        self._stop.set()
        if self._current is not None:
            self._current.abort(failure)

    async def _run(self, started: float) -> RunSummary:
        store = open_store(self.document)
        policy = self.task.restart
        attempts = 0
        try:
            while True:
                attempts += 1
                stored = store.load(self.task.name)
                resume = stored.checkpoint if stored else None
                if resume is not None:
                    _log.info("task %s resumes from checkpoint %s", self.task.name, _short(resume))
                try:
                    result = await self._run_attempt(store, resume)
                except (BadDataError, Interrupted, LeaseLost):
                    raise
                except _RETRYABLE as exc:
                    if policy is None or attempts > policy.max_attempts or self._stop.is_set():
                        raise
                    delay = min(policy.backoff * 2 ** (attempts - 1), policy.max_backoff)
                    _log.warning(
                        "attempt %d of %d failed: %s — restarting from the last checkpoint in %.1fs",
                        attempts,
                        policy.max_attempts + 1,
                        _first_line(str(exc)),
                        delay,
                    )
                    self.state = "restarting"
                    self.restarts += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                    if self._stop.is_set():
                        raise Interrupted("stopped while waiting to restart") from None
                    self.state = "starting"
                    continue
                return RunSummary(
                    task=self.task.name,
                    run_id=self.run_id,
                    attempts=attempts,
                    envelopes=result.stats.envelopes,
                    bytes=result.stats.bytes,
                    checkpoint=result.last_checkpoint if result.persisted else resume,
                    seconds=time.monotonic() - started,
                    dead_letters=result.stats.dead_letters,
                    stopped=result.stopped_by_request,
                    resumed=resume is not None,
                    stages=dict(result.stats.stage_envelopes),
                    stage_dead_letters=dict(result.stats.stage_dead_letters),
                )
        finally:
            store.close()

    async def _run_attempt(self, store: CheckpointStore, resume: Any) -> AttemptResult:
        if self._lost is not None:
            raise self._lost
        if self._stop.is_set():
            raise Interrupted("stopped before the providers started")
        opening = asyncio.create_task(
            open_stages(self.document, self.task, self.run_id, "run", resume, self.options, self.redactor)
        )
        stop_wait = asyncio.create_task(self._stop.wait())
        await asyncio.wait({opening, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, DStreamError):
                await opening
            raise Interrupted("stopped while the providers were starting")
        stages = opening.result()
        inp = stages[0]
        dead_letters = None
        if self.task.on_error == "dead_letter":
            path = default_path(self.document.base_dir, self.task.name, self.task.dead_letter.path)
            dead_letters = DeadLetterWriter(path, self.task.name, self.run_id)
        try:
            if not inp.handshake.commits:
                await inp.proc.close_stdin()  # as upstream: stdin carries only the command
            _log.info(
                "task %s running (run %s): %s",
                self.task.name,
                self.run_id,
                " → ".join(f"{one.proc.role} {_kind(one.handshake)}" for one in stages),
            )
            self._current = Attempt(
                task=self.task,
                run_id=self.run_id,
                stages=stages,
                store=store,
                resume_from=resume,
                dead_letters=dead_letters,
                redactor=self.redactor,
                stdout=self.stdout,
                guard=self._guard,
            )
            # Everything allocated so far lives for this attempt: keep the garbage collector
            # from rescanning it, which would add pauses to the relay's latency (unfrozen
            # when the attempt ends, so a restarted attempt's leftovers can be collected).
            gc.collect()
            gc.freeze()
            self.state = "running" if not self._stop.is_set() else "stopping"
            if self._stop.is_set():
                self._current.request_stop()
            result = await self._current.run()
        finally:
            gc.unfreeze()
            if self._current is not None:
                self._fold(self._current.current_stats())
                self._gauges = dict(self._current.gauges)
            self._current = None
            if dead_letters is not None:
                dead_letters.close()
            await asyncio.gather(*(opened.proc.cleanup() for opened in stages))
        if result.failure is not None:
            raise result.failure
        return result


def _kind(handshake: Any) -> str:
    if handshake.legacy:
        return "(legacy)"
    return "(" + (",".join(sorted(handshake.features)) or "no features") + ")"


def _short(value: Any, limit: int = 120) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text
