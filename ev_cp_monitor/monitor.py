"""The Monitor: a health check of the Engine every second, reported to Central."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .central_client import CentralClient
from .engine_probe import EngineProbe, Verdict

log = logging.getLogger(__name__)


class Monitor:
    def __init__(self, probe: EngineProbe, central: CentralClient, *, interval: float = 1.0,
                 say: Callable[[str], None] | None = None,
                 on_check: Callable[[Verdict], None] | None = None) -> None:
        self.probe = probe
        self.central = central
        self.interval = interval
        self._say = say or (lambda text: log.info("%s", text))  # changes: a fault, a recovery
        self._on_check = on_check  # every verdict (the screen's live status)
        self.last: Verdict | None = None

    def run(self, stop: threading.Event) -> int:
        """Check every ``interval`` until ``stop``; returns the exit code."""
        client = threading.Thread(target=self.central.run, args=(stop,), name="central-link", daemon=True)
        client.start()
        next_check = time.monotonic()
        try:
            while not stop.is_set():
                verdict = self.probe.check()
                if self._on_check is not None:
                    try:
                        self._on_check(verdict)
                    except Exception:  # the screen must not stop the health checks
                        log.exception("showing the health check failed")
                if self.last is None or verdict != self.last:
                    self._say("Engine OK" if verdict.ok else f"Engine FAULT: {verdict.reason}")
                self.last = verdict
                self.central.set_health(verdict)
                if self.central.refused is not None:
                    return 1
                next_check += self.interval
                stop.wait(max(0.0, next_check - time.monotonic()))
        finally:
            stop.set()
            client.join(5)
            self.probe.close()
        return 1 if self.central.refused is not None else 0
