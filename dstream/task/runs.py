"""The runs of dstream on this machine: a record per running ``dstream run`` (for ``ps``,
``logs``, ``stop``), and the rule that a task without a lease runs once.

Records live in ``$DSTREAM_RUNS_DIR`` (default ``$XDG_STATE_HOME/dstream/runs``, that is
``~/.local/state/dstream/runs``), one JSON file per process, removed when the run ends;
a record whose process is gone is stale and ignored (and cleaned up).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dstream import private
from dstream.errors import DStreamError
from dstream.paths import state_dir
from dstream.runtime import pids

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dstream.config.models import Document


@dataclass
class RunRecord:
    task: str
    pid: int
    file: str
    started: str
    log: str | None = None
    detached: bool = False
    pid_started: float | None = None  # the process's start time: a recycled pid is not this run

    def alive(self) -> bool:
        return pids.alive(self.pid, self.pid_started)


def runs_dir() -> Path:
    configured = os.environ.get("DSTREAM_RUNS_DIR")
    if configured:
        return Path(configured)
    return state_dir() / "runs"


def records() -> list[RunRecord]:
    out = []
    folder = runs_dir()
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            record = RunRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if record.alive():
            out.append(record)
        else:
            path.unlink(missing_ok=True)
    return out


def write(record: RunRecord) -> Path:
    path = private.make_dirs(runs_dir()) / f"{record.pid}.json"
    private.write_atomically(path, json.dumps(asdict(record)))
    return path


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def refuse_second(document: Document, task: str, current: list[RunRecord]) -> None:
    """A second run of a task without a lease would write the same checkpoint: refuse it."""
    file = str(document.path)
    others = [r for r in current if r.task == task and r.file == file and r.pid != os.getpid()]
    if others and document.task(task).lease is None:
        raise DStreamError(
            f"task {task} of {file} is already running (pid {others[0].pid}); two runs would both write its "
            f"checkpoint. Stop it (dstream stop {task}), or add a lease block to run standby replicas."
        )


@contextlib.contextmanager
def registered(document: Document, task: str) -> Iterator[RunRecord]:
    """Record this process as running ``task``; refuse a second one unless the task has a lease."""
    current = records()
    refuse_second(document, task, current)
    mine = [r for r in current if r.pid == os.getpid()]
    record = RunRecord(
        task,
        os.getpid(),
        str(document.path),
        now(),
        mine[0].log if mine else None,
        bool(mine and mine[0].detached),
        pids.started_at(),
    )
    path = write(record)
    try:
        yield record
    finally:
        path.unlink(missing_ok=True)


def find(task: str) -> list[RunRecord]:
    found = [r for r in records() if r.task == task]
    if not found:
        raise DStreamError(f"no run of task {task} on this machine (dstream ps lists them)")
    return found


def stop(task: str, timeout: float = 60.0) -> list[tuple[RunRecord, bool]]:
    """SIGTERM every run of ``task`` (a graceful stop) and wait; (record, stopped) pairs."""
    found = find(task)
    # All at once: stopping replicas one by one would hand the lease to the next in line.
    for record in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(r.alive() for r in found) and time.monotonic() < deadline:
        time.sleep(0.1)  # waiting for the processes to finish their graceful stop
    return [(record, not record.alive()) for record in found]
