"""Everything the driver reads: lines on stdout, each starting with the time.

This is the only module that prints for people (logs go to stderr through
``logging``). Amounts are shown in EUR with 2 decimals, energy in kWh with 3.
On a terminal the live figures of a supply ("Charging at CP001: ...") are one
line updated in place, that stays as it was when any other line comes; on a
pipe or a file each update is a line of its own. Every ``Screen`` writing to
the process's stdout shares one console, so lines from several threads (and
screens) never mix.
"""

from __future__ import annotations

import sys
import threading
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Callable, Iterable, Sequence, TextIO

from ev_common.log import guard_live_line
from ev_common.words import CANNOT_CONNECT

INDENT = " " * 9  # under the "HH:MM:SS " prefix
CLEAR_LINE = "\r\x1b[2K"  # back to the start of the line and erase it
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


def available_text(available: Sequence) -> str:
    """``Available CPs: CP001 (C/Mayor, 45, 0.48 EUR/kWh), CP002 (...)``."""
    if not available:
        return "Available CPs: none right now"
    return "Available CPs: " + ", ".join(f"{cp.cp_id} ({cp.location}, {price(cp.price_eur_kwh)} EUR/kWh)"
                                         for cp in available)


class _Console:
    """One output stream: its lock, and the live line (on a terminal) that is being updated in place."""

    def __init__(self, out: TextIO | None) -> None:
        self._out = out  # None: sys.stdout, looked up at each write
        self.lock = threading.RLock()
        self.live: object | None = None  # what the live line shows (its key), if one is on screen

    def _put(self, text: str) -> None:
        out = self._out or sys.stdout
        try:
            out.write(text)
            out.flush()
        except (OSError, ValueError):  # stdout closed or gone: the program goes on
            pass

    def end_live(self) -> None:
        """Leave the live line as it is (its last figures stay on screen) and go to a new line."""
        with self.lock:
            if self.live is not None:
                self.live = None
                self._put("\n")

    def write(self, text: str) -> None:
        with self.lock:
            self.end_live()
            self._put(text)

    def write_live(self, key: object, text: str) -> None:
        """Show ``text`` on the live line for ``key``, in place of its previous figures."""
        with self.lock:
            if self.live is not None and self.live != key:
                self.end_live()
            self._put(CLEAR_LINE + text)
            self.live = key


_STDOUT = _Console(None)


def _is_terminal(out: TextIO | None) -> bool:
    try:
        return bool((out or sys.stdout).isatty())
    except (AttributeError, OSError, ValueError):
        return False


class Screen:
    """Prints lines for the driver; safe to call from several threads.

    ``terminal``: update the live figures in place (default: when the output is a terminal)."""

    def __init__(self, out: TextIO | None = None, now: Callable[[], datetime] = datetime.now,
                 terminal: bool | None = None) -> None:
        self._console = _STDOUT if out is None else _Console(out)
        self._now = now
        self.terminal = _is_terminal(out) if terminal is None else terminal

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

    def started(self, driver_id: str, bootstrap: str, mode: str) -> None:
        self.line(f"EV_Driver {driver_id}: Kafka {bootstrap}; {mode} (Ctrl+C quits)")
        if self.terminal:
            self.guard_logging()

    def guard_logging(self) -> None:
        """Log records (on stderr, the same terminal) end the live line before they are written."""
        guard_live_line(self._console.lock, self._console.end_live)

    def kafka_unreachable(self, bootstrap: str) -> None:
        self.line(f"Kafka unreachable at {bootstrap}: {CANNOT_CONNECT}. Retrying in the background...")

    def kafka_reachable(self, bootstrap: str) -> None:
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
        if self.terminal:
            self._console.write_live(("progress", cp_id, label), f"{self._now():%H:%M:%S} {text}")
        else:
            self.line(text)

    def alert(self, cp_id: str, state: str, reason: str, label: str | None = None) -> None:
        self.line(f"{self._tag(label)}ALERT from {cp_id}: {state}: {reason}")

    def failure(self, cp_id: str, why: str) -> None:
        self.line(f"FAILED at {cp_id}: {CANNOT_CONNECT} ({why})")

    def cancelled(self, cp_id: str) -> None:
        self.line(f"Request at {cp_id} abandoned: the app is closing")

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
            "l          list the CPs available now",
            "r CP_ID    request a supply at CP_ID (or just r, then the id)",
            "h          this menu",
            "q          quit (also Ctrl+D / end of input)",
        ])

    def prompt(self, text: str = "> ") -> None:
        self._write(text)

    def unknown_command(self, text: str) -> None:
        self.line(f"Unknown command {text!r}; h shows the menu")

    def invalid_cp(self, text: str) -> None:
        self.line(f"{text!r} is not a CP id (1-64 characters from A-Z a-z 0-9 _ -)")

    def not_listed(self, cp_id: str, state: str | None) -> None:
        known = f"is {state}" if state else "is not in the list of CPs"
        self.line(f"Note: {cp_id} {known}; asking Central anyway")

    def cps(self, available: Sequence, others: Sequence) -> None:
        """``available``/``others``: ev_common.records.CPStatus items."""
        if not available and not others:
            self.line("No CP known yet: the list fills a few seconds after start; try again shortly")
            return
        if not available:
            rows = []
        else:
            rows = [f"{cp.cp_id:<12} {price(cp.price_eur_kwh):>6} EUR/kWh  {cp.location}" for cp in available]
        if others:
            rows.append("not available: " + ", ".join(f"{cp.cp_id} ({cp.state})" for cp in others))
        first = f"Available CPs: {len(available)}" if available else "No CP is available right now"
        self.block(first, rows)

    def available_cps(self, available: Sequence) -> None:
        """The CPs available now (``available``: ev_common.records.CPStatus items), when they change."""
        self.line(available_text(available))

    def goodbye(self) -> None:
        self.line("Bye")
