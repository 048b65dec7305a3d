"""Pipelines with transform stages, on the in-memory fake runtime: delivery, checkpoint
order, rejected records, and a stage failing in the middle."""

from __future__ import annotations

import asyncio
import io
import json
from typing import TYPE_CHECKING, Any

import pytest

from dstream.errors import BadDataError, ProtocolError, ProviderError
from dstream.runtime.fake import FakeIO, FakeRuntime
from dstream.task.launch import LaunchOptions
from dstream.task.runner import TaskRun
from tests.unit.test_relay import Behaviour, collector, counter, document, run, stored

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def transform(
    change: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    forward: Callable[[Any], bool] = lambda cp: True,
    die_after: int | None = None,
) -> Behaviour:
    """A fake transform: data through ``change`` (default: unchanged), checkpoints through
    ``forward`` (False drops one), exit code 2 after ``die_after`` data lines."""

    async def behaviour(io_: FakeIO) -> int:
        command = await io_.read_message()
        assert command is not None
        assert "gauge" in command.get("features", [])
        await io_.send({"status": "ready", "features": ["transform"]})
        await io_.send({"gauge": {"name": "seen", "value": 0, "labels": {"kind": "fake"}}})
        seen = 0
        while (message := await io_.read_message()) is not None:
            if "checkpoint" in message:
                if forward(message["checkpoint"]):
                    await io_.send(message)
                continue
            seen += 1
            if die_after is not None and seen > die_after:
                io_.log("transform crashed on purpose")
                return 2
            for out in change(message) if change else [message]:
                await io_.send(out)
        return 0

    return behaviour


def doubled(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"data": {"value": message["data"]["value"] * 2}, "metadata": {}}]


def test_two_transforms_in_a_row_deliver_the_transformed_set_and_persist(tmp_path: Path) -> None:
    doc = document(tmp_path, transform=[{"provider_path": "fake"}, {"provider_path": "fake"}])
    received: list[int] = []
    keep_even = transform(lambda m: [m] if m["data"]["value"] % 4 == 0 else [])
    runtime = FakeRuntime(
        input=counter(100, 7),
        output=collector(received),
        **{"transform-1": transform(doubled), "transform-2": keep_even},
    )
    summary = run(doc, runtime)
    assert received == [v * 2 for v in range(1, 101) if (v * 2) % 4 == 0]
    assert summary.envelopes == 100  # counted at the input
    assert stored(doc) == {"value": 100}
    assert set(runtime.started) == {"input", "transform-1", "transform-2", "output"}


def test_a_transform_that_drops_a_checkpoint_is_named_and_nothing_after_it_is_persisted(tmp_path: Path) -> None:
    doc = document(tmp_path, transform=[{"provider_path": "fake"}])
    runtime = FakeRuntime(
        input=counter(50, 10), output=collector([]), **{"transform-1": transform(forward=lambda cp: cp["value"] != 20)}
    )
    with pytest.raises(ProtocolError) as err:
        run(doc, runtime)
    message = str(err.value)
    assert "transform-1 provider fake-transform-1" in message
    assert "{'value': 30} while {'value': 20} was due" in message
    assert stored(doc) == {"value": 10}


def test_a_transform_that_swallows_its_last_checkpoint_is_reported_at_the_end(tmp_path: Path) -> None:
    doc = document(tmp_path, transform=[{"provider_path": "fake"}])
    runtime = FakeRuntime(
        input=counter(30, 10), output=collector([]), **{"transform-1": transform(forward=lambda cp: cp["value"] != 30)}
    )
    with pytest.raises(ProtocolError, match=r"ended without forwarding 1 checkpoint\(s\) \(first: \{'value': 30\}\)"):
        run(doc, runtime)
    assert stored(doc) == {"value": 20}


def rejecting(value: int) -> Behaviour:
    def change(message: dict[str, Any]) -> list[dict[str, Any]]:
        if message["data"]["value"] == value:
            return [{"dead_letter": {"reason": "value not allowed", "envelope": message}}]
        return [message]

    return transform(change)


def test_a_rejected_record_fails_the_run_by_default_and_the_checkpoint_stays_before_it(tmp_path: Path) -> None:
    doc = document(tmp_path, transform=[{"provider_path": "fake"}])
    received: list[int] = []
    with pytest.raises(
        BadDataError, match="transform-1 provider fake-transform-1 rejected an envelope: value not allowed"
    ):
        run(doc, FakeRuntime(input=counter(30, 5), output=collector(received), **{"transform-1": rejecting(13)}))
    assert received == list(range(1, 13))
    assert stored(doc) == {"value": 10}


def test_a_rejected_record_is_dead_lettered_with_its_stage_and_the_stream_goes_on(tmp_path: Path) -> None:
    dlq = tmp_path / "dead.jsonl"
    doc = document(
        tmp_path, transform=[{"provider_path": "fake"}], on_error="dead_letter", dead_letter={"path": str(dlq)}
    )
    received: list[int] = []
    summary = run(doc, FakeRuntime(input=counter(30, 5), output=collector(received), **{"transform-1": rejecting(13)}))
    assert received == [v for v in range(1, 31) if v != 13]
    assert summary.dead_letters == 1
    [record] = [json.loads(line) for line in dlq.read_bytes().splitlines()]
    assert record["stage"] == "transform-1"
    assert record["reason"] == "value not allowed"
    assert record["envelope"] == {"data": {"value": 13}, "metadata": {}}
    assert record["after_checkpoint"] == {"value": 10}
    assert stored(doc) == {"value": 30}


def test_a_transform_dying_mid_stream_is_named_and_only_acked_data_is_persisted(tmp_path: Path) -> None:
    doc = document(tmp_path, transform=[{"provider_path": "fake"}])
    received: list[int] = []
    with pytest.raises(ProviderError) as err:
        run(
            doc,
            FakeRuntime(
                input=counter(5000, 10), output=collector(received), **{"transform-1": transform(die_after=25)}
            ),
        )
    message = str(err.value)
    assert "transform-1 provider fake-transform-1" in message
    assert "transform crashed on purpose" in message
    assert received == list(range(1, 26))  # what got through still reached the output
    assert stored(doc) == {"value": 20}


def test_a_transform_block_holding_an_output_is_refused(tmp_path: Path) -> None:
    doc = document(tmp_path, transform=[{"provider_path": "fake"}])
    with pytest.raises(ProviderError, match=r"is not a transform: its handshake lists features \[ack\]"):
        run(doc, FakeRuntime(input=counter(5, 1), output=collector([]), **{"transform-1": collector([])}))


def test_gauges_from_any_stage_reach_the_run(tmp_path: Path) -> None:
    from dstream.sdk.testing import run_provider  # noqa: F401 - the SDK side is tested in test_sdk_context

    doc = document(tmp_path, transform=[{"provider_path": "fake"}])

    runtime = FakeRuntime(input=counter(20, 5), output=collector([]), **{"transform-1": transform()})
    runner = TaskRun(doc, "t", LaunchOptions(runtimes={"local": runtime}), stdout=io.BytesIO())
    asyncio.run(asyncio.wait_for(runner.run(), 30))
    assert runner.progress().gauges == {("transform-1", "seen", (("kind", "fake"),)): 0.0}
