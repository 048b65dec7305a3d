"""The log of a detached run: every line its ``dstream run`` prints, with the time it arrived.

``python -m dstream.task.logwriter`` reads the run's stdout and stderr (one pipe) and
appends each line to the log file on its own stdout as ``<RFC 3339 UTC time> <line>``, the
way the docker engine keeps a container's log. ``dstream logs`` shows the lines as printed,
or with the times (``-t``). A separate process, so that a ``kill -9`` of the run loses
nothing it printed: the pipe still holds it and the writer drains it before it exits.

The writer holds an exclusive ``flock`` on the log file (taken by ``detach.start``
before the run begins and inherited), so ``dstream logs -f`` knows that more may come.
"""

from __future__ import annotations

import os
import signal
import sys
import time

STAMP_WIDTH = 31  # "2026-01-02T03:04:05.123456789Z "


def stamp(ns: int | None = None) -> bytes:
    """Docker's ``--timestamps`` form: RFC 3339 in UTC with nanoseconds."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode() + b".%09dZ " % fraction


def strip(line: bytes) -> bytes:
    """A stored line without its time (lines of older logs, with none, are left alone)."""
    if len(line) > STAMP_WIDTH and line[4:5] == b"-" and line[STAMP_WIDTH - 2 : STAMP_WIDTH] == b"Z ":
        return line[STAMP_WIDTH:]
    return line


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run decides when it ends: then the pipe closes
    source, sink = sys.stdin.fileno(), sys.stdout.fileno()
    pending = b""
    while True:
        chunk = os.read(source, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        if lines:
            now = stamp()
            _write(sink, b"".join(now + line + b"\n" for line in lines))
    if pending:
        _write(sink, stamp() + pending + b"\n")
    os.fsync(sink)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    main()
