"""Wait on a condition with a deadline: the only way tests and benchmarks wait."""

from __future__ import annotations

import threading
import time
from typing import Callable


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.01):
    """Poll ``predicate`` until it returns a true value (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_on(condition: threading.Condition, predicate: Callable[[], object], timeout: float, what: str,
            seen: Callable[[], str] = lambda: "", interval: float = 0.1):
    """``wait_until`` for state guarded by ``condition`` (notified when it changes): evaluate
    ``predicate`` holding it; on timeout, the failure says what was ``seen``."""
    deadline = time.monotonic() + timeout
    with condition:
        while True:
            value = predicate()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; {seen()}")
            condition.wait(min(left, interval))
