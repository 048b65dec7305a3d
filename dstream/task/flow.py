"""What the hops of an attempt report, turned into ledger entries, the input's window,
gauges and acks: the :class:`~dstream.relay.hop.HopEvents` of a pipeline."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dstream import log
from dstream.task.failures import short

if TYPE_CHECKING:
    from dstream.relay.hop import Hop
    from dstream.relay.ledger import CheckpointLedger
    from dstream.state.lease import LeaseGuard
    from dstream.task.persister import Persister

_log = log.get("relay")


@dataclass
class AttemptStats:
    """Counts of one attempt, read by the status line and the metrics (nothing on the hot path)."""

    started: float = field(default_factory=time.monotonic)
    envelopes: int = 0  # read from the input
    bytes: int = 0
    delivered: int = 0  # input envelopes covered by an acknowledged checkpoint
    delivered_bytes: int = 0
    checkpoints: int = 0
    persisted: int = 0
    dead_letters: int = 0
    last_persist: float | None = None
    paused: float = 0.0  # seconds the input spent waiting for the output (window full)
    waiting: bool = False  # paused right now
    stage_envelopes: dict[str, int] = field(default_factory=dict)  # data lines out of each stage
    stage_dead_letters: dict[str, int] = field(default_factory=dict)  # lines of each stage set aside
    store_stalled_since: float | None = None  # a checkpoint write has waited on the store since


Gauges = dict[tuple[str, str, tuple[tuple[str, str], ...]], float]
# Provider gauges are kept per distinct (stage, name, labels) for every scrape: a provider
# that labels by key or LSN would grow memory and each scrape without bound.
MAX_SERIES_PER_STAGE = 1000
MAX_LABELS = 10
MAX_TEXT = 128  # characters in a gauge name, a label name or a label value


class PipelineEvents:
    def __init__(
        self,
        *,
        ledger: CheckpointLedger,
        persister: Persister,
        stats: AttemptStats,
        guard: LeaseGuard | None,
        last_hop: int,
        output_acks: bool,
        max_in_flight: int,
    ) -> None:
        self.ledger = ledger
        self.persister = persister
        self.stats = stats
        self.guard = guard
        self.last_hop = last_hop
        self.output_acks = output_acks
        self.max_in_flight = max_in_flight
        self.gauges: Gauges = {}
        self._series: dict[str, int] = {}  # gauge series per stage
        self._window = asyncio.Event()
        self._warned: set[str] = set()

    async def gate(self, hop: Hop) -> None:
        """The input's hop waits while the in-flight window is full."""
        if hop.index != 0:
            return
        first = hop.stats
        state = self.ledger.window(first.envelopes, first.bytes)
        if state == "open":
            return
        if state == "unenforceable":
            if "window" not in self._warned:
                self._warned.add("window")
                _log.warning(
                    "%d envelopes are in flight with no checkpoint to acknowledge; the in-flight "
                    "window cannot be enforced (the input emits checkpoints too rarely, or the "
                    "output does not ack). Backpressure still applies.",
                    first.envelopes - self.ledger.acked_envelopes,
                )
            return
        started = time.monotonic()
        if "paused" not in self._warned:
            self._warned.add("paused")
            _log.info(
                "the output is behind: pausing the input (%d envelopes in flight, max_in_flight %d)",
                first.envelopes - self.ledger.acked_envelopes,
                self.max_in_flight,
            )
        self.stats.waiting = True
        while self.ledger.window(first.envelopes, first.bytes) == "full":
            self._window.clear()
            await self._window.wait()
        self.stats.waiting = False
        self.stats.paused += time.monotonic() - started

    def before_write(self, hop: Hop, checkpoints: list[tuple[Any, int, int]]) -> None:
        if self.guard is not None:
            self.guard.check()  # never relay once the lease may be someone else's
        if hop.index == 0:
            for value, envelopes, nbytes in checkpoints:
                self.ledger.emitted(value, envelopes, nbytes)
        else:
            for value, _, _ in checkpoints:
                self.ledger.passed(hop.index, value)

    def after_write(self, hop: Hop, checkpoints: list[tuple[Any, int, int]]) -> None:
        if self.output_acks or hop.index != self.last_hop:
            return
        # A legacy output never acks: count data handed over as delivered (weaker).
        if "legacy-ack" not in self._warned:
            self._warned.add("legacy-ack")
            _log.warning(
                "the output does not acknowledge checkpoints; checkpoints are saved once data is "
                "handed to it (at-most-once for what it had not written when it stops)"
            )
        for value, _, _ in checkpoints:
            self.on_ack(value)

    def gauge(self, hop: Hop, value: Any) -> None:
        self.record_gauge(hop.role, value)

    def record_gauge(self, role: str, value: Any) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return
        try:
            number = float(value.get("value"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
        raw_labels = value.get("labels")
        labels = tuple(sorted((str(k), str(v)) for k, v in raw_labels.items())) if isinstance(raw_labels, dict) else ()
        key = (role, value["name"], labels)
        if key in self.gauges:
            self.gauges[key] = number
            return
        texts = [value["name"], *(text for pair in labels for text in pair)]
        if len(labels) > MAX_LABELS or max(map(len, texts)) > MAX_TEXT:
            self._drop_gauge(role, f"more than {MAX_LABELS} labels, or a name or label over {MAX_TEXT} characters")
            return
        if self._series.get(role, 0) >= MAX_SERIES_PER_STAGE:
            self._drop_gauge(role, f"more than {MAX_SERIES_PER_STAGE} distinct series (labels that vary per record?)")
            return
        self._series[role] = self._series.get(role, 0) + 1
        self.gauges[key] = number

    def _drop_gauge(self, role: str, why: str) -> None:
        if f"gauge-{role}" not in self._warned:
            self._warned.add(f"gauge-{role}")
            _log.warning("the %s provider's gauges: dropping those with %s; no more warnings", role, why)

    # -- the output's acks ---------------------------------------------------------------

    def on_ack(self, value: Any) -> None:
        before = self.ledger.acks
        if not self.ledger.ack(value):
            if "unknown-ack" not in self._warned:
                self._warned.add("unknown-ack")
                _log.warning("the output acknowledged a checkpoint it was never sent: %s", short(value))
            return
        if self.ledger.acks != before:
            self.persister.acked.set()
            self._window.set()
