"""Interactive mode: a small line-based menu on stdin.

Lines are read by a daemon thread and handed over through a queue, so the main
thread can still notice Ctrl+C (the stop event) while nobody types. A request
runs in a thread of its own ("request"), so commands are served while it runs:
``c`` cancels it, ``q`` quits, ``l`` and ``h`` work as always, and anything else
is answered at once that a supply is in progress.

On a terminal (stdin and stdout) ``TerminalLineReader`` reads key by key
(cbreak mode, restored when it stops) and echoes what is typed through the
screen, which keeps the prompt and the typed text as the bottom line while other
lines are printed above it.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import queue
import select
import threading
from typing import Callable, TextIO

from .driver import CPDirectory, Driver
from .screen import Screen
from .services_file import valid_id

_EOF = object()
MAX_LINE = 200  # characters kept of a typed line
QUEUE_SIZE = 100  # lines read ahead, not yet served
JOIN_TIMEOUT = 5.0  # how long quitting waits for the cancelled request to end


class LineReader:
    """Reads ``stream`` line by line in a daemon thread; ``get`` waits for the next line."""

    def __init__(self, stream: TextIO) -> None:
        self._queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._read, args=(stream,), name="stdin", daemon=True)
        self._thread.start()

    def _read(self, stream: TextIO) -> None:
        try:
            for line in stream:
                self._queue.put(line[:MAX_LINE])
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

    def close(self) -> None:
        """Nothing to undo for a stream read line by line."""


class TerminalLineReader(LineReader):
    """Reads a terminal key by key and edits the line on ``screen``: Backspace, Ctrl+U (erase
    the line), Enter; Ctrl+D on an empty line is the end of input; escape sequences (arrow
    keys) are ignored. Ctrl+C still signals the process. ``close`` restores the terminal."""

    def __init__(self, fd: int, screen: Screen, tick: float = 0.2) -> None:
        self._fd = fd
        self._screen = screen
        self._tick = tick
        self._stopping = threading.Event()
        self.keys = threading.Event()  # the terminal is in cbreak mode: keys come one by one
        self._queue = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._read_keys, name="stdin", daemon=True)
        self._thread.start()

    def _read_keys(self) -> None:
        try:
            with _cbreak(self._fd):
                self.keys.set()
                self._edit()
        except Exception:  # the terminal went away: as the end of input
            pass
        self._queue.put(_EOF)

    def _edit(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        line, escape = "", ""
        while not self._stopping.is_set():
            ready, _, _ = select.select([self._fd], [], [], self._tick)
            if not ready:
                continue
            data = os.read(self._fd, 256)
            if not data:
                return
            for char in decoder.decode(data):
                if escape:  # ESC [ ... final letter: skipped whole
                    escape += char
                    if len(escape) > 8 or (len(escape) > 1 and char.isalpha()) or (len(escape) == 2 and char != "["):
                        escape = ""
                    continue
                if char == "\x1b":
                    escape = char
                elif char in "\r\n":
                    self._screen.entered()
                    self._queue.put(line)
                    line = ""
                elif char in "\x7f\b":
                    line = line[:-1]
                elif char == "\x15":  # Ctrl+U
                    line = ""
                elif char == "\x04":  # Ctrl+D
                    if not line:
                        return
                elif char.isprintable() and len(line) < MAX_LINE:
                    line += char
                self._screen.typed(line)

    def close(self) -> None:
        """Stop reading and give the terminal back as it was."""
        self._stopping.set()
        self._thread.join(1.0)
        self._screen.prompt_done()


@contextlib.contextmanager
def _cbreak(fd: int):
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)  # what is typed already is kept
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def line_reader(stream: TextIO, screen: Screen) -> LineReader:
    """Key by key when ``stream`` and the screen are a terminal, else line by line."""
    try:
        if screen.terminal and stream.isatty():
            return TerminalLineReader(stream.fileno(), screen)
    except (AttributeError, OSError, ValueError):
        pass
    return LineReader(stream)


def run_menu(driver: Driver, cps: CPDirectory, screen: Screen, read_line: Callable[[], str | None],
             join_timeout: float = JOIN_TIMEOUT) -> int:
    """Serve the menu until ``q``, end of input or the driver's stop event; returns the exit code 0.

    A request runs in its own thread while commands are read; quitting cancels it first."""
    if cps.screen is None:
        cps.screen = screen  # changes of the available CPs are shown here too
    screen.menu()
    worker: threading.Thread | None = None
    try:
        while not driver.stop.is_set():
            screen.prompt()
            line = read_line()
            if line is None:
                break
            command, _, argument = line.strip().partition(" ")
            command, argument = command.lower(), argument.strip()
            if not command:
                continue
            busy = driver.busy
            if command in ("q", "quit", "exit"):
                break
            if command in ("h", "help", "?", "m", "menu"):
                screen.menu()
            elif command in ("l", "list", "ls"):
                screen.cps(cps.available(), [cp for cp in cps.all() if cp.state != CPDirectory.AVAILABLE])
            elif command in ("c", "cancel"):
                if driver.cancel() is None:
                    screen.nothing_to_cancel()
                elif worker is not None:
                    worker.join(join_timeout)
            elif busy is not None:
                screen.busy(busy)
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
                driver.claim(argument)  # busy (and cancellable) from now on
                worker = threading.Thread(target=driver.request, args=(argument,), name="request", daemon=True)
                worker.start()
            else:
                screen.unknown_command(line.strip())
    finally:
        if worker is not None and worker.is_alive():
            driver.cancel(closing=True)
            worker.join(join_timeout)
        screen.prompt_done()
    screen.goodbye()
    return 0
