"""The one owner of Central's side effects.

Decisions are taken where the news arrives (a Monitor's session, a Kafka consumer, the
operator), under the domain's locks, and never wait for anything outside Central. What
they cause outside (a CP row for the write-behind, a log line, a supply interrupted and
its driver alerted, a record on Kafka) is handed to ``Effects`` and carried out by one
thread, in the order it was handed over: a CP's status on Kafka is never older than the
last change, no reactor thread ever calls Kafka or the database, and the supply service
and the Monitor side do not call each other back.

The queue is bounded. When it is full, ``submit`` waits up to ``full_wait`` seconds and
then runs the effect on the caller's thread (said once): an effect is never dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

_STOP = object()


class Effects:
    def __init__(self, *, max_queued: int = 100_000, full_wait: float = 1.0, name: str = "effects") -> None:
        self._queue: queue.Queue = queue.Queue(max_queued)
        self.full_wait = full_wait
        self.name = name
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._unfinished = 0
        self._overflow_said = False
        self.applied = 0

    def start(self) -> "Effects":
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def submit(self, effect: Callable[..., Any], *args: Any) -> None:
        """Carry out ``effect(*args)`` on the effects thread, after everything submitted before
        (at once on the caller's thread when not started: tests, and Central's start)."""
        if self._thread is None or not self._thread.is_alive():
            self._apply(effect, args)
            return
        with self._idle:
            self._unfinished += 1
        try:
            self._queue.put((effect, args), timeout=self.full_wait)
        except queue.Full:
            with self._idle:
                self._unfinished -= 1
            if not self._overflow_said:
                self._overflow_said = True
                log.error("%s: more than %d effects waiting; running them on the callers' threads",
                          self.name, self._queue.maxsize)
            self._apply(effect, args)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every effect submitted so far was carried out; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Carry out what is queued (within ``timeout``), then stop the thread."""
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.error("%s: could not stop in order: the queue stays full", self.name)
            return
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            effect, args = item
            self._apply(effect, args)
            with self._idle:
                self._unfinished -= 1
                if self._unfinished == 0:
                    self._idle.notify_all()

    def _apply(self, effect: Callable[..., Any], args: tuple) -> None:
        try:
            effect(*args)
            self.applied += 1
        except Exception:  # one failing effect never stops the others
            log.exception("%s: %s failed", self.name, getattr(effect, "__qualname__", effect))
