"""A hop's block processing: both fast paths (short lines scanned, longer lines split) and the
slow path agree on what is forwarded and where each checkpoint falls."""

from __future__ import annotations

from typing import Any

import pytest

from dstream import protocol
from dstream.redact import Redactor
from dstream.relay.hop import Hop


class _Proc:
    role = "transform-1"
    description = "transform-1 provider fake"


class _Events:
    def __init__(self) -> None:
        self.gauges: list[Any] = []

    def gauge(self, hop: Hop, value: Any) -> None:
        self.gauges.append(value)


def hop(events: Any = None) -> Hop:
    return Hop(
        1, _Proc(), _Proc(), events=events, leftover=b"", max_line_bytes=1 << 20, stop_timeout=1,  # type: ignore[arg-type]
        from_transform=True, dead_letters=None, redactor=Redactor(), resume_from=None,
    )  # fmt: skip


def block(pad: int, every: int, count: int, extra: bytes = b"") -> bytes:
    out = bytearray()
    for n in range(1, count + 1):
        out += protocol.data({"n": n, "pad": "x" * pad}, {"TableName": "t"})
        if n % every == 0:
            out += protocol.checkpoint({"n": n})
        if n == count // 2:
            out += extra
    return bytes(out)


@pytest.mark.parametrize("pad", [10, 600])
def test_checkpoints_fall_where_they_are_whichever_path_runs(pad: int) -> None:
    data = block(pad, every=7, count=50)
    expected = []
    size = 0
    envelopes = 0
    for line in data.splitlines(keepends=True):
        size += len(line)
        if line.startswith(b'{"checkpoint"'):
            expected.append((protocol.decode(line)["checkpoint"], envelopes, size))
        else:
            envelopes += 1
    one = hop()
    first = one._process(data)  # the first block always splits; it learns the line length
    second = one._process(data)  # short lines are scanned from now on
    assert one._short_lines is (pad == 10)
    for out, checkpoints, count in (first, second):
        assert out == data
        assert count == 50
        assert checkpoints == expected  # counted from this hop's totals, which _forward keeps


@pytest.mark.parametrize("pad", [10, 600])
def test_gauge_lines_are_kept_back_on_both_paths(pad: int) -> None:
    events = _Events()
    gauge = protocol.gauge("lag_seconds", 1.5, {"table": "t"})
    data = block(pad, every=7, count=20, extra=gauge)
    one = hop(events)
    for _ in range(2):
        out, checkpoints, count = one._process(data)
        assert gauge not in out
        assert count == 20
        assert len(checkpoints) == 2
    assert events.gauges == [{"name": "lag_seconds", "value": 1.5, "labels": {"table": "t"}}] * 2


class _DeadLetters:
    path = "dead.jsonl"

    def __init__(self) -> None:
        self.raw: list[tuple[str, bytes]] = []

    def write(self, reason: str, raw: bytes, line: int, after: Any, detail: str = "", stage: str = "input") -> None:
        self.raw.append((reason, raw))


def dead_lettering_hop() -> tuple[Hop, _DeadLetters]:
    dead = _DeadLetters()
    one = Hop(
        0, _Proc(), _Proc(), events=_Events(), leftover=b"", max_line_bytes=1 << 20, stop_timeout=1,  # type: ignore[arg-type]
        from_transform=False, dead_letters=dead, redactor=Redactor(), resume_from=None,  # type: ignore[arg-type]
    )  # fmt: skip
    return one, dead


SHORT = protocol.data({"n": 1}, {})


@pytest.mark.parametrize(
    ("torn", "pieces"),
    [
        (b'{"data":{"msg":"hello\nworld"}}\n', [b'{"data":{"msg":"hello', b'world"}}']),  # security review row 3
        (b'{"checkpoint":{"a":"x\ny"}}\n', [b'{"checkpoint":{"a":"x', b'y"}}']),  # a torn checkpoint line
        (b'{"a":[{}\n{}]},{"b":1}\n', [b'{"a":[{}', b'{}]},{"b":1}']),
        (b'{"data":{"big":123456789012345678901234567890}}\n{"x":' + b"[" * 1100 + b"]" * 1100 + b"}\n", []),
    ],
)
def test_torn_lines_are_dead_lettered_on_every_path(torn: bytes, pieces: list[bytes]) -> None:
    """Each fast path first (a block of short lines, then of long lines), never an exception."""
    for pad in (10, 600):
        good = protocol.data({"n": 1, "pad": "x" * pad}, {})
        one, dead = dead_lettering_hop()
        one._process(good * 3)  # learn the line length: the next block takes that fast path
        out, checkpoints, count = one._process(good + torn + good)
        lines = torn.split(b"\n")[:-1]
        accepted = [line for line in lines if b"big" in line]  # the big integer is valid JSON
        assert out == good + b"".join(line + b"\n" for line in accepted) + good
        assert checkpoints == []
        assert count == 2 + len(accepted)
        assert [raw for _, raw in dead.raw] == (pieces or [line for line in lines if b"big" not in line])


def test_what_starting_the_providers_built_is_frozen_before_data_flows() -> None:
    """The runner freezes what exists before an attempt; the Docker client and the rest that
    starting providers builds came after, and the relay made the collector rescan it (13 % of
    the orchestrator at 500 B). A hop freezes it before its first read."""
    import asyncio
    import gc

    class _Source(_Proc):
        async def read(self, n: int) -> bytes:
            return b""

        async def wait(self) -> int:
            return 0

    class _Sink(_Proc):
        async def close_stdin(self) -> None:
            pass

    class _Gate(_Events):
        async def gate(self, hop: Hop) -> None:
            pass

    one = hop(_Gate())
    one.source, one.sink = _Source(), _Sink()  # type: ignore[assignment]
    built_at_start = [[n] for n in range(1000)]  # what starting the providers allocated
    gc.unfreeze()
    try:
        asyncio.run(one.run())
        assert gc.get_freeze_count() >= len(built_at_start)
    finally:
        gc.unfreeze()
