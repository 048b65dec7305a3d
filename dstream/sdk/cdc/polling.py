"""Adaptive polling and reconnect back-off."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

E = TypeVar("E", bound=Exception)


class PollInterval:
    """Adaptive polling: ``initial`` after data, doubling up to ``maximum`` while idle."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = max(maximum, initial)
        self._idle = initial

    def after_poll(self, changes: int, full: bool) -> float:
        """Seconds to wait before the next poll: 0 after a full batch (there is more)."""
        if full:
            self._idle = self.initial
            return 0.0
        if changes:
            self._idle = self.initial
            return self.initial
        wait = self._idle
        self._idle = min(self._idle * 2, self.maximum)
        return wait


class Backoff:
    """Exponential reconnect delays within a total time budget.

    :meth:`next_delay` returns the next wait, or None once ``timeout`` seconds have passed
    since the first failure (give up); :meth:`wait` does the usual log-and-sleep around it.
    :meth:`reset` after a success.
    """

    def __init__(
        self,
        timeout: float,
        initial: float = 0.5,
        maximum: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.initial = initial
        self.maximum = maximum
        self._clock = clock
        self._started: float | None = None
        self._delay = initial
        self.attempts = 0

    @property
    def elapsed(self) -> float:
        return 0.0 if self._started is None else self._clock() - self._started

    def next_delay(self) -> float | None:
        now = self._clock()
        if self._started is None:
            self._started = now
        self.attempts += 1
        left = self.timeout - (now - self._started)
        if left <= 0:
            return None
        delay = min(self._delay, left)
        self._delay = min(self._delay * 2, self.maximum)
        return delay

    def wait(
        self,
        exc: E,
        give_up: Callable[[E], Exception],
        log: logging.Logger,
        sleep: Callable[[float], bool],
        message: str = "%s; reconnecting in %.1fs",
    ) -> bool:
        """After the failure ``exc``: log ``message`` (``exc``, delay) and sleep the next delay.

        Returns ``sleep``'s answer (False: stop). Raises ``give_up(exc)`` once the budget is spent.
        """
        delay = self.next_delay()
        if delay is None:
            raise give_up(exc) from None
        # stacklevel: the record names the provider's loop, as when it logged this itself
        log.warning(message, exc, delay, stacklevel=2)
        return sleep(delay)

    def summary(self) -> str:
        """How the retries went, for the give-up message."""
        return f"gave up after {self.attempts} attempts in {self.elapsed:.0f}s (reconnect_timeout = {self.timeout:g})"

    def reset(self) -> None:
        self._started = None
        self._delay = self.initial
        self.attempts = 0
