"""console-output-provider: prints each envelope on stdout (simple, structured or jsonl)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from dstream.sdk import Envelope, OutputProvider, ProviderConfig


class ConsoleConfig(ProviderConfig):
    outputFormat: Literal["simple", "structured", "jsonl"] = Field(  # noqa: N815 - upstream's name
        default="simple",
        description=(
            "simple: the data as one JSON line; structured: data and metadata, indented; "
            "jsonl: the envelope as received"
        ),
    )


class ConsoleOutputProvider(OutputProvider[ConsoleConfig]):
    name = "console-output-provider"
    version = "0.1.0"
    Config = ConsoleConfig

    def __init__(self, config: ConsoleConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.count = 0

    def write(self, batch: list[Envelope]) -> None:
        fmt = self.config.outputFormat
        parts: list[bytes] = []
        for env in batch:
            self.count += 1
            if fmt == "jsonl":
                parts.append(env.raw + b"\n")
            elif fmt == "simple":
                parts.append(json.dumps(env.data, separators=(",", ":")).encode() + b"\n")
            else:
                text = (
                    f"--- message {self.count}\n"
                    f"data:     {json.dumps(env.data, indent=None)}\n"
                    f"metadata: {json.dumps(env.metadata, indent=None)}\n"
                )
                parts.append(text.encode())
        # Through the SDK, so the lines stay in order with the acks that follow them.
        self.ctx.write_stdout(b"".join(parts))


main = ConsoleOutputProvider.main
