"""Hosting a transform: each envelope in, zero or more out; checkpoints forwarded as they
came, after everything emitted for the envelopes before them.

A rejected envelope (``Reject``, or any exception from ``transform``) becomes a
``{"dead_letter": {"reason": …, "envelope": …}}`` line, to which the orchestrator applies the
task's ``on_error``: with the default ``"fail"`` the run stops there, and since the
checkpoint after the envelope is never acknowledged, nothing is lost.

A provider may also define ``transform_batch(envelopes)``, for engines that are much faster
over many records at once (the jq provider runs libjq once per batch). It returns one result
per envelope, in order: ``bytes`` (encoded lines, sent as they are), a ``Reject`` instance,
or what ``transform`` would return; or ``None`` for "do these one by one". A batch never
spans a checkpoint. When it raises or returns the wrong number of results, the batch goes
through ``transform`` one envelope at a time, so exactly the failing envelope is rejected.
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
        self._apply: Callable[[Envelope], Iterable[Any]] = self._apply_sync
        self._batch: Callable[[list[Envelope]], list[Any] | None] | None = getattr(provider, "transform_batch", None)
        self._batch_warned = False

    def run(self) -> int:
        fn = self.provider.transform
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            self._loop = asyncio.new_event_loop()
            self._apply = self._apply_async
            self._batch = None
        try:
            wire = self.wire
            while not self.ctx.stopping.is_set():
                block = wire.read_block()
                if not block:
                    break
                self._block(block)
                wire.flush()
            self._emit_all(self.provider.flush())
            wire.flush()
        finally:
            if self._loop is not None:
                self._loop.close()
        return 0

    def _block(self, block: bytes) -> None:
        """Envelopes in runs between checkpoints; each checkpoint after its run's output."""
        lines = block.split(b"\n")
        lines.pop()  # after the last newline
        if protocol.CHECKPOINT_TOKEN not in block:  # the common block: envelopes only
            self._run([Envelope(line) for line in lines if line.strip()])
            return
        run: list[Envelope] = []
        for line in lines:
            if not line.strip():
                continue
            value: dict[str, Any] | None = None
            if protocol.CHECKPOINT_TOKEN in line:
                try:
                    value = protocol.decode_object(line)
                except protocol.DecodeError:
                    value = None  # not a checkpoint: an envelope the transform will reject
                if value is not None and protocol.control_value(value, "checkpoint")[0]:
                    self._run(run)
                    run = []
                    self._emit_all(self.provider.flush())
                    self.wire.send(line + b"\n")  # unchanged: the orchestrator matches it byte for byte
                    continue
            run.append(Envelope(line, value))
        self._run(run)

    def _run(self, envelopes: list[Envelope]) -> None:
        if not envelopes:
            return
        results = self._batched(envelopes) if self._batch is not None else None
        if results is None:
            for envelope in envelopes:
                self._one(envelope)
            return
        out: list[bytes] = []
        for envelope, result in zip(envelopes, results, strict=True):
            if result.__class__ is bytes:
                out.append(result)
            elif isinstance(result, Reject):
                out.append(_dead_letter(str(result) or type(result).__name__, envelope))
            else:
                try:
                    out.extend([_encode(item) for item in _items(result)])
                except Exception as exc:
                    if type(exc) not in self._logged:
                        self._logged.add(type(exc))
                        self.ctx.log.exception("transform failed on an envelope (dead-lettered)")
                    out.append(_dead_letter(f"{type(exc).__name__}: {exc}", envelope))
        self.wire.send(b"".join(out))

    def _batched(self, envelopes: list[Envelope]) -> list[Any] | None:
        """The provider's results for a run of envelopes, or None: do them one by one."""
        assert self._batch is not None
        try:
            results = self._batch(envelopes)
        except Exception:
            if not self._batch_warned:
                self._batch_warned = True
                self.ctx.log.exception("transform_batch failed; doing its envelopes one at a time")
            return None
        if results is not None and len(results) != len(envelopes):
            if not self._batch_warned:
                self._batch_warned = True
                self.ctx.log.error("transform_batch returned %d results for %d envelopes", len(results), len(envelopes))
            return None
        return results

    def _one(self, envelope: Envelope) -> None:
        send = self.wire.send
        try:
            lines = [_encode(item) for item in self._apply(envelope)]
        except Reject as exc:
            send(_dead_letter(str(exc) or type(exc).__name__, envelope))
            return
        except Exception as exc:
            if type(exc) not in self._logged:
                self._logged.add(type(exc))
                self.ctx.log.exception("transform failed on an envelope (dead-lettered)")
            send(_dead_letter(f"{type(exc).__name__}: {exc}", envelope))
            return
        for out in lines:
            send(out)

    def _apply_sync(self, envelope: Envelope) -> Iterable[Any]:
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
