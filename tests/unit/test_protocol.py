"""Wire protocol encode/decode."""

from __future__ import annotations

from dstream import protocol


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
    assert protocol.valid_block(good) == 2
    for bad in (
        b'{"data":1}\n\n',  # a blank line
        b'{"data":1}\n[1,2]\n',  # not an object
        b'{"data":1,}\n{"a":2}\n',  # malformed
        b'{"data":"\xff"}\n',  # invalid UTF-8
        b'{"a":1}, {"b":2}\n',  # two values on one line
        b' {"a":1}\n',  # leading space: left to the slow path
    ):
        assert protocol.valid_block(bad) == -1, bad
