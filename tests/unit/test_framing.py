"""Relay framing: chunks in, blocks of complete lines out, bounded memory."""

from __future__ import annotations

from dstream.framing import LineFramer


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def begin(self, line_number: int) -> None:
        self.events.append(("begin", line_number))

    def write(self, data: bytes) -> None:
        self.events.append(("write", data))

    def end(self, size: int) -> None:
        self.events.append(("end", size))

    def raw(self) -> bytes:
        return b"".join(d for kind, d in self.events if kind == "write" and isinstance(d, bytes))


def feed_all(framer: LineFramer, chunks: list[bytes]) -> bytes:
    out = b"".join(framer.feed(c) for c in chunks)
    return out + framer.finish()


def test_line_split_across_chunks() -> None:
    framer = LineFramer(1024)
    assert framer.feed(b'{"a":') == b""
    assert framer.feed(b'1}\n{"b"') == b'{"a":1}\n'
    assert framer.feed(b":2}\n") == b'{"b":2}\n'
    assert framer.lines == 2


def test_many_lines_in_one_chunk_come_out_as_one_block() -> None:
    framer = LineFramer(1024)
    chunk = b"".join(b'{"n":%d}\n' % i for i in range(100))
    assert framer.feed(chunk) == chunk
    assert framer.lines == 100


def test_final_line_without_newline_gets_one() -> None:
    framer = LineFramer(1024)
    assert feed_all(framer, [b'{"a":1}\n{"b":2}']) == b'{"a":1}\n{"b":2}\n'
    assert framer.lines == 2


def test_every_byte_split_gives_the_same_lines() -> None:
    data = b'{"a":1}\n{"bb":22}\n\n{"ccc":333}\n'
    for size in range(1, len(data) + 1):
        framer = LineFramer(1024)
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        assert feed_all(framer, chunks) == data


def test_oversized_line_goes_to_the_sink_not_memory() -> None:
    sink = RecordingSink()
    framer = LineFramer(10, sink)
    big = b"x" * 35
    out = feed_all(framer, [b'{"a":1}\n', big[:12], big[12:30], big[30:] + b'\n{"b":2}\n'])
    assert out == b'{"a":1}\n{"b":2}\n'
    assert sink.events[0] == ("begin", 2)
    assert sink.raw() == big
    assert sink.events[-1] == ("end", 35)
    assert framer.pending == 0
    assert framer.lines == 3


def test_oversized_line_finishing_in_a_chunk() -> None:
    sink = RecordingSink()
    framer = LineFramer(10, sink)
    out = feed_all(framer, [b"123456", b"789012345\nok\n"])
    assert out == b"ok\n"
    assert sink.raw() == b"123456789012345"
    assert ("end", 15) in sink.events


def test_oversized_last_line_without_newline() -> None:
    sink = RecordingSink()
    framer = LineFramer(4, sink)
    assert feed_all(framer, [b"abcdefgh"]) == b""
    assert sink.raw() == b"abcdefgh"
    assert sink.events[-1] == ("end", 8)


def test_oversized_line_inside_one_chunk() -> None:
    sink = RecordingSink()
    framer = LineFramer(8, sink)
    out = feed_all(framer, [b"short\n" + b"y" * 20 + b"\nok\n"])
    assert out == b"short\nok\n"
    assert sink.events[0] == ("begin", 2)
    assert sink.raw() == b"y" * 20
    assert framer.lines == 3


def test_docker_frames_demultiplex_across_any_split() -> None:
    from dstream.runtime.frames import STDERR, STDOUT, FrameDemux, frame

    stream = frame(STDOUT, b"hello ") + frame(STDERR, b"log line\n") + frame(STDOUT, b"world\n") + frame(STDOUT, b"")
    for size in (1, 3, 7, 8, 9, len(stream)):
        demux = FrameDemux()
        out: dict[int, bytes] = {STDOUT: b"", STDERR: b""}
        for i in range(0, len(stream), size):
            for kind, data in demux.feed(stream[i : i + size]).items():
                out[kind] += data
        assert out == {STDOUT: b"hello world\n", STDERR: b"log line\n"}
        assert demux.clean
