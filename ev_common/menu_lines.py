"""The lines a program says while its full-screen menu may own the terminal (the Engine's and
EV_W's): ``Messages`` prints them as plain lines, or, while the menu runs, queues them for the
menu to show; ``MessagesLogHandler`` sends log records the same way.

``Messages(plain)`` needs only ``plain.line(text)``: each program's plain screen.
"""

from __future__ import annotations

import collections
import logging
import threading
from datetime import datetime
from typing import Callable, Protocol

MAX_MESSAGES = 1000  # lines kept for the menu at most (the oldest dropped first)


class Lines(Protocol):
    def line(self, text: str) -> None: ...


class Messages:
    """A program's ``say``: plain lines, or, while the menu runs, its message queue.

    Never blocks (a caller may hold its own lock): the menu drains the queue on its own
    thread. Whatever is queued when the menu ends is printed."""

    def __init__(self, plain: Lines, now: Callable[[], datetime] = datetime.now,
                 limit: int = MAX_MESSAGES) -> None:
        self.plain = plain
        self._now = now
        self._queue: collections.deque[tuple[datetime, str]] = collections.deque(maxlen=limit)
        self._lock = threading.Lock()
        self._to_menu = False

    def __call__(self, text: str) -> None:
        with self._lock:
            if self._to_menu:
                self._queue.append((self._now(), text))
                return
        self.plain.line(text)

    def attach(self) -> None:
        """From now on, lines wait in the queue for the menu."""
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
        except Exception:  # a log line never breaks the program
            self.handleError(record)
