"""How a provider's exit status reads in a message."""

from __future__ import annotations

# Exit statuses of a provider stopped on purpose (SIGTERM/SIGKILL, as a signal or 128+n).
STOPPED_CODES = (-15, 143, -9, 137)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by signal {-code}"
    if code in (137, 143):
        return f"exited with code {code} (killed by signal {code - 128})"
    return f"exited with code {code}"
