"""The network of CPs as Central sees it: state, owner session, last sign of life.

Pure domain: no sockets, no database. Every method takes the lock, changes the
table and returns ``StateChange`` records; the caller persists, logs and shows
them. ``clock`` (monotonic seconds) drives the silence rule and ``utcnow`` the
timestamps; both are injected so tests never sleep.

Every change of a CP's row raises its ``version``: the store never replaces a newer
row with an older one, whichever thread hands it over first.

A CP may be held out of service for the weather (core/states.py, the ``weather`` flag):
``weather_hold`` holds or releases it. The holds are kept by CP id, also for a CP Central
does not know yet, which is held from the moment it signs up.

A *session* is any object standing for one Monitor connection. Only the
session that registered a CP last may speak for it: reports from an older,
replaced session are ignored, and its end does not disconnect the CP. A session
whose ``remote`` attribute is true is held by a gateway process (ev_central/remote.py),
which watches its silence itself: ``expire_silent`` leaves it alone.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from decimal import Decimal
from typing import Callable, Hashable, Iterable

from .entities import CPRow

from .states import Event, IllegalTransition, Outcome, State, transition

DEFAULT_SILENCE_TIMEOUT = 2.5  # seconds without a sign of life before DESCONECTADO


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class StateChange:
    """What happened to one CP. ``old`` is None when the CP signed up just now."""

    cp_id: str
    old: State | None
    new: State
    stopped: bool
    cause: str
    at: datetime
    interrupts_supply: bool = False
    row: CPRow | None = None  # the CP's full row after the change, to persist
    event: Event | None = None  # what caused it (None: Central's start)
    weather: bool = False  # held out of service by a weather alert (after the change)

    @property
    def state_changed(self) -> bool:
        return self.old is not self.new


@dataclass
class _CP:
    row: CPRow
    session: Hashable | None = None
    last_seen: float = 0.0
    fault: str | None = None  # the Engine's fault as last reported, for people
    watched: bool = True  # its silence is watched here (False: by the gateway that holds its session)


class ChargingNetwork:
    """Thread-safe table of CPs (see module doc)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 utcnow: Callable[[], datetime] = _utcnow,
                 silence_timeout: float = DEFAULT_SILENCE_TIMEOUT) -> None:
        self._clock = clock
        self._utcnow = utcnow
        self.silence_timeout = silence_timeout
        self._lock = threading.Lock()
        self._cps: dict[str, _CP] = {}
        self._weather: set[str] = set()  # CP ids held out of service for the weather

    # -- loading and reading ---------------------------------------------------------

    def load(self, rows: Iterable[CPRow]) -> list[StateChange]:
        """Take the stored CPs; each shows DESCONECTADO until its Monitor speaks."""
        changes = []
        now = self._utcnow()
        with self._lock:
            for row in rows:
                old = State(row.state)
                if old is not State.DESCONECTADO:
                    row = replace(row, state=State.DESCONECTADO.value, updated_at=now, version=row.version + 1)
                self._cps[row.cp_id] = _CP(row)
                if old is not State.DESCONECTADO:
                    changes.append(StateChange(row.cp_id, old, State.DESCONECTADO, row.stopped,
                                               "Central started: state unknown until the Monitor speaks",
                                               now, row=row))
        return changes

    def get(self, cp_id: str) -> CPRow | None:
        with self._lock:
            cp = self._cps.get(cp_id)
            return cp.row if cp else None

    def snapshot(self) -> list[CPRow]:
        with self._lock:
            return [cp.row for _, cp in sorted(self._cps.items())]

    def fault_of(self, cp_id: str) -> str | None:
        with self._lock:
            cp = self._cps.get(cp_id)
            return cp.fault if cp else None

    def weather_held(self, cp_id: str) -> bool:
        """Whether a weather alert holds ``cp_id`` out of service."""
        with self._lock:
            return cp_id in self._weather

    def owner(self, cp_id: str) -> Hashable | None:
        with self._lock:
            cp = self._cps.get(cp_id)
            return cp.session if cp else None

    # -- what Monitors report ------------------------------------------------------------

    def register(self, cp_id: str, location: str, price: Decimal,
                 session: Hashable) -> tuple[StateChange, Hashable | None]:
        """A Monitor session registered ``cp_id``. Returns the change and the session it replaced."""
        return self.register_many([(cp_id, location, price, session)])[0]

    def register_many(self, registrations: Iterable[tuple[str, Decimal | str, Decimal, Hashable]]
                      ) -> list[tuple[StateChange, Hashable | None]]:
        """``register`` for many (cp_id, location, price, session) at once, in order, under one
        taking of the lock (a storm of registrations)."""
        now = self._utcnow()
        results = []
        with self._lock:
            seen = self._clock()
            for cp_id, location, price, session in registrations:
                cp = self._cps.get(cp_id)
                signed_up = cp is None
                if cp is None:
                    cp = self._cps[cp_id] = _CP(CPRow(cp_id, location, price, State.DESCONECTADO.value, False, now))
                replaced = cp.session if cp.session is not None and cp.session != session else None
                cp.row = replace(cp.row, location=location, price_eur_kwh=price, updated_at=now,
                                 version=cp.row.version + 1)
                cp.session = session
                cp.last_seen = seen
                cp.fault = None
                cp.watched = not getattr(session, "remote", False)
                cause = ("signed up" if signed_up else
                         ("registered again (new Monitor session)" if replaced else "registered"))
                change = self._apply(cp, Event.REGISTERED, cause, now, force=True)
                if signed_up:
                    change = replace(change, old=None)
                results.append((change, replaced))
        return results

    def heartbeat(self, cp_id: str, session: Hashable) -> bool:
        """A sign of life; False when ``session`` does not own ``cp_id`` (anymore).

        Without the lock (it is the reactor's most frequent call): one dictionary read, one
        comparison, one timestamp. A registration or an expiry that runs at the same moment
        decides alone who owns the CP; a sign of life racing it only moves ``last_seen``."""
        cp = self._owned(cp_id, session)
        if cp is None:
            return False
        cp.last_seen = self._clock()
        return True

    def engine_fault(self, cp_id: str, session: Hashable, reason: str) -> StateChange | None:
        with self._lock:
            cp = self._owned(cp_id, session)
            if cp is None:
                return None
            cp.last_seen = self._clock()
            cp.fault = reason
            return self._apply(cp, Event.ENGINE_FAULT, f"Engine fault: {reason}", self._utcnow())

    def engine_ok(self, cp_id: str, session: Hashable) -> StateChange | None:
        with self._lock:
            cp = self._owned(cp_id, session)
            if cp is None:
                return None
            cp.last_seen = self._clock()
            cp.fault = None
            return self._apply(cp, Event.ENGINE_OK, "Engine recovered", self._utcnow())

    def session_ended(self, cp_id: str, session: Hashable, cause: str) -> StateChange | None:
        """The Monitor's session closed. Ignored when a newer session owns the CP."""
        with self._lock:
            cp = self._owned(cp_id, session)
            if cp is None:
                return None
            cp.session = None
            return self._apply(cp, Event.MONITOR_LOST, cause, self._utcnow())

    def expire_silent(self) -> list[tuple[Hashable, StateChange]]:
        """Disconnect every CP whose Monitor has been silent past ``silence_timeout``.

        Returns the (session, change) pairs: the caller closes those sessions.
        """
        now = self._clock()
        cutoff = now - self.silence_timeout
        expired = []
        with self._lock:
            for cp in self._cps.values():  # (every CP at every sweep: one comparison for most)
                if cp.last_seen < cutoff and cp.session is not None and cp.watched:
                    session, cp.session = cp.session, None
                    change = self._apply(cp, Event.MONITOR_LOST,
                                         f"no sign of life from the Monitor for {now - cp.last_seen:.1f} s",
                                         self._utcnow())
                    expired.append((session, change))
        return expired

    # -- operator commands ------------------------------------------------------------------

    def apply(self, cp_id: str, event: Event, cause: str) -> StateChange:
        """Apply an operator or supply event. Raises KeyError (unknown CP) or IllegalTransition."""
        with self._lock:
            cp = self._cps[cp_id]
            return self._apply(cp, event, cause, self._utcnow(), force=True)

    def weather_hold(self, cp_id: str, held: bool, cause: str) -> StateChange | None:
        """Hold ``cp_id`` out of service for the weather (``WEATHER_STOP``), or end that hold
        (``WEATHER_CLEAR``). The change, or None for a CP Central does not know yet (it is
        held, or not, from the moment it signs up)."""
        with self._lock:
            cp = self._cps.get(cp_id)
            if cp is None:
                if held:
                    self._weather.add(cp_id)
                else:
                    self._weather.discard(cp_id)
                return None
            return self._apply(cp, Event.WEATHER_STOP if held else Event.WEATHER_CLEAR, cause, self._utcnow(),
                               force=True)

    # -- internals ------------------------------------------------------------------------------

    def _owned(self, cp_id: str, session: Hashable) -> _CP | None:
        cp = self._cps.get(cp_id)
        return cp if cp is not None and cp.session is not None and cp.session == session else None

    def _apply(self, cp: _CP, event: Event, cause: str, now: datetime, force: bool = False) -> StateChange | None:
        """Run the state table; returns a change when something changed (or ``force``)."""
        old = State(cp.row.state)
        held = cp.row.cp_id in self._weather
        outcome: Outcome = transition(old, cp.row.stopped, event, held)
        if outcome.weather != held:
            (self._weather.add if outcome.weather else self._weather.discard)(cp.row.cp_id)
        changed = outcome.state is not old or outcome.stopped != cp.row.stopped
        if not changed and not force:
            return None
        if changed:
            cp.row = replace(cp.row, state=outcome.state.value, stopped=outcome.stopped, updated_at=now,
                             version=cp.row.version + 1)
        return StateChange(cp.row.cp_id, old, outcome.state, outcome.stopped, cause, now,
                           outcome.interrupts_supply, cp.row, event, outcome.weather)


__all__ = ["ChargingNetwork", "StateChange", "IllegalTransition", "DEFAULT_SILENCE_TIMEOUT"]
