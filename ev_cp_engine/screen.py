"""What the person at the CP reads: the Engine's status and its messages.

Presentation only. ``EngineStatus.read(engine)`` takes a snapshot of the Engine
without its lock (a screen must never block the Engine), ``status_lines()``
formats it (its first line, ``links_line``, names every connectivity problem: Kafka
and the Monitor), ``Reminder`` repeats that line every 10 s while a problem lasts
where nothing stays on screen, ``PlainScreen`` prints timestamped lines (under ``--auto``, on a
pipe, in logs) and ``Messages`` is the Engine's ``say``: lines go to the menu's
message area while the menu runs, else they are printed as plain lines.
This module and ``menu.py`` are the only ones that print for people.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Callable, TextIO

from ev_common import menu_lines
from ev_common.words import (
    ACTIVADO,
    AVERIADO,
    DESCONECTADO,
    OUT_OF_ORDER,
    PARADO,
    STATE_MEANINGS,
    STOPPED_BY_CENTRAL,
    SUMINISTRANDO,
)

from .engine import KAFKA_DOWN, Phase, eur, kwh  # noqa: F401  (kwh, eur: shown here too)

MAX_MESSAGES = 1000
REMIND_SECONDS = 10.0


def number(value: Decimal) -> str:
    """A price or a power as the driver's app shows it: at least 2 decimals, more only when they
    matter (0.48, 0.475, 11.00)."""
    whole, _, decimals = format(Decimal(value).normalize(), "f").partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


@dataclass(frozen=True)
class EngineStatus:
    """What the screen shows of the Engine at one moment."""

    cp_id: str | None
    monitor: str | None  # peer address of the connected Monitor
    phase: Phase
    faulty: bool
    stopped: bool
    power_kw: Decimal
    auto: bool = False
    kafka: bool = True  # the broker answers
    driver_id: str | None = None
    session_id: str | None = None
    price: Decimal | None = None
    kwh: Decimal | None = None
    amount: Decimal | None = None
    by_tag: bool = False  # the supply was opened by an RFID tag: driver_id is its account
    records: str | None = None  # how records travel (Engine.records_mode); None: never told
    waiting_for_key: bool = False  # secure mode without a key: nothing can be reported

    @classmethod
    def read(cls, engine) -> "EngineStatus":
        """A snapshot of ``engine`` (an ev_cp_engine.engine.Engine), read without its lock: each
        attribute is replaced whole by the Engine, and the supply is read through one reference."""
        supply = engine.supply
        common = dict(cp_id=engine.cp_id, monitor=engine.monitor, faulty=engine.faulty, stopped=engine.stopped,
                      power_kw=engine.power_kw, auto=engine.auto_seconds is not None,
                      kafka=engine.kafka_reachable, records=getattr(engine, "records_mode", None),
                      waiting_for_key=getattr(engine, "waiting_for_key", False))
        if supply is None:
            return cls(phase=Phase.IDLE, **common)
        phase = Phase.SUPPLYING if supply.plugged_at is not None else Phase.AUTHORISED
        return cls(phase=phase, driver_id=supply.driver_id, session_id=supply.session_id, price=supply.price,
                   kwh=supply.kwh, amount=supply.amount,
                   by_tag=supply.session_id == getattr(engine, "tag_session", None), **common)

    @property
    def state(self) -> str:
        """The state this CP is in as Central names it (words.py), as far as the Engine knows."""
        if self.monitor is None:
            return DESCONECTADO
        if self.faulty:
            return AVERIADO
        if self.stopped:
            return PARADO
        # Central shows a CP SUMINISTRANDO from the authorisation on: so does its Engine
        return ACTIVADO if self.phase is Phase.IDLE else SUMINISTRANDO


def problems(status: EngineStatus) -> list[str]:
    """Every connectivity problem of the CP now, for people (empty when there is none)."""
    found = []
    if not status.kafka:
        found.append("Kafka UNREACHABLE: " + ("the supply goes on; its figures wait for Kafka"
                                              if status.phase is not Phase.IDLE else KAFKA_DOWN.partition(": ")[2]))
    if status.monitor is None:
        found.append("Monitor NOT CONNECTED: the CP cannot reach Central")
    if status.waiting_for_key:
        found.append(f"NO KEY: {status.records or 'waiting for a key'}; no supplies, nothing sent in clear")
    return found


def links_line(status: EngineStatus) -> str:
    """``Links: Kafka OK | Monitor OK``, or every problem, ``Links: PROBLEM: ... | ...``."""
    found = problems(status)
    return "Links: PROBLEM: " + " | ".join(found) if found else "Links: Kafka OK | Monitor OK"


def cp_line(status: EngineStatus) -> str:
    cp = f"CP {status.cp_id}" if status.cp_id else "CP ? (its Monitor has not said it yet)"
    monitor = f"connected from {status.monitor}" if status.monitor else "none"
    return f"{cp} | Monitor: {monitor} | {status.state} ({STATE_MEANINGS[status.state]})"


def supply_line(status: EngineStatus) -> str:
    if status.phase is Phase.IDLE:
        return "Supply: none (waiting for a request)"
    who = f"account {status.driver_id} (RFID tag)" if status.by_tag else f"driver {status.driver_id}"
    if status.phase is Phase.AUTHORISED:
        then = "plugging in shortly (auto)" if status.auto else "plug in the vehicle [p]"
        return (f"Supply: AUTHORISED for {who} at {number(status.price)} EUR/kWh; {then}")
    return (f"Supply: {who}: {kwh(status.kwh)} kWh, {eur(status.amount)} EUR "
            f"({number(status.power_kw)} kW, {number(status.price)} EUR/kWh)")


def flags_line(status: EngineStatus) -> str:
    fault = "Fault: ON (answering KO to the Monitor)" if status.faulty else "Fault: off"
    stopped = f"{STOPPED_BY_CENTRAL}: {OUT_OF_ORDER}" if status.stopped else "Central: in service"
    if status.records:  # told by its Monitor (KEY): secure or open mode
        return f"{fault} | {stopped} | {status.records}"
    return f"{fault} | {stopped}"


def status_lines(status: EngineStatus) -> list[str]:
    return [links_line(status), cp_line(status), supply_line(status), flags_line(status)]


class Reminder:
    """Where nothing stays on screen (plain lines): the links line now when the problems change,
    and again every ``every`` seconds while a problem lasts."""

    def __init__(self, say: Callable[[str], None], *, every: float = REMIND_SECONDS,
                 clock: Callable[[], float] | None = None) -> None:
        self._say = say
        self.every = every
        self._clock = clock or time.monotonic
        self._shown: list[str] = []
        self._at = 0.0

    def __call__(self, status: EngineStatus) -> None:
        found, now = problems(status), self._clock()
        if found != self._shown or (found and now - self._at >= self.every):
            if found or self._shown:
                self._say(links_line(status))
            self._shown, self._at = found, now


# -- plain lines -------------------------------------------------------------------------------------------


class PlainScreen:
    """Timestamped lines on stdout ("HH:MM:SS text"); safe from several threads."""

    def __init__(self, out: TextIO | None = None, now: Callable[[], datetime] = datetime.now) -> None:
        self._out = out
        self._now = now
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        out = self._out or sys.stdout
        with self._lock:
            try:
                out.write(f"{self._now():%H:%M:%S} {text}\n")
                out.flush()
            except (OSError, ValueError):  # stdout closed or gone: the Engine goes on
                pass


class Messages(menu_lines.Messages):
    """The program's ``say`` (``ev_common.menu_lines``): plain lines on this screen, or, while the
    menu runs, its message queue."""

    def __init__(self, plain: PlainScreen | None = None, now: Callable[[], datetime] = datetime.now) -> None:
        super().__init__(plain or PlainScreen(), now, MAX_MESSAGES)


MessagesLogHandler = menu_lines.MessagesLogHandler