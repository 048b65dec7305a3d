"""Hosting an input: emit what ``read()`` yields, with checkpoints by count and time, and
deliver ``{"committed": …}`` lines from stdin to ``on_committed``."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from dstream import protocol
from dstream.sdk.types import Checkpoint, Raw, Record

if TYPE_CHECKING:
    from dstream.sdk.context import Context
    from dstream.sdk.wire import Wire


class _Input(Protocol):
    checkpoint_every: int | None
    checkpoint_interval: float | None

    def read(self, checkpoint: Any) -> Any: ...

    def on_committed(self, position: Any) -> None: ...

    @classmethod
    def wants_commits(cls) -> bool: ...


class _CheckpointState:
    def __init__(self, provider: _Input) -> None:
        self.every = provider.checkpoint_every
        self.interval = provider.checkpoint_interval
        self.position: Any = None
        self.unsaved = 0
        self.last = time.monotonic()

    def due(self) -> bool:
        return (self.every is not None and self.unsaved >= self.every) or self.interval_elapsed()

    def interval_elapsed(self) -> bool:
        return self.interval is not None and time.monotonic() - self.last >= self.interval

    def saved(self) -> None:
        self.unsaved = 0
        self.last = time.monotonic()


class InputLoop:
    """One ``run`` of an input provider over a :class:`~dstream.sdk.wire.Wire`."""

    def __init__(self, provider: _Input, wire: Wire, ctx: Context) -> None:
        self.provider = provider
        self.wire = wire
        self.ctx = ctx
        self.state = _CheckpointState(provider)

    def run(self, checkpoint: Any) -> int:
        ctx = self.ctx
        # Going idle: checkpoint what was emitted so far, then flush, so it can be acked.
        ctx._before_sleep.append(self._checkpoint_now)
        ctx._before_sleep.append(self.wire.flush)
        if self.provider.wants_commits():
            ctx._on_committed = self.provider.on_committed
            threading.Thread(target=self._read_commits, daemon=True).start()
        items = self.provider.read(checkpoint)
        if inspect.isasyncgen(items):
            asyncio.run(self._consume_async(items))
        else:
            assert isinstance(items, Iterator)
            self._consume(items)
        return 0

    def _read_commits(self) -> None:
        while True:
            line = self.wire.reader.readline()
            if not line:
                self.ctx.stopping.set()  # the orchestrator went away
                return
            try:
                value = protocol.decode_object(line)
            except protocol.DecodeError:
                continue
            is_commit, position = protocol.control_value(value, "committed")
            if is_commit:
                self.ctx._committed.put(position)

    def _checkpoint_now(self) -> None:
        """Before idling: the time-based checkpoint that a next record would have triggered."""
        state = self.state
        if state.unsaved and state.position is not None and state.interval_elapsed():
            self._save()

    def _consume(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                self._emit(item)
                if self.ctx._on_committed is not None:
                    self.ctx.deliver_commits()
                if self.ctx.stopping.is_set():
                    break
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        self._finish()

    async def _consume_async(self, items: AsyncIterator[Any]) -> None:
        try:
            async for item in items:
                self._emit(item)
                if self.ctx._on_committed is not None:
                    self.ctx.deliver_commits()
                if self.ctx.stopping.is_set():
                    break
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
        self._finish()

    def _emit(self, item: Any) -> None:
        state = self.state
        if isinstance(item, Record):
            self.wire.send(protocol.data(item.data, item.metadata))
        elif isinstance(item, Raw):
            line = item.line
            self.wire.send(line if line.endswith(b"\n") else line + b"\n")
        elif isinstance(item, Checkpoint):
            state.position = item.position
            self._save()
            return
        elif isinstance(item, dict):
            self.wire.send(protocol.encode(item))
            return
        else:
            raise TypeError(f"read() yielded {type(item).__name__}; yield Record, Raw, Checkpoint or dict")
        if item.position is not None:  # a Record or Raw that carries its position
            state.position = item.position
            state.unsaved += 1
            if state.due():
                self._save()

    def _save(self) -> None:
        self.wire.send(protocol.checkpoint(self.state.position))
        self.state.saved()

    def _finish(self) -> None:
        state = self.state
        if state.unsaved and state.position is not None:
            self._save()
        self.wire.flush()
