"""Transactions in, changes out with the position after each (see :class:`TransactionAssembler`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dstream.sdk.cdc.positions import Position

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

_SKIP_ALL = 1 << 62


class TransactionAssembler(Generic[T]):
    """Commit-ordered transactions in, ``(change, position after it)`` out.

    Call :meth:`begin` at each transaction's start with its commit position (``commit``)
    and the exclusive bound just past it (``end``: the next transaction's commit position
    can be no lower), :meth:`next_change` before decoding each change (0 means "emitted
    before: drop it undecoded", else the change's 1-based number in its transaction),
    :meth:`change` with the decoded change, and :meth:`commit` at its end. A source that
    learns ``end`` only at the commit (pgoutput: Begin carries the commit LSN, Commit the end
    of its record) passes it to :meth:`commit` instead. Each call may
    return the *previous* change with its position: positions are JSON-ready dicts.
    Between transactions, :meth:`reached` records that everything committed below a
    position was read (a heartbeat), and :meth:`checkpoint` returns the position when no
    explicit checkpoint carried it yet.

    ``done`` is where the stream is: what was handed out. It starts at the resume
    position (for a position inside a snapshot taken at ``lsn``: ``lsn``, where the
    stream after that snapshot starts), and it is what a reconnect re-reads the source up to.
    """

    def __init__(self, start: Position | None, format_lsn: Callable[[int], str]) -> None:
        self._format = format_lsn
        self._done = (start.lsn, start.index or 0) if start is not None else (0, 0)
        self._reported: tuple[int, int] = self._done
        self._commit = 0
        self._commit_text = ""
        self._end = 0
        self._end_text = ""
        self._seen = 0
        self._skip = 0
        self._pending: T | None = None
        self._in_txn = False

    @property
    def done(self) -> Position:
        lsn, index = self._done
        return Position(lsn, index or None)

    @property
    def in_transaction(self) -> bool:
        return self._in_txn

    def begin(
        self, commit: int, end: int | None = None, commit_text: str | None = None, end_text: str | None = None
    ) -> bool:
        """Start a transaction; False when all of it was emitted before (drop its changes).

        Without ``end``, :meth:`commit` must be given it.
        """
        self._commit = commit
        self._commit_text = commit_text if commit_text is not None else self._format(commit)
        if end is not None:
            self._end = end
            self._end_text = end_text if end_text is not None else self._format(end)
        else:
            self._end, self._end_text = commit, ""
        self._seen = 0
        self._pending = None
        self._in_txn = True
        done_lsn, done_index = self._done
        if commit < done_lsn:
            self._skip = _SKIP_ALL
            return False
        self._skip = done_index if commit == done_lsn else 0
        return True

    def next_change(self) -> int:
        """The next change's number in its transaction (from 1), or 0 when it was emitted before."""
        self._seen += 1
        return 0 if self._seen <= self._skip else self._seen

    def change(self, item: T) -> tuple[T, dict[str, Any]] | None:
        """Hold ``item``; return the previous change of the transaction with its position."""
        previous, self._pending = self._pending, item
        if previous is None:
            return None
        index = self._seen - 1
        self._done = (self._commit, index)
        return previous, {"lsn": self._commit_text, "index": index}

    def commit(self, end: int | None = None, end_text: str | None = None) -> tuple[T, dict[str, Any]] | None:
        """End the transaction; return its last change with the position past the transaction
        (``end``: when :meth:`begin` was not given it)."""
        if end is not None:
            self._end = end
            self._end_text = end_text if end_text is not None else self._format(end)
        elif not self._end_text:
            raise ValueError("commit() needs the end of the transaction: begin() was not given it")
        self._in_txn = False
        previous, self._pending = self._pending, None
        self._done = max(self._done, (self._end, 0))
        if previous is None:
            return None  # nothing captured in it: a heartbeat, see checkpoint()
        return previous, {"lsn": self._end_text}

    def abandon(self) -> None:
        """Forget a transaction cut short (the connection dropped): it is read again."""
        self._in_txn = False
        self._pending = None

    def reached(self, lsn: int) -> None:
        """Every transaction committed below ``lsn`` has been read (between transactions)."""
        if not self._in_txn and (lsn, 0) > self._done:
            self._done = (lsn, 0)

    def checkpoint(self) -> dict[str, Any] | None:
        """The current position, if no explicit checkpoint carried it yet (between transactions).

        Call it when caught up: the last change handed out may not have been checkpointed
        (the SDK checkpoints every N records or seconds, on the next record), and heartbeats
        move the position without any change.
        """
        if self._in_txn or self._done == self._reported:
            return None
        self._reported = self._done
        return self.done.to_json(self._format)
