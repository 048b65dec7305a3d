"""The live status of ``dstream run``: a status line on a terminal, log lines otherwise."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from dstream import log

if TYPE_CHECKING:
    from dstream.task.progress import Progress, Source

_log = log.get("status")


def _log_every() -> float:
    """Seconds between status log lines when not on a terminal ($DSTREAM_STATUS_EVERY, default 30)."""
    try:
        return max(float(os.environ.get("DSTREAM_STATUS_EVERY", "30")), 0.5)
    except ValueError:
        return 30.0


def human_size(n: float) -> str:
    """Bytes as rich (and docker, and most tools) print them: decimal units, "1.5 MB".
    The one function for sizes shown to a user: the live line and the summary agree."""
    from rich.filesize import decimal

    return decimal(int(n))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "none yet"
    if seconds < 60:
        return f"{seconds:.1f}s ago"
    return f"{seconds / 60:.0f}m ago"


def describe(progress: Progress, rate: float, byte_rate: float) -> str:
    parts = [
        f"{progress.envelopes:,} envelopes ({human_size(progress.bytes)})",
        f"{rate:,.0f}/s ({human_size(byte_rate)}/s)",
        f"delivered {progress.delivered:,}",
        f"checkpoint {_age(progress.last_checkpoint_age)}",
    ]
    if progress.store_stalled is not None:
        parts.append(f"checkpoint store not answering for {progress.store_stalled:.0f}s")
    if progress.waiting_for_output:
        parts.append("waiting for the output")
    if progress.dead_letters:
        parts.append(f"{progress.dead_letters} dead-lettered")
    if progress.restarts:
        parts.append(f"{progress.restarts} restart(s)")
    providers = ", ".join(f"{role} {state}" for role, state in progress.providers.items())
    if providers:
        parts.append(providers)
    if progress.lease:
        parts.append(f"lease {progress.lease}")
    return " · ".join(parts)


class StatusReporter:
    """Samples the run twice a second; draws a line on a terminal or logs every 30 s (by default)."""

    def __init__(self, run: Source, live: bool | None = None) -> None:
        self.run = run
        self.live = sys.stderr.isatty() if live is None else live
        self._console: Any = None
        self._live: Any = None

    def stdout_sink(self) -> Any:
        """Where the output's passthrough goes: above the status line when both are on one terminal."""
        if self.live and sys.stdout.isatty():
            return _ConsoleSink(self)
        return sys.stdout.buffer

    async def report(self) -> None:
        last = self.run.progress()
        every = _log_every()
        last_time = time.monotonic()
        last_log = last_time
        if self.live:
            from rich.live import Live

            self._console = log.stderr_console()
            self._live = Live(console=self._console, transient=True, refresh_per_second=4)
            self._live.start()
        try:
            while True:
                await asyncio.sleep(0.5)  # the display's refresh period
                progress = self.run.progress()
                now = time.monotonic()
                elapsed = max(now - last_time, 1e-6)
                rate = (progress.envelopes - last.envelopes) / elapsed
                byte_rate = (progress.bytes - last.bytes) / elapsed
                line = f"{progress.task} {progress.state}: " + describe(progress, rate, byte_rate)
                if self._live is not None:
                    from rich.text import Text

                    self._live.update(Text(line, style="dim" if progress.state == "standby" else ""))
                elif now - last_log >= every and progress.state in ("running", "standby"):
                    _log.info("%s", line)
                    last_log = now
                last, last_time = progress, now
        finally:
            if self._live is not None:
                self._live.stop()

    def print_above(self, data: bytes) -> None:
        if self._console is not None:
            self._console.out(data.decode("utf-8", "replace"), end="", highlight=False)
        else:
            sys.stdout.buffer.write(data)


class _ConsoleSink:
    """A file-like stdout that prints through the live display."""

    def __init__(self, reporter: StatusReporter) -> None:
        self.reporter = reporter

    def write(self, data: bytes) -> int:
        self.reporter.print_above(data)
        return len(data)

    def flush(self) -> None:
        sys.stdout.flush()
