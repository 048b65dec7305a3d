"""The one poll helper of the suite: wait for a condition, with a deadline.

A measurement, not a race fix: a test that waits here states what it is waiting for, and
fails with that name when it does not happen in time (or when the process it watches exits).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable

WAIT_LIMIT = 120.0


def wait_until(
    condition: Callable[[], bool],
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = WAIT_LIMIT,
    interval: float = 0.02,
) -> None:
    """Poll ``condition`` until it holds; fail clearly on timeout, or when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"dstream exited ({proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
