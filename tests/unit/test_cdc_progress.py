"""dstream.sdk.cdc.SnapshotProgress: the incremental-snapshot gauges every CDC provider reports."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dstream.sdk.cdc import IncrementalCursor, SnapshotProgress

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reporter() -> tuple[SnapshotProgress, Clock, list[tuple[str, float, dict[str, Any]]]]:
    seen: list[tuple[str, float, dict[str, Any]]] = []
    clock = Clock()
    progress = SnapshotProgress(
        lambda name, value, **labels: seen.append((name, value, labels)), logging.getLogger("t"), clock
    )
    return progress, clock, seen


def values(seen: list[tuple[str, float, dict[str, Any]]], name: str) -> list[float]:
    return [v for n, v, _ in seen if n == name]


def test_percent_of_the_estimate_then_100_and_the_rate_of_this_runs_rows() -> None:
    progress, clock, seen = reporter()
    progress.started("t")
    clock.now += 2.0
    progress.report("t", IncrementalCursor(rows=50, chunks=1, total=200), finished=False)
    clock.now += 2.0
    progress.report("t", IncrementalCursor(rows=120, chunks=2, total=200), finished=True)
    assert values(seen, "snapshot_percent") == [25.0, 100.0]
    assert values(seen, "snapshot_rows_per_second") == [25.0, 30.0]
    assert values(seen, "snapshot_rows") == [50.0, 120.0]
    assert values(seen, "snapshot_chunks") == [1.0, 2.0]
    assert all(labels == {"table": "t"} for _, _, labels in seen)


def test_a_resumed_snapshot_counts_only_this_runs_rows_and_time() -> None:
    progress, clock, seen = reporter()
    progress.started("t", rows=1000)  # resumed after 1000 rows emitted by an earlier run
    clock.now += 4.0
    progress.report("t", IncrementalCursor(rows=1100, chunks=11), finished=False)
    assert values(seen, "snapshot_rows_per_second") == [25.0]
    assert values(seen, "snapshot_percent") == []  # no estimate: no made-up percentage
