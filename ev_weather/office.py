"""EV_W's work, one cycle every ``every`` seconds (4 by default; docs/weather.md):

1. read the locations file again if it changed (cities added, removed, their CPs changed);
2. check every city's temperature at the source, one request each, at most ``workers`` at
   once; a city whose previous request is still out is not asked again until it answers;
3. decide, from each city's **last good reading** (a failed check decides nothing):
   below 0 °C and no alert at Central with these CPs -> an alert; at or above 0 °C and an
   alert at Central (or not known: after EV_W starts) -> a clear; a city removed from the file
   whose alert may be in force -> a clear;
4. send the report of every city (the sign of life Central watches), then the alerts and
   clears. When Central cannot be reached, or refuses EV_W's token, that is said once and
   tried again with capped, jittered backoff; the alerts and clears are not lost: they are
   decided again each cycle from the last readings and sent once Central answers.

Nothing in a cycle can stop the next: a failure of the source is the city's error, shown and
tried again at the next cycle; an unexpected one is logged and the cycle goes on.
"""

from __future__ import annotations

import concurrent.futures as futures
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Callable

from ev_common.retry import Backoff

from .central import CentralAPI, CentralError
from .locations import LocationsFile
from .source import SourceError

log = logging.getLogger(__name__)

DEFAULT_EVERY = 4.0
DEFAULT_WORKERS = 8
BACKOFF_INITIAL, BACKOFF_CAP = 1.0, 30.0
#: Central's answers that concern one call only (the next cycle does not try it again unless what
#: it carries changed); any other failure is Central's (unreachable, token, overloaded): backoff.
REFUSALS = (400, 404, 409, 413, 422)
SIMULATED = "SIMULATED"


@dataclass
class _City:
    city: str
    cp_ids: tuple[str, ...]
    temperature: Decimal | None = None  # the last good reading
    error: str | None = None  # why the last check failed (None: it did not)
    checked_at: datetime | None = None  # the last good reading's time
    cold: bool | None = None  # the last good reading is below 0 °C (None: none yet)
    central: frozenset[str] | bool | None = None  # Central's alert as sent (its CPs), False: none, None: unknown
    refused: tuple | None = None  # the call Central refused (not tried again as it is)
    pending: futures.Future | None = None  # the check still out


@dataclass(frozen=True)
class CityLine:
    """One city on EV_W's screen."""

    city: str
    cp_ids: tuple[str, ...]
    temperature: Decimal | None
    error: str | None
    alert: bool  # the last good reading is below 0 °C
    sent: bool  # Central has the city as EV_W decided (its alert with these CPs, or none)
    simulated: bool
    checked_at: datetime | None

    def text(self) -> str:
        """``Alicante,ES  -2.5 °C  ALERT  [SIMULATED]  CP001, CP002``."""
        degrees = "   ?    " if self.temperature is None else f"{self.temperature:>5} °C"
        if self.temperature is None and self.error is None:
            status = "not checked yet"
        elif self.alert:
            status = "ALERT" + ("" if self.sent else " (waiting for Central)")
        else:
            status = "ok" + ("" if self.sent else " (clear waiting for Central)")
        if self.error is not None and self.temperature is None:
            status = f"error: {self.error}"
        elif self.error is not None:  # the last good reading, and what fails now
            degrees += f" ({self.checked_at:%H:%M:%S})" if self.checked_at else ""
            status += f"; now error: {self.error}"
        label = f"  [{SIMULATED}]" if self.simulated else ""
        return f"{self.city:<24} {degrees}  {status}{label}  {', '.join(self.cp_ids) or '(no CP)'}"


@dataclass(frozen=True)
class WatchView:
    """What EV_W's screen shows."""

    source: str
    central: str  # "Central OK", "Central unreachable since 14:02:11 (...)"
    central_ok: bool
    cities: list[CityLine] = field(default_factory=list)
    waiting: int = 0  # alerts and clears decided and not sent yet
    cycles: int = 0


class WeatherWatch:
    """EV_W (see the module doc). ``say`` shows a line to people."""

    def __init__(self, locations: LocationsFile, source, central: CentralAPI, *, every: float = DEFAULT_EVERY,
                 workers: int = DEFAULT_WORKERS, say: Callable[[str], None] = lambda text: log.info("%s", text),
                 clock: Callable[[], float] = time.monotonic, now: Callable[[], datetime] = datetime.now,
                 backoff: Backoff | None = None, after_cycle: Callable[[WatchView], None] | None = None) -> None:
        if not every > 0:
            raise ValueError("the cycle must last more than 0 s")
        self.locations = locations
        self.source = source
        self.central = central
        self.every = every
        self.say = say
        self.after_cycle = after_cycle  # sees the view after each cycle (the plain screen)
        self._clock = clock
        self._now = now
        self._pool = futures.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="check")
        self._lock = threading.Lock()
        self._cities: dict[str, _City] = {}
        self._leaving: dict[str, _City] = {}  # removed from the file; their alert at Central to clear
        self._backoff = backoff or Backoff(initial=BACKOFF_INITIAL, cap=BACKOFF_CAP)
        self._retry_at = 0.0
        self._trouble: str | None = None  # what Central's trouble is, as said (None: none)
        self._trouble_since: datetime | None = None
        self._said: dict[str, str] = {}  # city -> the last error said for it
        self._waiting = 0
        self.cycles = 0

    @property
    def check_deadline(self) -> float:
        """How long a cycle waits for the source's answers."""
        return 2 * getattr(self.source, "timeout", 1.0) + 0.5

    # -- running --------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Cycles every ``every`` seconds until ``stop`` is set (a late cycle is not made up for)."""
        next_at = self._clock()
        while not stop.is_set():
            try:
                self.cycle()
            except Exception:  # a bug must not stop the watch: said, and the next cycle comes
                log.exception("a weather cycle failed; the next one comes in %g s", self.every)
            if self.after_cycle is not None:
                try:
                    self.after_cycle(self.view())
                except Exception:
                    log.exception("showing the cycle failed")
            next_at += self.every
            now = self._clock()
            if next_at < now:
                next_at = now
            stop.wait(next_at - now)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def cycle(self) -> None:
        self._reload()
        self._check()
        self._send()
        self.cycles += 1

    # -- 1. the locations -----------------------------------------------------------------------------

    def _reload(self) -> None:
        changed = self.locations.reload_if_changed()
        if changed is None:
            return
        current, error = changed
        if error is not None:
            self.say(error)
        for problem in current.problems[:20]:
            self.say(f"{self.locations.path}, {problem}")
        with self._lock:
            old = self._cities
            cities: dict[str, _City] = {}
            for city, cp_ids in current.cities.items():
                known = old.get(city) or self._leaving.pop(city, None)
                if known is None:
                    cities[city] = _City(city, cp_ids)
                else:
                    known.cp_ids = cp_ids
                    cities[city] = known
            for city, gone in old.items():
                if city not in cities and (gone.central or (gone.central is None and gone.cold)):
                    self._leaving[city] = gone  # its alert at Central is cleared: nobody watches it now
            added = [c for c in cities if c not in old]
            removed = [c for c in old if c not in cities]
            self._cities = cities
        if self.cycles or added or removed:
            said = [f"{len(cities)} cit{'y' if len(cities) == 1 else 'ies'}, {current.cp_count} CP(s)"]
            if added and self.cycles:
                said.append(f"added {', '.join(added)}")
            if removed:
                said.append(f"removed {', '.join(removed)}"
                            + (" (their alerts at Central will be cleared)" if any(c in self._leaving for c in removed)
                               else ""))
            self.say(f"locations from {self.locations.path}: {'; '.join(said)}")

    # -- 2. the checks ---------------------------------------------------------------------------------

    def _check(self) -> None:
        with self._lock:
            cities = list(self._cities.values())
        asked: dict[futures.Future, _City] = {}
        for city in cities:
            if city.pending is not None and not city.pending.done():
                continue  # the previous request is still out: not asked twice
            city.pending = self._pool.submit(self.source.check, city.city)
            asked[city.pending] = city
        if asked:
            futures.wait(asked, timeout=self.check_deadline)
        for city in cities:
            future = city.pending
            if future is None or not future.done():
                self._failed(city, f"no answer within {self.check_deadline:g} s")
                continue
            try:
                degrees = future.result()
            except SourceError as exc:
                self._failed(city, str(exc))
            except Exception as exc:  # a bug in the source: shown as the city's error, logged
                log.exception("checking %s failed", city.city)
                self._failed(city, f"unexpected error: {type(exc).__name__}")
            else:
                with self._lock:
                    city.temperature, city.error, city.checked_at = degrees, None, self._now()
                    city.cold = degrees < 0
                if self._said.pop(city.city, None) is not None:
                    self.say(f"{city.city}: read again, {degrees} °C")
            finally:
                if future is not None and future.done():
                    city.pending = None

    def _failed(self, city: _City, error: str) -> None:
        with self._lock:
            city.error = error
        if self._said.get(city.city) != error:
            self._said[city.city] = error
            self.say(f"{city.city}: {error} (tried again every {self.every:g} s)")

    # -- 3 and 4. decisions and Central ----------------------------------------------------------------

    def _decisions(self) -> list[tuple[str, _City]]:
        """(holding the lock) The alerts and clears Central does not have yet."""
        wanted = []
        for city in self._cities.values():
            if city.cold is True and city.central != frozenset(city.cp_ids):
                wanted.append(("alert", city))
            elif city.cold is False and city.central is not False:
                wanted.append(("clear", city))
        wanted += [("clear", city) for city in self._leaving.values()]
        return [(kind, city) for kind, city in wanted if city.refused != self._call(kind, city)]

    @staticmethod
    def _call(kind: str, city: _City) -> tuple:
        return (kind, city.cp_ids if kind == "alert" else None, city.temperature if kind == "alert" else None)

    def _send(self) -> None:
        with self._lock:
            decisions = self._decisions()
            self._waiting = len(decisions)
            reports = [{"city": c.city, "temperature": c.temperature if c.error is None else None,
                        "cp_ids": list(c.cp_ids), "error": c.error, "simulated": bool(self.source.simulated)}
                       for c in self._cities.values()]
        if self._clock() < self._retry_at:
            return
        try:
            try:  # first the report: Central sees the readings the alerts and clears come from
                self.central.report(reports)
            except CentralError as exc:
                if exc.status not in REFUSALS:
                    raise
                self.say(f"Central refused EV_W's report: {exc.message}")
            for kind, city in decisions:
                try:
                    self._alert(city) if kind == "alert" else self._clear(city)
                except CentralError as exc:
                    if exc.status not in REFUSALS:
                        raise
                    with self._lock:
                        city.refused = self._call(kind, city)
                    self.say(f"Central refused the {kind} for {city.city}: {exc.message} (not sent again as it is)")
                with self._lock:
                    self._waiting -= 1
        except CentralError as exc:
            self._central_failed(exc)
            return
        if self._trouble is not None:
            self._trouble, self._trouble_since = None, None
            self.say("Central answers again" + (f"; alerts and clears sent" if decisions else ""))
        self._backoff.reset()

    def _alert(self, city: _City) -> None:
        with self._lock:
            cp_ids, degrees = city.cp_ids, city.temperature
        outcome = self.central.alert(city.city, degrees, list(cp_ids))
        with self._lock:
            city.central, city.refused = frozenset(cp_ids), None
        if outcome.get("unchanged"):
            self.say(f"ALERT {city.city} ({degrees} °C): already in force at Central")
        else:
            stopped = outcome.get("stopped") or []
            self.say(f"ALERT {city.city} ({degrees} °C) sent: Central stopped {', '.join(map(str, stopped)) or 'no CP'}"
                     f"{' [' + SIMULATED + ']' if self.source.simulated else ''}")

    def _clear(self, city: _City) -> None:
        with self._lock:
            believed, degrees = city.central, city.temperature
        outcome = self.central.clear(city.city)
        with self._lock:
            city.central, city.refused = False, None
            leaving = self._leaving.pop(city.city, None) is city
        if outcome is None:
            if believed:
                self.say(f"{city.city}: Central had no alert to clear")
            return
        resumed = outcome.get("resumed") or []
        why = "removed from the locations" if leaving else f"{degrees} °C"
        self.say(f"alert {city.city} cleared ({why}): Central resumed {', '.join(map(str, resumed)) or 'no CP'}")

    def _central_failed(self, exc: CentralError) -> None:
        delay = self._backoff.next()
        self._retry_at = self._clock() + delay
        text = exc.message if exc.status is None else f"HTTP {exc.status}: {exc.message}"
        if exc.status in (401, 403):
            text += " (check EV_W's token: --token-file or $EV_WEATHER_TOKEN)"
        if text != self._trouble:
            if self._trouble is None:
                self._trouble_since = self._now()
            self._trouble = text
            self.say(f"Central: {text}; trying again (backoff up to {BACKOFF_CAP:g} s); alerts and clears wait "
                     f"and are sent when it answers")

    # -- what is shown -------------------------------------------------------------------------------------

    def view(self) -> WatchView:
        with self._lock:
            lines = []
            for c in self._cities.values():
                sent = (c.central == frozenset(c.cp_ids)) if c.cold else (c.central is False or c.cold is None)
                lines.append(CityLine(c.city, c.cp_ids, c.temperature, c.error, bool(c.cold), sent,
                                      bool(self.source.simulated), c.checked_at))
            trouble, since = self._trouble, self._trouble_since
            waiting = self._waiting
        central = ("Central OK" if trouble is None
                   else f"Central: {trouble} (since {since:%H:%M:%S})" if since else f"Central: {trouble}")
        return WatchView(self.source.describe(), central, trouble is None, lines, waiting, self.cycles)
