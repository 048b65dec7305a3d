"""Task leases: active/standby replicas of one task.

A replica acquires the task's lease before starting providers and renews it every third of
its duration. Its *local deadline* is the time it sent the last successful acquire/renew
request plus the duration: once that passes (a failed renewal, a network hang, a SIGSTOP),
the replica stops relaying at once, without draining or checkpointing, because another
replica may already hold the lease. Checkpoint writes are fenced as well: they happen
inside :meth:`Lease.fenced`, which re-checks ownership (the file backend, under its
lock) or hands the lease id to Azure Blob Storage, which rejects a stale holder's write.

Backends: ``file`` (replicas on one machine sharing a directory) and ``azure_blob``
(anywhere; see :mod:`dstream.state.azure_blob`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

from dstream import private
from dstream.errors import LeaseLost

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class Lease(Protocol):
    owner: str
    duration: float

    def try_acquire(self) -> bool:
        """Take the lease if it is free or expired; False when another replica holds it."""

    def renew(self) -> None:
        """Extend the lease; raises LeaseLost when it is no longer ours."""

    def release(self) -> None:
        """Give the lease up (clean exit), so a standby takes over at once."""

    def holder(self) -> str:
        """Who holds it now (for messages), or "" if unknown."""

    def fenced(self) -> contextlib.AbstractContextManager[Any]:
        """Context for a checkpoint write: raises LeaseLost if not ours; yields the fence token."""


def new_owner(run_id: str) -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{run_id}"


class FileLease:
    """A lease in a JSON file, updated under ``flock``: for replicas sharing one filesystem."""

    def __init__(self, path: Path, task: str, owner: str, duration: float) -> None:
        self.path = path
        self.task = task
        self.owner = owner
        self.duration = duration
        self.generation = 0
        private.make_dirs(path.parent)
        self._lock_path = path.with_suffix(".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        with private.open_append(self._lock_path) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = json.loads(self.path.read_text()) if self.path.exists() else {}
            except ValueError:
                state = {}
            yield state

    def _write(self, state: dict[str, Any]) -> None:
        private.write_atomically(self.path, json.dumps(state))

    def try_acquire(self) -> bool:
        with self._locked() as state:
            now = time.time()
            if state.get("owner") not in (None, self.owner) and state.get("expires_at", 0) > now:
                return False
            generation = int(state.get("generation", 0))
            if state.get("owner") != self.owner:
                generation += 1
            self._write({"owner": self.owner, "expires_at": now + self.duration, "generation": generation})
            self.generation = generation
            return True

    def renew(self) -> None:
        with self._locked() as state:
            if state.get("owner") != self.owner or state.get("generation") != self.generation:
                raise LeaseLost(f"the lease of task {self.task} is now held by {state.get('owner') or 'nobody'}")
            if state.get("expires_at", 0) <= time.time():
                raise LeaseLost(f"the lease of task {self.task} expired before it was renewed")
            state["expires_at"] = time.time() + self.duration
            self._write(state)

    def release(self) -> None:
        with self._locked() as state:
            if state.get("owner") == self.owner:
                state["expires_at"] = 0
                self._write(state)

    def holder(self) -> str:
        with self._locked() as state:
            return str(state.get("owner") or "")

    @contextlib.contextmanager
    def fenced(self) -> Iterator[int]:
        """Check ownership, then let the write carry this lease's generation.

        The write itself happens outside the lock file's lock, so a replica frozen mid-write
        cannot block the standbys; the checkpoint store refuses a write whose generation is
        older than the last one it accepted (see SqliteStore.save), which fences a replica
        that wakes up after losing the lease.
        """
        with self._locked() as state:
            if state.get("owner") != self.owner or state.get("generation") != self.generation:
                raise LeaseLost(f"checkpoint write refused: task {self.task}'s lease is held by {state.get('owner')}")
            if state.get("expires_at", 0) <= time.time():
                raise LeaseLost(f"checkpoint write refused: the lease of task {self.task} expired")
        yield self.generation


class LeaseGuard:
    """Tracks the local deadline of a held lease and renews it."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.deadline = 0.0
        self.lost: str = ""

    def acquired(self, sent_at: float) -> None:
        self.deadline = sent_at + self.lease.duration

    def valid(self) -> bool:
        return not self.lost and time.monotonic() < self.deadline

    def check(self) -> None:
        """Raise LeaseLost unless the lease is certainly still ours."""
        if self.lost:
            raise LeaseLost(self.lost)
        if time.monotonic() >= self.deadline:
            self.lost = f"the lease of this replica passed its deadline ({self.lease.duration:g}s without a renewal)"
            raise LeaseLost(self.lost)

    def renew_once(self) -> None:
        sent_at = time.monotonic()
        if sent_at >= self.deadline:
            self.check()
        try:
            self.lease.renew()
        except LeaseLost as exc:
            self.lost = str(exc)
            raise
        except Exception as exc:  # noqa: BLE001 - a backend hiccup: the deadline decides
            if time.monotonic() >= self.deadline:
                self.lost = f"could not renew the lease before its deadline: {exc}"
                raise LeaseLost(self.lost) from None
            return
        self.deadline = sent_at + self.lease.duration
