"""A task's stored checkpoint as the lifecycle verbs speak of it: is there one, since when,
forget it; and which resources a status reply says still hold data."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dstream.state import open_store

if TYPE_CHECKING:
    from dstream.config.models import Document
    from dstream.protocol import LifecycleReply
    from dstream.state.base import StoredCheckpoint

# Status details that count what a resource holds (queues' messages, Service Bus counts).
_CONTENT_KEYS = ("messages", "active_messages", "dead_lettered_messages", "scheduled_messages", "blobs", "rows")


def stored(document: Document, task: str) -> StoredCheckpoint | None:
    store = open_store(document)
    try:
        return store.load(task)
    finally:
        store.close()


def reset(document: Document, task: str) -> bool:
    store = open_store(document)
    try:
        return store.reset(task)
    finally:
        store.close()


def when(checkpoint: StoredCheckpoint) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(checkpoint.updated_at))


def holding_data(replies: list[LifecycleReply]) -> list[str]:
    """``"storage_queue orders holds 30 messages"`` for each present resource that is not empty."""
    found = []
    for reply in replies:
        for res in reply.resources:
            counts = {k: v for k, v in res.details.items() if k in _CONTENT_KEYS and isinstance(v, int) and v > 0}
            if res.state != "absent" and counts:
                held = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items())
                found.append(f"{res.type} {res.name} holds {held}")
    return found
