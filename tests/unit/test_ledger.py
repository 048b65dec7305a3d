"""The checkpoint ledger on its own: acks in and out of order, the window, transforms that
drop, reorder or invent checkpoints."""

from __future__ import annotations

import pytest

from dstream.relay.ledger import CheckpointLedger, OrderViolation


def cp(n: int) -> dict[str, int]:
    return {"n": n}


def ledger(hops: int = 1, **kw: int) -> CheckpointLedger:
    return CheckpointLedger(hops, kw.get("max_in_flight", 100), kw.get("max_bytes", 10_000))


def test_in_order_acks_move_the_persist_point() -> None:
    book = ledger()
    for n in (1, 2, 3):
        book.emitted(cp(n), envelopes=n * 10, nbytes=n * 100)
    assert book.to_persist() is None
    assert book.ack(cp(1))
    target = book.to_persist()
    assert target is not None
    assert target.value == cp(1)
    book.mark_persisted(target)
    assert book.to_persist() is None
    assert book.ack(cp(2))
    assert book.ack(cp(3))
    assert book.to_persist().value == cp(3)  # type: ignore[union-attr]
    assert (book.acked_envelopes, book.acked_bytes, book.pending) == (30, 300, 0)


def test_a_missing_ack_holds_back_everything_after_it() -> None:
    book = ledger()
    for n in (1, 2, 3, 4):
        book.emitted(cp(n), n, n)
    assert book.ack(cp(1))
    assert book.ack(cp(3))
    assert book.ack(cp(4))
    assert book.to_persist().value == cp(1)  # type: ignore[union-attr]
    assert book.pending == 3
    assert book.ack(cp(2))
    assert book.to_persist().value == cp(4)  # type: ignore[union-attr]
    assert book.pending == 0


def test_reverse_acks_persist_the_highest_at_once() -> None:
    book = ledger()
    for n in range(1, 6):
        book.emitted(cp(n), n, n)
    for n in range(5, 0, -1):
        assert book.ack(cp(n))
    assert book.to_persist().value == cp(5)  # type: ignore[union-attr]
    assert book.acks == 1


def test_an_unknown_or_repeated_ack_changes_nothing() -> None:
    book = ledger()
    book.emitted(cp(1), 1, 1)
    assert not book.ack(cp(9))
    assert book.ack(cp(1))
    assert not book.ack(cp(1))
    assert book.acks == 1


def test_duplicate_checkpoint_values_are_acked_one_at_a_time() -> None:
    book = ledger()
    book.emitted(cp(1), 1, 1)
    book.emitted(cp(1), 2, 2)
    assert book.ack(cp(1))
    assert book.pending == 1
    assert book.ack(cp(1))
    assert book.pending == 0
    assert book.acked_envelopes == 2


def test_window_opens_fills_and_cannot_be_enforced_without_checkpoints() -> None:
    book = ledger(max_in_flight=10)
    assert book.window(envelopes=5, nbytes=5) == "open"
    assert book.window(envelopes=10, nbytes=5) == "unenforceable"  # nothing pending to ack
    book.emitted(cp(1), 8, 8)
    assert book.window(envelopes=12, nbytes=12) == "full"
    book.ack(cp(1))
    assert book.window(envelopes=12, nbytes=12) == "open"  # 4 in flight after the ack
    bytes_bound = ledger(max_bytes=100)
    bytes_bound.emitted(cp(1), 1, 1)
    assert bytes_bound.window(envelopes=2, nbytes=101) == "full"


def test_pending_checkpoints_are_bounded() -> None:
    book = CheckpointLedger(1, 10**9, 10**12, max_pending=3)
    for n in range(3):
        book.emitted(cp(n), 0, 0)
    assert book.window(0, 0) == "full"


def test_a_checkpoint_travels_through_every_transform_before_it_can_be_acked() -> None:
    book = ledger(hops=3)  # input → t1 → t2 → output
    book.emitted(cp(1), 1, 1)
    book.emitted(cp(2), 2, 2)
    assert not book.ack(cp(1))  # the output cannot have it yet
    book.passed(1, cp(1))
    book.passed(1, cp(2))
    book.passed(2, cp(1))
    assert book.unforwarded(2) == [cp(2)]
    assert book.ack(cp(1))
    assert not book.ack(cp(2))
    book.passed(2, cp(2))
    assert book.ack(cp(2))
    assert book.to_persist().value == cp(2)  # type: ignore[union-attr]


def test_a_dropped_checkpoint_is_caught_at_the_next_one_naming_the_hop() -> None:
    book = ledger(hops=2)
    book.emitted(cp(1), 1, 1)
    book.emitted(cp(2), 2, 2)
    with pytest.raises(OrderViolation) as err:
        book.passed(1, cp(2))  # transform 1 swallowed cp(1)
    assert (err.value.hop, err.value.expected, err.value.got) == (1, cp(1), cp(2))


def test_an_invented_or_doubled_checkpoint_is_caught() -> None:
    book = ledger(hops=2)
    with pytest.raises(OrderViolation) as err:
        book.passed(1, cp(7))
    assert err.value.expected is None
    book.emitted(cp(1), 1, 1)
    book.passed(1, cp(1))
    with pytest.raises(OrderViolation):
        book.passed(1, cp(1))


def test_a_transform_that_ends_early_leaves_its_checkpoints_unforwarded() -> None:
    book = ledger(hops=2)
    book.emitted(cp(1), 1, 1)
    book.emitted(cp(2), 2, 2)
    book.passed(1, cp(1))
    assert book.unforwarded(1) == [cp(2)]
