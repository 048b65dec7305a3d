"""Service Bus message ids: the same envelope replayed gets the same id, two different
envelopes never share one (duplicate detection would silently drop the second)."""

from __future__ import annotations

from typing import Any

import pytest
from dstream_azure.message_ids import MessageIds, identifies, position_of

from dstream import protocol

pytestmark = pytest.mark.unit


def line(data: Any, **metadata: Any) -> tuple[dict[str, Any], bytes]:
    return metadata, protocol.data(data, metadata).rstrip(b"\n")


def ids_of(envelopes: list[tuple[dict[str, Any], bytes]], resume: Any = None, task: str = "t", **kw: Any) -> list[str]:
    ids = MessageIds(task, resume, **kw)
    return [ids.next(meta.get("TableName"), meta, raw) for meta, raw in envelopes]


CHANGE = {"TableName": "dbo.Orders", "LSN": "00000027000000a8", "Seq": "0001", "OperationID": 4}


def test_a_change_is_identified_by_table_position_and_operation() -> None:
    meta, raw = line({"id": 1}, **CHANGE, OperationType="Update")
    first = MessageIds("t", None).next("dbo.Orders", meta, raw)
    assert len(first) == 32
    # The same change, replayed from any other checkpoint, at any other place, in any key order.
    replay = MessageIds("t", {"lsn": "elsewhere"})
    replay.next("x", *line(0))
    assert replay.next("dbo.Orders", dict(reversed(list(meta.items()))), raw) == first
    before = {**meta, "OperationID": 3}  # the update's before image: same LSN and Seq
    assert MessageIds("t", None).next("dbo.Orders", before, raw) != first
    assert MessageIds("t", None).next("dbo.Customers", meta, raw) != first
    assert MessageIds("t", None).next("dbo.Orders", {**meta, "Seq": "0002"}, raw) != first
    assert MessageIds("other-task", None).next("dbo.Orders", meta, raw) != first


def test_an_lsn_alone_names_a_transaction_not_a_change() -> None:
    # PostgreSQL snapshot rows before they carried a key: every row of a table had the
    # same TableName, OperationType "Read" and LSN, so position ids made one id of all.
    rows = [line({"id": i, "v": "same"}, TableName="public.t", OperationType="Read", LSN="0/16B3748") for i in range(5)]
    rows.append(rows[0])  # even a byte-identical row at another place in the stream
    ids = ids_of(rows)
    assert len(set(ids)) == len(rows)
    assert not identifies(rows[0][0], position_of(rows[0][0]), configured=False)


def test_snapshot_rows_with_a_key_are_identified_by_it() -> None:
    def row(key: int, value: str) -> tuple[dict[str, Any], bytes]:
        return line({"id": key, "v": value}, TableName="t", OperationType="Read", LSN="0/1", Key={"id": key})

    first = ids_of([row(1, "a"), row(2, "a"), row(3, "b")])
    assert len(set(first)) == 3
    # A resumed snapshot re-reads rows (perhaps changed since): the same key keeps its id,
    # whatever the anchor, so the broker drops the copy and the stream brings the change.
    assert ids_of([row(2, "changed"), row(3, "b")], resume={"lsn": "0/1", "after": [1]}) == first[1:]
    assert ids_of([line(1, TableName="t", OperationType="Read", LSN="0/1", Key={})]) != ids_of(
        [line(1, TableName="t", OperationType="Read", LSN="0/1", Key={})], resume={"x": 1}
    )  # an empty key identifies nothing: by place in the stream


def test_envelopes_without_a_position_are_identified_by_their_place_in_the_stream() -> None:
    same = line({"x": 1})
    stream = [same, line({"x": 2}), same, same]
    first = ids_of(stream)
    assert len(set(first)) == 4  # byte-identical lines at different places: different ids
    assert ids_of(stream) == first  # the same attempt again (same resume checkpoint): same ids
    assert ids_of(stream, resume={"offset": 10}) != first  # another anchor: new ids, never a collision
    assert set(ids_of(stream, resume={"offset": 10})).isdisjoint(first)
    # An input that is not deterministic: what differs at a place does not get the old id.
    assert ids_of([same, line({"x": 3})])[1] != first[1]


def test_an_upstream_message_id_or_offset_is_trusted_only_when_the_task_names_it() -> None:
    """Row 8: a MessageId is application-defined; a producer reusing one must not lose the second message."""
    a = line({"n": 1}, Queue="q", MessageId="m1", MessageLine=0)
    b = line({"n": 2}, Queue="q", MessageId="m1", MessageLine=1)
    reused = line({"n": 3}, Queue="q", MessageId="m1", MessageLine=0)  # another message, the same id upstream
    other = line({"n": 4}, Offset=7, Position=7, Sequence=7)
    same_place = line({"n": 5}, Offset=7, Position=7, Sequence=7)
    ids = ids_of([a, b, reused, other, same_place])
    assert len(set(ids)) == 5  # by place in the stream: nothing dropped as a "duplicate"
    for row in (a, reused, other):
        assert not identifies(row[0], position_of(row[0]), configured=False)
    # The task vouches for them: the same message id and line is one message, in any run.
    keys = ["MessageId", "MessageLine"]
    vouched = ids_of([a, b], keys=keys)
    assert len(set(vouched)) == 2
    assert ids_of([b], keys=keys, resume={"run": "r2", "seq": 7}) == vouched[1:]


def test_configured_keys_and_the_stream_mode() -> None:
    a, b = line(1, TableName="t", Pos=1), line(1, TableName="t", Pos=2)
    by_pos = ids_of([a, b], keys=["Pos"])
    assert by_pos[0] != by_pos[1]
    assert ids_of([b], keys=["Pos"], resume={"x": 1}) == by_pos[1:]  # the config vouches for Pos
    # message_id = "stream": even a positioned change is identified by its place.
    change = line({"id": 1}, **CHANGE)
    assert ids_of([change], by_position=False) != ids_of([change], by_position=False, resume={"x": 1})
