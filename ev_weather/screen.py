"""What EV_W shows people: timestamped lines, and a line per city.

Without a terminal (a pipe, a file, a container's log) every message is a line, and after each
cycle the line of each city whose status changed (its temperature, alert, error). On a terminal
the menu (``menu.py``) shows the cities in a box, redrawn every half second, and the messages
below; ``Messages`` queues the lines for it while it runs.
"""

from __future__ import annotations

import sys
import threading
from datetime import datetime
from typing import Callable, TextIO

from ev_common import menu_lines

from .office import WatchView

MAX_MESSAGES = 500


class PlainScreen:
    """Lines on ``out`` (standard output by default); safe from every thread."""

    def __init__(self, out: TextIO | None = None, now: Callable[[], datetime] = datetime.now) -> None:
        self._out = out
        self._now = now
        self._lock = threading.Lock()
        self._shown: dict[str, str] = {}  # city -> its line as last printed
        self._header = ""

    def line(self, text: str) -> None:
        out = self._out or sys.stdout
        with self._lock:
            try:
                out.write(f"{self._now():%H:%M:%S} {text}\n")
                out.flush()
            except (OSError, ValueError):  # standard output closed: EV_W goes on
                pass

    def show(self, view: WatchView) -> None:
        """After a cycle: the cities whose line changed since it was last printed."""
        header = f"{view.source} | {view.central}"
        if header != self._header:
            self._header = header
            self.line(header)
        for city in view.cities:
            text = city.text()
            if self._shown.get(city.city) != text:
                self._shown[city.city] = text
                self.line(f"  {text}")
        for gone in set(self._shown) - {c.city for c in view.cities}:
            del self._shown[gone]


class Messages(menu_lines.Messages):
    """The program's ``say`` (``ev_common.menu_lines``): plain lines on this screen, or, while the
    menu runs, its message queue."""

    def __init__(self, plain: PlainScreen | None = None, now: Callable[[], datetime] = datetime.now) -> None:
        super().__init__(plain or PlainScreen(), now, MAX_MESSAGES)


MessagesLogHandler = menu_lines.MessagesLogHandler