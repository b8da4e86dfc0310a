"""What Central's screens show, read from Central: tiles, ongoing requests, messages, status.

The panel (and the plain log UI) only *read* this view and call its commands;
they never reach into Central's parts. Reading takes a snapshot under the
domain's locks, so a screen refreshing every second never blocks Central.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

from ev_common.words import CENTRAL_OK, DATABASE_UNREACHABLE, KAFKA_UNREACHABLE

from .app import Central
from .console import execute

MAX_MESSAGES = 500


@dataclass(frozen=True)
class CPTile:
    cp_id: str
    location: str
    price_eur_kwh: Decimal
    state: str
    stopped: bool
    driver_id: str | None = None  # while supplying (or authorised)
    kwh: Decimal | None = None
    amount_eur: Decimal | None = None
    fault: str | None = None  # the Engine's fault, as its Monitor reported it


@dataclass(frozen=True)
class OngoingRequest:
    started_at: datetime
    driver_id: str
    cp_id: str
    status: str  # "deciding", "authorised", "supplying"


@dataclass(frozen=True)
class PanelMessage:
    at: datetime
    level: str  # "info", "warning", "error"
    text: str


class MessageLog(logging.Handler):
    """Keeps Central's recent log lines (INFO and up) for the panel's message list.

    Per-second figures (logger ``ev_central.live``) are left out: the tiles show them.
    """

    def __init__(self, limit: int = MAX_MESSAGES) -> None:
        super().__init__(logging.INFO)
        self._lines: collections.deque[PanelMessage] = collections.deque(maxlen=limit)
        self._lock_lines = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("ev_central.live"):
            return
        try:
            text = record.getMessage()
        except Exception:  # a bad format string must not break the panel
            text = str(record.msg)
        level = "error" if record.levelno >= logging.ERROR else "warning" if record.levelno >= logging.WARNING else "info"
        with self._lock_lines:
            self._lines.append(PanelMessage(datetime.fromtimestamp(record.created, timezone.utc), level, text))

    def recent(self, limit: int) -> list[PanelMessage]:
        with self._lock_lines:
            return list(self._lines)[-limit:]


class CentralView:
    def __init__(self, central: Central, messages: MessageLog) -> None:
        self.central = central
        self.message_log = messages

    def tiles(self) -> list[CPTile]:
        supplies = {row.cp_id: row for row in self.central.book.open_sessions()}
        tiles = []
        for row in self.central.network.snapshot():
            supply = supplies.get(row.cp_id)
            tiles.append(CPTile(
                row.cp_id, row.location, row.price_eur_kwh, row.state, row.stopped,
                supply.driver_id if supply else None,
                supply.kwh if supply else None,
                supply.amount_eur if supply else None,
                self.central.network.fault_of(row.cp_id)))
        return tiles

    def ongoing(self) -> list[OngoingRequest]:
        rows = [OngoingRequest(r.ts, r.driver_id, r.cp_id, "deciding")
                for r in self.central.supplies.pending_requests()]
        rows += [OngoingRequest(s.started_at, s.driver_id, s.cp_id,
                                "supplying" if s.status == "SUPPLYING" else "authorised")
                 for s in self.central.book.open_sessions()]
        return sorted(rows, key=lambda r: r.started_at)

    def messages(self, limit: int = 100) -> list[PanelMessage]:
        return self.message_log.recent(limit)

    def status(self) -> tuple[bool, str]:
        """(all well, a line for people): "Central system status OK" or what is wrong."""
        problems = []
        if not (self.central.writer.db_ok and self.central.session_writer.db_ok):
            problems.append(f"{DATABASE_UNREACHABLE}: working from memory")
        if self.central.bus is not None and not self.central.bus.publisher.reachable:
            problems.append(KAFKA_UNREACHABLE)
        return (not problems, CENTRAL_OK if not problems else "; ".join(problems))

    def command(self, line: str) -> str:
        """An operator command (``stop CP001``, ``resume all``...); returns the confirmation."""
        return execute(self.central, line)
