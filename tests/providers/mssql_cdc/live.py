"""The provider in this process, on a thread, as the orchestrator runs it: a command
envelope on stdin, protocol lines collected from stdout, stopped like SIGTERM."""

from __future__ import annotations

import io
import threading
from typing import TYPE_CHECKING, Any

from dstream_mssql_cdc import MssqlCdcInputProvider

from dstream import protocol
from dstream.sdk.host import Host
from tests.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

WAIT = 120.0


class _Lines(io.RawIOBase):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.buffer = b""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        with self.lock:
            self.buffer += bytes(data)
        return len(data)


class LiveInput:
    def __init__(self, config: dict[str, Any], checkpoint: Any = None, task: str = "it") -> None:
        envelope = protocol.command_envelope("run", config, checkpoint, task, protocol.ORCHESTRATOR_FEATURES)
        stdin = io.BytesIO(envelope)
        self._out = _Lines()
        self.host = Host(MssqlCdcInputProvider, stdin, self._out)  # type: ignore[arg-type]
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.exit_code = self.host.run()

    @property
    def messages(self) -> list[dict[str, Any]]:
        with self._out.lock:
            raw = self._out.buffer
        return [protocol.decode_object(line) for line in raw.split(b"\n")[:-1] if line.strip()]

    @property
    def data(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if "data" in m]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Row envelopes (no SchemaChange)."""
        return [m for m in self.data if m["metadata"]["OperationType"] != "SchemaChange"]

    @property
    def checkpoints(self) -> list[Any]:
        return [m["checkpoint"] for m in self.messages if "checkpoint" in m and "data" not in m]

    def wait(self, condition: Callable[[LiveInput], bool], what: str, timeout: float = WAIT) -> None:
        def check() -> bool:
            if condition(self):
                return True
            if self.exit_code is not None:
                raise AssertionError(f"the provider exited ({self.exit_code}) before {what}: {self.messages[:1]}")
            return False

        wait_until(check, what, timeout=timeout, interval=0.1)

    def stop(self) -> int:
        self.host.ctx.stopping.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the provider did not stop"
        assert self.exit_code is not None
        return self.exit_code
