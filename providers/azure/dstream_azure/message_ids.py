"""Service Bus message ids that identify exactly one envelope.

Queues and topics that ``dstream init`` creates have duplicate detection on: within the
detection window the broker keeps the first message of each id and silently drops the
others. So an id must be the same for the same envelope sent again after a crash (that is
what makes a replay leave no duplicates), and must differ for any two different envelopes
(else the broker drops real data). Two ways to get there:

1. **By position**, when the envelope's metadata names the change it carries: its table,
   the position keys present (``LSN``, ``CommitLSN``, ``Seq``, ``SeqVal``, ``MessageLine``
   and the lowercase ``lsn``/``seq``: what dstream's CDC inputs write), its operation
   (``OperationID``, ``OperationType``, ``operation``: an update's before and after images
   share an LSN) and its row key (``metadata.Key``). A position is trusted to identify a
   change only when it has a per-change part (``Seq``/``SeqVal``/``seq``; the LSNs name a
   whole transaction), or when the envelope is a snapshot row (``OperationType`` ``Read``)
   with a non-empty ``Key``: one snapshot reads each key once. Keys that someone upstream
   chose (a Service Bus ``MessageId``, which is "application-defined, free-form", an
   ``Offset``, ``Position`` or ``Sequence`` property) are not proof that two messages are
   one change: two producers, or one reusing a business id, would have the second dropped
   as a duplicate. They count only when the task lists them in ``message_id_keys``, which
   replaces the list: the config then vouches that those keys identify an envelope.
2. **By place in the stream**, otherwise: a hash of the task's resume checkpoint (the one
   every stage is handed at start, ``None`` on a first run), the envelope's ordinal since
   the start of this run, and a digest of its bytes. An attempt that resumes from a given
   checkpoint makes the input send the same envelopes in the same order (for a
   deterministic input), so each gets the id it had in an earlier attempt from the same
   checkpoint; envelopes at different places never share an id, even byte-identical ones.
   A replay after a checkpoint was persisted starts from a new anchor, so it is not
   deduplicated: duplicates, never loss. The content digest keeps an input that is not
   deterministic from having a different envelope dropped as a "duplicate".

The task's name is part of every id, so two tasks writing one queue never collide.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from dstream import protocol

if TYPE_CHECKING:
    from collections.abc import Iterable

LSN_KEYS = ("LSN", "CommitLSN", "lsn")
CHANGE_KEYS = ("Seq", "SeqVal", "seq")  # per-change parts that dstream's own CDC inputs write
POSITION_KEYS = (*LSN_KEYS, *CHANGE_KEYS, "MessageLine")
OPERATION_KEYS = ("OperationID", "OperationType", "operation")
SNAPSHOT_OPERATIONS = frozenset({"Read", "read", "READ", "r"})
ID_LENGTH = 32  # hex characters; Service Bus allows 128


def _digest(basis: Any) -> str:
    return hashlib.sha256(protocol.canonical(basis)).hexdigest()[:ID_LENGTH]


def position_of(metadata: dict[str, Any], keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The position keys present in ``metadata`` (``keys``, or the defaults)."""
    return {k: metadata[k] for k in (keys or POSITION_KEYS) if metadata.get(k) is not None}


def row_key(metadata: dict[str, Any]) -> Any:
    """``metadata.Key`` (key column → value) when it is a non-empty object, else None."""
    key = metadata.get("Key")
    return key if isinstance(key, dict) and key else None


def operation_of(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: metadata[k] for k in OPERATION_KEYS if metadata.get(k) is not None}


def identifies(metadata: dict[str, Any], position: dict[str, Any], configured: bool) -> bool:
    """Whether ``position`` names exactly one change (see the module docstring)."""
    if not position:
        return False
    if configured or any(k in position for k in CHANGE_KEYS):
        return True
    snapshot = metadata.get("OperationType", metadata.get("operation")) in SNAPSHOT_OPERATIONS
    return snapshot and row_key(metadata) is not None and any(k in position for k in LSN_KEYS)


class MessageIds:
    """Derives the id of each envelope of one run, in stream order (one instance per run)."""

    def __init__(
        self, task: str | None, resume: Any, keys: Iterable[str] | None = None, by_position: bool = True
    ) -> None:
        self.task = task
        self.anchor = resume
        self.keys = list(keys) if keys else None
        self.by_position = by_position
        self.ordinal = 0  # envelopes seen this run, the current one included

    def next(self, table: str | None, metadata: dict[str, Any], raw: bytes) -> str:
        """The id of the next envelope of the stream (call once per envelope, in order)."""
        self.ordinal += 1
        if self.by_position:
            position = position_of(metadata, self.keys)
            if identifies(metadata, position, configured=self.keys is not None):
                basis = {"k": self.task, "t": table, "p": position, "o": operation_of(metadata)}
                key = row_key(metadata)
                if key is not None:
                    basis["r"] = key
                return _digest(basis)
        content = hashlib.sha256(raw.strip()).hexdigest()
        return _digest({"k": self.task, "a": self.anchor, "n": self.ordinal, "c": content})
