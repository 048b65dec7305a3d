"""Service Bus session ids for ordered consumption (asb-output-provider's ``session``).

Service Bus guarantees FIFO only within a message session: the broker hands a session to
one receiver at a time, and that receiver gets the session's messages in the order they
were enqueued. So the session decides what order a consumer fleet can rely on:

- ``"none"`` (default): no sessions; competing consumers may see a row's update before its
  insert is done with another consumer (or after a redelivery).
- ``"table"``: the session is the table: every change of a table in commit order, one
  consumer per table at a time.
- ``"key"``: the session is the table and the row key (``metadata.Key``, which the CDC
  providers set, for a delete from the row as it was): each row's changes in commit order,
  rows spread over consumers.
- a list of keys: the session is made of those values, looked up in ``metadata`` and then in
  ``data`` (``"metadata.X"`` / ``"data.X"`` to say which), e.g. ``["data.customer_id"]`` to
  order all changes of one customer across tables (on one queue or topic).

An envelope without the key asked for is an error naming what it has, unless
``session_fallback = "table"`` sends such envelopes to their table's session (sensible for
tables without a primary key, whose rows carry no key: they are then ordered per table).
Session ids are at most 128 characters: a longer one is cut and given a hash of the whole.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson

SessionMode = Literal["none", "table", "key"]
MAX_SESSION_ID = 128


class SessionKeyMissing(ValueError):
    """An envelope without what its session id is made of."""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def bounded(session_id: str) -> str:
    """``session_id``, or when over 128 characters, its start and a hash of the whole."""
    if len(session_id) <= MAX_SESSION_ID:
        return session_id
    digest = hashlib.sha256(session_id.encode()).hexdigest()[:32]
    return f"{session_id[: MAX_SESSION_ID - 33]}~{digest}"


def _lookup(name: str, metadata: dict[str, Any], data: Any) -> tuple[bool, Any]:
    scope, _, field = name.partition(".")
    if field and scope in ("metadata", "data"):
        source = metadata if scope == "metadata" else data
        return (isinstance(source, dict) and field in source), (source.get(field) if isinstance(source, dict) else None)
    if name in metadata:
        return True, metadata[name]
    if isinstance(data, dict) and name in data:
        return True, data[name]
    return False, None


class SessionIds:
    """Session id of each envelope, for a ``session`` setting (None: sessions off)."""

    def __init__(self, mode: SessionMode | list[str], fallback: Literal["error", "table"] = "error") -> None:
        self.mode = mode
        self.fallback = fallback

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def of(self, table: str | None, metadata: dict[str, Any], data: Any) -> str | None:
        mode = self.mode
        if mode == "none":
            return None
        if mode == "table":
            return self._table(table, metadata)
        if mode == "key":
            key = metadata.get("Key")
            if isinstance(key, dict) and key:
                return bounded(f"{table or ''}:{_text(key)}")
            return self._missing("metadata.Key (the row key the CDC providers set)", table, metadata)
        values = []
        for name in mode:
            found, value = _lookup(name, metadata, data)
            if not found or value is None:
                return self._missing(name, table, metadata)
            values.append(value)
        return bounded(_text(values[0]) if len(values) == 1 else _text(values))

    def _table(self, table: str | None, metadata: dict[str, Any]) -> str:
        if not table:
            raise SessionKeyMissing(
                f'session = "table" needs the envelope\'s table, and it has no metadata.TableName '
                f"(metadata keys: {sorted(metadata)}); set default_table"
            )
        return bounded(table)

    def _missing(self, what: str, table: str | None, metadata: dict[str, Any]) -> str:
        if self.fallback == "table" and table:
            return self._table(table, metadata)
        raise SessionKeyMissing(
            f"an envelope of {table or 'no table'} has no {what} for its session id "
            f'(metadata keys: {sorted(metadata)}); set session_fallback = "table" to order such '
            "envelopes per table, or choose another session"
        )
