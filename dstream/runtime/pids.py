"""Is a process still the one we mean? psutil, with the start time against pid reuse.

dstream records its pid *and* that process's start time wherever another process will
later judge whether it is still running (container labels, run records): a recycled pid
then never passes for the dstream that is gone.
"""

from __future__ import annotations

import os

import psutil

# Start times are floats from /proc (clock ticks): equal within this much is the same process.
_SAME_START = 0.05


def started_at(pid: int | None = None) -> float | None:
    """When the process ``pid`` (default: this one) started, as a Unix time; None if it is gone."""
    try:
        return float(psutil.Process(pid or os.getpid()).create_time())
    except psutil.NoSuchProcess:
        return None


def alive(pid: int, started: float | None = None) -> bool:
    """The process exists, is not a zombie, and (when ``started`` is known) is the same one."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if started is not None and abs(proc.create_time() - started) > _SAME_START:
            return False  # the pid was reused by another process
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists; not ours to inspect
    return True
