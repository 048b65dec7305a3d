"""Docker's attach stream framing: an 8-byte header per frame.

Header: stream type (1 = stdout, 2 = stderr), three zero bytes, payload size as a
big-endian uint32. The demultiplexer is fed arbitrary chunks and returns the payload
bytes of the wanted stream; partial headers and payloads carry over between chunks.
"""

from __future__ import annotations

import struct

STDOUT = 1
STDERR = 2
_HEADER = struct.Struct(">BxxxL")


class FrameDemux:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._want = 0  # payload bytes still owed by the current frame
        self._stream = 0

    def feed(self, chunk: bytes) -> dict[int, bytes]:
        """Payload bytes per stream type found in ``chunk`` (and what carried over)."""
        out: dict[int, list[bytes]] = {}
        view = memoryview(chunk)
        pos = 0
        while pos < len(view):
            if self._want:
                take = min(self._want, len(view) - pos)
                out.setdefault(self._stream, []).append(bytes(view[pos : pos + take]))
                self._want -= take
                pos += take
                continue
            need = _HEADER.size - len(self._buffer)
            self._buffer += view[pos : pos + need]
            pos += min(need, len(view) - pos)
            if len(self._buffer) == _HEADER.size:
                self._stream, self._want = _HEADER.unpack(self._buffer)
                self._buffer.clear()
        return {stream: b"".join(parts) for stream, parts in out.items()}

    def payload(self, chunks: list[bytes], stream: int = STDOUT) -> bytes:
        """The payload bytes of ``stream`` in ``chunks`` (other streams' dropped), copied once:
        the data path's form of :meth:`feed`, which slices through memoryviews and joins at the end."""
        parts: list[memoryview] = []
        header = _HEADER.size
        for chunk in chunks:
            view = memoryview(chunk)
            pos, end = 0, len(chunk)
            while pos < end:
                if self._want:
                    take = min(self._want, end - pos)
                    if self._stream == stream:
                        parts.append(view[pos : pos + take])
                    self._want -= take
                    pos += take
                elif not self._buffer and end - pos >= header:
                    self._stream, self._want = _HEADER.unpack_from(chunk, pos)
                    pos += header
                else:  # a header split between chunks
                    take = min(header - len(self._buffer), end - pos)
                    self._buffer += view[pos : pos + take]
                    pos += take
                    if len(self._buffer) == header:
                        self._stream, self._want = _HEADER.unpack(self._buffer)
                        self._buffer.clear()
        return b"".join(parts)

    @property
    def clean(self) -> bool:
        """True when no frame is half-read (a stream that ends here ended cleanly)."""
        return not self._want and not self._buffer


def frame(stream: int, payload: bytes) -> bytes:
    """Build one frame (for tests)."""
    return _HEADER.pack(stream, len(payload)) + payload
