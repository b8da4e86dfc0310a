"""Everything the driver reads: lines on stdout, each starting with the time.

This is the only module that prints for people (log records go through ``logging``).
Amounts are shown in EUR with 2 decimals, energy in kWh with 3. On a terminal the
live figures of a supply ("Charging at CP001: ...") are one line updated in place,
that stays as it was when any other line comes; on a pipe or a file each update is
a line of its own. In the menu on a terminal the prompt, with what is typed after
it, is the bottom line: every other line (and every log record) is printed above
it and the prompt is drawn again below. Every ``Screen`` writing to the process's
stdout shares one console, so lines from several threads (and screens) never mix.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import threading
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Callable, Iterable, Sequence, TextIO

from ev_common.log import guard_live_line
from ev_common.words import CANNOT_CONNECT

INDENT = " " * 9  # under the "HH:MM:SS " prefix
CLEAR_LINE = "\r\x1b[2K"  # back to the start of the line and erase it
LINE_UP = "\x1b[1A"  # the cursor one line up
CHEAPEST = 5  # the available CPs named in the line shown when they change
LOCATION_WIDTH = 24  # a longer location is cut in that line
WIDE_LIST = 20  # more available CPs than this: `l` shows them in columns, without locations
COUNT_NAMES = {"COMPLETED": "completed", "INTERRUPTED": "interrupted", "DENIED": "denied",
               "NO_ANSWER": "without answer", "LOST": "lost contact", "CANCELLED": "cancelled"}


def kwh(value: Decimal | None) -> str:
    return "-" if value is None else str(Decimal(value).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP))


def eur(value: Decimal | None) -> str:
    return "-" if value is None else str(Decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def price(value: Decimal | None) -> str:
    """A price per kWh: at least 2 decimals, more only when they matter (0.48, 0.475)."""
    if value is None:
        return "-"
    text = format(Decimal(value).normalize(), "f")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


def moment(value: datetime) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def outcome_text(result) -> str:
    """One phrase for a request's outcome (``result`` is an ev_driver.driver.Result)."""
    name = result.outcome.value
    if name == "COMPLETED":
        return "COMPLETED"
    if name == "INTERRUPTED":
        return f"INTERRUPTED: {result.reason}" if result.reason else "INTERRUPTED"
    if name == "DENIED":
        return f"DENIED: {result.reason}"
    if name in ("NO_ANSWER", "LOST"):
        return f"FAILED: {CANNOT_CONNECT}"
    return "CANCELLED"


def live_text(cp_id: str, kwh_: Decimal, amount_eur: Decimal, power_kw: Decimal, label: str | None = None) -> str:
    tag = f"[{label}] " if label else ""
    return f"{tag}Charging at {cp_id}: {kwh(kwh_)} kWh, {eur(amount_eur)} EUR ({price(power_kw)} kW)"


def _short(text: str, width: int = LOCATION_WIDTH) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def by_price(available: Sequence) -> list:
    """The CPs cheapest first (then by id)."""
    return sorted(available, key=lambda cp: (Decimal(cp.price_eur_kwh), cp.cp_id))


def available_text(available: Sequence) -> str:
    """How many CPs are available and the ``CHEAPEST`` cheapest of them, with their price.

    ``Available CPs: 2: CP002 0.475 EUR/kWh (Gran Via 2), CP001 0.48 EUR/kWh (C/Mayor, 45)``;
    with more than ``CHEAPEST``, ``Available CPs: 300; the 5 cheapest: ...; l lists all``."""
    if not available:
        return "Available CPs: none right now"
    ordered = by_price(available)
    named = ", ".join(f"{cp.cp_id} {price(cp.price_eur_kwh)} EUR/kWh ({_short(cp.location)})"
                      for cp in ordered[:CHEAPEST])
    if len(ordered) <= CHEAPEST:
        return f"Available CPs: {len(ordered)}: {named}"
    return f"Available CPs: {len(ordered)}; the {CHEAPEST} cheapest: {named}; l lists all"


def columns(items: Sequence[str], width: int) -> list[str]:
    """``items`` in columns filling ``width`` characters, top to bottom then left to right."""
    if not items:
        return []
    cell = max(len(item) for item in items) + 2
    count = max(1, width // cell)
    rows = -(-len(items) // count)
    return ["".join(items[row + rows * col].ljust(cell) for col in range(count) if row + rows * col < len(items))
            .rstrip() for row in range(rows)]


class _Console:
    """One output stream: its lock, the live line (on a terminal) that is being updated in place,
    and the prompt (on a terminal, in the menu) that stays the bottom line.

    With a prompt the bottom of the screen is: [the live line] then the prompt and what is
    typed after it, the cursor at its end; without one, the cursor ends the live line."""

    def __init__(self, out: TextIO | None) -> None:
        self._out = out  # None: sys.stdout, looked up at each write
        self.lock = threading.RLock()
        self.live: object | None = None  # what the live line shows (its key), if one is on screen
        self.prompt: str | None = None  # the prompt kept at the bottom (terminal only)
        self.status = ""  # shown before the prompt, e.g. "[Kafka unreachable] "
        self.typed = ""  # what is typed after the prompt
        self._drawn = False  # the prompt line is on screen, the cursor at its end

    def _put(self, text: str) -> None:
        out = self._out or sys.stdout
        try:
            out.write(text)
            out.flush()
        except (OSError, ValueError):  # stdout closed or gone: the program goes on
            pass

    def _erase_prompt(self) -> None:
        if self._drawn:
            self._drawn = False
            self._put(CLEAR_LINE)

    def _draw_prompt(self) -> None:
        if self.prompt is not None and not self._drawn:
            self._drawn = True
            self._put(self.status + self.prompt + self.typed)

    def end_live(self) -> None:
        """Leave the live line as it is (its last figures stay on screen) and go to a new line."""
        with self.lock:
            if self.live is not None:
                self.live = None
                if self.prompt is None:
                    self._put("\n")  # with a prompt, the live line is already above it

    def clear_bottom(self) -> None:
        """Before other text: the prompt line is erased and the live line ends."""
        with self.lock:
            self._erase_prompt()
            self.end_live()

    def redraw(self) -> None:
        """After other text: the prompt (if any) and what is typed are drawn again."""
        with self.lock:
            self._draw_prompt()

    def write(self, text: str) -> None:
        with self.lock:
            self.clear_bottom()
            self._put(text)
            self._draw_prompt()

    def write_live(self, key: object, text: str) -> None:
        """Show ``text`` on the live line for ``key``, in place of its previous figures."""
        with self.lock:
            if self.prompt is None:
                if self.live is not None and self.live != key:
                    self.end_live()
                self._put(CLEAR_LINE + text)
            else:  # the live line is the one above the prompt
                self._erase_prompt()
                if self.live == key:
                    self._put(LINE_UP + CLEAR_LINE)
                self._put(text + "\n")
                self._draw_prompt()
            self.live = key

    def show_prompt(self, prompt: str) -> None:
        """Make ``prompt`` the bottom line (what is typed stays after it)."""
        with self.lock:
            if self.prompt == prompt and self._drawn:
                return
            if self._drawn:
                self._erase_prompt()
            elif self.prompt is None and self.live is not None:
                self._put("\n")  # the live line stays, above the prompt
            self.prompt = prompt
            self._draw_prompt()

    def set_status(self, status: str) -> None:
        with self.lock:
            if status != self.status:
                self._erase_prompt()
                self.status = status
                self._draw_prompt()

    def set_typed(self, typed: str) -> None:
        with self.lock:
            if typed != self.typed:
                self._erase_prompt()
                self.typed = typed
                self._draw_prompt()

    def enter(self) -> None:
        """The typed line was entered: it stays on screen as it is, and a new prompt comes below."""
        with self.lock:
            if self._drawn:
                self._drawn = False
                self._put("\n")
            self.typed = ""
            self.live = None  # no longer right above the prompt
            self._draw_prompt()

    def drop_prompt(self) -> None:
        with self.lock:
            self._erase_prompt()
            self.prompt = None
            self.typed = ""


_STDOUT = _Console(None)


def _is_terminal(out: TextIO | None) -> bool:
    try:
        return bool((out or sys.stdout).isatty())
    except (AttributeError, OSError, ValueError):
        return False


class Screen:
    """Prints lines for the driver; safe to call from several threads.

    ``terminal``: update the live figures in place and keep the prompt at the bottom (default:
    when the output is a terminal); ``width``: the terminal's width (default: asked at each use)."""

    def __init__(self, out: TextIO | None = None, now: Callable[[], datetime] = datetime.now,
                 terminal: bool | None = None, width: Callable[[], int] | None = None) -> None:
        self._console = _STDOUT if out is None else _Console(out)
        self._now = now
        self.terminal = _is_terminal(out) if terminal is None else terminal
        self._width = width or (lambda: shutil.get_terminal_size((100, 24)).columns)
        self.kafka_down: str | None = None  # the bootstrap servers while Kafka is unreachable

    # -- output ---------------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        self._console.write(text)

    def line(self, text: str) -> None:
        self._write(f"{self._now():%H:%M:%S} {text}\n")

    def block(self, first: str, rest: Iterable[str]) -> None:
        lines = [f"{self._now():%H:%M:%S} {first}"] + [INDENT + text for text in rest]
        self._write("\n".join(lines) + "\n")

    @staticmethod
    def _tag(label: str | None) -> str:
        return f"[{label}] " if label else ""

    # -- program --------------------------------------------------------------------------------

    def started(self, driver_id: str, bootstrap: str, mode: str, log_file: str | None = None) -> None:
        where = f"; log in {log_file}" if log_file else ""
        self.line(f"EV_Driver {driver_id}: Kafka {bootstrap}; {mode} (Ctrl+C quits){where}")
        if self.terminal:
            self.guard_logging()

    def guard_logging(self) -> None:
        """Log records (on stderr, the same terminal) are written above the live line's end and
        the prompt, which is drawn again after them."""
        guard_live_line(self._console.lock, self._console.clear_bottom, self._console.redraw)

    def kafka_unreachable(self, bootstrap: str) -> None:
        self.kafka_down = bootstrap
        self.line(f"Kafka unreachable at {bootstrap}: {CANNOT_CONNECT}. Retrying in the background...")
        self._console.set_status("[Kafka unreachable] ")

    def kafka_still_unreachable(self, bootstrap: str, seconds: float) -> None:
        self.line(f"Kafka still unreachable at {bootstrap} (for {duration(seconds)}); retrying...")

    def kafka_reachable(self, bootstrap: str) -> None:
        self.kafka_down = None
        self._console.set_status("")
        self.line(f"Kafka reachable at {bootstrap} again")

    def error(self, text: str) -> None:
        self.line(f"ERROR: {text}")

    def stopping(self) -> None:
        self.line("Closing the driver app...")

    # -- one request ------------------------------------------------------------------------------

    def connecting(self) -> None:
        self.line("Connecting to Kafka before the first request...")

    def request_sent(self, cp_id: str, request_id: str, position: tuple[int, int] | None = None) -> None:
        where = f"[{position[0]} of {position[1]}] " if position else ""
        self.line(f"{where}Supply requested at {cp_id} (request {request_id[:8]}); waiting for Central...")

    def received(self, cp_id: str) -> None:
        self.line(f"Central received the request for {cp_id}; checking the CP...")

    def authorised(self, cp_id: str, session_id: str, price_eur_kwh: Decimal) -> None:
        self.line(f"AUTHORISED at {cp_id}: session {session_id}, price {price(price_eur_kwh)} EUR/kWh. "
                  f"Plug your vehicle in at {cp_id}.")

    def denied(self, cp_id: str, reason: str, label: str | None = None) -> None:
        self.line(f"{self._tag(label)}DENIED at {cp_id}: {reason}")

    def late_authorised(self, cp_id: str, session_id: str, label: str, given_up: bool) -> None:
        if given_up:
            self.line(f"[{label}] authorised after all: session {session_id}; "
                      "its ticket will be shown when it comes")
        else:
            self.line(f"[{label}] AUTHORISED: session {session_id}")

    def progress(self, cp_id: str, kwh_: Decimal, amount_eur: Decimal, power_kw: Decimal,
                 label: str | None = None) -> None:
        """The live figures of a supply: in place on a terminal, else a line per update."""
        text = live_text(cp_id, kwh_, amount_eur, power_kw, label)
        if self.terminal:  # one screen line, so that it can be updated in place
            text = f"{self._now():%H:%M:%S} {text}"[:max(20, self._width() - 1)]
            self._console.write_live(("progress", cp_id, label), text)
        else:
            self.line(text)

    def alert(self, cp_id: str, state: str, reason: str, label: str | None = None) -> None:
        self.line(f"{self._tag(label)}ALERT from {cp_id}: {state}: {reason}")

    def failure(self, cp_id: str, why: str) -> None:
        self.line(f"FAILED at {cp_id}: {CANNOT_CONNECT} ({why})")

    def cancelled(self, cp_id: str) -> None:
        self.line(f"Request at {cp_id} abandoned: the app is closing")

    def abandoned(self, cp_id: str, phase: str, closing: bool = False) -> None:
        """The driver cancelled the request at ``cp_id`` (``phase``: unsent, sent, received or
        authorised); ``closing``: by quitting the app."""
        if phase == "authorised":
            when = "when the app runs again" if closing else "here when it comes"
            self.line(f"Request at {cp_id} abandoned. It was authorised: the supply goes on at {cp_id} "
                      f"(unplug there to end it) and its ticket will be shown {when}")
        elif phase == "unsent":
            self.line(f"Request at {cp_id} abandoned before it was sent")
        else:
            self.line(f"Request at {cp_id} abandoned; if Central authorises it after all, "
                      "you will be told, and its ticket will be shown when it comes")

    def busy(self, cp_id: str) -> None:
        self.line(f"A supply is in progress at {cp_id}: c cancels, q quits (l lists the CPs, h shows the menu)")

    def nothing_to_cancel(self) -> None:
        self.line("No request in progress: nothing to cancel")

    def ticket(self, ticket, label: str | None = None) -> None:
        """``ticket`` is an ev_common.records.Ticket; ``label`` says it is not the supply in progress."""
        if label:
            title = f"TICKET of {'an' if label[0] in 'aeiou' else 'a'} {label}"
        else:
            title = f"TICKET of your supply at {ticket.cp_id}"
        if getattr(ticket, "corrected", False):
            title = "CORRECTED " + title + " (the CP's final figures came late; this one counts)"
        status = ticket.status + (f" ({ticket.end_reason})" if ticket.end_reason else "")
        spent = (ticket.ended_at - ticket.started_at).total_seconds()
        self.block(f"===== {title}: {ticket.status} =====", [
            f"Session    {ticket.session_id}",
            f"Request    {ticket.request_id}",
            f"Driver     {ticket.driver_id}",
            f"CP         {ticket.cp_id}",
            f"Started    {moment(ticket.started_at)}",
            f"Ended      {moment(ticket.ended_at)} ({duration(spent)})",
            f"Energy     {kwh(ticket.kwh)} kWh",
            f"Price      {price(ticket.price_eur_kwh)} EUR/kWh",
            f"Amount     {eur(ticket.amount_eur)} EUR",
            f"Status     {status}",
            "=" * 40,
        ])

    def pause(self, seconds: float, remaining: int) -> None:
        self.line(f"Next request in {seconds:g} s ({remaining} left)...")

    # -- file mode ----------------------------------------------------------------------------------

    def summary(self, driver_id: str, results: Sequence, totals) -> None:
        """``results``: ev_driver.driver.Result items; ``totals``: an ev_driver.driver.Totals."""
        rows = [f"{'#':>3}  {'CP':<12} {'Outcome':<48} {'kWh':>10} {'EUR':>9}"]
        for result in results:
            rows.append(f"{result.position:>3}  {result.cp_id:<12} {outcome_text(result):<48} "
                        f"{kwh(result.kwh):>10} {eur(result.amount_eur):>9}")
        counts = ", ".join(f"{n} {COUNT_NAMES.get(name, name.lower())}" for name, n in totals.counts.items() if n)
        rows.append(f"Total: {totals.requests} request(s): {counts or 'none'}; "
                    f"{kwh(totals.kwh)} kWh, {eur(totals.amount_eur)} EUR")
        self.block(f"===== Summary for driver {driver_id} =====", rows)

    # -- interactive mode -----------------------------------------------------------------------------

    def menu(self) -> None:
        self.block("Menu:", [
            "l          list every CP: the available ones cheapest first, then the others",
            "r CP_ID    request a supply at CP_ID (or just r, then the id)",
            "c          cancel the request in progress",
            "h          this menu",
            "q          quit (also Ctrl+D / end of input)",
        ])

    def prompt(self, text: str = "> ") -> None:
        """Ask for input: on a terminal ``text`` stays the bottom line until the next prompt."""
        if self.terminal:
            self._console.show_prompt(text)
        else:
            self._write(text)

    def typed(self, text: str) -> None:
        """What is typed after the prompt (echoed by ev_driver.menu.TerminalLineReader)."""
        self._console.set_typed(text)

    def entered(self) -> None:
        """The typed line was entered: it stays as it is and the prompt comes again below it."""
        self._console.enter()

    def prompt_done(self) -> None:
        """No more input: the prompt goes away."""
        self._console.drop_prompt()

    def unknown_command(self, text: str) -> None:
        self.line(f"Unknown command {text!r}; h shows the menu")

    def invalid_cp(self, text: str) -> None:
        self.line(f"{text!r} is not a CP id (1-64 characters from A-Z a-z 0-9 _ -)")

    def not_listed(self, cp_id: str, state: str | None) -> None:
        known = f"is {state}" if state else "is not in the list of CPs"
        self.line(f"Note: {cp_id} {known}; asking Central anyway")

    def cps(self, available: Sequence, others: Sequence) -> None:
        """``available``/``others``: ev_common.records.CPStatus items. The available CPs come
        cheapest first, one per line with their location, or in columns (id and price) when
        there are more than ``WIDE_LIST``; the others grouped by state, wrapped to the width."""
        width = max(40, self._width() - len(INDENT) - 1)
        if not available and not others:
            if self.kafka_down:
                self.line(f"The CPs are not known: Kafka is unreachable at {self.kafka_down} "
                          "(retrying in the background)")
            else:
                self.line("No CP known yet: the list fills a few seconds after start; try again shortly")
            return
        ordered = by_price(available)
        if len(ordered) > WIDE_LIST:
            rows = columns([f"{cp.cp_id} {price(cp.price_eur_kwh)}" for cp in ordered], width)
        else:
            rows = [f"{cp.cp_id:<12} {price(cp.price_eur_kwh):>6} EUR/kWh  {cp.location}" for cp in ordered]
        if others:
            states: dict[str, list[str]] = {}
            for cp in others:
                states.setdefault(cp.state, []).append(cp.cp_id)
            text = "not available: " + "; ".join(
                ", ".join(f"{cp_id} ({state})" for cp_id in ids) if len(ids) <= CHEAPEST
                else f"{state} ({len(ids)}): {', '.join(ids)}" for state, ids in states.items())
            rows += textwrap.wrap(text, width, break_on_hyphens=False) or [text]
        if ordered:
            first = f"Available CPs: {len(ordered)}" + (", cheapest first (CP EUR/kWh)" if len(ordered) > WIDE_LIST
                                                        else ", cheapest first")
        else:
            first = "No CP is available right now"
        if self.kafka_down:
            first += f" (as last known: Kafka is unreachable at {self.kafka_down})"
        self.block(first, rows)

    def available_cps(self, available: Sequence) -> None:
        """The CPs available now (``available``: ev_common.records.CPStatus items), when they change."""
        self.line(available_text(available))

    def goodbye(self) -> None:
        self.line("Bye")
