"""The container stdout reader (dstream/runtime/container.py ``_Chunks``): what the attach
socket gives, in order, with memory bounded when the relay falls behind, and an end for a
closed or reset connection."""

from __future__ import annotations

import asyncio
import os
import socket
import threading

from dstream.runtime.container import _Chunks
from dstream.runtime.frames import STDERR, STDOUT, FrameDemux, frame

LIMIT = 64 * 1024


def test_every_byte_in_order_and_memory_bounded_while_nobody_reads() -> None:
    payload = os.urandom(4 * 1024 * 1024)
    # Docker's framing, in frames of 32 KiB as dockerd writes them, with a stderr frame among them.
    stream = b"".join(frame(STDOUT, payload[i : i + 32768]) for i in range(0, len(payload), 32768))
    cut = 3 * (8 + 32768)  # between two frames
    stream = stream[:cut] + frame(STDERR, b"a log line\n") + stream[cut:]

    async def main() -> bytes:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        writer = threading.Thread(target=lambda: (theirs.sendall(stream), theirs.close()))
        loop = asyncio.get_running_loop()
        _, chunks = await loop.create_connection(lambda: _Chunks(LIMIT), sock=ours)
        writer.start()
        held = 0
        for _ in range(200):  # nobody reads: the transport must stop reading, not buffer 4 MiB
            await asyncio.sleep(0.002)
            held = max(held, chunks._size)
        assert held <= LIMIT + 256 * 1024, held  # the limit plus at most one read of the transport
        demux, out = FrameDemux(), []
        while got := await chunks.read():
            out.append(demux.payload(got))
        await asyncio.to_thread(writer.join)
        assert demux.clean
        return b"".join(out)

    assert asyncio.run(main()) == payload


def test_a_reset_connection_is_an_end() -> None:
    async def main() -> list[bytes]:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        _, chunks = await loop.create_connection(lambda: _Chunks(LIMIT), sock=ours)
        theirs.sendall(b"abc")
        first = await chunks.read()
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        theirs.close()
        return [*first, *await asyncio.wait_for(chunks.read(), 5)]

    assert asyncio.run(main()) == [b"abc"]
