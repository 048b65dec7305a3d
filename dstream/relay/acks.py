"""The output's stdout: acks for the ledger, gauges, and the rest passed through.

An output answers ``{"ack": …}`` for each checkpoint once everything before it is durable.
Whatever else it prints that is not a protocol line (the console provider's output, say)
goes to dstream's own stdout, in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO

from dstream import envelope, log, protocol
from dstream.relay.framing import Block, LineFramer, Oversize
from dstream.runtime.base import READ_CHUNK

if TYPE_CHECKING:
    from collections.abc import Callable

    from dstream.runtime.base import ProviderProcess

_log = log.get("relay")


class AckReader:
    def __init__(
        self,
        output: ProviderProcess,
        *,
        leftover: bytes,
        max_line_bytes: int,
        on_ack: Callable[[Any], None],
        on_gauge: Callable[[Any], None],
        stdout: BinaryIO | None,
    ) -> None:
        self.output = output
        self.on_ack = on_ack
        self.on_gauge = on_gauge
        self.stdout = stdout
        self._leftover = leftover
        self._framer = LineFramer(max_line_bytes)
        self._stdout_broken = False

    async def run(self) -> None:
        framer = self._framer
        data = self._leftover
        while True:
            if data:
                self._events(framer.feed(data))
            data = await self.output.read(READ_CHUNK)
            if not data:
                self._events(framer.finish())
                break

    def _events(self, events: list[Block | Oversize]) -> None:
        for event in events:
            if isinstance(event, Block):
                self._block(event.data)
            elif event.stage == "start":
                _log.warning("the output printed a stdout line over max_line_bytes; it was dropped")

    def _block(self, block: bytes) -> None:
        hidden = envelope.may_hide_control_key(block)
        if not hidden and protocol.ACK_TOKEN not in block and protocol.GAUGE_TOKEN not in block:
            self._passthrough(block)
            return
        other: list[bytes] = []
        for line in block.split(b"\n")[:-1]:
            if hidden or protocol.ACK_TOKEN in line or protocol.GAUGE_TOKEN in line:
                # Only a valid envelope is an ack; anything else is passed through as text.
                value = envelope.check_line(line)[2] if not envelope.is_blank(line) else None
                is_ack, position = protocol.control_value(value, "ack")
                if is_ack:
                    self.on_ack(position)
                    continue
                is_gauge, gauge = protocol.control_value(value, "gauge")
                if is_gauge:
                    self.on_gauge(gauge)
                    continue
            other.append(line)
        if other:
            self._passthrough(b"\n".join(other) + b"\n")

    def _passthrough(self, data: bytes) -> None:
        if self.stdout is None or self._stdout_broken:
            return
        try:
            self.stdout.write(data)
            self.stdout.flush()
        except (BrokenPipeError, ValueError, OSError):
            self._stdout_broken = True

    def flush(self) -> None:
        if self.stdout is not None and not self._stdout_broken:
            try:
                self.stdout.flush()
            except (OSError, ValueError):
                self._stdout_broken = True
