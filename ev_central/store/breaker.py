"""A circuit breaker: after the database fails, calls fail at once for a while.

Closed (the normal state), every call goes through. When a call finds the database
unreachable, the breaker opens for a backoff period (capped exponential, with jitter:
``ev_common.retry.Backoff``); while open every call fails at once with
``StoreUnavailable`` instead of waiting on a dead connection. When the period is over,
one call at a time (the probe) goes through: if it succeeds the breaker closes, if it
fails the breaker opens again for a longer period.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from ev_common.retry import Backoff

from .base import StoreUnavailable


class CircuitBreaker:
    def __init__(self, what: str, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what = what
        self._backoff = backoff or Backoff(initial=1.0, cap=10.0)
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until: float | None = None  # None: closed
        self._probing = False
        self._last_error = ""

    @property
    def is_open(self) -> bool:
        """True while calls are refused (the backoff period is running, or a probe is out)."""
        with self._lock:
            return self._open_until is not None

    def before(self) -> None:
        """Call before using the database: returns if the call may go on (closed, or this
        call is the probe), else raises ``StoreUnavailable`` at once."""
        with self._lock:
            if self._open_until is None:
                return
            left = self._open_until - self._clock()
            if left <= 0 and not self._probing:
                self._probing = True
                return
        wait = f"retrying in {left:.1f} s" if left > 0 else "another call is checking it"
        raise StoreUnavailable(f"{self.what} unavailable ({wait}; last error: {self._last_error})")

    def succeeded(self) -> None:
        with self._lock:
            self._open_until = None
            self._probing = False
            self._backoff.reset()

    def failed(self, error: BaseException) -> None:
        """The call found the database unreachable: open (again), for a longer period."""
        with self._lock:
            self._last_error = str(error)
            self._probing = False
            self._open_until = self._clock() + self._backoff.next()

    def released(self) -> None:
        """The call ended without telling whether the database works (for example it was
        refused before reaching it): let another call probe."""
        with self._lock:
            self._probing = False
