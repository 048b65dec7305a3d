"""file-input-provider: replays a JSONL file; the checkpoint is the byte offset reached.

Lines that already are envelopes (``{"data": …}``) are replayed as they are; any other
JSON object becomes the ``data`` of a new envelope. With ``follow = true`` it keeps
reading as the file grows (like ``tail -f``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import Field

from dstream.sdk import ActionableError, Checkpoint, Duration, InputProvider, ProviderConfig, Raw, Record, Resource

if TYPE_CHECKING:
    from collections.abc import Iterator


class FileInputConfig(ProviderConfig):
    path: str = Field(description="the JSONL file to read")
    follow: bool = Field(default=False, description="keep reading as the file grows")
    poll_interval: Duration = Field(
        default=0.5, gt=0, description='time between checks for new lines when following: seconds (0.5) or "500ms"'
    )
    checkpoint_every: int = Field(default=1000, ge=1, description="checkpoint every N lines")


class FileInputProvider(InputProvider[FileInputConfig]):
    name = "file-input-provider"
    version = "0.1.0"
    Config = FileInputConfig

    def __init__(self, config: FileInputConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.checkpoint_every = config.checkpoint_every
        self.path = Path(config.path)
        if not self.path.exists() and not config.follow:
            raise ActionableError(f"{self.path} does not exist (follow = true waits for it to appear)")

    def check(self) -> Iterator[Resource]:
        """The file can be read (or, with follow = true, may appear later)."""
        if self.path.exists() and not os.access(self.path, os.R_OK):
            raise ActionableError(f"cannot read {self.path}: not readable by this user")
        present = self.path.exists()
        details = {"bytes": self.path.stat().st_size} if present else {"follow": "waits for it to appear"}
        yield Resource("file", str(self.path), state="present" if present else "absent", details=details)

    def read(self, checkpoint: Any | None) -> Iterator[Record | Raw | Checkpoint]:
        offset = int(checkpoint.get("offset", 0)) if isinstance(checkpoint, dict) else 0
        while not self.path.exists():
            if not self.ctx.sleep(self.config.poll_interval):
                return
        with self.path.open("rb") as f:
            size = self.path.stat().st_size
            if offset > size:
                raise ValueError(
                    f"checkpoint offset {offset} is past the end of {self.path} ({size} bytes): was it truncated?"
                )
            f.seek(offset)
            if offset:
                self.log.info("resuming %s at byte %d", self.path, offset)
            partial = b""
            while True:
                line = f.readline()
                if line.endswith(b"\n"):
                    line, partial = partial + line, b""
                    offset += len(line)
                    if line.strip():
                        yield self._record(line, offset)
                    continue
                partial += line  # an incomplete last line: wait for the rest when following
                if not self.config.follow:
                    if partial.strip():
                        offset += len(partial)
                        yield self._record(partial, offset)
                    yield Checkpoint({"offset": offset})
                    return
                if not self.ctx.sleep(self.config.poll_interval):
                    return

    def _record(self, line: bytes, offset: int) -> Record | Raw:
        position = {"offset": offset}
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            # Replay it as it is: the orchestrator applies the task's on_error to it.
            return Raw(line, position)
        if isinstance(value, dict) and "data" in value:
            return Raw(line, position)  # already an envelope: replay byte for byte
        return Record(value, {"Source": str(self.path)}, position=position)


main = FileInputProvider.main
