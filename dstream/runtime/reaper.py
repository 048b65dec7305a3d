"""Removes a dstream process's provider containers when it dies without doing so (kill -9).

Like testcontainers' Ryuk, something must outlive the process that started the containers.
Here it is a small process of its own session, started by the first container a dstream
process starts: it holds the read end of a pipe whose write end only that dstream holds.
The kernel closes the write end when dstream exits, for any reason, kill -9 included; the
reaper then removes the containers labelled with that dstream's instance id (one random id
per dstream process; containers of an older dstream: its host, pid *and* start time), never
another run's, even one that reuses the pid, and exits. After a clean exit there is
nothing left to remove. Unlike Ryuk it needs no image and no Docker socket inside a
container. A dstream that itself runs in a container (a deployed orchestrator) starts none:
the reaper would die with it, and the next active replica removes such leftovers instead.

    python -m dstream.runtime.reaper PID STARTED INSTANCE      (stdin: the pipe)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

_lock = threading.Lock()
_pipe: int | None = None  # the write end: kept open for this process's lifetime
_process: subprocess.Popen[bytes] | None = None


def ensure_started() -> None:
    """Start this process's reaper, once."""
    global _pipe, _process  # noqa: PLW0603 - one reaper per process
    if os.environ.get("DSTREAM_IN_CONTAINER") or os.environ.get("DSTREAM_OWNER_CONTAINER"):
        return
    with _lock:
        if _pipe is not None:
            return
        from dstream.runtime import pids
        from dstream.runtime.leftovers import INSTANCE

        read_end, write_end = os.pipe()
        try:
            _process = subprocess.Popen(
                [sys.executable, "-m", "dstream.runtime.reaper", str(os.getpid()), repr(pids.started_at()), INSTANCE],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C on the terminal is not for it
                close_fds=True,
            )
        finally:
            os.close(read_end)
        os.set_inheritable(write_end, False)  # providers started later must not hold it open
        _pipe = write_end


def reap(pid: int, started: str, instance: str = "") -> int:
    """Remove the containers of the dstream process ``instance`` (``pid`` started at ``started``)."""
    from dstream.errors import DStreamError
    from dstream.runtime.docker import DockerEngine
    from dstream.runtime.leftovers import LABEL_HOST, LABEL_INSTANCE, LABEL_PID, LABEL_PID_STARTED

    engine = DockerEngine()
    removed = 0
    try:
        for info in engine.dstream_containers():
            labels = info.get("Labels") or {}
            if LABEL_INSTANCE in labels:
                mine = bool(instance) and labels[LABEL_INSTANCE] == instance
            else:
                owner = (labels.get(LABEL_HOST), labels.get(LABEL_PID), labels.get(LABEL_PID_STARTED))
                mine = owner == (socket.gethostname(), str(pid), started)
            if mine:
                engine.remove(info["Id"])
                removed += 1
    except DStreamError:
        return 1  # no engine: nothing we can do; the next run of the task removes them
    return removed


def main() -> None:
    pid, started = int(sys.argv[1]), sys.argv[2]
    instance = sys.argv[3] if len(sys.argv) > 3 else ""
    while os.read(0, 4096):  # nothing is ever written: this returns at end-of-file
        pass
    reap(pid, started, instance)


if __name__ == "__main__":
    main()
