"""The conformance suite's probe of a transform: one envelope at a time, each followed by a
checkpoint, so every output can be attributed to the envelope it came from."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from dstream import protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from dstream.runtime.base import ProviderProcess

SAMPLES = 6


def sample(n: int) -> bytes:
    return protocol.data(
        {"id": n, "name": f"row {n}", "amount": n * 1.5},
        {"TableName": "dbo.Conformance", "OperationType": "Insert", "LSN": f"{n:020X}"},
    )


def probe_checkpoint(n: int) -> bytes:
    # Keys out of sorted order, odd spacing: a transform must forward it unchanged, not re-encode it.
    return b'{"checkpoint": {"probe": "dstream", "n": %d}}\n' % n


class TransformProbe:
    def __init__(
        self,
        proc: ProviderProcess,
        rest: bytes,
        timeout: float,
        record: Callable[[str, bool | None, str], None],
        shorten: Callable[[bytes, int], str] | None = None,
    ) -> None:
        self.proc = proc
        self.buffer = rest
        self.timeout = timeout
        self.record = record
        # How a line is shown in a detail: redacted, then cut (a cut first could split a secret).
        self.shorten = shorten or (lambda line, limit: line[:limit].decode("utf-8", "replace"))
        self.rejected = 0

    async def _line(self, deadline: float) -> bytes | None:
        while b"\n" not in self.buffer:
            try:
                chunk = await asyncio.wait_for(self.proc.read(), max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                return None
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    async def run(self) -> None:
        outputs: list[int] = []
        self.rejected = 0
        for n in range(SAMPLES):
            emitted = await self._one(n)
            if emitted is None:
                return
            outputs.append(emitted)
        await self.proc.close_stdin()
        trailing = await self._after_the_last(time.monotonic() + self.timeout)
        if trailing:
            self._fail(f"{trailing} line(s) after the last checkpoint: emitted after their checkpoint")
            return
        self.record(
            "transform",
            True,
            f"{SAMPLES} envelopes, each followed by a checkpoint: outputs per envelope {outputs}"
            + (f" ({self.rejected} dead-lettered)" if self.rejected else "")
            + "; every checkpoint forwarded unchanged and after its envelope's outputs",
        )

    def _fail(self, detail: str) -> None:
        self.record("transform", False, detail)

    async def _one(self, n: int) -> int | None:
        """Send envelope ``n`` and its checkpoint; how many lines came out before the checkpoint."""
        expected = probe_checkpoint(n)
        await self.proc.write(sample(n) + expected)
        emitted = 0
        deadline = time.monotonic() + self.timeout
        while True:
            line = await self._line(deadline)
            if line is None:
                self._fail(f"checkpoint {n} was not forwarded within {self.timeout:g}s")
                return None
            if not line.strip():
                continue
            try:
                value: Any = protocol.decode_object(line)
            except protocol.DecodeError:
                self._fail(f"not a JSON object: {self.shorten(line, 80)!r}")
                return None
            if protocol.control_value(value, "checkpoint")[0]:
                if line + b"\n" != expected:
                    self._fail(f"forwarded {self.shorten(line, 80)!r} for checkpoint {n}, not the line as it was sent")
                    return None
                return emitted
            is_dead, verdict = protocol.control_value(value, "dead_letter")
            if is_dead:
                if not (isinstance(verdict, dict) and isinstance(verdict.get("reason"), str)):
                    self._fail(f"a dead_letter line without a reason: {self.shorten(line, 80)!r}")
                    return None
                self.rejected += 1
            elif protocol.control_value(value, "gauge")[0]:
                continue
            elif "data" not in value:
                self._fail(f"a line that is neither data nor a protocol line: {self.shorten(line, 80)!r}")
                return None
            emitted += 1

    async def _after_the_last(self, deadline: float) -> int:
        count = 0
        while (line := await self._line(deadline)) is not None:
            if line.strip() and b'"gauge"' not in line:
                count += 1
        return count
