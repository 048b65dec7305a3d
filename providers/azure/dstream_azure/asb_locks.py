"""Keeping session locks: renewed on a timer, independent of the read loop.

A session's lock lasts the entity's LockDuration from the moment it is accepted, and only
``ServiceBusSession.renew_lock`` moves its end (azure-servicebus 7.15.0
``_servicebus_session.py:189-199``; the accept sets it, ``_pyamqp_transport.py:709-715``).
Once it has passed, every receive, settle and renew of that receiver raises
``SessionLockLostError`` (``_base_handler.py:377-378``) and the broker gives the session,
with its uncompleted messages, to another consumer. So a held session is renewed while
it is held, whatever the read loop is doing (blocked writing downstream, settling, or
reading other sessions): a daemon thread looks every ``interval`` seconds and renews each
session whose lock has less than half its length left.

This is what the SDK's ``AutoLockRenewer`` does (it renews from a thread pool while the
application receives: ``_common/auto_lock_renewer.py:33``, ``:176-186``). It is not used
itself because its ``register`` takes only real ``ServiceBusSession`` objects (:235-240) and
its timing reads the wall clock (:171, :176), so the behaviour the tests must prove (a busy
session that outlives ten lock durations) could only be shown with real minutes; this
keeper takes its clock, and reports a lost lock back to the pool instead of a callback
thread touching the ledger.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

INTERVAL = 1.0  # seconds between looks; a lock is at least 5 s (the emulator's minimum, limits.py)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SessionLockKeeper:
    """Renews the locks of the sessions ``sessions()`` returns; ``lost(session_id)`` when one fails."""

    def __init__(
        self,
        sessions: Callable[[], list[tuple[str, Any, threading.RLock]]],
        lost: Callable[[str, BaseException], None],
        log: logging.Logger,
        utcnow: Callable[[], datetime] = _utcnow,
        interval: float = INTERVAL,
        gone: Callable[[BaseException], bool] = lambda exc: True,
    ) -> None:
        self.sessions = sessions
        self.lost = lost
        self.gone = gone  # whether a failed renewal means the lock is lost (else: try again next look)
        self.log = log
        self.utcnow = utcnow
        self.interval = interval
        self.periods: dict[str, float] = {}  # a session's lock length, learnt from its renewals
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="asb-session-locks", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def tick(self) -> None:
        """Renew every held session lock that has less than half its length left."""
        for session_id, receiver, lock in self.sessions():
            session = receiver.session
            if session.locked_until_utc is None:  # the broker announced no lock end: nothing to go by
                continue
            left = (session.locked_until_utc - self.utcnow()).total_seconds()
            period = self.periods.setdefault(session_id, left)  # first sight: about a whole lock
            if left > period / 2:
                continue
            try:
                with lock:
                    until = session.renew_lock()
            except Exception as exc:  # noqa: BLE001 - reported to the pool, never raised in this thread
                if self.gone(exc) or left <= 0:
                    self.periods.pop(session_id, None)
                    self.lost(session_id, exc)
                else:  # e.g. a connection error with time left on the lock: the next look tries again
                    self.log.warning("could not renew the lock of session %s (%s); trying again", session_id, exc)
                continue
            self.periods[session_id] = max(period, (until - self.utcnow()).total_seconds())

    def forget(self, session_id: str) -> None:
        self.periods.pop(session_id, None)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


class MessageLockKeeper:
    """Renews the locks of held messages of one (non-session) receiver, on a timer.

    A message's lock is renewed with ``receiver.renew_message_lock``, which moves its
    ``locked_until_utc`` (azure-servicebus 7.15.0 ``_servicebus_receiver.py:1020-1031``); once
    that has passed, completing it raises ``MessageLockLostError``
    (``_servicebus_receiver.py:479-482``). Renewed when a third of its lock is left, off the
    read loop, so a slow output (the read loop blocked in a write) does not let it expire.
    """

    def __init__(
        self,
        receiver: Callable[[], Any],
        lock: threading.RLock,
        log: logging.Logger,
        utcnow: Callable[[], datetime] = _utcnow,
        interval: float = INTERVAL,
    ) -> None:
        self.receiver = receiver
        self.lock = lock
        self.log = log
        self.utcnow = utcnow
        self.interval = interval
        self._held: dict[int, tuple[Any, float]] = {}  # id(message) -> (message, lock length)
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, message: Any) -> None:
        until = getattr(message, "locked_until_utc", None)
        if until is None:
            return
        with self._guard:
            self._held[id(message)] = (message, (until - self.utcnow()).total_seconds())

    def let_go(self, message: Any) -> None:
        with self._guard:
            self._held.pop(id(message), None)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="asb-message-locks", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def tick(self) -> None:
        with self._guard:
            held = list(self._held.values())
        for message, period in held:
            left = (message.locked_until_utc - self.utcnow()).total_seconds()
            if left > period / 3:
                continue
            try:
                with self.lock:
                    self.receiver().renew_message_lock(message)
            except Exception as exc:  # noqa: BLE001 - logged; the message comes again if its lock is gone
                self.log.warning("could not renew the lock of message %s (%s)", getattr(message, "message_id", ""), exc)
                if left <= 0:
                    self.let_go(message)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
