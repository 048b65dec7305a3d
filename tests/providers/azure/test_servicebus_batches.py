"""Output batches within the broker's limits (review row 4): the bytes the SDK puts on the wire,
envelope included, and at most 4,500 messages; a batch refused as too large is split.

The fake sender (sbfakes.FakeSender) measures each batch with the SDK's own encoder and refuses
one over its link size or over 4,500 messages, so these tests fail on batches the SDK calls full
but the broker would not take (7.15.0 ``_common/message.py:693-710``: the envelope's ids are set
after the size check)."""

from __future__ import annotations

from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from dstream_azure.servicebus import ENVELOPE_RESERVE, MAX_BATCH_MESSAGES, send_batched
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.providers.azure.sbfakes import FakeSender, body, encoded_batch_size

pytestmark = pytest.mark.unit

IDS = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=128)


def sb(size: int, message_id: str, session_id: str | None = None) -> ServiceBusMessage:
    return ServiceBusMessage(b"x" * size, message_id=message_id, session_id=session_id)


def test_the_reserve_covers_the_largest_envelope_the_sdk_can_add() -> None:
    """Ids of 128 four-byte characters, the most Service Bus takes, on a batch filled to its count."""
    worst = "\U0001f600" * 128
    batch = ServiceBusMessageBatch(max_size_in_bytes=10**6)
    batch.add_message(sb(100, worst, worst))
    assert 0 < encoded_batch_size(batch) - batch.size_in_bytes <= ENVELOPE_RESERVE


def test_a_full_batch_with_session_ids_stays_within_the_link_once_encoded() -> None:
    """Filled to the SDK's own count, such a batch is over the link (what the old code sent): the
    first message's ids go on the envelope uncounted, and small messages fill the last bytes."""
    limit = 256 * 1024
    messages = [sb(900, "f" * 32, "s" * 111)] + [sb(900, f"{i:x}") for i in range(250)]
    messages += [sb(0, f"{i:x}") for i in range(2000)]
    naive = ServiceBusMessageBatch(max_size_in_bytes=limit)
    for m in messages:
        try:
            naive.add_message(m)
        except Exception:
            break
    assert encoded_batch_size(naive) > limit  # the hazard is real with this SDK
    sender = FakeSender(limit=limit)
    send_batched(sender, messages)
    assert sender.refused == []
    assert max(sender.sizes) <= limit
    assert [b for batch in sender.sent for b in batch] == [body(m) for m in messages]


def test_batches_are_cut_at_4500_messages() -> None:
    sender = FakeSender(limit=1024 * 1024)  # Premium: 1 MB batches hold more than 4,500 small messages
    messages = [sb(10, f"{i:x}") for i in range(10_000)]
    send_batched(sender, messages)
    assert sender.refused == []
    assert [len(b) for b in sender.sent] == [MAX_BATCH_MESSAGES, MAX_BATCH_MESSAGES, 1000]


def test_a_batch_refused_as_too_large_is_split_never_sent_again_as_it_was() -> None:
    sender = FakeSender(limit=64 * 1024, refuse_over=20 * 1024)  # the broker is stricter than its link says
    messages = [sb(1000, f"{i:x}", "s") for i in range(100)]
    send_batched(sender, messages)
    assert sender.refused  # some batches were refused ...
    assert max(sender.sizes) <= 20 * 1024  # ... and their halves went
    sent_counts = [len(b) for b in sender.sent]
    assert all(n < sender.refused[0] for n in sent_counts)  # nothing of the refused size was sent again
    assert [b for batch in sender.sent for b in batch] == [body(m) for m in messages]  # in order, once


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limit=st.integers(min_value=3_000, max_value=80_000),
    max_bytes=st.none() | st.integers(min_value=2_000, max_value=80_000),
    shapes=st.lists(
        st.tuples(st.integers(min_value=0, max_value=6_000), IDS, st.none() | IDS), min_size=1, max_size=120
    ),
)
def test_no_batch_exceeds_the_byte_or_count_limit(limit: int, max_bytes: int | None, shapes: list[Any]) -> None:
    sender = FakeSender(limit=limit)
    messages = [sb(size, mid, sid) for size, mid, sid in shapes]
    send_batched(sender, messages, max_bytes)
    assert sender.refused == []
    assert all(size <= limit for size in sender.sizes)
    assert all(len(b) <= MAX_BATCH_MESSAGES for b in sender.sent)
    assert [b for batch in sender.sent for b in batch] == [body(m) for m in messages]
