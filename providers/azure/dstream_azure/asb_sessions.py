"""Receiving from a session-enabled queue or subscription: a bounded pool of sessions.

A session is locked to one receiver at a time, and its messages come in the order they
were enqueued; that is what makes per-session order hold across competing consumers. The
pool keeps up to ``max_sessions`` session receivers open and reads them in turn:

- ``sessions = "next"``: it accepts the next available session (the SDK's
  ``NEXT_AVAILABLE_SESSION``; the broker picks one that no other receiver holds) while
  below the bound; when none is available the accept times out, and the next attempt waits
  ``max_wait``. ``sessions = [ids]``: it locks those sessions (one held elsewhere is tried
  again later).
- A session is let go (its receiver closed, which releases the session lock) only when none
  of its messages awaits its commit and it gave nothing for ``session_idle`` seconds, so
  others get their turn. Never while its messages are held: they can only be completed
  through the receiver that received them, and another consumer taking the session could
  otherwise run ahead of them.
- Locks: a session message's lock is the session's; renewing means renewing the session
  lock (``ServiceBusSession.renew_lock``), once for all its held messages.
- A session whose lock was lost (the broker gave it to someone else after it expired) is
  dropped; its uncompleted messages come back in order to whoever takes the session next.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from azure.servicebus import NEXT_AVAILABLE_SESSION
from azure.servicebus.exceptions import OperationTimeoutError, ServiceBusError, SessionLockLostError

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Iterator

    from azure.servicebus import ServiceBusReceivedMessage

ACCEPT_WAIT = 1.0  # seconds the broker may take to hand over a session before "none available"


@contextlib.contextmanager
def _no_retries(receiver: Any) -> Iterator[None]:
    """Accept a session without the SDK's retries: "no session available" is an answer.

    The SDK retries a receive whose session accept timed out (retry_total, default 3, with
    backoff: several seconds), and its receivers take retry_total only from their client. So
    the receiver's own configuration (``receiver._config.retry_total``) is set to 0 for the
    accepting call and restored after; a receiver without it is used as it is.
    """
    config: Any = getattr(receiver, "_config", None)
    saved = getattr(config, "retry_total", None)
    if saved is not None:
        config.retry_total = 0
    try:
        yield
    finally:
        if saved is not None:
            config.retry_total = saved


@dataclass
class Item:
    """A received message and the receiver it must be settled through."""

    message: ServiceBusReceivedMessage
    receiver: Any
    session: str | None = None


@dataclass
class Session:
    receiver: Any
    last_message: float
    held: int = 0
    messages: int = field(default=0)


class SessionPool:
    """Up to ``max_sessions`` session receivers, read in turn (see the module docstring)."""

    def __init__(
        self,
        open_receiver: Callable[[Any], Any],
        configured: list[str] | None,
        max_sessions: int,
        idle: float,
        wait: float,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.open_receiver = open_receiver
        self.configured = list(configured or [])
        self.max_sessions = max_sessions
        self.idle = idle
        self.wait = wait
        self.log = log
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self._next_accept = 0.0
        self._turn = 0

    # -- accepting ---------------------------------------------------------------------

    def _accept(self, room: int) -> list[Item]:
        """Take new sessions while below the bound; returns what came with them."""
        out: list[Item] = []
        now = self.clock()
        if now < self._next_accept:
            return out
        candidates: list[Any] = [s for s in self.configured if s not in self.sessions] or (
            [] if self.configured else [NEXT_AVAILABLE_SESSION]
        )
        for wanted in candidates:
            while len(self.sessions) < self.max_sessions and len(out) < room:
                receiver = self.open_receiver(wanted)
                try:
                    with _no_retries(receiver):
                        messages = receiver.receive_messages(
                            max_message_count=max(1, room - len(out)), max_wait_time=min(self.wait, ACCEPT_WAIT)
                        )
                    session_id = receiver.session.session_id
                except (OperationTimeoutError, ServiceBusError) as exc:
                    receiver.close()
                    if not isinstance(exc, OperationTimeoutError):  # e.g. a configured session held elsewhere
                        self.log.debug("cannot lock session %s now (%s)", wanted, type(exc).__name__)
                    self._next_accept = now + self.wait
                    break
                if session_id in self.sessions:  # cannot happen for NEXT_AVAILABLE; a guard for configured ids
                    receiver.close()
                    break
                self.sessions[session_id] = Session(receiver, now)
                self.log.info("locked session %s", session_id)
                out += self._items(session_id, messages, now)
                if wanted is not NEXT_AVAILABLE_SESSION:
                    break
            if len(self.sessions) >= self.max_sessions or len(out) >= room:
                break
        return out

    # -- receiving ---------------------------------------------------------------------

    def _items(self, session_id: str, messages: list[ServiceBusReceivedMessage], now: float) -> list[Item]:
        session = self.sessions[session_id]
        if messages:
            session.last_message = now
            session.held += len(messages)
            session.messages += len(messages)
        return [Item(m, session.receiver, session_id) for m in messages]

    def receive(self, max_count: int) -> list[Item]:
        """Up to ``max_count`` messages from the held sessions in turn, new sessions accepted."""
        out = self._accept(max_count)
        ids = list(self.sessions)
        if ids:
            self._turn = (self._turn + 1) % len(ids)
            ids = ids[self._turn :] + ids[: self._turn]
        per_session = max(0.05, self.wait / max(1, len(ids))) if not out else 0.05
        for session_id in ids:
            room = max_count - len(out)
            if room <= 0:
                break
            session = self.sessions[session_id]
            try:
                messages = session.receiver.receive_messages(max_message_count=room, max_wait_time=per_session)
            except SessionLockLostError:
                self.log.warning(
                    "lost the lock of session %s; its uncompleted messages will be delivered again", session_id
                )
                self._drop(session_id)
                continue
            out += self._items(session_id, messages, self.clock())
        self._let_go_idle()
        return out

    # -- settling and letting go ---------------------------------------------------------

    def done(self, item: Item) -> None:
        """``item`` was settled (completed, released, abandoned or dead-lettered)."""
        session = self.sessions.get(item.session or "")
        if session is not None and session.receiver is item.receiver:
            session.held = max(0, session.held - 1)

    def _let_go_idle(self) -> None:
        now = self.clock()
        for session_id, session in list(self.sessions.items()):
            if session.held == 0 and now - session.last_message >= self.idle:
                self.log.debug("releasing idle session %s", session_id)
                self._drop(session_id)

    def _drop(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is not None:
            try:
                session.receiver.close()  # releases the session lock
            except ServiceBusError as exc:
                self.log.debug("closing session %s: %s", session_id, exc)

    def renew(self, receiver: Any) -> Any:
        """Renew the session lock of ``receiver``; the new lock end (a datetime)."""
        return receiver.session.renew_lock()

    def close(self) -> None:
        for session_id in list(self.sessions):
            self._drop(session_id)
