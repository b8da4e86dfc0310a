"""Signals become an Event; the main loop acts on it and shuts down in order.

The signal handler only records the signal (like gunicorn's): every program's
main loop waits on ``stop.wait(...)`` and, when it is set, stops accepting,
closes sessions, flushes producers and closes the database, in that order.
A second Ctrl+C while shutting down exits at once with code 130.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)


class Shutdown:
    """Owns the stop Event; installs SIGINT/SIGTERM handlers when asked to."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None

    def install(self) -> "Shutdown":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.event.is_set():
            os._exit(130)  # second signal: the user insists
        self.signal_name = signal.Signals(signum).name
        self.event.set()

    def request(self) -> None:
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)


def raise_file_limit(needed: int | None = None) -> None:
    """One file descriptor per connection: raise the soft limit to ``needed`` (default: the
    hard limit). The common default of 1024 would cap a server near 1,000 connections."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        ceiling = 65536 if hard == resource.RLIM_INFINITY else hard
        target = ceiling if needed is None else min(ceiling, needed)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError) as exc:  # no resource module (Windows), or not allowed
        log.debug("file descriptor limit left as it is: %s", exc)
