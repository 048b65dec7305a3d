"""file-output-provider: appends each envelope, exactly as received, as one line of a file.

Acks follow the flush of each batch (and its fsync when ``fsync = true``, the default),
so a checkpoint is only acknowledged once the lines before it are on disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pydantic import Field

from dstream.sdk import ActionableError, Envelope, OutputProvider, ProviderConfig, Resource

if TYPE_CHECKING:
    from collections.abc import Iterator


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
        self.path = Path(config.path)
        self._file: BinaryIO | None = None  # opened by the first write: `check` changes nothing

    @property
    def file(self) -> BinaryIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._repair_torn_tail(self.path)
            self._file = self.path.open("ab")
            self.log.info("appending to %s", self.path)
        return self._file

    def check(self) -> Iterator[Resource]:
        """The file can be appended to: it, or the first folder of its path that exists, is writable."""
        target = self.path if self.path.exists() else next(p for p in self.path.parents if p.exists())
        if not os.access(target, os.W_OK) or (target != self.path and not target.is_dir()):
            raise ActionableError(f"cannot write {self.path}: {target} is not writable by this user")
        size = self.path.stat().st_size if self.path.exists() else 0
        yield Resource(
            "file", str(self.path), state="present" if self.path.exists() else "absent", details={"bytes": size}
        )

    def _repair_torn_tail(self, path: Path) -> None:
        """Cut a last line left unfinished by a crash (kill -9 can stop a write midway).

        It was never acknowledged (its batch had not returned), so it will be sent again;
        appending after it would glue it to the next line.
        """
        if not path.exists():
            return
        with path.open("r+b") as f:
            end = f.seek(0, os.SEEK_END)
            if end == 0:
                return
            f.seek(end - 1)
            if f.read(1) == b"\n":
                return
            position = end
            while position > 0:
                step = min(65536, position)
                f.seek(position - step)
                chunk = f.read(step)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    position = position - step + newline + 1
                    break
                position -= step
            f.truncate(position)
        self.log.warning("%s ended with an unfinished line (%d bytes) from a crash; removed it", path, end - position)

    def write(self, batch: list[Envelope]) -> None:
        self.file.write(b"".join(env.raw + b"\n" for env in batch))
        self.file.flush()
        if self.config.fsync:
            os.fsync(self.file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


main = FileOutputProvider.main
