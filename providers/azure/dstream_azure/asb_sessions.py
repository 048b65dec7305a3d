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
- Locks: a session message's lock is the session's. Held sessions are renewed on a timer
  by :class:`~dstream_azure.asb_locks.SessionLockKeeper`, whatever the read loop does.
- A session whose lock was lost (a renewal failed, or a receive raised
  ``SessionLockLostError``) is dropped: its receiver is closed and the input forgets the
  messages of it that it still held (:meth:`SessionPool.take_dropped`). They are never
  settled through the closed receiver (the SDK raises ``ValueError`` there,
  ``_base_handler.py:362-365``); the broker delivers them again, in order, to whoever takes
  the session next.
- Accepting: "no session available" (``OperationTimeoutError``) and a named session held
  elsewhere (``SessionCannotBeLockedError``) are answers, tried again after ``wait``; a
  missing entity, a refused key or an entity without sessions raise
  :class:`SessionAcceptError` at once. Each accept may take ``accept_wait`` seconds: on
  7.15 that bounds opening the connection too (CHANGELOG 7.15.0, "On a receiver that has
  not been opened yet, this wait now also bounds the initial link acquisition, including
  connecting to a NEXT_AVAILABLE_SESSION"), on 7.14 it is the broker's accept timeout (the
  receiver's ``max_wait_time``, CHANGELOG 7.12.0).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from azure.servicebus import NEXT_AVAILABLE_SESSION
from azure.servicebus.exceptions import (
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusConnectionError,
    ServiceBusError,
    ServiceBusServerBusyError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

from dstream_azure.asb_locks import SessionLockKeeper, _utcnow

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Iterator
    from datetime import datetime

    from azure.servicebus import ServiceBusReceivedMessage

ACCEPT_WAIT = 5.0  # default seconds an accept may take (connection and broker hand-over; 7.15 bounds both)
# Accept outcomes that only mean "not now" (none free, held elsewhere, a passing network or broker
# condition); anything else from an accept is the configuration's fault and is raised.
TRANSIENT_ACCEPT = (
    OperationTimeoutError,
    SessionCannotBeLockedError,
    ServiceBusConnectionError,
    ServiceBusServerBusyError,
)


class SessionAcceptError(RuntimeError):
    """Sessions cannot be accepted from this entity with this configuration."""


def accept_error(source: str, exc: ServiceBusError) -> SessionAcceptError:
    """The one-line reason an accept failed, for errors that waiting does not fix."""
    if isinstance(exc, MessagingEntityNotFoundError):
        return SessionAcceptError(f"{source} does not exist (create it with `dstream init` on the task that writes it)")
    if isinstance(exc, ServiceBusAuthenticationError | ServiceBusAuthorizationError):
        return SessionAcceptError(
            f"{source}: the connection string was refused ({type(exc).__name__}): check its key and that the "
            "policy has Listen rights"
        )
    text = str(exc).lower()
    if "session" in text:  # e.g. a session receiver on an entity without sessions
        return SessionAcceptError(
            f'{source} refused a session receiver; if the entity has no sessions, set sessions = "none" '
            f"({type(exc).__name__}: {str(exc)[:200]})"
        )
    return SessionAcceptError(f"{source}: cannot accept a session ({type(exc).__name__}: {str(exc)[:200]})")


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
    link: Any = None  # the receive link it came on (for "released": only through that same link)

    def __post_init__(self) -> None:
        if self.link is None:
            self.link = getattr(self.receiver, "_handler", None)


@dataclass
class Session:
    receiver: Any
    last_message: float
    held: int = 0
    messages: int = field(default=0)
    # One call at a time on its receiver, from the read loop, the settling threads and the lock keeper:
    # the SDK's clients are not thread-safe ("use threading.Lock()", azure-servicebus README,
    # "Thread safety"). Reentrant: a test's clock fires the keeper inside a receive.
    lock: threading.RLock = field(default_factory=threading.RLock)


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
        *,
        accept_wait: float = ACCEPT_WAIT,
        source: str = "the entity",
        utcnow: Callable[[], datetime] = _utcnow,
        timer: bool = True,
    ) -> None:
        self.open_receiver = open_receiver
        self.configured = list(configured or [])
        self.max_sessions = max_sessions
        self.idle = idle
        self.wait = wait
        self.accept_wait = accept_wait
        self.source = source
        self.log = log
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self._next_accept = 0.0
        self._turn = 0
        self._guard = threading.Lock()  # sessions and _lost, shared with the keeper's thread
        self._lost: dict[str, BaseException] = {}
        self._dropped: list[Any] = []  # receivers dropped with messages held, for the input to forget
        # A renewal that raises SessionLockLostError, or ValueError (the receiver was closed,
        # _base_handler.py:362-365), lost the lock; other errors are tried again while time is left.
        self.keeper = SessionLockKeeper(
            self._held_sessions,
            self._mark_lost,
            log,
            utcnow,
            gone=lambda exc: isinstance(exc, SessionLockLostError | ValueError),
        )
        self.timer = timer  # False in tests, which drive keeper.tick from their own clock

    # -- what the lock keeper sees (its own thread) ------------------------------------

    def _held_sessions(self) -> list[tuple[str, Any, threading.RLock]]:
        with self._guard:
            return [(sid, s.receiver, s.lock) for sid, s in self.sessions.items() if sid not in self._lost]

    def _mark_lost(self, session_id: str, exc: BaseException) -> None:
        with self._guard:
            if session_id in self.sessions:
                self._lost[session_id] = exc

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
                            max_message_count=max(1, room - len(out)), max_wait_time=self.accept_wait
                        )
                    session_id = receiver.session.session_id
                except TRANSIENT_ACCEPT as exc:
                    receiver.close()
                    if not isinstance(exc, OperationTimeoutError):  # e.g. a configured session held elsewhere
                        self.log.info("cannot lock session %s now (%s); trying again later", wanted, type(exc).__name__)
                    self._next_accept = self.clock() + max(self.wait, self.accept_wait)
                    break
                except ServiceBusError as exc:
                    receiver.close()
                    raise accept_error(self.source, exc) from None
                if session_id in self.sessions:  # handed to us again: the lock our old receiver had is gone
                    self._mark_lost(session_id, SessionLockLostError(message="the session was accepted anew"))
                    self._drop_lost()
                with self._guard:
                    self.sessions[session_id] = Session(receiver, now)
                self.log.info("locked session %s", session_id)
                if self.timer:
                    self.keeper.start()
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
        self._drop_lost()
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
                with session.lock:
                    messages = session.receiver.receive_messages(max_message_count=room, max_wait_time=per_session)
            except SessionLockLostError as exc:
                self._mark_lost(session_id, exc)
                continue
            out += self._items(session_id, messages, self.clock())
        self._drop_lost()
        self._let_go_idle()
        return out

    def _drop_lost(self) -> None:
        with self._guard:
            lost, self._lost = self._lost, {}
        for session_id, exc in lost.items():
            session = self.sessions.get(session_id)
            held = session.held if session is not None else 0
            self.log.warning(
                "lost the lock of session %s (%s); its %d uncompleted message(s) will be delivered again",
                session_id,
                type(exc).__name__,
                held,
            )
            if session is not None and held:
                self._dropped.append(session.receiver)
            self._drop(session_id)

    def take_dropped(self) -> list[Any]:
        """Receivers dropped with messages still held since the last call: forget those messages."""
        out, self._dropped = self._dropped, []
        return out

    def live(self, item: Item) -> Session | None:
        """The session ``item`` can still be settled through, or None (dropped: never settle it)."""
        session = self.sessions.get(item.session or "")
        return session if session is not None and session.receiver is item.receiver else None

    def next_accept_in(self) -> float:
        """Seconds until the next accept attempt (0 when one may run now)."""
        return max(0.0, self._next_accept - self.clock())

    # -- settling and letting go ---------------------------------------------------------

    def done(self, item: Item) -> None:
        """``item`` was settled (completed, released, abandoned or dead-lettered)."""
        with self._guard:  # called from the settling threads too
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
        with self._guard:
            session = self.sessions.pop(session_id, None)
            self._lost.pop(session_id, None)
        self.keeper.forget(session_id)
        if session is not None:
            try:
                with session.lock:
                    session.receiver.close()  # releases the session lock
            except (ServiceBusError, ValueError) as exc:
                self.log.debug("closing session %s: %s", session_id, exc)

    def close(self) -> None:
        self.keeper.stop()
        for session_id in list(self.sessions):
            self._drop(session_id)
