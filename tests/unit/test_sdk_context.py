"""What the SDK's Context gives providers: the resume checkpoint and reported gauges."""

from __future__ import annotations

import io
from typing import Any

from dstream import protocol
from dstream.sdk import InputProvider, OutputProvider, Record
from dstream.sdk.host import Host
from dstream.sdk.testing import run_input, run_output


class _Lagging(InputProvider[Any]):
    name = "lagging-input-provider"

    def read(self, checkpoint: Any) -> Any:
        self.ctx.gauge("lag_seconds", 2.5, table="dbo.Orders")
        yield Record({"n": 1}, position={"n": 1})


class _Remembering(OutputProvider[Any]):
    name = "remembering-output-provider"
    seen: Any = "unset"

    def write(self, batch: list[Any]) -> None:
        type(self).seen = self.ctx.checkpoint


def test_gauges_are_reported_when_the_orchestrator_accepts_them() -> None:
    run = run_input(_Lagging, {})
    assert run.gauges == [{"name": "lag_seconds", "value": 2.5, "labels": {"table": "dbo.Orders"}}]
    assert [m["data"] for m in run.data] == [{"n": 1}]


def test_no_gauge_line_for_an_orchestrator_that_does_not_announce_them() -> None:
    # Upstream's CLI sends no "features": a gauge line would reach the output as data there.
    stdin = io.BytesIO(protocol.command_envelope("run", {}, None, "t"))
    stdout = io.BytesIO()
    assert Host(_Lagging, stdin, stdout).run() == 0
    assert protocol.GAUGE_TOKEN not in stdout.getvalue()
    assert b'"data"' in stdout.getvalue()


def test_outputs_see_the_resume_checkpoint() -> None:
    from dstream.sdk.testing import run_provider

    line = protocol.data({"n": 2}, {})
    run_provider(_Remembering, {}, "run", {"n": 1}, [line])
    assert _Remembering.seen == {"n": 1}
    run_output(_Remembering, {}, [line])
    assert _Remembering.seen is None
