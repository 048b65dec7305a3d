"""counter-input-provider: emits 1, 2, 3 … with checkpoints ``{"value": N}``; resumes after one."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydantic import Field

from dstream.sdk import DurationMs, InputProvider, ProviderConfig, Record

if TYPE_CHECKING:
    from collections.abc import Iterator


class CounterConfig(ProviderConfig):
    interval: DurationMs = Field(
        default=1.0,
        description='time between envelopes: milliseconds (250) or a duration ("250ms", "2s"); 0: as fast as possible',
    )
    max_count: int = Field(default=0, ge=0, description="stop after this value (0: never)")
    checkpoint_every: int = Field(default=100, ge=1, description="emit a checkpoint every N envelopes")
    include_timestamp: bool = Field(default=True, description="add data.timestamp (turn off for reproducible output)")
    payload_bytes: int = Field(default=0, ge=0, description="pad each envelope with a data.payload of this many bytes")


class CounterInputProvider(InputProvider[CounterConfig]):
    name = "counter-input-provider"
    version = "0.1.0"
    Config = CounterConfig

    def __init__(self, config: CounterConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.checkpoint_every = config.checkpoint_every
        # Time-based checkpoints only when slow, so fast runs checkpoint by count alone.
        self.checkpoint_interval = 1.0 if config.interval else None

    def read(self, checkpoint: Any | None) -> Iterator[Record]:
        start = int(checkpoint["value"]) if isinstance(checkpoint, dict) and "value" in checkpoint else 0
        if start:
            self.log.info("resuming after value %d", start)
        cfg = self.config
        delay = cfg.interval
        padding = "x" * cfg.payload_bytes
        value = start
        while not cfg.max_count or value < cfg.max_count:
            value += 1
            data: dict[str, Any] = {"value": value}
            if cfg.include_timestamp:
                data["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if padding:
                data["payload"] = padding
            yield Record(data, {"Source": "counter", "Sequence": value}, position={"value": value})
            if delay and not self.ctx.sleep(delay):
                return


main = CounterInputProvider.main
