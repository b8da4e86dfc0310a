"""Interactive mode: a small line-based menu on stdin.

Lines are read by a daemon thread and handed over through a queue, so the main
thread can still notice Ctrl+C (the stop event) while nobody types.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, TextIO

from .driver import CPDirectory, Driver
from .screen import Screen
from .services_file import valid_id

_EOF = object()


class LineReader:
    """Reads ``stream`` line by line in a daemon thread; ``get`` waits for the next line."""

    def __init__(self, stream: TextIO) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), name="stdin", daemon=True)
        self._thread.start()

    def _read(self, stream: TextIO) -> None:
        try:
            for line in stream:
                self._queue.put(line)
        except Exception:  # stdin closed, missing or undecodable: as the end of input
            pass
        self._queue.put(_EOF)

    def get(self, stop: threading.Event, tick: float = 0.1) -> str | None:
        """The next line without its end, or None at end of input or when ``stop`` is set."""
        while not stop.is_set():
            try:
                item = self._queue.get(timeout=tick)
            except queue.Empty:
                continue
            if item is _EOF:
                self._queue.put(_EOF)  # stay at the end
                return None
            return item.rstrip("\r\n")
        return None


def run_menu(driver: Driver, cps: CPDirectory, screen: Screen, read_line: Callable[[], str | None]) -> int:
    """Serve the menu until ``q``, end of input or the driver's stop event; returns the exit code 0."""
    if cps.screen is None:
        cps.screen = screen  # changes of the available CPs are shown here too
    screen.menu()
    while not driver.stop.is_set():
        screen.prompt()
        line = read_line()
        if line is None:
            break
        command, _, argument = line.strip().partition(" ")
        command, argument = command.lower(), argument.strip()
        if not command:
            continue
        if command in ("q", "quit", "exit"):
            break
        if command in ("h", "help", "?", "m", "menu"):
            screen.menu()
        elif command in ("l", "list", "ls"):
            screen.cps(cps.available(), [cp for cp in cps.all() if cp.state != CPDirectory.AVAILABLE])
        elif command in ("r", "request"):
            if not argument:
                screen.prompt("CP id: ")
                argument = (read_line() or "").strip()
                if not argument:
                    continue
            if not valid_id(argument):
                screen.invalid_cp(argument)
                continue
            state = cps.state_of(argument)
            if state != CPDirectory.AVAILABLE and cps.all():
                screen.not_listed(argument, state)
            driver.request(argument)
        else:
            screen.unknown_command(line.strip())
    screen.goodbye()
    return 0
