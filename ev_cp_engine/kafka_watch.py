"""Whether the Engine's broker answers: the Engine's ``kafka_ok`` input.

A CP that cannot reach Kafka cannot report a supply, so the Engine must know, also while
it is idle and sends nothing. ``KafkaWatch`` asks the broker itself with ``probe`` (a
metadata request of the Engine's own producer, bounded by its timeout; it raises when the
broker does not answer), logs each change with the reason, and hands each outcome to
``report`` (``engine.kafka_ok``):

* at once when ``nudge`` is called: the tick calls it when the publisher starts reporting
  the broker unreachable (``Publisher.reachable`` turning False), so an outage is seen
  within the probe's timeout;
* every ``interval_down`` seconds while the broker does not answer, so its return is seen
  within about that time (the publisher says "reachable" only after a delivery, and an
  idle Engine delivers nothing);
* every ``interval_ok`` seconds otherwise, a safety net that costs one small request.

``run`` loops on its own thread (a probe may block for its timeout); ``check`` is one
probe, for the first answer before the Engine takes its Monitor and for tests.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 2.0
INTERVAL_OK = 15.0
INTERVAL_DOWN = 1.0
STOP_POLL = 0.2


class KafkaWatch:
    def __init__(self, probe: Callable[[], object], report: Callable[[bool], None], *,
                 interval_ok: float = INTERVAL_OK, interval_down: float = INTERVAL_DOWN) -> None:
        self._probe = probe
        self._report = report
        self.interval_ok = interval_ok
        self.interval_down = interval_down
        self._wake = threading.Event()
        self._publisher_reachable = True
        self.ok: bool | None = None  # the last probe's outcome; None before the first

    def check(self) -> bool:
        """Ask the broker once and report the outcome."""
        try:
            self._probe()
        except Exception as exc:  # KafkaException, a timeout...: the broker did not answer
            error = exc.args[0] if exc.args else None
            ok, detail = False, error.str() if callable(getattr(error, "str", None)) else str(exc)
        else:
            ok, detail = True, ""
        if ok != self.ok:
            if ok:
                log.info("Kafka probe: the broker answers")
            else:
                log.warning("Kafka probe: no answer (%s)", detail)
        self.ok = ok
        self._report(ok)
        return ok

    def nudge(self) -> None:
        """Probe now (from any thread)."""
        self._wake.set()

    def publisher_says(self, reachable: bool) -> None:
        """The publisher's view, each tick: probe at once when it turns to unreachable."""
        if self._publisher_reachable and not reachable:
            self.nudge()
        self._publisher_reachable = reachable

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: probe when nudged or when the interval for the last outcome is over."""
        while not stop.is_set():
            due = time.monotonic() + (self.interval_ok if self.ok else self.interval_down)
            while not stop.is_set() and not self._wake.is_set() and time.monotonic() < due:
                self._wake.wait(min(STOP_POLL, max(0.0, due - time.monotonic())))  # stop is seen within STOP_POLL
            self._wake.clear()
            if stop.is_set():
                return
            try:
                self.check()
            except Exception:  # a bug in reporting must not end the watch
                log.exception("the Kafka probe failed")
