"""What the host gives a running provider: stop signal, logger, commits, metrics."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from dstream import protocol

__all__ = ["Context"]


class Context:
    """What the host gives a running provider: stop signal, logger, commit queue."""

    def __init__(self, name: str) -> None:
        self.task: str | None = None  # the dstream task running this provider, when told
        self.command = "run"  # the verb: run, check, init, plan, status, destroy or snapshot
        # The task's last persisted checkpoint, the one its input resumes from (None on a first
        # run). Every stage gets it, so an output can derive ids that are the same on a replay.
        self.checkpoint: Any = None
        self.stopping = threading.Event()
        self.log = logging.getLogger(name)
        self._committed: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._before_sleep: list[Any] = []
        self._on_committed: Any = None
        self._stdout: Any = None
        self._gauges = False  # the orchestrator accepts {"gauge": …} lines

    def write_stdout(self, data: bytes) -> None:
        """Print user-facing bytes on stdout, in order with the protocol lines.

        For outputs like the console provider: the orchestrator passes such lines through
        to its own stdout. Never print to ``sys.stdout`` directly from a provider.
        """
        self._stdout(data)

    def gauge(self, name: str, value: float, **labels: str) -> None:
        """Report a provider metric, e.g. ``ctx.gauge("lag_seconds", 1.5, table="dbo.Orders")``.

        dstream exports it as the Prometheus gauge ``dstream_provider_<name>`` with the
        task, the stage and these labels, and shows it in ``dstream run``'s status. Under
        an orchestrator that does not accept gauges (upstream's) this does nothing, since
        such a line would be relayed as data there.
        """
        if self._gauges:
            self._stdout(protocol.gauge(name, float(value), {k: str(v) for k, v in labels.items()}))

    def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; False when the provider should stop instead.

        Buffered output is flushed and pending commits are delivered first, so a provider
        that waits through ``ctx.sleep`` keeps latency low and releases source resources.
        """
        for hook in self._before_sleep:
            hook()
        self.deliver_commits()
        return not self.stopping.wait(seconds) if seconds > 0 else not self.stopping.is_set()

    @property
    def should_stop(self) -> bool:
        return self.stopping.is_set()

    @property
    def receives_commits(self) -> bool:
        """The host delivers ``committed`` positions to the input's ``on_committed``."""
        return self._on_committed is not None

    def deliver_commits(self) -> None:
        if self._on_committed is None or self._committed.empty():
            return
        while True:
            try:
                position = self._committed.get_nowait()
            except queue.Empty:
                return
            self._on_committed(position)
