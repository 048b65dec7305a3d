"""Persisting the ledger's persist point: the store write (fenced by the lease), then
``committed`` to inputs that asked for it. At most one write per ``commit_interval``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from dstream import protocol
from dstream.errors import StateError

if TYPE_CHECKING:
    from collections.abc import Callable

    from dstream.relay.ledger import CheckpointLedger
    from dstream.runtime.base import ProviderProcess
    from dstream.state.base import CheckpointStore
    from dstream.state.lease import LeaseGuard


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
                await asyncio.to_thread(self._save, target.value)
            self.ledger.mark_persisted(target)
            self.count += 1
            self.last = time.monotonic()
            if self.commits and self.source.returncode is None:
                # If the input is gone, it resumes from the store next run.
                with contextlib.suppress(BrokenPipeError, ConnectionError, OSError):
                    await self.source.write(protocol.committed(target.value))

    def _save(self, value: Any) -> None:
        """Write a checkpoint, fenced by the task lease when there is one (worker thread)."""
        assert self.store is not None
        if self.guard is None:
            self.store.save(self.task, value, self.run_id)
            return
        self.guard.check()
        with self.guard.lease.fenced() as token:
            self.store.save(self.task, value, self.run_id, fence=token)
