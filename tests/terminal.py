"""Running dstream on a pseudo-terminal, as a user at a shell would."""

from __future__ import annotations

import os
import pty
import select
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def on_a_terminal(
    args: list[str], *, stdout: Path | None = None, answer: bytes | None = None, timeout: float = 60
) -> tuple[int, str]:
    """``dstream ARGS`` with stdin and stderr (and stdout, unless redirected to ``stdout``) on a
    pseudo-terminal, typing ``answer`` at the first "Enter a value" prompt; (exit code, terminal text)."""
    out = stdout.open("wb") if stdout is not None else None
    try:
        pid, fd = pty.fork()
        if pid == 0:  # the child
            if out is not None:
                os.dup2(out.fileno(), 1)
            os.execv(sys.executable, [sys.executable, "-m", "dstream", *args])  # noqa: S606
    finally:
        if out is not None:
            out.close()
    seen, answered = b"", answer is None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if not answered and b"Enter a value" in seen:
                assert answer is not None
                os.write(fd, answer + b"\n")
                answered = True
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")
