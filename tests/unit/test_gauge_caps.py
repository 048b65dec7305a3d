"""Provider gauges are capped per stage (series, label count, text length), with one warning."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest

from dstream.task.flow import MAX_LABELS, MAX_SERIES_PER_STAGE, MAX_TEXT, AttemptStats, PipelineEvents


def events() -> PipelineEvents:
    unused = cast("Any", None)  # record_gauge needs none of the pipeline's parts
    return PipelineEvents(
        ledger=unused,
        persister=unused,
        stats=AttemptStats(),
        guard=None,
        last_hop=0,
        output_acks=True,
        max_in_flight=1,
    )


def gauge(name: str, value: float, **labels: str) -> dict[str, Any]:
    return {"name": name, "value": value, "labels": labels}


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "gauges" in r.getMessage()]


def test_a_provider_labelling_by_record_cannot_grow_the_series_without_bound(caplog: pytest.LogCaptureFixture) -> None:
    flow = events()
    with caplog.at_level(logging.WARNING):
        for n in range(20_000):
            flow.record_gauge("input", gauge("lag", n, lsn=f"{n:016x}"))
        flow.record_gauge("output", gauge("lag", 1.0, lsn="a"))  # another stage has its own budget
    per_stage = [role for role, _, _ in flow.gauges]
    assert per_stage.count("input") == MAX_SERIES_PER_STAGE
    assert per_stage.count("output") == 1
    assert len(warnings(caplog)) == 1
    assert "more than 1000 distinct series" in warnings(caplog)[0]
    # A series already kept still updates.
    flow.record_gauge("input", gauge("lag", -1.0, lsn=f"{0:016x}"))
    assert flow.gauges[("input", "lag", (("lsn", f"{0:016x}"),))] == -1.0


@pytest.mark.parametrize(
    "sample",
    [
        gauge("x" * (MAX_TEXT + 1), 1),
        gauge("lag", 1, table="t" * (MAX_TEXT + 1)),
        gauge("lag", 1, **{"k" * (MAX_TEXT + 1): "v"}),
        gauge("lag", 1, **{f"l{i}": "v" for i in range(MAX_LABELS + 1)}),
    ],
)
def test_oversized_gauges_are_dropped_with_one_warning(
    caplog: pytest.LogCaptureFixture, sample: dict[str, Any]
) -> None:
    flow = events()
    with caplog.at_level(logging.WARNING):
        flow.record_gauge("transform-1", sample)
        flow.record_gauge("transform-1", sample)
        flow.record_gauge("transform-1", gauge("ok", 2, table="t" * MAX_TEXT))
    assert list(flow.gauges) == [("transform-1", "ok", (("table", "t" * MAX_TEXT),))]
    assert len(warnings(caplog)) == 1
