"""The checkpoint ledger: which checkpoints are in flight, where, and what may be persisted.

No I/O and no asyncio, so every rule here is unit-tested on its own (Conduit's run ledger
and Benthos' transaction acks are the models).

- The input's checkpoints are recorded in the order it emitted them (:meth:`emitted`),
  with how many input envelopes and bytes came before each: the in-flight window is
  counted in input envelopes, whatever the transforms make of them.
- A pipeline has one hop per stage after the input. A checkpoint must come out of each
  transform in the order it went in (:meth:`passed`); one that arrives out of turn means
  the transform dropped, reordered or invented a checkpoint, and :class:`OrderViolation`
  names the hop. That would otherwise show up only as acks that never come.
- The output may ack in any order (:meth:`ack`). The *persist point* is the newest
  checkpoint below which every checkpoint is acked: a missing ack holds it back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from dstream import protocol

MAX_PENDING_CHECKPOINTS = 100_000

Window = Literal["open", "full", "unenforceable"]


@dataclass(slots=True)
class Pending:
    key: bytes  # the canonical form: what an ack is matched by
    value: Any
    envelopes: int  # input envelopes emitted up to this checkpoint (cumulative, this attempt)
    nbytes: int
    hops: int = 1  # hops it has been forwarded through
    acked: bool = False


class OrderViolation(Exception):
    """A checkpoint came out of a transform out of turn."""

    def __init__(self, hop: int, expected: Any, got: Any) -> None:
        self.hop = hop
        self.expected = expected  # None: nothing was due (the checkpoint is unknown)
        self.got = got
        super().__init__(f"hop {hop}: expected {expected!r}, got {got!r}")


class CheckpointLedger:
    def __init__(
        self,
        hops: int,
        max_in_flight: int,
        max_in_flight_bytes: int,
        output_acks: bool = True,
        max_pending: int = MAX_PENDING_CHECKPOINTS,
    ) -> None:
        if hops < 1:
            raise ValueError("a pipeline has at least one hop")
        self.hops = hops
        self.max_in_flight = max_in_flight
        self.max_in_flight_bytes = max_in_flight_bytes
        self.output_acks = output_acks
        self.max_pending = max_pending
        self._pending: deque[Pending] = deque()  # in input order, until persisted-through
        self._awaiting: list[deque[Pending]] = [deque() for _ in range(hops + 1)]  # by next hop
        self.acked: Pending | None = None  # the persist point
        self.persisted: Pending | None = None
        self.recorded = 0  # checkpoints the input emitted (this attempt)
        self.acks = 0  # times the persist point advanced

    # -- the input -------------------------------------------------------------------

    def emitted(self, value: Any, envelopes: int, nbytes: int) -> Pending:
        """The input emitted a checkpoint after ``envelopes`` envelopes (``nbytes`` bytes).
        Recorded before the line is written on, since an answer may come back first."""
        pending = Pending(protocol.canonical(value), value, envelopes, nbytes)
        self._pending.append(pending)
        self._awaiting[1].append(pending)
        self.recorded += 1
        return pending

    # -- transforms ------------------------------------------------------------------

    def passed(self, hop: int, value: Any) -> Pending:
        """Hop ``hop`` (1-based: the one reading transform ``hop``) saw a checkpoint."""
        queue = self._awaiting[hop]
        key = protocol.canonical(value)
        if not queue:
            raise OrderViolation(hop, None, value)
        head = queue[0]
        if head.key != key:
            raise OrderViolation(hop, head.value, value)
        queue.popleft()
        head.hops = hop + 1
        self._awaiting[hop + 1].append(head)
        return head

    def unforwarded(self, hop: int) -> list[Any]:
        """Checkpoints that went into transform ``hop`` and have not come out."""
        return [p.value for p in self._awaiting[hop]]

    # -- the output ------------------------------------------------------------------

    def ack(self, value: Any) -> bool:
        """The output acknowledged ``value``; False when no such checkpoint reached it."""
        key = protocol.canonical(value)
        for pending in self._awaiting[self.hops]:
            if not pending.acked and pending.key == key:
                pending.acked = True
                break
        else:
            return False
        self._advance()
        return True

    def _advance(self) -> None:
        arrived = self._awaiting[self.hops]
        advanced: Pending | None = None
        while self._pending and self._pending[0].acked:
            advanced = self._pending.popleft()
            if arrived and arrived[0] is advanced:
                arrived.popleft()
            else:  # acked out of order: it sits further down the deque
                arrived.remove(advanced)
        if advanced is not None:
            self.acked = advanced
            self.acks += 1

    # -- persisting ------------------------------------------------------------------

    def to_persist(self) -> Pending | None:
        """The persist point, when it moved since the last :meth:`mark_persisted`."""
        target = self.acked
        return None if target is None or target is self.persisted else target

    def mark_persisted(self, pending: Pending) -> None:
        self.persisted = pending

    # -- the window ------------------------------------------------------------------

    @property
    def acked_envelopes(self) -> int:
        return self.acked.envelopes if self.acked else 0

    @property
    def acked_bytes(self) -> int:
        return self.acked.nbytes if self.acked else 0

    @property
    def pending(self) -> int:
        """Checkpoints recorded and not yet covered by the persist point."""
        return len(self._pending)

    def window(self, envelopes: int, nbytes: int) -> Window:
        """May the input be read further, given it has emitted ``envelopes``/``nbytes``?

        "unenforceable": the window is over its limits but no pending checkpoint could be
        acked to open it (the input checkpoints too rarely, or the output never acks); the
        caller relies on pipe backpressure then.
        """
        if len(self._pending) >= self.max_pending:
            return "full"
        if (
            envelopes - self.acked_envelopes < self.max_in_flight
            and nbytes - self.acked_bytes < self.max_in_flight_bytes
        ):
            return "open"
        if not self._pending or not self.output_acks:
            return "unenforceable"
        return "full"
