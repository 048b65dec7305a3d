"""ChunkPacer (dstream.sdk.cdc.pacing): how many released incremental-snapshot chunks still
wait for the output's acknowledgement, against a reference that knows the output's order.

The model: a stream of handed-out positions in output order (live changes, each chunk's rows
carrying the chunk's stream position and a growing row count, the checkpoint after a chunk);
the orchestrator acknowledges some of them, in order. A chunk is acknowledged exactly when an
acknowledged position comes at or after its last row in that order."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dstream.sdk.cdc.pacing import ChunkPacer

TABLE = "public.big"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _stream(events: list[tuple[str, int]]) -> tuple[list[tuple[tuple[int, int], dict[str, Any]]], list[int]]:
    """Handed-out positions in output order, and for each chunk the index of its last row."""
    out: list[tuple[tuple[int, int], dict[str, Any]]] = []
    last_rows: list[int] = []
    lsn, rows = 100, 0
    for kind, size in events:
        if kind == "live":
            lsn += 10
            for index in range(1, size + 1):
                out.append(((lsn, index), {TABLE: {"incremental": {"rows": rows}}}))
            out.append(((lsn + 5, 0), {TABLE: {"incremental": {"rows": rows}}}))
            lsn += 5
        else:  # a chunk of `size` rows released at the end of its watermark's transaction
            lsn += 10
            for _ in range(size):
                rows += 1
                out.append(((lsn, 0), {TABLE: {"incremental": {"rows": rows}}}))
            out.append(((lsn, 0), {TABLE: {"incremental": {"rows": rows}}}))  # the checkpoint after it
            last_rows.append(len(out) - (2 if size else 1))  # a chunk whose rows were all dropped: its checkpoint
    return out, last_rows


events = st.lists(st.tuples(st.sampled_from(["live", "chunk"]), st.integers(0, 4)), max_size=30)


@settings(max_examples=300, deadline=None)
@given(events, st.data())
def test_waiting_chunks_are_those_whose_last_row_is_not_acknowledged(ev: list[tuple[str, int]], data: Any) -> None:
    positions, last_rows = _stream(ev)
    pacer = ChunkPacer(in_flight=1000, clock=Clock())
    pacer.expect_commits()
    released = 0
    acked = -1
    chunk_at = iter(last_rows)
    next_chunk = next(chunk_at, None)
    for i, (stream, tables) in enumerate(positions):
        while next_chunk is not None and i == next_chunk:
            pacer.released(stream, TABLE, tables[TABLE]["incremental"]["rows"])
            released += 1
            next_chunk = next(chunk_at, None)
        if data.draw(st.booleans()):  # the orchestrator acknowledges what was handed out so far
            acked = data.draw(st.integers(acked if acked >= 0 else 0, i))
            pacer.committed(*positions[acked])
        expected = sum(1 for last in last_rows[:released] if last > acked)
        assert pacer.waiting == expected


def test_the_next_chunk_waits_for_acknowledgements_and_the_throttle() -> None:
    clock = Clock()
    pacer = ChunkPacer(pause=0.5, in_flight=2, stall_after=30.0, clock=clock)
    pacer.expect_commits()
    assert pacer.ready()
    pacer.read()
    assert not pacer.ready()  # the throttle
    clock.now += 0.5
    assert pacer.ready()
    pacer.released((200, 0), TABLE, 10)
    pacer.released((300, 0), TABLE, 20)
    assert not pacer.ready()  # two chunks in flight
    pacer.committed((200, 0), {TABLE: {"incremental": {"rows": 9}}})  # inside the first chunk
    assert not pacer.ready()
    pacer.committed((200, 0), {TABLE: {"incremental": {"rows": 10}}})  # its last row
    assert pacer.ready()
    pacer.released((400, 0), TABLE, 30)
    pacer.committed((400, 2), {})  # inside a later transaction: everything before it
    assert pacer.waiting == 0


def test_a_finished_table_acknowledges_its_last_chunk_and_a_stall_gives_way() -> None:
    clock = Clock()
    pacer = ChunkPacer(in_flight=1, stall_after=30.0, clock=clock)
    pacer.expect_commits()
    pacer.released((200, 0), TABLE, 10)
    pacer.committed((200, 0), {TABLE: {"lsn": "0/C8"}})  # the checkpoint after the table's last chunk
    assert pacer.waiting == 0
    pacer.released((300, 0), TABLE, 20)
    assert not pacer.ready()
    clock.now += 29.9
    assert not pacer.ready()
    clock.now += 0.2
    assert pacer.ready()  # an acknowledgement that never comes costs time, not the snapshot


def test_without_commits_only_the_throttle_paces() -> None:
    pacer = ChunkPacer(in_flight=1, clock=Clock())
    for lsn in range(5):
        pacer.released((lsn, 0), TABLE, lsn)
    assert pacer.ready()
    assert pacer.waiting == 0
