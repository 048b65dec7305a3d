"""``dstream run --detach``: the same run again in the background, its output through a log
writer (:mod:`dstream.task.logwriter`) into ``.dstream/logs/TASK.log`` beside the task file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dstream import private
from dstream.errors import DStreamError
from dstream.runtime import pids
from dstream.state.base import DEFAULT_STATE_DIR
from dstream.task import logwriter
from dstream.task.runs import RunRecord, now, records, refuse_second, write

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import IO

    from dstream.config.models import Document


def task_log(document: Document, task: str) -> Path:
    return document.base_dir / DEFAULT_STATE_DIR / "logs" / f"{private.file_name(task)}.log"


@contextlib.contextmanager
def _locked_log(document: Document, task: str) -> Iterator[tuple[Path, IO[bytes]]]:
    """The task's log, opened and exclusively locked for a new detached run.

    The lock is taken here, before the run starts, and inherited by the log writer: `logs -f`
    follows while it is held, from the first moment on (flock belongs to the open file). A
    standby replica of a task with a lease finds the log held by the active run and writes
    ``TASK.2.log`` (then ``.3`` …) instead of waiting for it.
    """
    first = task_log(document, task)
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


def start(document: Document, task: str, argv: list[str]) -> RunRecord:
    """Start ``dstream run`` again without --detach, in the background: its output goes
    through a log writer (:mod:`dstream.task.logwriter`) that stamps each line into the log."""
    # Refused here, as a foreground run would be, rather than by the run in the background
    # (where nobody would see it) or by waiting on the first run's log lock.
    refuse_second(document, task, records())
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
        task, proc.pid, str(document.path), now(), str(log_path), detached=True, pid_started=pids.started_at(proc.pid)
    )
    write(record)
    return record
