"""Progress for image pulls: live bars on stderr when it is a terminal, a few log lines otherwise.

The bars are drawn on the stderr console the status line shares (``log.stderr_console``),
never on stdout, which carries the output provider's data (``dstream run t > out.jsonl``).
``live=False`` (``--no-progress``) keeps only the log lines.
"""

from __future__ import annotations

import time
from typing import Any

from rich.filesize import decimal

from dstream import log

_log = log.get("pull")


class PullProgress:
    def __init__(self, image: str, live: bool | None = None) -> None:
        self.image = image
        self._live = log.stderr_console().is_terminal if live is None else live
        self._layers: dict[str, tuple[int, int]] = {}
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._last_log = 0.0

    def __enter__(self) -> PullProgress:
        if self._live:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                console=log.stderr_console(),
                transient=True,
                redirect_stdout=False,  # stdout is data: never route it through the display
                redirect_stderr=False,
            )
            self._progress.start()
        _log.info("pulling %s", self.image)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
        if exc[0] is None:
            _log.info("pulled %s", self.image)

    def event(self, event: dict[str, Any]) -> None:
        layer = event.get("id")
        detail = event.get("progressDetail") or {}
        if not layer or "total" not in detail:
            return
        current, total = int(detail.get("current", 0)), int(detail["total"])
        self._layers[layer] = (current, total)
        if self._progress is not None:
            if layer not in self._tasks:
                self._tasks[layer] = self._progress.add_task(f"{layer} {event.get('status', '')}", total=total)
            self._progress.update(self._tasks[layer], completed=current, total=total)
        elif time.monotonic() - self._last_log > 5:
            self._last_log = time.monotonic()
            done = sum(c for c, _ in self._layers.values())
            whole = sum(t for _, t in self._layers.values()) or 1
            _log.info("pulling %s: %d%% of %s", self.image, 100 * done // whole, decimal(whole))
