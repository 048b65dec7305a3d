"""Runs on this machine: a record per running ``dstream run`` (for ps, logs, stop), and
``--detach`` to start one in the background with its output in a log file.

Records live in ``$DSTREAM_RUNS_DIR`` (default ``~/.local/state/dstream/runs``), one JSON
file per process, removed when the run ends; a record whose process is gone is stale and
ignored (and cleaned up).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dstream.errors import DStreamError
from dstream.runtime import pids
from dstream.state.base import DEFAULT_STATE_DIR

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

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
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "dstream" / "runs"


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


def _write(record: RunRecord) -> Path:
    folder = runs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record.pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(path)
    return path


def _log_file(document: Document, task: str) -> Path:
    return document.base_dir / DEFAULT_STATE_DIR / "logs" / f"{task}.log"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextlib.contextmanager
def registered(document: Document, task: str) -> Iterator[RunRecord]:
    """Record this process as running ``task``; refuse a second one unless the task has a lease."""
    file, current = str(document.path), records()
    others = [r for r in current if r.task == task and r.file == file and r.pid != os.getpid()]
    if others and document.task(task).lease is None:
        raise DStreamError(
            f"task {task} of {file} is already running (pid {others[0].pid}); two runs would both write its "
            f"checkpoint. Stop it (dstream stop {task}), or add a lease block to run standby replicas."
        )
    mine = [r for r in current if r.pid == os.getpid()]
    record = RunRecord(
        task,
        os.getpid(),
        file,
        _now(),
        mine[0].log if mine else None,
        bool(mine and mine[0].detached),
        pids.started_at(),
    )
    path = _write(record)
    try:
        yield record
    finally:
        path.unlink(missing_ok=True)


def start(document: Document, task: str, argv: list[str]) -> RunRecord:
    """Start ``dstream run`` again without --detach, in the background, logging to a file."""
    args = [a for a in argv if a not in ("--detach", "-d")]
    log_path = _log_file(document, task)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        log_file.write(f"\n==== {_now()} dstream {' '.join(args)}\n".encode())
        log_file.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "dstream", "--log-format", "text", *args],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=Path.cwd(),
            start_new_session=True,  # survives this shell; Ctrl-C here does not reach it
            env={**os.environ, "DSTREAM_DETACHED": "1"},
        )
    record = RunRecord(
        task, proc.pid, str(document.path), _now(), str(log_path), detached=True, pid_started=pids.started_at(proc.pid)
    )
    _write(record)
    return record


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


def log_path(task: str, document: Document | None) -> Path:
    for record in records():
        if record.task == task and record.log:
            return Path(record.log)
    if document is not None:
        path = _log_file(document, task)
        if path.exists():
            return path
    raise DStreamError(f"no log for task {task}: only runs started with --detach write one")


def follow(path: Path, task: str, out: Callable[[bytes], None]) -> None:
    """Print the log, then what is appended to it until no run of the task is left."""
    with path.open("rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                out(chunk)
                continue
            if not any(r.task == task for r in records()):
                out(f.read())
                return
            time.sleep(0.2)  # tail -f's polling period
