"""Fault injection helpers: run a task, kill something at a chosen point, check the output.

The output is a file written by file-output-provider; every counter value must appear in
it. Duplicates are allowed only after a kill -9 (at-least-once), never after SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from tests.waiting import WAIT_LIMIT
from tests.waiting import wait_until as wait_until  # noqa: PLC0414 - re-exported: many tests import it from here

if TYPE_CHECKING:
    from pathlib import Path


@dataclass
class Delivery:
    values: list[int]

    @property
    def missing(self) -> list[int]:
        seen = set(self.values)
        top = max(seen) if seen else 0
        return [v for v in range(1, top + 1) if v not in seen]

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in Counter(self.values).values() if n > 1)


def read_output(path: Path) -> Delivery:
    values = []
    if path.exists():
        for line in path.read_bytes().splitlines():
            values.append(json.loads(line)["data"]["value"])
    return Delivery(values)


def line_count(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def start_run(task: str, hcl: Path, extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dstream", "run", task, "-f", str(hcl), *(extra or [])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def provider_pid(proc: subprocess.Popen[bytes], name: str) -> int:
    """The pid of a local provider process started by dstream (by its command line)."""
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if any(name in part for part in child.cmdline()):
                return int(child.pid)
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no child process named {name}")


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def gone(process: psutil.Process) -> bool:
    """Exited (a zombie waiting for its parent to reap it counts as exited)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def finish(proc: subprocess.Popen[bytes], timeout: float = WAIT_LIMIT) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode()


def slow_file_output(batch_size: int, pause: float) -> str:
    """A file output provider script that sleeps ``pause`` seconds per batch of ``batch_size``:
    a slow sink, so that a run is still in the middle of its work when a test kills it."""
    return f"""
import time
from dstream_file.output import FileOutputProvider

class Slow(FileOutputProvider):
    batch_size = {batch_size}

    def write(self, batch):
        time.sleep({pause})
        super().write(batch)

Slow.main()
"""
