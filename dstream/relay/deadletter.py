"""Dead letters: lines the relay could not forward, kept byte for byte in a JSONL file.

Each record: ``time``, ``task``, ``run_id``, ``stage`` (``input``, ``transform-N``: whose
stdout the line came from), ``reason``, ``line`` (1-based line number in that stage's
stdout during that run), ``after_checkpoint`` (the last checkpoint relayed before it, or the
one the run resumed from), ``size``, ``raw_base64`` (the exact bytes) and, when they are
valid UTF-8, ``raw``. Oversized lines are streamed into the record instead of being held
in memory. An envelope a transform rejected has ``reason`` (the transform's) and
``envelope`` (the JSON it rejected) instead of the raw bytes.

Every record is flushed and fsynced before the relay goes on, so a checkpoint persisted
after it never covers a record that is not on disk.
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
from pathlib import Path
from typing import IO, Any

from dstream import private, protocol
from dstream.errors import StateError


def _now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class DeadLetterWriter:
    def __init__(self, path: Path, task: str, run_id: str) -> None:
        self.path = path
        self.task = task
        self.run_id = run_id
        self.count = 0
        self._file: IO[bytes] | None = None
        self._carry = b""
        self._streaming_size = 0

    def _open(self) -> IO[bytes]:
        if self._file is None:
            try:
                self._file = private.open_append(self.path)
            except OSError as exc:
                raise StateError(f"cannot open the dead-letter file {self.path}: {exc.strerror}") from None
        return self._file

    def _header(self, reason: str, line: int, after: Any, stage: str) -> dict[str, Any]:
        return {
            "time": _now(),
            "task": self.task,
            "run_id": self.run_id,
            "stage": stage,
            "reason": reason,
            "line": line,
            "after_checkpoint": after,
        }

    def write(self, reason: str, raw: bytes, line: int, after: Any, detail: str = "", stage: str = "input") -> None:
        record = self._header(reason, line, after, stage)
        if detail:
            record["detail"] = detail
        record["size"] = len(raw)
        record["raw_base64"] = base64.b64encode(raw).decode("ascii")
        with contextlib.suppress(UnicodeDecodeError):
            record["raw"] = raw.decode("utf-8")
        out = self._open()
        out.write(protocol.encode(record))
        self._sync()

    def write_rejected(self, reason: str, envelope: Any, line: int, after: Any, stage: str) -> None:
        record = self._header(reason, line, after, stage)
        record["envelope"] = envelope
        self._open().write(protocol.encode(record))
        self._sync()

    # Streaming form for oversized lines: begin → write… → end.
    def begin(self, reason: str, line: int, after: Any, detail: str, stage: str = "input") -> None:
        record = self._header(reason, line, after, stage)
        record["detail"] = detail
        head = protocol.encode(record).rstrip(b"\n")
        out = self._open()
        out.write(head[:-1] + b',"raw_base64":"')
        self._carry = b""
        self._streaming_size = 0

    def write_raw(self, data: bytes) -> None:
        data = self._carry + data
        cut = len(data) - len(data) % 3
        self._carry = data[cut:]
        self._streaming_size += cut
        self._open().write(base64.b64encode(data[:cut]))

    def end(self) -> None:
        out = self._open()
        size = self._streaming_size + len(self._carry)
        out.write(base64.b64encode(self._carry) + b'","size":' + str(size).encode() + b"}\n")
        self._carry = b""
        self._sync()

    def _sync(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def default_path(base_dir: Path, task: str, configured: str | None) -> Path:
    if configured:
        path = Path(configured).expanduser()
        return path if path.is_absolute() else base_dir / path
    return base_dir / ".dstream" / "dead-letter" / f"{private.file_name(task)}.jsonl"
