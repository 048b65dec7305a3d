"""Persisting the ledger's persist point: the store write (fenced by the lease), then
``committed`` to inputs that asked for it. At most one write per ``commit_interval``.

A store that does not answer (Azure Blob unreachable: the SDK retries quietly for minutes)
is reported after :data:`SLOW_WRITE` seconds and every :data:`SLOW_REPEAT` seconds after,
and again once it answers; meanwhile ``dstream_checkpoint_age_seconds`` keeps growing and
the status line says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from dstream import log, protocol
from dstream.errors import StateError

if TYPE_CHECKING:
    from collections.abc import Callable

    from dstream.relay.ledger import CheckpointLedger
    from dstream.runtime.base import ProviderProcess
    from dstream.state.base import CheckpointStore
    from dstream.state.lease import LeaseGuard


_log = log.get("state")
SLOW_WRITE = 3.0
SLOW_REPEAT = 30.0


class Persister:
    def __init__(
        self,
        *,
        ledger: CheckpointLedger,
        store: CheckpointStore | None,
        guard: LeaseGuard | None,
        task: str,
        run_id: str,
        commit_interval: float,
        source: ProviderProcess,
        commits: bool,
    ) -> None:
        self.ledger = ledger
        self.store = store
        self.guard = guard
        self.task = task
        self.run_id = run_id
        self.commit_interval = commit_interval
        self.source = source  # the input, told what was committed when it asked to be
        self.commits = commits
        self.acked = asyncio.Event()  # set when the persist point moved
        self.count = 0
        self.last: float | None = None  # monotonic time of the last write
        self.stalled_since: float | None = None  # a write has been waiting on the store since
        self.location = getattr(store, "location", "")
        self._lock = asyncio.Lock()

    async def run(self, on_failure: Callable[[StateError], None]) -> None:
        while True:
            await self.acked.wait()
            self.acked.clear()
            try:
                await self.persist()
            except StateError as exc:  # LeaseLost included
                on_failure(exc)
                return
            await asyncio.sleep(self.commit_interval)  # rate limit, not synchronisation

    async def persist(self) -> None:
        async with self._lock:
            target = self.ledger.to_persist()
            if target is None:
                return
            if self.store is not None:
                await self._write(target.value)
            self.ledger.mark_persisted(target)
            self.count += 1
            self.last = time.monotonic()
            if self.commits and self.source.returncode is None:
                # If the input is gone, it resumes from the store next run.
                with contextlib.suppress(BrokenPipeError, ConnectionError, OSError):
                    await self.source.write(protocol.committed(target.value))

    async def _write(self, value: Any) -> None:
        """The store write in a worker thread, with a warning while it does not return."""
        write = asyncio.ensure_future(asyncio.to_thread(self._save, value))
        started = time.monotonic()
        wait = SLOW_WRITE
        while True:
            done, _ = await asyncio.wait({write}, timeout=wait)
            if done:
                break
            self.stalled_since = self.stalled_since or started
            _log.warning(
                "the checkpoint store (%s) has not answered for %.0fs; still retrying. Data keeps flowing, "
                "but nothing newer than the last checkpoint is saved until it answers",
                self.location,
                time.monotonic() - started,
            )
            wait = SLOW_REPEAT
        if self.stalled_since is not None and write.exception() is None:
            _log.warning("the checkpoint store answered again after %.0fs", time.monotonic() - self.stalled_since)
        self.stalled_since = None
        write.result()

    def _save(self, value: Any) -> None:
        """Write a checkpoint, fenced by the task lease when there is one (worker thread)."""
        assert self.store is not None
        if self.guard is None:
            self.store.save(self.task, value, self.run_id)
            return
        self.guard.check()
        with self.guard.lease.fenced() as token:
            self.store.save(self.task, value, self.run_id, fence=token)
