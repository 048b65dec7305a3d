"""``dstream logs``: a detached run's log as ``docker logs`` shows one (the last lines, the
times each line arrived, following while the run's log writer holds the file)."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dstream.errors import DStreamError
from dstream.task import logwriter
from dstream.task.detach import task_log
from dstream.task.runs import records

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

    from dstream.config.models import Document


def log_path(task: str, document: Document | None) -> Path:
    for record in records():
        if record.task == task and record.log:
            return Path(record.log)
    if document is not None:
        path = task_log(document, task)
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
                    time.sleep(0.2)  # polling period while the writer holds the log
                    continue
                chunk = f.read()  # what arrived before the writer let go
                if not chunk:
                    break
            *lines, pending = (pending + chunk).split(b"\n")
            if lines:
                out(b"".join(shown(line) + b"\n" for line in lines))
        if pending:
            out(shown(pending))
