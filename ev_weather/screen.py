"""What EV_W shows people: timestamped lines, and a line per city.

Without a terminal (a pipe, a file, a container's log) every message is a line, and after each
cycle the line of each city whose status changed (its temperature, alert, error). On a terminal
the menu (``menu.py``) shows the cities in a box, redrawn every half second, and the messages
below; ``Messages`` queues the lines for it while it runs.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
from datetime import datetime
from typing import Callable, TextIO

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


class Messages:
    """EV_W's ``say``: plain lines, or, while the menu runs, its message queue (never blocks)."""

    def __init__(self, plain: PlainScreen | None = None, now: Callable[[], datetime] = datetime.now) -> None:
        self.plain = plain or PlainScreen()
        self._now = now
        self._queue: collections.deque[tuple[datetime, str]] = collections.deque(maxlen=MAX_MESSAGES)
        self._lock = threading.Lock()
        self._to_menu = False

    def __call__(self, text: str) -> None:
        with self._lock:
            if self._to_menu:
                self._queue.append((self._now(), text))
                return
        self.plain.line(text)

    def attach(self) -> None:
        with self._lock:
            self._to_menu = True

    def detach(self) -> None:
        """Back to plain lines; what the menu did not show yet is printed."""
        with self._lock:
            self._to_menu = False
            left = list(self._queue)
            self._queue.clear()
        for _, text in left:
            self.plain.line(text)

    def drain(self) -> list[tuple[datetime, str]]:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
        return items


class MessagesLogHandler(logging.Handler):
    """Log records as lines of ``Messages`` (while the menu owns the terminal)."""

    def __init__(self, messages: Messages, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.messages = messages
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages(self.format(record))
        except Exception:
            self.handleError(record)
