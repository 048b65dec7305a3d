"""Wire protocol encode/decode."""

from __future__ import annotations

import pytest

from dstream import envelope, protocol


@pytest.fixture(params=["simdjson", "orjson"], autouse=True)
def block_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test twice: with simdjson (the orchestrator) and without it, as in provider images,
    which install dstream without pysimdjson (the jq transform checks blocks with it too)."""
    if request.param == "orjson":
        monkeypatch.setattr(envelope, "_PARSER", None)


def test_command_envelope_round_trip() -> None:
    line = protocol.command_envelope("run", {"a": 1, "nested": {"b": [1, 2]}}, {"value": 3})
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert protocol.decode_object(line) == {
        "command": "run",
        "config": {"a": 1, "nested": {"b": [1, 2]}},
        "checkpoint": {"value": 3},
        "protocol": 1,
    }


def test_handshake_parsing() -> None:
    hs = protocol.parse_handshake(b'{"status":"ready","verbs":["run","init"],"features":["ack"]}\n')
    assert hs is not None
    assert hs.status == "ready"
    assert hs.acks
    assert not hs.commits
    assert hs.supports("init")
    assert not hs.supports("destroy")
    bare = protocol.parse_handshake(b'{"status":"ready"}')
    assert bare is not None
    assert bare.verbs is None
    assert bare.supports("destroy")
    err = protocol.parse_handshake(b'{"status":"error","message":"bad dsn"}')
    assert err is not None
    assert err.status == "error"
    assert err.message == "bad dsn"
    # A data line is not a handshake (legacy provider); neither is garbage.
    assert protocol.parse_handshake(b'{"data":{"status":"ready"}}') is None
    assert protocol.parse_handshake(b"hello") is None


def test_control_lines_are_told_apart_from_data() -> None:
    assert protocol.control_value({"checkpoint": {"v": 1}}, "checkpoint") == (True, {"v": 1})
    assert protocol.control_value({"data": {}, "checkpoint": 1}, "checkpoint") == (False, None)
    assert protocol.control_value({"ack": 5}, "ack") == (True, 5)


def test_canonical_ignores_key_order() -> None:
    assert protocol.canonical({"a": 1, "b": {"c": 2, "d": 3}}) == protocol.canonical({"b": {"d": 3, "c": 2}, "a": 1})


def test_lifecycle_reply_accepts_resource_lines_and_upstream_summary() -> None:
    reply = protocol.LifecycleReply()
    reply.feed(
        b'{"resource":{"type":"servicebus_queue","name":"Orders_cdc_events","action":"create","state":"present"}}'
    )
    reply.feed(b"not json: a stray line")
    assert [r.name for r in reply.resources] == ["Orders_cdc_events"]
    assert not reply.failed
    upstream = protocol.LifecycleReply()
    upstream.feed(
        b'{"status":"Success","resources":["q1",{"name":"q2","type":"queue"}],"metadata":null,"message":"ok","error":null}'
    )
    assert [r.name for r in upstream.resources] == ["q1", "q2"]
    assert not upstream.failed
    failed = protocol.LifecycleReply()
    failed.feed(b'{"status":"Failed","resources":[],"metadata":null,"message":"no permission","error":null}')
    assert failed.failed
    assert failed.message == "no permission"


def test_valid_block_accepts_only_one_object_per_line() -> None:
    good = b'{"data":{"a":1}}\n{"checkpoint":{"v":1}}\n'
    assert envelope.valid_block(good) == 2
    for bad in (
        b'{"data":1}\n\n',  # a blank line
        b'{"data":1}\n[1,2]\n',  # not an object
        b'{"data":1,}\n{"a":2}\n',  # malformed
        b'{"data":"\xff"}\n',  # invalid UTF-8
        b'{"a":1}, {"b":2}\n',  # two values on one line
        b' {"a":1}\n',  # leading space: left to the slow path
    ):
        assert envelope.valid_block(bad) == -1, bad


# Blocks of lines that are not envelopes but that one parse of the joined lines accepts
# (found by the security review, row 3, and by tests/unit/test_relay_fuzz.py).
TORN = [
    b'{"data":{"msg":"hello\nworld"}}\n',  # a raw newline in a string: two broken lines
    b'{"checkpoint":{"a":"x\ny"}}\n',  # the same, torn checkpoint line
    b'{"a":"}\n{"}\n{"x":1},{"y":2}\n',  # strings spanning lines, balanced by two values on one
    b'{"a":[{}\n{}]},{"b":1}\n',  # an array spanning lines, balanced by two values on one
    b'{"a":{"b":{}\n{}}},"k":{}\n',  # an object spanning lines, balanced by a second member
    b'{"a":1},"k":{}\n',  # a second member on one line
    b'{"a":\n1}\n',  # a value split over two lines
    b'{"a":1}\n1}\n',  # a non-object line
]


@pytest.mark.parametrize("block", TORN)
def test_valid_block_never_accepts_what_the_reference_rejects(block: bytes) -> None:
    lines = block.split(b"\n")[:-1]
    assert any(envelope.check_line(line)[2] is None for line in lines)
    assert envelope.valid_block(block) == -1
    assert envelope.valid_block(block, objects_checked=True) == -1


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"a":NaN}', "malformed_json"),
        (b'{"a":-Infinity}', "malformed_json"),
        (b'{"a":1e400}', "malformed_json"),  # Infinity in disguise
        (b'{"a":"x\ty"}', "malformed_json"),  # a raw control character
        (b'{"a":"\\ud800"}', "malformed_json"),  # a lone surrogate escape
        (b'\xef\xbb\xbf{"a":1}', "malformed_json"),  # a byte order mark
        (b'{"a":"\xed\xa0\x80"}', "invalid_utf8"),  # an encoded surrogate
        (b'{"a":"\xc0\xaf"}', "invalid_utf8"),  # an overlong form
        (b"[1]", "not_an_object"),
        (b'{"a":' + b"[" * envelope.MAX_DEPTH + b"]" * envelope.MAX_DEPTH + b"}", "too_deep"),
        (b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}", "too_deep"),
    ],
)
def test_the_reference_rejects_what_rfc_8259_and_the_grammar_forbid(line: bytes, reason: str) -> None:
    assert envelope.check_line(line)[0] == reason
    assert envelope.valid_block(line + b"\n") == -1


@pytest.mark.parametrize(
    "line",
    [
        b'{"a":' + b"[" * (envelope.MAX_DEPTH - 1) + b"]" * (envelope.MAX_DEPTH - 1) + b"}",  # exactly the limit
        b'{"a":1,"a":2}',  # duplicate names: RFC 8259 says SHOULD be unique
        b'{"a":"\x7f\\u0000\\ud83d\\ude00"}',  # DEL, an escaped NUL, a surrogate pair
        b'{"a":-0.0e-0,"b":1e-400,"c":18446744073709551615}',
        b'{"a":1} \r',  # whitespace after the value (a CRLF line)
    ],
)
def test_the_reference_and_the_block_check_accept_valid_envelopes(line: bytes) -> None:
    assert envelope.check_line(line)[0] == ""
    assert envelope.valid_block(line + b"\n" + line + b"\n") == 2


def test_big_integers_are_valid_and_leave_the_fast_path_without_raising() -> None:
    line = b'{"data":{"amount":123456789012345678901234567890}}'  # simdjson: BIGINT_ERROR (RuntimeError)
    assert envelope.check_line(line)[0] == ""
    # simdjson cannot hold it (the line goes the slow way); orjson reads it as a float: either
    # way no exception, and a count only when the reference accepts the line.
    assert envelope.valid_block(line + b"\n") == (-1 if envelope._PARSER is not None else 1)


def test_escaped_control_keys_are_noticed() -> None:
    assert envelope.may_hide_control_key(b'{"\\u0063heckpoint":1}\n')
    assert not envelope.may_hide_control_key(b'{"data":"caf\\u00e9 \\u003c"}\n')  # common encoder escapes
