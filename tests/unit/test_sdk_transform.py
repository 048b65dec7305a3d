"""The SDK's transform host, through dstream.sdk.testing.run_transform (no Docker)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from dstream import protocol
from dstream.sdk import Envelope, Record, Reject, TransformProvider
from dstream.sdk.testing import checkpoint, envelope, run_transform

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


def lines(*values: int, every: int = 2) -> list[bytes]:
    out = []
    for n in values:
        out.append(envelope({"n": n}, {"TableName": "t"}))
        if n % every == 0:
            out.append(checkpoint({"at": n}))
    return out


class Passthrough(TransformProvider[Any]):
    name = "passthrough-transform-provider"

    def transform(self, env: Envelope) -> Envelope:
        return env  # one envelope on its own is a passthrough


class Fanout(TransformProvider[Any]):
    """0 for odd, 2 for even numbers."""

    name = "fanout-transform-provider"

    def transform(self, env: Envelope) -> Iterator[Record]:
        n = env.data["n"]
        if n % 2 == 0:
            yield Record({"n": n, "copy": 1}, env.metadata)
            yield Record({"n": n, "copy": 2}, env.metadata)


def order(run: Any) -> list[Any]:
    """The stream as printed: data as ("d", n, copy), checkpoints as ("c", at)."""
    seen = []
    for message in run.messages:
        if "checkpoint" in message:
            seen.append(("c", message["checkpoint"]["at"]))
        elif "data" in message:
            seen.append(("d", message["data"]["n"], message["data"].get("copy")))
    return seen


def test_passthrough_keeps_every_line_byte_for_byte() -> None:
    sent = lines(1, 2, 3, 4)
    run = run_transform(Passthrough, {}, sent)
    assert run.exit_code == 0
    assert run.handshake is not None
    assert "transform" in run.handshake["features"]
    body = run.raw.split(b"\n", 1)[1]  # after the handshake
    assert body == b"".join(sent)


def test_zero_or_many_outputs_and_checkpoints_after_what_came_before_them() -> None:
    run = run_transform(Fanout, {}, lines(1, 2, 3, 4))
    assert order(run) == [("d", 2, 1), ("d", 2, 2), ("c", 2), ("d", 4, 1), ("d", 4, 2), ("c", 4)]


def test_checkpoint_lines_are_forwarded_unchanged() -> None:
    odd = b'{"checkpoint": {"b": [1, 2], "a": "x"}}'  # spacing and key order an encoder would change
    run = run_transform(Fanout, {}, [envelope({"n": 2}), odd])
    assert odd + b"\n" in run.raw


class Picky(TransformProvider[Any]):
    name = "picky-transform-provider"

    def transform(self, env: Envelope) -> list[Envelope]:
        if env.data["n"] == 2:
            raise Reject("two is not allowed")
        if env.data["n"] == 3:
            raise KeyError("missing")
        return [env]


def test_rejected_and_failing_records_become_dead_letter_lines_in_place() -> None:
    run = run_transform(Picky, {}, lines(1, 2, 3, 4, every=5))
    assert run.exit_code == 0
    assert run.dead_letters == [
        {"reason": "two is not allowed", "envelope": {"data": {"n": 2}, "metadata": {"TableName": "t"}}},
        {"reason": "KeyError: 'missing'", "envelope": {"data": {"n": 3}, "metadata": {"TableName": "t"}}},
    ]
    kinds = ["dead_letter" if "dead_letter" in m else m["data"]["n"] for m in run.messages]
    assert kinds == [1, "dead_letter", "dead_letter", 4]


class Batching(TransformProvider[Any]):
    """Holds envelopes and releases them in flush(): before each checkpoint and at the end."""

    name = "batching-transform-provider"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.held: list[Envelope] = []

    def transform(self, env: Envelope) -> None:
        self.held.append(env)

    def flush(self) -> list[Envelope]:
        out, self.held = self.held, []
        return out


def test_flush_releases_what_a_batching_transform_holds_before_each_checkpoint() -> None:
    run = run_transform(Batching, {}, lines(1, 2, 3))
    assert order(run) == [("d", 1, None), ("d", 2, None), ("c", 2), ("d", 3, None)]


class AsyncEnrich(TransformProvider[Any]):
    name = "async-transform-provider"

    async def transform(self, env: Envelope) -> AsyncIterator[Record]:
        yield Record({**env.data, "enriched": True}, env.metadata)


def test_async_generator_transforms_are_driven_by_the_host() -> None:
    run = run_transform(AsyncEnrich, {}, lines(1, 2))
    assert [m["data"] for m in run.data] == [{"n": 1, "enriched": True}, {"n": 2, "enriched": True}]
    assert run.checkpoints == [{"at": 2}]


def test_the_dead_letter_line_is_a_protocol_line() -> None:
    line = protocol.dead_letter("why", {"data": 1})
    assert protocol.control_value(protocol.decode(line), "dead_letter") == (
        True,
        {"reason": "why", "envelope": {"data": 1}},
    )


class WholeRuns(TransformProvider[Any]):
    """transform_batch: each kind of result; transform() is the one-by-one reference."""

    name = "whole-runs-transform-provider"
    runs: ClassVar[list[list[int]]] = []

    def transform(self, env: Envelope) -> Iterator[Record]:
        n = env.data["n"]
        if n % 5 == 0:
            raise Reject(f"five: {n}")
        yield from [Record({"n": n, "copy": c}, env.metadata) for c in range(n % 3)]

    def transform_batch(self, envelopes: list[Envelope]) -> list[Any] | None:
        WholeRuns.runs.append([env.data["n"] for env in envelopes])
        results: list[Any] = []
        for env in envelopes:
            n = env.data["n"]
            if n % 5 == 0:
                results.append(Reject(f"five: {n}"))
            elif n % 3 == 1:  # already-encoded lines
                results.append(protocol.data({"n": n, "copy": 0}, env.metadata))
            else:
                results.append(list(self.transform(env)))
        return results


def test_transform_batch_gets_whole_runs_between_checkpoints_and_matches_one_by_one() -> None:
    sent = lines(*range(1, 13), every=4)
    WholeRuns.runs = []
    batched = run_transform(WholeRuns, {}, sent)
    assert WholeRuns.runs == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]  # never across a checkpoint

    class OneByOne(WholeRuns):
        def transform_batch(self, envelopes: list[Envelope]) -> list[Any] | None:
            return None  # "do these one by one"

    reference = run_transform(OneByOne, {}, sent)
    assert batched.messages == reference.messages
    assert [d["reason"] for d in batched.dead_letters] == ["five: 5", "five: 10"]
    assert order(batched)[:6] == [("d", 1, 0), ("d", 2, 0), ("d", 2, 1), ("d", 4, 0), ("c", 4), ("d", 7, 0)]


def test_a_checkpoint_token_in_a_line_that_is_not_json_is_rejected_not_fatal() -> None:
    run = run_transform(Passthrough, {}, [b'{"checkpoint": 1', *lines(2)])
    assert run.exit_code == 0
    assert run.dead_letters == []  # the passthrough passes it on; the relay validates lines
    assert b'{"checkpoint": 1\n' in run.raw
    run = run_transform(Fanout, {}, [b'{"checkpoint": 1', *lines(2)])
    assert run.exit_code == 0
    assert [d["envelope"] for d in run.dead_letters] == ['{"checkpoint": 1']
    assert order(run) == [("d", 2, 1), ("d", 2, 2), ("c", 2)]
