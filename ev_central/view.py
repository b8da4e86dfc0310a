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

from ev_common.mcsp import masked
from ev_common.words import CENTRAL_OK, DATABASE_UNREACHABLE, DESCONECTADO, KAFKA_UNREACHABLE, KEYS_REVOKED

from .app import Central
from .console import execute

log = logging.getLogger(__name__)

MAX_MESSAGES = 500
MONITORS_NAMED = 3  # CPs named in the status line when their Monitors are missing; the rest counted
QUIET_LOGGERS = ("ev_central.live",)  # per-second figures: the tiles show them
OPEN_MODE = "open mode: CPs not authenticated"  # said in the status line (docs/security.md)


@dataclass(frozen=True)
class CPTile:
    cp_id: str
    location: str
    price_eur_kwh: Decimal
    state: str
    stopped: bool
    driver_id: str | None = None  # while supplying (or authorised) for a driver of the app
    kwh: Decimal | None = None
    amount_eur: Decimal | None = None
    fault: str | None = None  # the Engine's fault, as its Monitor reported it
    account_id: str | None = None  # the account the supply is booked to, if any
    tag: str | None = None  # while supplying for an RFID tag: its UID, masked ("...E73A")
    note: str | None = None  # why it is out of service when it is not a fault (keys revoked)


@dataclass(frozen=True)
class OngoingRequest:
    started_at: datetime
    who: str  # the driver's id, or "tag ...E73A (FLAT3B)" for an RFID tag
    cp_id: str
    status: str  # "deciding", "authorised", "supplying"
    via: str = "Kafka"  # "Kafka" (the driver's app, the CP's menu) or "MCSP" (an RFID tag)


@dataclass(frozen=True)
class PanelMessage:
    at: datetime
    level: str  # "info", "warning", "error"
    text: str


@dataclass(frozen=True)
class CentralStatus:
    """Central's status line: ``level`` "ok" (all well), "warning" (CPs without their Monitor)
    or "error" (Kafka or the database unreachable), and the line itself. ``ok``: Central's own
    parts (Kafka, database) are well."""

    level: str
    text: str

    @property
    def ok(self) -> bool:
        return self.level != "error"


def _who(driver_id: str, tag_uid: str | None, account_id: str | None) -> str:
    """A driver's id, or "tag ...E73A (FLAT3B)"."""
    if tag_uid:
        return f"tag {masked(tag_uid)}" + (f" ({account_id})" if account_id else "")
    return driver_id


def clock_time(at: datetime, now: datetime | None = None) -> str:
    """``14:03:07`` today, ``2024-05-01 14:03:07`` on another day (local time)."""
    local, today = at.astimezone(), (now or datetime.now(timezone.utc)).astimezone()
    return f"{local:%H:%M:%S}" if local.date() == today.date() else f"{local:%Y-%m-%d %H:%M:%S}"


class MessageLog(logging.Handler):
    """Keeps the program's recent log lines (INFO and up) for the panel's message list.

    Attached to the root logger, so that what Central's libraries say (a Kafka outage from
    ``ev_common.bus``) is listed too. Per-second figures (logger ``ev_central.live``) are
    left out: the tiles show them.
    """

    def __init__(self, limit: int = MAX_MESSAGES) -> None:
        super().__init__(logging.INFO)
        self._lines: collections.deque[PanelMessage] = collections.deque(maxlen=limit)
        self._lock_lines = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(QUIET_LOGGERS):
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


def audit_trouble(audit) -> str:
    """The audit's part of the status line, only when it has trouble: entries spooled while
    the database cannot take them, entries refused or lost (ev_central/audit.py)."""
    stats = audit.stats() if audit is not None and hasattr(audit, "stats") else None
    if stats is None or not (stats.spooled or stats.failed):
        return ""
    said = []
    if stats.spooled:
        said.append(f"{stats.spooled} entr{'y' if stats.spooled == 1 else 'ies'} spooled")
    if stats.failed:
        said.append(f"{stats.failed} failed (see the log)")
    return "audit: " + ", ".join(said)


def weather_part(office, now: datetime) -> tuple[str, bool]:
    """The weather office's part of the status line ("EV_W OK · weather alert: Alicante,ES",
    "EV_W silent since 14:02:10"; docs/weather.md), and whether it is trouble (EV_W silent)."""
    if office is None:
        return "", False
    try:
        if hasattr(office, "status_part"):
            return office.status_part()
        snapshot = office.snapshot()
    except Exception:  # the status line must not break for it
        log.exception("the weather office's status failed")
        return "", False
    if not snapshot.ev_w_silent:
        return "", False
    seen = snapshot.ev_w_last_seen
    return "EV_W silent" + (f" since {clock_time(seen, now)}" if seen is not None else ""), True


class CentralView:
    def __init__(self, central: Central, messages: MessageLog) -> None:
        self.central = central
        self.message_log = messages
        self._db_down_since: datetime | None = None

    @property
    def db_down_since(self) -> datetime | None:
        """Since when the database is unreachable, as the status line last said (None: it is not)."""
        return self._db_down_since

    def tiles(self) -> list[CPTile]:
        supplies = {row.cp_id: row for row in self.central.book.open_sessions()}
        keys = getattr(self.central, "keys", None)
        weather = getattr(self.central, "weather", None)  # a CP held by a weather alert says so
        tiles = []
        for row in self.central.network.snapshot():
            supply = supplies.get(row.cp_id)
            tiles.append(CPTile(
                row.cp_id, row.location, row.price_eur_kwh, row.state, row.stopped,
                (supply.driver_id or None) if supply else None,
                supply.kwh if supply else None,
                supply.amount_eur if supply else None,
                self.central.network.fault_of(row.cp_id),
                supply.account_id if supply else None,
                masked(supply.tag_uid) if supply and supply.tag_uid else None,
                KEYS_REVOKED if keys is not None and row.state == DESCONECTADO and keys.revoked(row.cp_id)
                else weather.note_for(row.cp_id) if weather is not None else None))
        return tiles

    def ongoing(self) -> list[OngoingRequest]:
        rows = [OngoingRequest(r.at, _who(r.who.driver_id, r.who.tag_uid, r.who.account_id), r.cp_id,
                               "deciding", r.via)
                for r in self.central.supplies.pending_requests()]
        rows += [OngoingRequest(s.started_at, _who(s.driver_id, s.tag_uid, s.account_id), s.cp_id,
                                "supplying" if s.status == "SUPPLYING" else "authorised",
                                "MCSP" if s.tag_uid else "Kafka")
                 for s in self.central.book.open_sessions()]
        return sorted(rows, key=lambda r: r.started_at)

    def messages(self, limit: int = 100) -> list[PanelMessage]:
        return self.message_log.recent(limit)

    def status(self) -> tuple[bool, str]:
        """(Kafka and the database well, the status line): see ``health``."""
        health = self.health()
        return health.ok, health.text

    def health(self) -> CentralStatus:
        """Kafka, the database and the Monitors: each OK, or what fails and since when.

        "Central system status OK · Kafka OK · database OK · 3 Monitors connected", or for
        example "Kafka unreachable since 14:03:07 · database OK · Monitors: 2 of 3 connected,
        CP3 without its Monitor since 14:01:55". Without Kafka (tests) the Kafka part is left out.
        An audit in trouble adds its part ("audit: 120 entries spooled"): a warning.
        The weather office adds its part when EV_W has reported or alerts are in force; a silent
        EV_W ("EV_W silent since 14:02:10") is a warning.
        """
        now = datetime.now(timezone.utc)
        parts: list[str] = []
        failing = False
        bus = self.central.bus
        if bus is not None:
            down_since = bus.health.down_since
            if down_since is None:
                parts.append("Kafka OK")
            else:
                failing = True
                parts.append(f"{KAFKA_UNREACHABLE} since {clock_time(down_since, now)}")
        if self.central.writer.db_ok and self.central.session_writer.db_ok:
            self._db_down_since = None
            parts.append("database OK")
        else:
            failing = True
            self._db_down_since = self._db_down_since or now
            parts.append(f"{DATABASE_UNREACHABLE} since {clock_time(self._db_down_since, now)} "
                         f"(working from memory)")
        audit = audit_trouble(getattr(self.central, "audit", None))
        if audit:
            parts.append(audit)
        weather, ev_w = weather_part(getattr(self.central, "weather", None), now)
        if weather:
            parts.append(weather)
        parts.append("secure mode" if getattr(self.central, "secure", False) else OPEN_MODE)
        gate = getattr(self.central, "gate", None)
        refused = gate.rejected if gate is not None else 0
        if refused:  # records that were not genuine: dropped (each one a warning among the messages)
            parts.append(f"{refused} CP record{'' if refused == 1 else 's'} refused")
        rows = self.central.network.snapshot()
        missing = [row for row in rows if row.state == DESCONECTADO]
        if not rows:
            parts.append("no Monitors yet")
        elif not missing:
            parts.append(f"{len(rows)} Monitor{'' if len(rows) == 1 else 's'} connected")
        else:
            named = ", ".join(row.cp_id for row in missing[:MONITORS_NAMED])
            more = f" +{len(missing) - MONITORS_NAMED}" if len(missing) > MONITORS_NAMED else ""
            since = clock_time(min(row.updated_at for row in missing), now)
            parts.append(f"Monitors: {len(rows) - len(missing)} of {len(rows)} connected, {named}{more} "
                         f"without {'its Monitor' if len(missing) == 1 else 'their Monitors'} since {since}")
        if not failing:
            parts.insert(0, CENTRAL_OK)
        level = "error" if failing else "warning" if missing or audit or refused or ev_w else "ok"
        return CentralStatus(level, " · ".join(parts))

    def command(self, line: str) -> str:
        """An operator command (``stop CP001``, ``resume all``...); returns the confirmation."""
        return execute(self.central, line)
