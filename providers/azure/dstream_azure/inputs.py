"""What the queue inputs share: received messages are held until dstream commits them.

A message is received under a lock (Service Bus peek-lock, or a Storage queue message's
visibility timeout) and is **settled only when dstream commits a checkpoint that covers
it**: the orchestrator sends ``{"committed": …}`` after it persisted a checkpoint that
the output acknowledged, i.e. once the envelope is durable downstream. Until then the
message stays locked/invisible in the queue, and the lock is renewed while held. So:

- the input, the output or dstream dies: nothing was settled that is not durable
  downstream; held messages reappear when their lock/visibility runs out (Storage) or
  is released, and are delivered again (at least once, never lost);
- a graceful stop (SIGTERM, or ``max_idle`` with an empty queue): the input stops
  receiving, the last checkpoint is acknowledged and committed, held messages are
  settled, and anything still held after ``commit_wait`` is released at once (Service
  Bus: the AMQP "released" outcome, which counts no delivery; Storage: made visible again)
  so it is redelivered without waiting for the lock to expire.

Checkpoints are per input run: ``{"run": "<id>", "seq": N}`` covers the first N messages
this run received. A checkpoint from an earlier run means nothing to the queue (what was
not settled is back in the queue), so a resumed run ignores it.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson
from pydantic import Field

from dstream.sdk import Checkpoint, Duration, InputProvider, Raw
from dstream_azure.routing import AzureConfig

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

M = TypeVar("M")
C = TypeVar("C", bound="QueueInputConfig")
RENEW_CHECK_INTERVAL = 1.0


class Poison(Exception):
    """A message that cannot become envelopes; it is dead-lettered, never dropped."""


class QueueInputConfig(AzureConfig):
    max_idle: Duration = Field(
        default=0, ge=0, description="stop after this many seconds without a message (0: run until stopped)"
    )
    max_unsettled: int = Field(
        default=2000, ge=1, description="pause receiving while this many messages await their commit"
    )
    commit_wait: Duration = Field(
        default=5, ge=0, description="seconds to wait for the last commit when stopping, before releasing the rest"
    )


@dataclass
class Held(Generic[M]):
    seq: int
    message: M
    deadline: float  # time.monotonic() when its lock/visibility runs out
    period: float  # the lock/visibility length, to know when to renew


class Unsettled(Generic[M]):
    """Received messages in receive order, by sequence number."""

    def __init__(self) -> None:
        self._items: OrderedDict[int, Held[M]] = OrderedDict()
        self._next = 0

    def add(self, message: M, deadline: float, period: float) -> int:
        self._next += 1
        self._items[self._next] = Held(self._next, message, deadline, period)
        return self._next

    def take_upto(self, seq: int) -> list[Held[M]]:
        out: list[Held[M]] = []
        while self._items:
            first = next(iter(self._items))
            if first > seq:
                break
            out.append(self._items.popitem(last=False)[1])
        return out

    def take_all(self) -> list[Held[M]]:
        out = list(self._items.values())
        self._items.clear()
        return out

    def drop(self, gone: Callable[[M], bool]) -> int:
        """Forget the messages for which ``gone`` is true (they can no longer be settled); how many."""
        seqs = [seq for seq, h in self._items.items() if gone(h.message)]
        for seq in seqs:
            del self._items[seq]
        return len(seqs)

    def any_upto(self, seq: int) -> bool:
        return bool(self._items) and next(iter(self._items)) <= seq

    def expiring(self, now: float) -> list[Held[M]]:
        """Held messages whose lock runs out within a third of its length."""
        return [h for h in self._items.values() if h.deadline - now < h.period / 3]

    def __len__(self) -> int:
        return len(self._items)


def to_envelope_lines(text: str | bytes, metadata: dict[str, Any]) -> bytes:
    """A message body → envelope lines (``\\n``-joined, no trailing newline).

    Lines that are envelopes (JSON objects with ``data``) pass byte for byte; other JSON
    values become the ``data`` of a new envelope with ``metadata`` (plus ``MessageLine``, the
    line's index, when the body has several lines: they share the message's id, and an
    output's message ids must tell them apart). Anything that is not JSON is poison.
    """
    raw = text.encode() if isinstance(text, str) else text
    out: list[bytes] = []
    lines = [line for line in raw.split(b"\n") if line.strip()]
    for index, line in enumerate(lines):
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise Poison(f"not JSON: {exc}") from None
        if isinstance(value, dict) and "data" in value:
            out.append(line.strip())
        elif len(lines) > 1:  # one message id, several envelopes: the line tells them apart
            out.append(orjson.dumps({"data": value, "metadata": {**metadata, "MessageLine": index}}))
        else:
            out.append(orjson.dumps({"data": value, "metadata": metadata}))
    if not out:
        raise Poison("empty message")
    return b"\n".join(out)


class QueueInput(InputProvider[C], Generic[C, M]):
    """Receive → emit → settle on commit. Subclasses talk to the service."""

    checkpoint_every = None  # checkpoints are emitted by read() itself, one per receive batch
    checkpoint_interval = None
    receive_batch = 32

    def __init__(self, config: C, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.unsettled: Unsettled[M] = Unsettled()
        self.run_id = uuid.uuid4().hex[:12]
        self.emitted = 0
        self._last_renew_check = 0.0

    # -- what a service implements ----------------------------------------------------

    @property
    def source(self) -> str:
        raise NotImplementedError

    def receive(self, max_count: int) -> list[M]:
        """Receive up to ``max_count`` messages under a lock; ``[]`` when there are none."""
        raise NotImplementedError

    def decode(self, message: M) -> tuple[bytes, float, float]:
        """``(envelope lines, lock deadline, lock length)``; raise :class:`Poison` to set it aside."""
        raise NotImplementedError

    def settle(self, held: list[Held[M]]) -> None:
        """Delete/complete: the messages are durable downstream."""
        raise NotImplementedError

    def release(self, held: list[Held[M]]) -> None:
        """Make the messages available again now (abandon / visibility 0)."""
        raise NotImplementedError

    def renew(self, held: list[Held[M]]) -> None:
        """Extend the locks (update ``message`` and ``deadline`` in place)."""
        raise NotImplementedError

    def poison(self, message: M, reason: str) -> None:
        """Dead-letter a message that cannot become envelopes."""
        raise NotImplementedError

    def idle(self) -> bool:
        """Wait after an empty receive; False when stopping."""
        return self.ctx.sleep(0)

    def close_clients(self) -> None:
        """Close the service clients."""

    # -- the loop ----------------------------------------------------------------------

    def position(self, seq: int) -> dict[str, Any]:
        return {"run": self.run_id, "seq": seq}

    def read(self, checkpoint: Any | None) -> Iterator[Raw | Checkpoint]:
        if checkpoint is not None:
            self.log.info(
                "resuming %s: the queue itself is the position (what was not committed is back in it); "
                "the previous run's checkpoint is not needed",
                self.source,
            )
        self.log.info("receiving from %s", self.source)
        cfg = self.config
        last_message = time.monotonic()
        while not self.ctx.should_stop:
            self.renew_due()
            room = cfg.max_unsettled - len(self.unsettled)
            if room <= 0:
                if not self.ctx.sleep(0.05):
                    break
                last_message = time.monotonic()  # waiting for downstream is not idleness
                continue
            messages = self.receive(min(room, self.receive_batch))
            if not messages:
                if cfg.max_idle and time.monotonic() - last_message >= cfg.max_idle:
                    self.log.info("no message for %gs: stopping (max_idle)", cfg.max_idle)
                    break
                if not self.idle():
                    break
                continue
            last_message = time.monotonic()
            ready: list[tuple[int, bytes]] = []
            for message in messages:
                try:
                    lines, deadline, period = self.decode(message)
                except Poison as exc:
                    self.poison(message, str(exc))
                    continue
                ready.append((self.unsettled.add(message, deadline, period), lines))
            for seq, lines in ready:
                self.emitted = seq  # before the yield: a stop right after it still counts it as sent
                yield Raw(lines, self.position(seq))
            if ready:  # every received batch ends with its checkpoint
                yield Checkpoint(self.position(self.emitted))

    def on_committed(self, position: Any) -> None:
        if not isinstance(position, dict) or position.get("run") != self.run_id:
            return  # not ours (cannot happen within one run); never settle on a guess
        held = self.unsettled.take_upto(int(position.get("seq", 0)))
        if held:
            self.settle(held)

    def renew_due(self, now: float | None = None) -> None:
        """Renew the locks running out soon (checked at most once a second)."""
        now = time.monotonic() if now is None else now
        if now - self._last_renew_check < RENEW_CHECK_INTERVAL:
            return
        self._last_renew_check = now
        expiring = self.unsettled.expiring(now)
        if expiring:
            self.log.debug("renewing %d message locks", len(expiring))
            self.renew(expiring)

    def close(self) -> None:
        """Wait (bounded) for the commit of everything emitted, then release what is left."""
        try:
            deadline = time.monotonic() + self.config.commit_wait
            while self.unsettled.any_upto(self.emitted) and time.monotonic() < deadline:
                self.ctx.deliver_commits()
                self.renew_due()
                time.sleep(0.02)
            left = self.unsettled.take_all()
            if left:
                self.log.info(
                    "releasing %d message(s) not yet committed downstream; they will be delivered again", len(left)
                )
                self.release(left)
        finally:
            self.close_clients()
