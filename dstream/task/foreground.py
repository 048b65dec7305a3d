"""``dstream run`` in the foreground: one event loop, SIGINT/SIGTERM wired to a graceful
stop, the status line, and the metrics endpoint when asked for."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING

from dstream import log
from dstream.errors import RuntimeFailure
from dstream.task.runner import RunSummary, TaskRun

if TYPE_CHECKING:
    from dstream.config.models import Document
    from dstream.distribution.options import LaunchOptions

_log = log.get("run")


def run_task(
    document: Document,
    task_name: str,
    options: LaunchOptions | None = None,
    progress: bool | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> RunSummary:
    """Run a task in a fresh event loop, with SIGINT/SIGTERM wired to a graceful stop.

    ``progress``: a live status line (None: when stderr is a terminal; log lines otherwise).
    ``metrics_port``: serve Prometheus metrics and /healthz on that port, on ``metrics_host``.
    """
    from dstream.task.statusline import StatusReporter

    async def main() -> RunSummary:
        runner = TaskRun(document, task_name, options)
        reporter = StatusReporter(runner, live=progress if progress is not None else None)
        runner.stdout = reporter.stdout_sink()
        server = None
        if metrics_port is not None:
            from dstream.task.metrics import MetricsServer

            try:
                server = MetricsServer(runner, metrics_port, metrics_host)
            except OSError as exc:
                where = f"{metrics_host}:{metrics_port}"
                raise RuntimeFailure(f"cannot serve metrics on {where}: {exc.strerror or exc}") from None
            server.start()
            shown = f"[{metrics_host}]" if ":" in metrics_host else metrics_host
            _log.info("metrics on http://%s:%d/metrics (health: /healthz)", shown, server.port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runner.request_stop)
        status = asyncio.create_task(reporter.report())
        try:
            summary = await runner.run()
            runner.state = "finished"
            return summary
        except BaseException:
            runner.state = "failed"
            raise
        finally:
            status.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if server is not None:
                server.stop()

    return asyncio.run(main())
