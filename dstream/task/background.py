"""Runs on this machine: a record per running ``dstream run`` (for ps, logs, stop), and
``--detach`` to start one in the background with its output in a log file.

Records live in ``$DSTREAM_RUNS_DIR`` (default ``$XDG_STATE_HOME/dstream/runs``, that is
``~/.local/state/dstream/runs``), one JSON file per process, removed when the run ends;
a record whose process is gone is stale and ignored (and cleaned up).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dstream import private
from dstream.errors import DStreamError
from dstream.paths import state_dir
from dstream.runtime import pids
from dstream.state.base import DEFAULT_STATE_DIR
from dstream.task import logwriter

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import IO, BinaryIO

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


def _write(record: RunRecord) -> Path:
    path = private.make_dirs(runs_dir()) / f"{record.pid}.json"
    private.write_atomically(path, json.dumps(asdict(record)))
    return path


def _log_file(document: Document, task: str) -> Path:
    return document.base_dir / DEFAULT_STATE_DIR / "logs" / f"{private.file_name(task)}.log"


@contextlib.contextmanager
def _locked_log(document: Document, task: str) -> Iterator[tuple[Path, IO[bytes]]]:
    """The task's log, opened and exclusively locked for a new detached run.

    The lock is taken here, before the run starts, and inherited by the log writer: `logs -f`
    follows while it is held, from the first moment on (flock belongs to the open file). A
    standby replica of a task with a lease finds the log held by the active run and writes
    ``TASK.2.log`` (then ``.3`` …) instead of waiting for it.
    """
    first = _log_file(document, task)
    for n in range(1, 100):
        path = first if n == 1 else first.with_name(f"{first.stem}.{n}.log")
        log_file = private.open_append(path)
        try:
            fcntl.flock(log_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log_file.close()
            continue
        with log_file:
            yield path, log_file
        return
    raise DStreamError(f"every log of task {task} in {first.parent} is held by a running dstream")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _refuse_second(document: Document, task: str, current: list[RunRecord]) -> None:
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
    _refuse_second(document, task, current)
    mine = [r for r in current if r.pid == os.getpid()]
    record = RunRecord(
        task,
        os.getpid(),
        str(document.path),
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
    """Start ``dstream run`` again without --detach, in the background: its output goes
    through a log writer (:mod:`dstream.task.logwriter`) that stamps each line into the log."""
    # Refused here, as a foreground run would be, rather than by the run in the background
    # (where nobody would see it) or by waiting on the first run's log lock.
    _refuse_second(document, task, records())
    args = [a for a in argv if a not in ("--detach", "-d")]
    env = {**os.environ, "DSTREAM_DETACHED": "1"}
    with _locked_log(document, task) as (log_path, log_file):
        log_file.write(logwriter.stamp() + f"==== dstream {' '.join(args)}\n".encode())
        log_file.flush()
        writer = subprocess.Popen(
            [sys.executable, "-m", "dstream.task.logwriter"],
            stdin=subprocess.PIPE,
            stdout=log_file,
            stderr=subprocess.DEVNULL,
            cwd=Path.cwd(),
            start_new_session=True,
            env=env,
        )
    assert writer.stdin is not None
    with writer.stdin:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dstream", "--log-format", "text", *args],
            stdin=subprocess.DEVNULL,
            stdout=writer.stdin,
            stderr=subprocess.STDOUT,
            cwd=Path.cwd(),
            start_new_session=True,  # survives this shell; Ctrl-C here does not reach it
            env=env,
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


def _writing(log: BinaryIO) -> bool:
    """Whether a log writer still holds the log (a detached run may print more)."""
    try:
        fcntl.flock(log, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(log, fcntl.LOCK_UN)
    return False


def _tail_offset(f: BinaryIO, lines: int) -> int:
    """Where the last ``lines`` lines of the file start, reading backwards in blocks."""
    end = f.seek(0, os.SEEK_END)
    position, found, block = end, 0, 65536
    while position > 0:
        size = min(block, position)
        position -= size
        f.seek(position)
        data = f.read(size)
        if position + size == end and data.endswith(b"\n"):
            data = data[:-1]  # the newline that ends the last line
        index = len(data)
        while True:
            index = data.rfind(b"\n", 0, index)
            if index < 0:
                break
            found += 1
            if found == lines:
                return position + index + 1
    return 0


def show(path: Path, out: Callable[[bytes], None], tail: int | None, timestamps: bool, follow: bool) -> None:
    """``dstream logs``: the last ``tail`` lines (all when None), with their times or without,
    then (``follow``) what is appended until the run's log writer is done."""

    def shown(line: bytes) -> bytes:
        return line if timestamps else logwriter.strip(line)

    with path.open("rb") as f:
        if tail is not None:
            f.seek(_tail_offset(f, tail) if tail > 0 else f.seek(0, os.SEEK_END))
        pending = b""
        while True:
            chunk = f.read(65536)
            if not chunk:
                if follow and _writing(f):
                    time.sleep(0.2)  # tail -f's polling period
                    continue
                chunk = f.read()  # what arrived before the writer let go
                if not chunk:
                    break
            *lines, pending = (pending + chunk).split(b"\n")
            if lines:
                out(b"".join(shown(line) + b"\n" for line in lines))
        if pending:
            out(shown(pending))
