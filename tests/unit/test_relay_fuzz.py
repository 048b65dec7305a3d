"""Differential fuzzing of the relay against the reference validator (``dstream.envelope``).

hypothesis builds streams of valid and broken lines (raw newlines in strings, torn lines,
NaN, control characters, invalid UTF-8, lone surrogates, deep nesting, oversized lines,
checkpoint lines valid, escaped and torn, non-objects, blank lines), cuts them into reads at
random points and runs them through the real relay (handshake, hops, acks, ledger, dead
letters) on the in-memory runtime. The relay must forward exactly the lines
:func:`dstream.envelope.check_line` accepts, in order, dead-letter exactly the others with
their raw bytes, never raise, and persist the last checkpoint. The reference itself is
checked against a second, independent judge written here with the standard library.

Budget: ``DSTREAM_FUZZ_EXAMPLES`` examples per test (default 60, derandomized: the same
examples on every run). A long campaign: ``DSTREAM_FUZZ_EXAMPLES=200000 DSTREAM_FUZZ_RANDOM=1
.venv/bin/python -m pytest tests/unit/test_relay_fuzz.py`` (README, Development). Every bug
it finds is kept as an ``@example`` below.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dstream import envelope, protocol
from dstream.config.models import Document, Task
from dstream.errors import HandshakeError
from dstream.runtime.fake import FakeIO, FakeRuntime
from dstream.state.sqlite import SqliteStore
from dstream.task.launch import LaunchOptions
from dstream.task.runner import TaskRun

MAX_LINE = 400  # small, so that oversized lines are cheap to make
FUZZ = settings(
    max_examples=int(os.environ.get("DSTREAM_FUZZ_EXAMPLES", "60")),
    derandomize=not os.environ.get("DSTREAM_FUZZ_RANDOM"),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# -- an independent judge: the standard library's json, made strict --------------------------


def _reject(value: str) -> Any:
    raise ValueError(value)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(text)
    return number


def _strings(value: Any) -> list[str]:
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            out.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


def judge(line: bytes) -> bool:
    """RFC 8259 + the grammar's limits, by other means than the relay's."""
    try:
        text = line.decode("utf-8")
        value = json.loads(
            text, parse_constant=_reject, parse_float=_finite, parse_int=lambda t: (_finite(t), int(t))[1]
        )
        for s in _strings(value):
            s.encode("utf-8")  # a lone surrogate escape decodes to an unencodable str
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and envelope.depth(value) <= envelope.MAX_DEPTH


# -- streams of lines ----------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
values = st.recursive(
    scalars | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def encoded(value: Any, ascii_only: bool) -> bytes:
    """As orjson writes it, or as the standard library with \\u escapes (upstream encoders)."""
    if not ascii_only:
        try:
            return protocol.encode(value)[:-1]
        except TypeError:  # orjson writes no integer beyond 64 bits
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    return json.dumps(value, separators=(",", ":")).encode()


@st.composite
def valid_line(draw: st.DrawFn) -> bytes:
    body = draw(st.dictionaries(st.text(max_size=6), values, max_size=3))
    line = encoded({"data": body, "metadata": {"TableName": "t"}}, draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:
        line = draw(st.sampled_from([b" ", b"\t", b""])) + line + draw(st.sampled_from([b"\r", b" ", b""]))
    return line


@st.composite
def broken(draw: st.DrawFn) -> bytes:
    """One or more lines (newlines inside), at least one of them not a valid envelope."""
    good = draw(valid_line())
    kind = draw(st.integers(0, 16))
    cut = draw(st.integers(1, max(1, len(good) - 1)))
    if kind == 0:  # a raw newline at any point: a torn line, or a newline inside a string
        return good[:cut] + b"\n" + good[cut:]
    if kind == 1:  # a torn line (the writer died mid-line)
        return good[:cut]
    if kind == 2:
        word = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1" + b"0" * 400]))
        return b'{"data":{"x":' + word + b"}}"
    if kind == 3:  # a raw control character or invalid UTF-8 inside a string
        junk = draw(
            st.sampled_from(
                [b"\x00", b"\x01", b"\t", b"\x1f", b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]
            )
        )
        return b'{"data":{"s":"a' + junk + b'b"}}'
    if kind == 4:
        return b'{"data":{"s":"\\' + draw(st.sampled_from([b"ud800", b"udc00", b"ud800\\ud800", b"x", b"u12"])) + b'"}}'
    if kind == 5:  # nesting around the limit, and past the parsers' own
        levels = draw(st.sampled_from([envelope.MAX_DEPTH - 1, envelope.MAX_DEPTH, 1023, 1100]))
        return b'{"data":' + b"[" * levels + b"]" * levels + b"}"
    if kind == 6:  # oversized
        return b'{"data":"' + b"x" * draw(st.integers(MAX_LINE - 12, MAX_LINE * 3)) + b'"}'
    if kind == 7:
        return draw(st.sampled_from([b"[1]", b"1", b'"x"', b"null", b"true", b"{}{}", b"{},{}", b'{"a":1},"k":{}']))
    if kind == 8:  # a checkpoint line torn, or split by a raw newline in its value
        line = protocol.checkpoint({"at": draw(st.text(min_size=1, max_size=6))})[:-1]
        return line[:cut] + draw(st.sampled_from([b"\n", b""])) + line[cut:]
    if kind == 9:  # structures spanning lines, balanced by a second value (one parse of the joined lines is fooled)
        return draw(
            st.sampled_from([b'{"a":[{}\n{}]},{"b":1}', b'{"a":"}\n{"}\n{"x":1},{"y":2}', b'{"a":{"b":{}\n{}}},"k":{}'])
        )
    if kind == 10:
        return b"\xef\xbb\xbf" + good  # a byte order mark
    if kind == 11:
        return b"{" + good  # garbage before a valid line
    if kind == 12:  # a valid line (a big integer: valid, but simdjson raises on it)
        return b'{"data":{"n":' + str(draw(st.integers(2**64, 2**90))).encode() + b"}}"
    if kind == 13:  # whitespace the grammar does not allow around a value
        return draw(st.sampled_from([b"\x0c", b"\x0b", b"\xc2\xa0"])) + good
    if kind == 14:  # a trailing comma, a comment, single quotes
        return draw(st.sampled_from([b'{"a":1,}', b'{"a":1}//c', b"{'a':1}", b'{"a":01}', b'{"a":.5}']))
    if kind == 15:  # a control line under an escaped key: a checkpoint all the same
        return b'{"\\u0063heckpoint":{"escaped":' + str(cut).encode() + b"}}"
    return draw(st.sampled_from([b"", b"  ", b"\t\r"]))  # blank lines: skipped


@st.composite
def control_line(draw: st.DrawFn) -> bytes:
    """A gauge (kept back from any stage) or a transform's rejection (kept back from a transform)."""
    if draw(st.booleans()):
        return protocol.gauge(draw(st.text(max_size=4)), draw(st.floats(-1e9, 1e9)), {"t": "x"})[:-1]
    if draw(st.booleans()):
        return b'{"dead_letter":"just a reason"}'
    rejected = {"reason": draw(st.text(min_size=1, max_size=5)), "envelope": {"data": draw(values)}}
    return encoded({"dead_letter": rejected}, draw(st.booleans()))


@st.composite
def stream(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """The input's stdout after its handshake, and where its writes end."""
    parts: list[bytes] = []
    for n in range(draw(st.integers(0, 40))):
        kind = draw(st.integers(0, 10))
        if kind < 5:
            parts.append(draw(valid_line()))
        elif kind < 7:
            parts.append(protocol.checkpoint({"n": n})[:-1])
        elif kind == 7:
            parts.append(draw(control_line()))
        else:
            parts.append(draw(broken()))
    data = b"".join(part + b"\n" for part in parts)
    if data and draw(st.booleans()):
        data = data[:-1]  # the last line without a newline, from an input that exits 0
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=12))))
    return data, cuts


# -- the run ---------------------------------------------------------------------------------


def expected(data: bytes, from_transform: bool = False) -> tuple[bytes, list[tuple[str, Any, Any]], Any]:
    """What the reference says: the bytes forwarded, the dead letters (reason, raw bytes or
    rejected envelope, checkpoint before), the last checkpoint."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out = bytearray()
    dead: list[tuple[str, Any, Any]] = []
    last: Any = None
    for line in lines:
        if len(line) > MAX_LINE:
            dead.append(("oversized_line", line, last))
            continue
        if envelope.is_blank(line):
            continue
        reason, _, value = envelope.check_line(line)
        assert (value is not None) == judge(line), line  # the reference agrees with the judge
        if value is None:
            dead.append((reason, line, last))
            continue
        if protocol.control_value(value, "gauge")[0]:
            continue
        is_rejected, rejected = protocol.control_value(value, "dead_letter")
        if from_transform and is_rejected:
            body = rejected if isinstance(rejected, dict) else {"reason": str(rejected)}
            dead.append((str(body.get("reason") or "no reason given"), body.get("envelope"), last))
            continue
        out += line + b"\n"
        is_cp, position = protocol.control_value(value, "checkpoint")
        if is_cp:
            last = position
    return bytes(out), dead, last


END = protocol.checkpoint({"n": "end"})


def relay(
    tmp_path: Path, data: bytes, cuts: list[int], stage: str = "input"
) -> tuple[bytes, list[dict[str, Any]], Any]:
    """Run ``data`` from ``stage`` (the input, or a transform after an input that sends only
    the checkpoint :data:`END`, which the transform passes on after ``data``)."""
    dlq = tmp_path / "dead.jsonl"
    fields: dict[str, Any] = {
        "name": "t",
        "input": {"provider_path": "fake"},
        "output": {"provider_path": "fake"},
        "commit_interval": 0,
        "max_line_bytes": MAX_LINE,
        "on_error": "dead_letter",
        "dead_letter": {"path": str(dlq)},
    }
    if stage == "transform":
        fields["transform"] = [{"provider_path": "fake"}]
    doc = Document(path=tmp_path / "dstream.hcl", tasks={"t": Task.model_validate(fields)})
    received = bytearray()

    async def write(io_: FakeIO) -> None:
        start = 0
        for cut in [*cuts, len(data)]:
            if cut > start:
                await io_.write(data[start:cut])
                start = cut

    async def source(io_: FakeIO) -> int:
        await io_.read_message()
        await io_.send({"status": "ready"})
        if stage == "input":
            await write(io_)
        else:
            await io_.write(END)
        return 0

    async def transform(io_: FakeIO) -> int:
        await io_.read_message()
        await io_.send({"status": "ready", "features": ["transform"]})
        while line := await io_.readline():
            if line == END:
                await write(io_)
                await io_.write(b"\n" + END if data and not data.endswith(b"\n") else END)
        return 0

    async def sink(io_: FakeIO) -> int:
        await io_.read_message()
        await io_.send({"status": "ready", "features": ["ack"]})
        while line := await io_.readline():
            received.extend(line)
            value = envelope.check_line(line.rstrip(b"\n"))[2]
            is_cp, position = protocol.control_value(value, "checkpoint")
            if is_cp:
                await io_.send({"ack": position})
        return 0

    runtime = FakeRuntime(input=source, output=sink, **({"transform-1": transform} if stage == "transform" else {}))
    runner = TaskRun(doc, "t", LaunchOptions(runtimes={"local": runtime}), stdout=io.BytesIO())
    asyncio.run(asyncio.wait_for(runner.run(), 30))
    records = [json.loads(line) for line in dlq.read_bytes().splitlines()] if dlq.exists() else []
    store = SqliteStore(doc.base_dir / ".dstream" / "state.db")
    try:
        found = store.load("t")
    finally:
        store.close()
    return bytes(received), records, found.checkpoint if found else None


@FUZZ
@given(stream())
@example((b'{"data":{"msg":"hello\nworld"}}\n', []))  # security review row 3: two invalid lines
@example((b'{"checkpoint":{"a":"x\ny"}}\n{"checkpoint":{"n":1}}\n', [5]))  # a torn checkpoint line
@example((b'{"a":[{}\n{}]},{"b":1}\n{"checkpoint":{"n":1}}\n', []))  # spans balanced by two values
@example((b'{"data":{"n":123456789012345678901234567890}}\n', []))  # simdjson's RuntimeError
@example((b'{"data":' + b"[" * 1100 + b"]" * 1100 + b"}\n", []))  # simdjson's RuntimeError
@example((b'{"data":1}\n{"\\u0063heckpoint":{"n":1}}\n', []))  # a checkpoint the probes miss
def test_the_relay_forwards_exactly_what_the_reference_accepts(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    with tempfile.TemporaryDirectory() as tmp:
        forwarded, records, persisted = relay(Path(tmp), data, cuts)
    want, dead, last = expected(data)
    assert forwarded == want
    got = [(r["reason"], base64.b64decode(r["raw_base64"]), r["after_checkpoint"]) for r in records]
    assert got == dead
    assert persisted == last


def without_checkpoints(data: bytes) -> bytes:
    """A transform passes on checkpoints and invents none: its own valid ones become gauges."""
    gauge = protocol.gauge("g", 1, {})[:-1]
    lines = data.split(b"\n")
    return b"\n".join(
        gauge if protocol.control_value(envelope.check_line(line)[2], "checkpoint")[0] else line for line in lines
    )


@FUZZ
@given(stream())
@example((b'{"dead_letter":{"reason":"r","envelope":{"data":1}}}\n{"data":{"msg":"a\nb"}}\n', [7]))
@example((b'{"dead_letter":"just a reason"}\n{"gauge":{"name":"g","value":1,"labels":{}}}\n', []))
def test_a_transforms_lines_meet_the_same_judge(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    data = without_checkpoints(data)
    with tempfile.TemporaryDirectory() as tmp:
        forwarded, records, persisted = relay(Path(tmp), data, cuts, stage="transform")
    want, dead, _ = expected(data, from_transform=True)
    assert forwarded == want + END
    got = [
        (
            r["reason"],
            base64.b64decode(r["raw_base64"]) if "raw_base64" in r else r.get("envelope"),
            r["after_checkpoint"],
        )
        for r in records
    ]
    assert got == dead
    assert {r["stage"] for r in records} <= {"transform-1"}
    assert persisted == {"n": "end"}


@pytest.mark.parametrize(
    ("first", "error"),
    [
        (b'{"status":"ready","protocol":"x"}\n', ""),  # int("x") raised ValueError out of the relay
        (b'{"status":"ready","protocol":[1]}\n', ""),  # int([1]) raised TypeError
        (b"{\n", "instead of a handshake (malformed json"),
        (b"\n", "instead of a handshake"),
        (b'{"status":"ready","n":NaN}\n', "instead of a handshake (malformed json"),
        (b'{"status":"ready","n":' + b"[" * 200 + b"]" * 200 + b"}\n", "instead of a handshake (too deep"),
    ],
)
def test_no_first_line_stops_the_relay_with_anything_but_a_clear_error(
    tmp_path: Path, first: bytes, error: str
) -> None:
    """A handshake line that made a parser (or int()) raise is a bad line like any other."""
    received = bytearray()

    async def source(io_: FakeIO) -> int:
        await io_.read_message()
        await io_.write(first + protocol.data({"n": 1}))
        return 0

    async def sink(io_: FakeIO) -> int:
        await io_.read_message()
        await io_.send({"status": "ready"})
        while line := await io_.readline():
            received.extend(line)
        return 0

    task = Task.model_validate({"name": "t", "input": {"provider_path": "f"}, "output": {"provider_path": "f"}})
    doc = Document(path=tmp_path / "dstream.hcl", tasks={"t": task})
    runner = TaskRun(
        doc, "t", LaunchOptions(runtimes={"local": FakeRuntime(input=source, output=sink)}), stdout=io.BytesIO()
    )
    if error:
        with pytest.raises(HandshakeError, match=re.escape(error)):
            asyncio.run(asyncio.wait_for(runner.run(), 30))
        assert received == b""
    else:
        asyncio.run(asyncio.wait_for(runner.run(), 30))
        assert received == protocol.data({"n": 1})
