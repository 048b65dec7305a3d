"""file-output-provider: appends each envelope, exactly as received, as one line of a file.

Acks follow the flush of each batch (and its fsync when ``fsync = true``, the default),
so a checkpoint is only acknowledged once the lines before it are on disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field

from dstream.sdk import Envelope, OutputProvider, ProviderConfig


class FileOutputConfig(ProviderConfig):
    path: str = Field(description="file to append to (created with its directory if missing)")
    fsync: bool = Field(default=True, description="fsync after every batch, before acking it")


class FileOutputProvider(OutputProvider[FileOutputConfig]):
    name = "file-output-provider"
    version = "0.1.0"
    Config = FileOutputConfig
    batch_size = 10_000

    def __init__(self, config: FileOutputConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        path = Path(config.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("ab")
        self.log.info("appending to %s", path)

    def write(self, batch: list[Envelope]) -> None:
        self.file.write(b"".join(env.raw + b"\n" for env in batch))
        self.file.flush()
        if self.config.fsync:
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


main = FileOutputProvider.main
