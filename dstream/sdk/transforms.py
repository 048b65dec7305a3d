"""Hosting a transform: each envelope in, zero or more out; checkpoints forwarded as they
came, after everything emitted for the envelopes before them.

A rejected envelope (``Reject``, or any exception from ``transform``) becomes a
``{"dead_letter": {"reason": …, "envelope": …}}`` line, to which the orchestrator applies the
task's ``on_error``: with the default ``"fail"`` the run stops there, and since the
checkpoint after the envelope is never acknowledged, nothing is lost.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from dstream import protocol
from dstream.sdk.types import Envelope, Record, Reject

if TYPE_CHECKING:
    from collections.abc import Callable

    from dstream.sdk.context import Context
    from dstream.sdk.wire import Wire


class _Transform(Protocol):
    def transform(self, envelope: Envelope) -> Any: ...

    def flush(self) -> Any: ...


class TransformLoop:
    def __init__(self, provider: _Transform, wire: Wire, ctx: Context) -> None:
        self.provider = provider
        self.wire = wire
        self.ctx = ctx
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logged: set[type[BaseException]] = set()

    def run(self) -> int:
        apply: Callable[[Envelope], Iterable[Any]] = self._apply
        fn = self.provider.transform
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            self._loop = asyncio.new_event_loop()
            apply = self._apply_async
        try:
            wire = self.wire
            while not self.ctx.stopping.is_set():
                block = wire.read_block()
                if not block:
                    break
                self._block(block, apply)
                wire.flush()
            self._emit_all(self.provider.flush())
            wire.flush()
        finally:
            if self._loop is not None:
                self._loop.close()
        return 0

    def _block(self, block: bytes, apply: Callable[[Envelope], Iterable[Any]]) -> None:
        has_control = protocol.CHECKPOINT_TOKEN in block
        send = self.wire.send
        for line in block.split(b"\n")[:-1]:
            if not line.strip():
                continue
            value: dict[str, Any] | None = None
            if has_control and protocol.CHECKPOINT_TOKEN in line:
                value = protocol.decode_object(line)
                if protocol.control_value(value, "checkpoint")[0]:
                    self._emit_all(self.provider.flush())
                    send(line + b"\n")  # unchanged: the orchestrator matches it byte for byte
                    continue
            envelope = Envelope(line, value)
            try:
                results = list(apply(envelope))
                lines = [_encode(item) for item in results]
            except Reject as exc:
                send(_dead_letter(str(exc) or type(exc).__name__, envelope))
                continue
            except Exception as exc:
                if type(exc) not in self._logged:
                    self._logged.add(type(exc))
                    self.ctx.log.exception("transform failed on an envelope (dead-lettered)")
                send(_dead_letter(f"{type(exc).__name__}: {exc}", envelope))
                continue
            for out in lines:
                send(out)

    def _apply(self, envelope: Envelope) -> Iterable[Any]:
        return _items(self.provider.transform(envelope))

    def _apply_async(self, envelope: Envelope) -> Iterable[Any]:
        assert self._loop is not None
        return self._loop.run_until_complete(_collect(self.provider.transform(envelope)))

    def _emit_all(self, items: Iterable[Any] | None) -> None:
        for item in items or ():
            self.wire.send(_encode(item))


async def _collect(result: Any) -> Iterable[Any]:
    if isinstance(result, AsyncIterator):
        return [item async for item in result]
    if inspect.isawaitable(result):
        result = await result
    return _items(result)


def _items(result: Any) -> Iterable[Any]:
    """What transform() gave, as items: one envelope on its own is a passthrough."""
    if result is None:
        return ()
    if isinstance(result, Envelope | Record | dict):
        return (result,)
    return result  # type: ignore[no-any-return]


def _encode(item: Any) -> bytes:
    if isinstance(item, Envelope):
        return item.raw + b"\n"
    if isinstance(item, Record):
        return protocol.data(item.data, item.metadata)
    if isinstance(item, dict):
        return protocol.encode(item)
    raise TypeError(f"transform() returned {type(item).__name__}; return Envelope, Record or dict items")


def _dead_letter(reason: str, envelope: Envelope) -> bytes:
    try:
        body: Any = envelope.value
    except protocol.DecodeError:
        body = envelope.raw.decode("utf-8", "replace")
    return protocol.dead_letter(reason, body)
