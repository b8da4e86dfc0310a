"""Central's weather office: what EV_W reports, the weather alerts in force, and the CPs they
hold out of service (docs/weather.md).

EV_W checks the weather at each location every 4 s and calls Central's API (ev_central/api),
which calls this module, ``central.weather``:

    central.weather.report(reports, source_ip=...)          # every city of one cycle
    central.weather.alert(city, temperature, cp_ids, source_ip=...) -> AlertOutcome
    central.weather.clear(city, source_ip=...) -> AlertOutcome  # KeyError: no alert for city
    central.weather.snapshot() -> WeatherSnapshot           # for the page and the panel

The rules:

- An **alert** (the temperature at ``city`` below 0 °C) holds each of its CPs out of service:
  ``PARADO`` with the reason "weather alert" (the CP state table's ``weather`` flag,
  core/states.py), which is not an operator's stop; a running supply ends, its ticket and the
  driver's alert say "weather alert"; the CP is told ``STOP`` (its Engine refuses supplies).
  A CP Central does not know yet is held from the moment it signs up.
- A **repeated alert** (the same city, the same CPs) changes nothing (``unchanged``). The same
  city with other CPs holds the new ones and lets go of those no longer listed.
- A **clear** lets go of the alert's CPs: each one that no other alert holds is back in
  service (``RESUME`` to the CP) unless an operator stopped it, which stays ``PARADO``.
- An **operator's Resume** of a CP an alert holds clears the operator's stop only: the CP stays
  ``PARADO`` while the alert lasts (ev_central/supply_service.py, ``resume``).
- Alerts survive a restart of Central: each is stored (``weather_alerts``, schema version 6)
  and loaded at start (``load``). When the database cannot take one, it is kept in memory and
  stored again until it can (said once).
- **Silence**: no word from EV_W for ``silence`` seconds (3 of its 4 s cycles) while it had
  reported before, or while alerts are in force since Central started, makes ``ev_w_silent``
  true, logged once at WARNING ("EV_W silent since ..."), and once at INFO when EV_W is back.
- Every alert and clear that changes something is audited (``weather.alert``,
  ``weather.clear``: actor "EV_W", EV_W's address, the city, the temperature, the CPs stopped
  or resumed).

Nothing here waits for the database while holding the office's lock: stores happen after,
one at a time (``_flush``), so the panel and the API never wait behind a slow database.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable

from ev_common.words import WEATHER_ALERT

from . import audit as audited
from .audit import NO_AUDIT, Recorder
from .core.entities import WEATHER_CITY_MAX, WEATHER_CPS_MAX, WeatherAlertRow
from .store.base import Store, StoreError, StoreRefused

log = logging.getLogger(__name__)

EV_W = "EV_W"  # the audit's actor of what EV_W asks for
CYCLE_SECONDS = 4.0  # EV_W checks the weather this often
SILENCE_CYCLES = 3
DEFAULT_SILENCE = CYCLE_SECONDS * SILENCE_CYCLES  # 12 s without a word from EV_W: silent
STORE_RETRY = 5.0  # s between tries of an alert the database did not take
MAX_REPORTS = 1000  # cities in one report
ERROR_MAX = 300  # characters of a city's error kept
COLDEST, HOTTEST = Decimal(-150), Decimal(100)  # °C: a reading outside is not a temperature
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


# -- the contract with the API (ev_central/api) --------------------------------------------------


@dataclass(frozen=True)
class CityReport:
    """EV_W's check of one city in one cycle. ``temperature`` is None, with an ``error``, when
    the source failed; ``simulated``: read from EV_W's simulation file, not OpenWeather."""

    city: str
    temperature: Decimal | None
    cp_ids: list[str]
    error: str | None
    simulated: bool


@dataclass(frozen=True)
class AlertOutcome:
    """What an alert or a clear did: ``active`` (the city's alert is in force afterwards), the
    CPs it took out of service (``stopped``) and those it put back (``resumed``); ``unchanged``
    when it changed nothing (a repeated alert)."""

    city: str
    active: bool
    stopped: list[str]
    resumed: list[str]
    unchanged: bool


@dataclass(frozen=True)
class CityWeather:
    """One city, as EV_W last reported it and with its alert, if any."""

    city: str
    temperature: Decimal | None  # the last reported (or, before any report, the alert's)
    alert: bool
    alert_since: datetime | None
    last_report_at: datetime | None
    cp_ids: list[str]
    error: str | None
    simulated: bool


@dataclass(frozen=True)
class WeatherSnapshot:
    """Every city reported in EV_W's last report or under an alert, by name; when EV_W was last
    heard from (UTC, None: not since Central started) and whether it is silent."""

    cities: list[CityWeather]
    ev_w_last_seen: datetime | None
    ev_w_silent: bool


# -- values ---------------------------------------------------------------------------------------


def city_name(text: Any) -> str:
    """A location as Central keeps it: ``Alicante,ES`` (spaces trimmed around each part, the
    parts after the city in capitals: ``alicante , es`` is ``alicante,ES``). ``ValueError``
    when it is not a city name of at most 100 printable characters."""
    if not isinstance(text, str):
        raise ValueError(f"a city is text such as 'Alicante,ES', not {text!r}")
    parts = [" ".join(part.split()) for part in text.split(",")]
    if not parts[0] or any(not part for part in parts) or len(parts) > 3:
        raise ValueError(f"a city is 'City,CC' (such as 'Alicante,ES'), not {text!r}")
    name = ",".join([parts[0], *(part.upper() for part in parts[1:])])
    if len(name) > WEATHER_CITY_MAX or not name.isprintable():
        raise ValueError(f"a city is at most {WEATHER_CITY_MAX} printable characters: {text!r}")
    return name


def _key(name: str) -> str:
    return name.casefold()


def temperature_of(value: Any) -> Decimal:
    """A temperature in °C as a Decimal; ``ValueError`` when it is not a number a thermometer
    can show."""
    if isinstance(value, bool):
        raise ValueError(f"a temperature is a number, not {value!r}")
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError, TypeError):
        raise ValueError(f"a temperature is a number, not {value!r}") from None
    if not number.is_finite() or not COLDEST < number < HOTTEST:
        raise ValueError(f"{value!r} is not a temperature in °C")
    return number


def cp_ids_of(values: Any) -> list[str]:
    """CP ids in their order, each once; ``ValueError`` for one that is not an id, or too many."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"cp_ids is a list of CP ids, not {values!r}")
    ids: list[str] = []
    for value in values:
        if not isinstance(value, str) or not _ID.fullmatch(value):
            raise ValueError(f"a CP id is 1-64 characters from A-Z a-z 0-9 _ -, not {value!r}")
        if value not in ids:
            ids.append(value)
        if len(ids) > WEATHER_CPS_MAX:
            raise ValueError(f"a location has at most {WEATHER_CPS_MAX} CPs")
    return ids


def _degrees(value: Decimal | None) -> str:
    return "?" if value is None else f"{value} °C"


def _local(at: datetime) -> str:
    return f"{at.astimezone():%H:%M:%S}"


@dataclass
class _Reported:
    report: CityReport
    at: datetime


@dataclass
class _Silence:
    last_seen: datetime | None = None  # UTC
    last_seen_clock: float | None = None
    said: bool = False  # the silence was logged (and not its end yet)


@dataclass(eq=False)
class _Unsaved:
    """An alert to store (``row``) or to delete (``row`` None) under its stored ``city``."""

    city: str
    row: WeatherAlertRow | None


# -- the office ------------------------------------------------------------------------------------


class WeatherOffice:
    """Central's side of EV_W (see the module doc). ``supplies`` is Central's SupplyService (it
    holds and lets go of CPs: ``weather_stop``, ``weather_clear``); thread-safe."""

    def __init__(self, supplies, store: Store, audit: Recorder = NO_AUDIT, *, silence: float = DEFAULT_SILENCE,
                 clock: Callable[[], float] = time.monotonic,
                 utcnow: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        if not silence > 0:
            raise ValueError("silence must be > 0 seconds")
        self.supplies = supplies
        self.store = store
        self.audit = audit
        self.silence = silence
        self._clock = clock
        self._utcnow = utcnow
        self._lock = threading.RLock()
        self._alerts: dict[str, WeatherAlertRow] = {}  # city key -> the alert in force
        self._held_by: dict[str, list[str]] = {}  # cp_id -> the cities (names) whose alerts hold it
        self._reports: dict[str, _Reported] = {}  # city key -> its last report
        self._silence = _Silence()
        self._started = clock()
        self._unsaved: dict[str, _Unsaved] = {}  # city key -> to store or to delete
        self._store_lock = threading.Lock()  # one flush at a time, in order
        self._store_retry_at = 0.0
        self._store_trouble = False  # a store failure was said (and not its end yet)

    # -- start ------------------------------------------------------------------------------------

    def load(self) -> int:
        """(at Central's start, before Monitors connect) The alerts in force: their CPs are held
        again. Returns how many alerts."""
        rows = self.store.load_weather_alerts()
        with self._lock:
            for row in rows:
                self._alerts[_key(row.city)] = row
            self._index()
            for cp_id, cities in self._held_by.items():
                self.supplies.network.weather_hold(cp_id, True, f"{WEATHER_ALERT} at {', '.join(cities)}")
        for row in rows:
            log.warning("weather alert at %s since %s (%s): %s held out of service until EV_W clears it",
                        row.city, _local(row.since), _degrees(row.temperature), ", ".join(row.cp_ids) or "no CP")
        return len(rows)

    # -- what EV_W says ----------------------------------------------------------------------------

    def report(self, reports: list[CityReport], *, source_ip: str) -> None:
        """EV_W's checks of one cycle: the cities it watches now (one not in it is no longer
        shown, unless under an alert). ``ValueError`` for a malformed report (nothing kept)."""
        if not isinstance(reports, (list, tuple)) or len(reports) > MAX_REPORTS:
            raise ValueError(f"a report is a list of at most {MAX_REPORTS} cities")
        checked = [self._checked(report) for report in reports]
        now = self._utcnow()
        with self._lock:
            self._heard(now, source_ip)
            self._reports = {_key(r.city): _Reported(r, now) for r in checked}

    def alert(self, city: str, temperature: Decimal, cp_ids: list[str], *, source_ip: str) -> AlertOutcome:
        """The temperature at ``city`` is below 0 °C: hold its CPs out of service (see the module
        doc). ``ValueError`` for a malformed city, temperature or CP id, or a temperature at or
        above 0 °C."""
        name = city_name(city)
        degrees = temperature_of(temperature)
        if degrees >= 0:
            raise ValueError(f"an alert is for a temperature below 0 °C, not {degrees} °C")
        ids = cp_ids_of(cp_ids)
        now = self._utcnow()
        with self._lock:
            self._heard(now, source_ip)
            key = _key(name)
            old = self._alerts.get(key)
            if old is not None and set(old.cp_ids) == set(ids):
                log.debug("weather alert at %s repeated: nothing changes", old.city)
                return AlertOutcome(old.city, True, [], [], True)
            before = set(self._held_by)
            row = WeatherAlertRow(old.city if old else name, tuple(ids), degrees, old.since if old else now)
            self._alerts[key] = row
            self._unsaved[key] = _Unsaved(row.city, row)
            self._index()
            cause = f"{WEATHER_ALERT} at {row.city} ({degrees} °C)"
            stopped, unknown, already = [], [], []
            for cp_id in ids:
                if cp_id in before:
                    already.append(cp_id)
                elif self.supplies.weather_stop(cp_id, cause) is None:
                    unknown.append(cp_id)
                else:
                    stopped.append(cp_id)
            resumed, kept = self._let_go([c for c in (old.cp_ids if old else ()) if c not in self._held_by],
                                         f"{row.city} no longer lists it")
        said = [f"{row.city}: {degrees} °C", f"stopped {', '.join(stopped) or 'none'}"]
        if already:
            said.append(f"already held for the weather {', '.join(already)}")
        if unknown:
            said.append(f"not known to Central yet (held when they sign up) {', '.join(unknown)}")
        if old is not None:
            said.append("the alert's CPs changed" + (f"; resumed {', '.join(resumed)}" if resumed else "")
                        + (f"; still stopped by the operator {', '.join(kept)}" if kept else ""))
        self.audit.record(audited.WEATHER_ALERT, EV_W, "; ".join(said), audited.OK, source_ip)
        log.warning("%s at %s (%s °C): %s out of service%s", WEATHER_ALERT, row.city, degrees,
                    ", ".join(stopped) or "no CP newly", f" ({'; '.join(said[2:])})" if said[2:] else "")
        self._flush()
        return AlertOutcome(row.city, True, stopped, resumed, False)

    def clear(self, city: str, *, source_ip: str) -> AlertOutcome:
        """The temperature at ``city`` is back at or above 0 °C: its alert ends and its CPs are back
        in service, but for those another alert holds or an operator stopped. ``KeyError`` when
        there is no alert for ``city``; ``ValueError`` for a malformed city."""
        name = city_name(city)
        now = self._utcnow()
        with self._lock:
            self._heard(now, source_ip)
            key = _key(name)
            row = self._alerts.pop(key, None)
            if row is None:
                raise KeyError(name)
            self._unsaved[key] = _Unsaved(row.city, None)
            self._index()
            held = [c for c in row.cp_ids if c in self._held_by]
            resumed, kept = self._let_go([c for c in row.cp_ids if c not in self._held_by],
                                         f"{WEATHER_ALERT} at {row.city} cleared")
            reported = self._reports.get(key)
            degrees = reported.report.temperature if reported is not None else None
        said = [f"{row.city}: {_degrees(degrees)}", f"resumed {', '.join(resumed) or 'none'}"]
        if kept:
            said.append(f"still stopped by the operator {', '.join(kept)}")
        if held:
            said.append(f"still held by another weather alert {', '.join(held)}")
        self.audit.record(audited.WEATHER_CLEAR, EV_W, "; ".join(said), audited.OK, source_ip)
        log.info("%s at %s cleared (%s): %s back in service%s", WEATHER_ALERT, row.city, _degrees(degrees),
                 ", ".join(resumed) or "no CP", f" ({'; '.join(said[2:])})" if said[2:] else "")
        self._flush()
        return AlertOutcome(row.city, False, [], resumed, False)

    # -- what is shown -------------------------------------------------------------------------------

    def snapshot(self) -> WeatherSnapshot:
        with self._lock:
            cities = []
            for key in sorted(set(self._reports) | set(self._alerts)):
                reported, alert = self._reports.get(key), self._alerts.get(key)
                report = reported.report if reported is not None else None
                cities.append(CityWeather(
                    city=report.city if report is not None else alert.city,
                    temperature=report.temperature if report is not None else alert.temperature,
                    alert=alert is not None,
                    alert_since=alert.since if alert is not None else None,
                    last_report_at=reported.at if reported is not None else None,
                    cp_ids=list(report.cp_ids if report is not None else alert.cp_ids),
                    error=report.error if report is not None else None,
                    simulated=report.simulated if report is not None else False))
            return WeatherSnapshot(cities, self._silence.last_seen, self._silent())

    def alerts(self) -> list[WeatherAlertRow]:
        """The alerts in force, by city."""
        with self._lock:
            return [self._alerts[key] for key in sorted(self._alerts)]

    def note_for(self, cp_id: str) -> str | None:
        """What a CP's tile says when an alert holds it: ``weather alert (Alicante,ES)``."""
        with self._lock:
            cities = self._held_by.get(cp_id)
        return f"{WEATHER_ALERT} ({', '.join(cities)})" if cities else None

    def status_part(self) -> tuple[str, bool]:
        """EV_W's part of Central's status line, and whether it is trouble: "" when EV_W never
        reported and no alert is in force; "EV_W OK", with the alerts in force ("EV_W OK · weather
        alert: Alicante,ES"); or "EV_W silent since 14:03:07" (trouble)."""
        with self._lock:
            alerts = [self._alerts[key].city for key in sorted(self._alerts)]
            silent, seen = self._silent(), self._silence.last_seen
        if silent:
            since = f"since {_local(seen)}" if seen is not None else "(no report since Central started)"
            text = f"EV_W silent {since}"
        elif seen is None and not alerts:
            return "", False
        else:
            text = "EV_W OK"
        if alerts:
            shown = ", ".join(alerts[:3]) + (f" +{len(alerts) - 3}" if len(alerts) > 3 else "")
            text += f" · {WEATHER_ALERT}{'s' if len(alerts) > 1 else ''}: {shown}"
        return text, silent

    # -- time passing -----------------------------------------------------------------------------------

    def sweep(self) -> None:
        """(Central's sweeper, every fraction of a second) Say EV_W's silence once; store again the
        alerts the database did not take."""
        with self._lock:
            silent = self._silent()
            if silent and not self._silence.said:
                self._silence.said = True
                seen = self._silence.last_seen
                if seen is not None:
                    log.warning("EV_W silent since %s (no report for %.0f s): the weather is not being watched",
                                _local(seen), self.silence)
                else:
                    log.warning("EV_W silent: no report since Central started, and %d weather alert(s) in force "
                                "that only EV_W can clear", len(self._alerts))
        if self._unsaved and self._clock() >= self._store_retry_at:
            self._flush()

    # -- internals ----------------------------------------------------------------------------------------

    def _checked(self, report: Any) -> CityReport:
        if not isinstance(report, CityReport):
            raise ValueError(f"not a CityReport: {report!r}")
        temperature = None if report.temperature is None else temperature_of(report.temperature)
        error = report.error
        if error is not None:
            error = " ".join(str(error).split())[:ERROR_MAX]
        if temperature is None and not error:
            error = "no temperature"
        return CityReport(city_name(report.city), temperature, cp_ids_of(report.cp_ids), error,
                          bool(report.simulated))

    def _heard(self, now: datetime, source_ip: str) -> None:
        """(holding the lock) EV_W spoke: a sign of life."""
        s = self._silence
        if s.said:
            gone = (now - s.last_seen).total_seconds() if s.last_seen is not None else None
            log.info("EV_W reporting again (from %s)%s", source_ip or "?",
                     f" after {gone:.0f} s of silence" if gone is not None else "")
            s.said = False
        s.last_seen, s.last_seen_clock = now, self._clock()

    def _silent(self) -> bool:
        """(holding the lock)"""
        s = self._silence
        if s.last_seen_clock is not None:
            return self._clock() - s.last_seen_clock > self.silence
        return bool(self._alerts) and self._clock() - self._started > self.silence

    def _index(self) -> None:
        """(holding the lock) Which alerts hold each CP."""
        held: dict[str, list[str]] = {}
        for key in sorted(self._alerts):
            row = self._alerts[key]
            for cp_id in row.cp_ids:
                held.setdefault(cp_id, []).append(row.city)
        self._held_by = held

    def _let_go(self, cp_ids: list[str], cause: str) -> tuple[list[str], list[str]]:
        """(holding the lock) End the weather hold of ``cp_ids``: (those back in service, those an
        operator's stop keeps out of service). CPs Central does not know are in neither."""
        resumed, kept = [], []
        for cp_id in cp_ids:
            change = self.supplies.weather_clear(cp_id, cause)
            if change is not None:
                (kept if change.stopped else resumed).append(cp_id)
        return resumed, kept

    def stop(self, timeout: float = 5.0) -> None:
        """(Central stopping, before its store closes) Store what waits to be stored, if the
        database takes it within ``timeout``."""
        self._flush(wait=timeout)

    def _flush(self, wait: float = 0.0) -> None:
        """Store the alerts raised or cleared (in order, one flush at a time, never holding the
        office's lock); what the database does not take waits for the next try. ``wait``: how
        long to wait for a flush under way (0: leave it to that one, or to the next sweep)."""
        if not self._unsaved:
            return
        acquired = self._store_lock.acquire(timeout=wait) if wait > 0 else self._store_lock.acquire(blocking=False)
        if not acquired:
            return
        try:
            with self._lock:
                pending = dict(self._unsaved)
            for key, unsaved in pending.items():
                try:
                    if unsaved.row is None:
                        self.store.delete_weather_alert(unsaved.city)
                    else:
                        self.store.save_weather_alert(unsaved.row)
                except StoreRefused as exc:  # the same row would be refused again: kept in memory only
                    log.error("the database refused the weather alert of %s (%s): it holds its CPs until "
                              "cleared, but a restart of Central forgets it", unsaved.city, exc)
                except StoreError as exc:
                    self._store_retry_at = self._clock() + STORE_RETRY
                    if not self._store_trouble:
                        self._store_trouble = True
                        log.warning("cannot store the weather alerts now (%s): they hold their CPs and are "
                                    "stored as soon as the database takes them (until then, a restart of "
                                    "Central forgets them)", exc)
                    return
                with self._lock:
                    if self._unsaved.get(key) is unsaved:
                        del self._unsaved[key]
            if self._store_trouble:
                self._store_trouble = False
                log.info("weather alerts stored again")
        finally:
            self._store_lock.release()
