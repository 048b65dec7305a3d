"""Hosting an output: hand batches of envelopes to ``write()``, and ack each checkpoint
once everything before it has been written."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from dstream import protocol
from dstream.sdk.types import Envelope

if TYPE_CHECKING:
    from dstream.sdk.context import Context
    from dstream.sdk.wire import Wire


class _Output(Protocol):
    batch_size: int

    def write(self, batch: list[Envelope]) -> None: ...


class OutputLoop:
    def __init__(self, provider: _Output, wire: Wire, ctx: Context) -> None:
        self.provider = provider
        self.wire = wire
        self.ctx = ctx

    def run(self) -> int:
        provider, wire = self.provider, self.wire
        size = max(1, provider.batch_size)
        while not self.ctx.stopping.is_set():
            block = wire.read_block()
            if not block:
                break
            batch: list[Envelope] = []
            has_control = protocol.CHECKPOINT_TOKEN in block
            for line in block.split(b"\n")[:-1]:
                if not line.strip():
                    continue
                if has_control and protocol.CHECKPOINT_TOKEN in line:
                    value: Any = protocol.decode_object(line)
                    is_cp, position = protocol.control_value(value, "checkpoint")
                    if is_cp:
                        if batch:
                            provider.write(batch)
                            batch = []
                        wire.send(protocol.ack(position))
                        continue
                    batch.append(Envelope(line, value))
                else:
                    batch.append(Envelope(line))
                if len(batch) >= size:
                    provider.write(batch)
                    batch = []
            if batch:
                provider.write(batch)
            wire.flush()
        return 0
