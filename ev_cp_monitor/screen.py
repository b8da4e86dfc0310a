"""What the Monitor shows people: its CP, the link to Central, the Engine's health.

Every message (registration, Central down, faults and recoveries, Central's
requests) is a timestamped line. The Engine's health, checked every second, is
shown as a compact status:

* on a terminal, one status line at the bottom, redrawn in place after every
  check; messages and log records are printed above it;
* otherwise (a pipe, a file, a container log), only the changes are printed (the
  messages) plus a status line every ``heartbeat`` seconds while a connectivity
  problem lasts (Central cannot be reached, the Engine is faulty or cannot be
  reached), however many other lines were printed meanwhile, and otherwise when
  nothing else was printed for ``heartbeat`` seconds.

With the menu (a person at a terminal, ``cli.py``) the status line ends with its keys, and
[s] prints the whole status (``show_status``): Central's address, TLS and Central's
certificate, whether the CP is registered and since when, the key version it holds (never
the key), the Engine's health.

This is the only module of the Monitor that prints for people.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from datetime import datetime
from typing import Callable, TextIO

from rich.color import Color, ColorParseError, ColorSystem

from ev_common.log import guard_live_line
from ev_common.words import ACTIVADO, AVERIADO, CANNOT_CONNECT, DESCONECTADO, OUT_OF_ORDER, PARADO, STATE_COLOURS

from .central_client import AGAIN, CentralStatus, Halt
from .engine_probe import Verdict

HEARTBEAT_SECONDS = 10.0
REGISTERED = "registered"
CONNECTING = "connecting..."
MENU_KEYS = "[a] auth again [s] status [q] quit"  # the status line's end, with the menu
_CLEAR = "\r\x1b[2K"


def ansi(colour: str) -> str | None:
    """The terminal code of a words.py colour (a name or #rrggbb), in 256 colours; None if unknown."""
    try:
        return ";".join(Color.parse(colour).downgrade(ColorSystem.EIGHT_BIT).get_ansi_codes())
    except ColorParseError:
        return None


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def engine_text(verdict: Verdict | None, for_seconds: float | None) -> str:
    if verdict is None:
        return "Engine: not checked yet"
    since = f" for {duration(for_seconds)}" if for_seconds is not None else ""
    return f"Engine: OK{since}" if verdict.ok else f"Engine: FAULT{since}: {verdict.reason}"


def halted_text(halt: Halt, menu: bool) -> str:
    """The status line's word for a client that waits for a person: ``keys revoked, press [a]``."""
    return f"{halt.kind}, press [a]" if menu else halt.kind


def status_parts(cp_id: str, central: str, verdict: Verdict | None, for_seconds: float | None,
                 stopped: bool = False) -> list[tuple[str, str | None]]:
    """The status line's parts, each with its colour (a words.py colour name, or None)."""
    central_colour = {REGISTERED: STATE_COLOURS[ACTIVADO], CONNECTING: STATE_COLOURS[DESCONECTADO]}.get(
        central, STATE_COLOURS[AVERIADO])
    engine_colour = None if verdict is None else STATE_COLOURS[ACTIVADO if verdict.ok else AVERIADO]
    parts = [(cp_id, None), (f"Central: {central}", central_colour), (engine_text(verdict, for_seconds), engine_colour)]
    if stopped:
        parts.append((OUT_OF_ORDER, STATE_COLOURS[PARADO]))
    return parts


def status_text(cp_id: str, central: str, verdict: Verdict | None, for_seconds: float | None,
                stopped: bool = False) -> str:
    """One line: ``CP001 | Central: registered | Engine: OK for 35 s`` (+ `` | Out of Order``)."""
    return " | ".join(text for text, _ in status_parts(cp_id, central, verdict, for_seconds, stopped))


def status_report(cp_id: str, central: CentralStatus, engine: str, verdict: Verdict | None,
                  for_seconds: float | None, stopped: bool, now: datetime) -> list[str]:
    """The lines of the menu's [s]."""
    if not central.tls:
        link = f"Central {central.address}: TLS off (plain TCP)"
    else:
        seen = central.fingerprint or "not seen yet"
        link = (f"Central {central.address}: TLS on{f' ({central.tls_version})' if central.tls_version else ''}, "
                f"certificate {seen} (verified by {central.verified_by})")
    if central.registered_since is not None:
        since = central.registered_since
        registration = (f"registered since {since:%Y-%m-%d %H:%M:%S} (for {duration((now - since).total_seconds())})"
                        + (", with its credential" if central.credential else ""))
    elif central.halted is not None:
        registration = f"not registered: {central.halted.kind} ({central.halted.reason}); {AGAIN}"
    else:
        registration = "not registered (connecting)"
    if central.key_version is None:
        key = "key: none held"
    elif central.key_version == 0:
        key = "key: version 0, none (open mode: the Engine's records travel in clear)"
    else:
        key = f"key: version {central.key_version}, held in memory and given to the Engine"
    lines = [f"status of {cp_id}:", f"  {link}", f"  {registration}", f"  {key}",
             f"  Engine {engine}: {engine_text(verdict, for_seconds).removeprefix('Engine: ')}"]
    if stopped:
        lines.append(f"  {OUT_OF_ORDER}: stopped by Central")
    return lines


def coloured(parts: list[tuple[str, str | None]], width: int) -> str:
    """The parts joined for a terminal (coloured), cut to ``width`` characters of text."""
    out, used = [], 0
    for index, (text, colour) in enumerate(parts):
        separator = " | " if index else ""
        room = width - used - len(separator)
        if room <= 3:
            break
        if len(text) > room:
            text = text[:room - 3] + "..."
        used += len(separator) + len(text)
        code = ansi(colour) if colour else None
        out.append(separator + (f"\x1b[{code}m{text}\x1b[0m" if code else text))
    return "".join(out)


class MonitorScreen:
    """The Monitor's screen; safe to call from its threads.

    ``message`` is the Monitor's ``say``, ``central_said`` its Central client's,
    ``checked`` is called after every health check. ``registered`` is the client's
    event; ``stopped()`` says whether Central has stopped the CP, ``halted()`` why the client
    waits for [a] (None when it does not). ``menu``: the keys are read (the status line shows them).
    """

    def __init__(self, cp_id: str, *, out: TextIO | None = None, terminal: bool | None = None,
                 registered: threading.Event | None = None, stopped: Callable[[], bool] = lambda: False,
                 halted: Callable[[], Halt | None] = lambda: None, menu: bool = False,
                 heartbeat: float = HEARTBEAT_SECONDS, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = datetime.now, width: Callable[[], int] | None = None) -> None:
        self.cp_id = cp_id
        self.halted = halted
        self.menu = menu
        self._engine_address = ""
        self._out = out
        if terminal is None:
            try:
                terminal = (out or sys.stdout).isatty()
            except (AttributeError, OSError, ValueError):
                terminal = False
        self.terminal = terminal
        self.registered = registered or threading.Event()
        self._stopped = stopped
        self.heartbeat = heartbeat
        self._clock = clock
        self._now = now
        self._width = width or (lambda: shutil.get_terminal_size().columns)
        self._lock = threading.RLock()
        self._central_down = False  # the client said it cannot reach Central (since its last registration)
        self._verdict: Verdict | None = None
        self._since: float | None = None  # when the Engine's health (OK or not) last changed
        self._last_line = clock()  # when a line was last printed
        self._last_status = clock()  # when a status line was last printed (plain mode)
        self._drawn = False  # the status line is on screen (terminal)

    # -- output -----------------------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        out = self._out or sys.stdout
        try:
            out.write(text)
            out.flush()
        except (OSError, ValueError):  # stdout closed or gone: the Monitor goes on
            pass

    def _clear(self) -> None:
        if self._drawn:
            self._write(_CLEAR)
            self._drawn = False

    def _draw(self) -> None:
        if not self.terminal:
            return
        stamp = f"{self._now():%H:%M:%S} "
        width = max(20, self._width() - 1) - len(stamp)  # a wrapped line could not be redrawn in place
        keys = f" | {MENU_KEYS}" if self.menu and width - len(MENU_KEYS) >= 40 else ""  # the status first
        self._write(_CLEAR + stamp + coloured(self._parts(), width - len(keys)) + keys)
        self._drawn = True

    def line(self, text: str) -> None:
        with self._lock:
            self._clear()
            self._write(f"{self._now():%H:%M:%S} {text}\n")
            self._last_line = self._clock()
            self._draw()

    # -- what is shown ------------------------------------------------------------------------------------

    def central(self) -> str:
        if self.registered.is_set():
            return REGISTERED
        halt = self.halted()
        if halt is not None:
            return halted_text(halt, self.menu)
        return CANNOT_CONNECT if self._central_down else CONNECTING

    def _parts(self) -> list[tuple[str, str | None]]:
        for_seconds = None if self._since is None else self._clock() - self._since
        return status_parts(self.cp_id, self.central(), self._verdict, for_seconds, self._stopped())

    def status(self) -> str:
        return " | ".join(text for text, _ in self._parts())

    def problem(self) -> bool:
        """A connectivity problem now: Central cannot be reached, or the Engine is not OK."""
        return (self.central() not in (REGISTERED, CONNECTING)
                or (self._verdict is not None and not self._verdict.ok))

    def started(self, central: str, engine: str, *, tls: str | None = None) -> None:
        """The first line; ``tls`` says how Central's certificate is verified (secure mode)."""
        self._engine_address = engine
        over = f" over TLS ({tls})" if tls else ""
        keys = "keys: [a] authenticate again, [s] status, [q] quit" if self.menu else "Ctrl+C stops"
        self.line(f"Monitor of {self.cp_id}: Central {central}{over}, Engine {engine}; a health check every second "
                  f"({keys})")

    def show_status(self, central: CentralStatus) -> None:
        """The menu's [s]: everything known, one line each (never the key nor the credential)."""
        with self._lock:
            for_seconds = None if self._since is None else self._clock() - self._since
            lines = status_report(self.cp_id, central, self._engine_address, self._verdict, for_seconds,
                                  self._stopped(), self._now())
            for text in lines:
                self.line(text)

    def message(self, text: str) -> None:
        """A fault, a recovery, Central's requests...: printed at once."""
        self.line(text)

    def central_said(self, text: str) -> None:
        """The Central client's lines: printed, and they tell whether Central is reachable."""
        with self._lock:
            if text.startswith(CANNOT_CONNECT):
                self._central_down = True
            elif text.startswith(("Registered at Central", "authenticating again")):
                self._central_down = False
            self.line(text)

    def checked(self, verdict: Verdict) -> None:
        """After every health check: the status line in place, or a heartbeat line now and then."""
        with self._lock:
            if self._verdict is None or verdict.ok != self._verdict.ok:
                self._since = self._clock()
            self._verdict = verdict
            now = self._clock()
            quiet = now - self._last_line >= self.heartbeat
            if self.terminal:
                self._draw()
            elif quiet or (self.problem() and now - self._last_status >= self.heartbeat):
                self.line(f"status: {self.status()}")
                self._last_status = now

    def closing(self, text: str) -> None:
        """The last line: the status line (on a terminal) stays above it."""
        with self._lock:
            if self._drawn:
                self._write("\n")
                self._drawn = False
            self._write(f"{self._now():%H:%M:%S} {text}\n")

    # -- log records ---------------------------------------------------------------------------------------

    def guard_logging(self) -> None:
        """On a terminal: log records (stderr) are printed above the status line, not through it."""
        if not self.terminal:
            return
        guard_live_line(self._lock, self._clear, self._draw)
