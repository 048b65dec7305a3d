"""The relay's logic against the in-memory fake runtime: acks, windows, bad data, failures.

Real processes and real containers run the same scenarios in tests/e2e and
tests/integration; these make the edge cases cheap and deterministic.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

from dstream.config.models import Document, Task
from dstream.errors import BadDataError, HandshakeError, ProviderError
from dstream.runtime.fake import FakeIO, FakeRuntime
from dstream.state.sqlite import SqliteStore
from dstream.task.launch import LaunchOptions
from dstream.task.runner import RunSummary, TaskRun

if TYPE_CHECKING:
    from pathlib import Path

Behaviour = Callable[[FakeIO], Awaitable[int]]


def document(tmp_path: Path, **task: Any) -> Document:
    fields = {"name": "t", "input": {"provider_path": "fake"}, "output": {"provider_path": "fake"}, **task}
    fields.setdefault("commit_interval", 0)
    return Document(path=tmp_path / "dstream.hcl", tasks={"t": Task.model_validate(fields)})


def run(doc: Document, runtime: FakeRuntime) -> RunSummary:
    runner = TaskRun(doc, "t", LaunchOptions(runtimes={"local": runtime}), stdout=io.BytesIO())
    return asyncio.run(asyncio.wait_for(runner.run(), 30))


def stored(doc: Document) -> Any:
    store = SqliteStore(doc.base_dir / ".dstream" / "state.db")
    try:
        found = store.load("t")
        return found.checkpoint if found else None
    finally:
        store.close()


def counter(total: int, every: int, features: tuple[str, ...] = (), seen: list[Any] | None = None) -> Behaviour:
    async def behaviour(io_: FakeIO) -> int:
        command = await io_.read_message()
        assert command is not None
        if seen is not None:
            seen.append(command["checkpoint"])
        start = (command["checkpoint"] or {}).get("value", 0)
        await io_.send({"status": "ready", "features": list(features)})
        for n in range(start + 1, total + 1):
            await io_.send({"data": {"value": n}, "metadata": {}})
            if n % every == 0 or n == total:
                await io_.send({"checkpoint": {"value": n}})
        return 0

    return behaviour


def collector(
    received: list[Any], ack: Callable[[Any, list[Any]], list[Any]] | None = None, features: tuple[str, ...] = ("ack",)
) -> Behaviour:
    """An output that records data and acks checkpoints (``ack`` chooses which, in what order)."""

    async def behaviour(io_: FakeIO) -> int:
        await io_.read_message()
        await io_.send({"status": "ready", "features": list(features)})
        held: list[Any] = []
        while (message := await io_.read_message()) is not None:
            if "checkpoint" in message:
                held.append(message["checkpoint"])
                to_ack = ack(message["checkpoint"], held) if ack else [held.pop()]
                for position in to_ack:
                    await io_.send({"ack": position})
            else:
                received.append(message["data"]["value"])
        return 0

    return behaviour


def test_delivers_everything_in_order_and_persists_the_last_checkpoint(tmp_path: Path) -> None:
    doc = document(tmp_path)
    received: list[int] = []
    summary = run(doc, FakeRuntime(input=counter(500, 7), output=collector(received)))
    assert received == list(range(1, 501))
    assert summary.envelopes == 500
    assert stored(doc) == {"value": 500}


def test_resume_hands_the_stored_checkpoint_to_the_input(tmp_path: Path) -> None:
    doc = document(tmp_path)
    run(doc, FakeRuntime(input=counter(20, 5), output=collector([])))
    seen: list[Any] = []
    received: list[int] = []
    run(doc, FakeRuntime(input=counter(30, 5, seen=seen), output=collector(received)))
    assert seen == [{"value": 20}]
    assert received == list(range(21, 31))


def test_out_of_order_acks_persist_only_the_contiguous_prefix(tmp_path: Path) -> None:
    doc = document(tmp_path)

    def skip_second(position: Any, held: list[Any]) -> list[Any]:
        # Ack checkpoint 1 and every one after 2, but never 2 itself.
        return [held.pop()] if position["value"] != 2 else []

    received: list[int] = []
    run(doc, FakeRuntime(input=counter(5, 1), output=collector(received, skip_second)))
    assert received == [1, 2, 3, 4, 5]
    assert stored(doc) == {"value": 1}


def test_acks_in_reverse_order_still_persist_the_highest(tmp_path: Path) -> None:
    doc = document(tmp_path)

    def at_the_end(position: Any, held: list[Any]) -> list[Any]:
        if position["value"] < 5:
            return []
        acks = list(reversed(held))
        held.clear()
        return acks

    run(doc, FakeRuntime(input=counter(5, 1), output=collector([], at_the_end)))
    assert stored(doc) == {"value": 5}


def test_no_ack_means_no_checkpoint(tmp_path: Path) -> None:
    doc = document(tmp_path)
    run(doc, FakeRuntime(input=counter(50, 10), output=collector([], lambda p, h: [])))
    assert stored(doc) is None


def test_legacy_output_without_acks_persists_on_hand_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    doc = document(tmp_path)
    received: list[int] = []
    run(doc, FakeRuntime(input=counter(30, 10), output=collector(received, lambda p, h: [], features=())))
    assert received == list(range(1, 31))
    assert stored(doc) == {"value": 30}
    assert "does not acknowledge checkpoints" in caplog.text


def test_slow_output_pauses_the_input_within_the_window(tmp_path: Path) -> None:
    doc = document(tmp_path, max_in_flight=100)
    gaps: list[int] = []

    async def slow_output(io_: FakeIO) -> int:
        await io_.read_message()
        await io_.send({"status": "ready", "features": ["ack"]})
        count = 0
        acked = 0
        while (message := await io_.read_message()) is not None:
            if "checkpoint" in message:
                await asyncio.sleep(0.001)  # a slow write
                acked = message["checkpoint"]["value"]
                await io_.send({"ack": message["checkpoint"]})
            else:
                count += 1
                gaps.append(count - acked)
        return 0

    received_total = 2000
    summary = run(doc, FakeRuntime(input=counter(received_total, 10), output=slow_output))
    assert summary.envelopes == received_total
    # In flight never exceeds the window plus what sits in one pipe buffer.
    assert max(gaps) < 100 + 10_000
    assert stored(doc) == {"value": received_total}


def bad_input(lines: list[bytes]) -> Behaviour:
    async def behaviour(io_: FakeIO) -> int:
        await io_.read_message()
        await io_.send({"status": "ready"})
        for line in lines:
            await io_.write(line)
        return 0

    return behaviour


GOOD = b'{"data":{"value":1},"metadata":{}}\n{"checkpoint":{"value":1}}\n'
AFTER = b'{"data":{"value":2},"metadata":{}}\n{"checkpoint":{"value":2}}\n'


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b'{"data": {"value": 1.5,}\n', "malformed_json"),
        (b'{"data":"\xff\xfe"}\n', "invalid_utf8"),
        (b"[1, 2, 3]\n", "not_an_object"),
        (b'{"data":"' + b"x" * 2000 + b'"}\n', "oversized_line"),
    ],
)
def test_bad_line_fails_by_default_and_checkpoint_stays_before_it(tmp_path: Path, bad: bytes, reason: str) -> None:
    doc = document(tmp_path, max_line_bytes=1024)
    received: list[int] = []
    with pytest.raises(BadDataError) as err:
        run(doc, FakeRuntime(input=bad_input([GOOD, bad, AFTER]), output=collector(received)))
    assert err.value.reason == reason
    assert "line 3" in str(err.value)
    assert received == [1]
    assert stored(doc) == {"value": 1}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b'{"data": {"value": 1.5,}', "malformed_json"),
        (b'{"data":"\xff\xfe"}', "invalid_utf8"),
        (b"[1, 2, 3]", "not_an_object"),
        (b'{"data":"' + b"y" * 5000 + b'"}', "oversized_line"),
    ],
)
def test_bad_line_is_dead_lettered_byte_for_byte_and_the_rest_flows(tmp_path: Path, bad: bytes, reason: str) -> None:
    dlq = tmp_path / "dead.jsonl"
    doc = document(tmp_path, max_line_bytes=1024, on_error="dead_letter", dead_letter={"path": str(dlq)})
    received: list[int] = []
    summary = run(doc, FakeRuntime(input=bad_input([GOOD, bad + b"\n", AFTER]), output=collector(received)))
    assert received == [1, 2]
    assert summary.dead_letters == 1
    records = [json.loads(line) for line in dlq.read_bytes().splitlines()]
    assert len(records) == 1
    record = records[0]
    assert record["reason"] == reason
    assert record["task"] == "t"
    assert record["line"] == 3
    assert base64.b64decode(record["raw_base64"]) == bad
    assert record["size"] == len(bad)
    assert record["after_checkpoint"] == {"value": 1}
    assert stored(doc) == {"value": 2}


def test_blank_lines_are_not_data(tmp_path: Path) -> None:
    doc = document(tmp_path)
    received: list[int] = []
    run(doc, FakeRuntime(input=bad_input([GOOD, b"\n  \n", AFTER]), output=collector(received)))
    assert received == [1, 2]


def test_output_dying_mid_stream_stops_the_input_and_persists_only_acked(tmp_path: Path) -> None:
    doc = document(tmp_path)

    async def dies(io_: FakeIO) -> int:
        await io_.read_message()
        await io_.send({"status": "ready", "features": ["ack"]})
        seen = 0
        while (message := await io_.read_message()) is not None:
            if "checkpoint" in message and message["checkpoint"]["value"] <= 20:
                await io_.send({"ack": message["checkpoint"]})
            seen += "data" in message
            if seen == 35:
                io_.log("disk full: cannot write batch")
                return 3
        return 0

    async def endless(io_: FakeIO) -> int:
        await io_.read_message()
        await io_.send({"status": "ready"})
        n = 0
        while not io_.terminated.is_set():
            n += 1
            await io_.send({"data": {"value": n}, "metadata": {}})
            if n % 10 == 0:
                await io_.send({"checkpoint": {"value": n}})
        return 0

    with pytest.raises(ProviderError) as err:
        run(doc, FakeRuntime(input=endless, output=dies))
    message = str(err.value)
    assert "output provider" in message
    assert "exited with code 3" in message
    assert "disk full" in message
    assert stored(doc) == {"value": 20}


def test_commit_feature_gets_committed_lines_after_persisting(tmp_path: Path) -> None:
    doc = document(tmp_path)
    commits: list[Any] = []

    async def committing(io_: FakeIO) -> int:
        await io_.read_message()
        await io_.send({"status": "ready", "features": ["commit"]})
        for n in range(1, 4):
            await io_.send({"data": {"value": n}, "metadata": {}})
            await io_.send({"checkpoint": {"value": n}})
            message = await io_.read_message()  # wait for the commit of what we just sent
            assert message is not None
            commits.append(message["committed"])
        return 0

    run(doc, FakeRuntime(input=committing, output=collector([])))
    assert commits == [{"value": 1}, {"value": 2}, {"value": 3}]


def test_restart_policy_resumes_after_failures(tmp_path: Path) -> None:
    doc = document(tmp_path, restart={"max_attempts": 3, "backoff": "10ms"})
    received: list[int] = []
    attempts = {"n": 0}

    async def flaky(io_: FakeIO) -> int:
        attempts["n"] += 1
        if attempts["n"] <= 2:
            await io_.read_message()
            io_.log("cannot connect")
            return 1
        return await collector(received)(io_)

    summary = run(doc, FakeRuntime(input=counter(40, 10), output=flaky))
    assert summary.attempts == 3
    assert received == list(range(1, 41))


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("exit", "exited with code 4 before its handshake"),
        ("garbage", "printed 'Starting up...' instead of a handshake"),
        ("error", "refused to start: config.dsn: required"),
        ("hang", "sent no handshake within 0.2s"),
    ],
)
def test_handshake_failures_are_explained_with_stderr(tmp_path: Path, behaviour: str, expected: str) -> None:
    doc = document(tmp_path, handshake_timeout="200ms")

    async def broken(io_: FakeIO) -> int:
        await io_.read_message()
        io_.log("boot log line")
        if behaviour == "exit":
            return 4
        if behaviour == "garbage":
            await io_.write(b"Starting up...\n")
        elif behaviour == "error":
            await io_.send({"status": "error", "message": "config.dsn: required"})
        await asyncio.sleep(60)
        return 0

    with pytest.raises(HandshakeError) as err:
        run(doc, FakeRuntime(input=broken, output=collector([])))
    assert expected in str(err.value)
    if behaviour != "error":
        assert "boot log line" in str(err.value)


def test_secrets_are_redacted_from_errors(tmp_path: Path) -> None:
    doc = Document(
        path=tmp_path / "dstream.hcl",
        tasks={
            "t": Task.model_validate({"name": "t", "input": {"provider_path": "f"}, "output": {"provider_path": "f"}})
        },
        secrets=frozenset({"hunter2-canary"}),
    )

    async def leaky(io_: FakeIO) -> int:
        await io_.read_message()
        io_.log("connecting with password hunter2-canary failed")
        return 1

    with pytest.raises(HandshakeError) as err:
        run(doc, FakeRuntime(input=leaky, output=collector([])))
    assert "hunter2-canary" not in str(err.value)
    assert "password *** failed" in str(err.value)


def test_ack_lines_meet_the_envelope_grammar_and_never_stop_the_reader() -> None:
    """An ack is a valid envelope with an "ack" key, however escaped; anything else is text."""
    from dstream.relay.acks import AckReader

    class _Output:
        def __init__(self, data: bytes) -> None:
            self.chunks = [data[i : i + 7] for i in range(0, len(data), 7)]  # reads cut anywhere

        async def read(self, n: int) -> bytes:
            return self.chunks.pop(0) if self.chunks else b""

    lines = [
        b'{"ack":{"n":1}}',
        b'{"ack":{"n":',  # torn
        b"2}}",
        b'{"\\u0061ck":{"n":3}}',  # escaped key: still an ack
        b'{"ack":{"n":NaN}}',
        b'{"ack":' + b"[" * 200 + b"]" * 200 + b"}",  # too deep
        b'{"ack":{"n":"\xff"}}',
        b"console output",
    ]
    acks: list[Any] = []
    out = io.BytesIO()
    reader = AckReader(
        _Output(b"\n".join(lines) + b"\n"),  # type: ignore[arg-type]
        leftover=b"", max_line_bytes=1 << 20, on_ack=acks.append, on_gauge=lambda g: None, stdout=out,
    )  # fmt: skip
    asyncio.run(reader.run())
    assert acks == [{"n": 1}, {"n": 3}]
    assert out.getvalue().splitlines() == [lines[i] for i in (1, 2, 4, 5, 6, 7)]
