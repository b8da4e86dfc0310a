"""The supplies Central has authorised: open sessions, their figures, their end.

Pure domain, thread-safe, clocks injected. The rules:

* a session opens when Central and the CP both accept a request; its price is
  frozen then;
* telemetry carries a per-session ``seq``: a record whose seq was already
  applied is ignored, so figures never move backwards;
* a session closes exactly once, on the first of: the Engine's ``supply.end``;
  ``end_grace`` seconds after Central interrupted it (Stop, fault, lost Monitor)
  without hearing the Engine's end; ``stale_after`` seconds without any news.
  A closed session *is* its ticket; copies of ``supply.end`` change nothing.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Callable, Iterable

from ev_central.store.base import OPEN_STATUSES, SessionRow

CENT = Decimal("0.01")
FOUR_PLACES = Decimal("0.0001")
DEFAULT_END_GRACE = 5.0
DEFAULT_STALE_AFTER = 90.0
NORMAL_END = "unplugged"


def amount_for(kwh: Decimal, price: Decimal, places: Decimal = FOUR_PLACES) -> Decimal:
    return (kwh * price).quantize(places, rounding=ROUND_HALF_UP)


@dataclass
class _Open:
    row: SessionRow
    last_news: float
    interrupted_at: float | None = None
    interrupt_reason: str | None = None


class SupplyBook:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 utcnow: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
                 end_grace: float = DEFAULT_END_GRACE, stale_after: float = DEFAULT_STALE_AFTER) -> None:
        self._clock = clock
        self._utcnow = utcnow
        self.new_id = new_id
        self.end_grace = end_grace
        self.stale_after = stale_after
        self._lock = threading.Lock()
        self._open: dict[str, _Open] = {}

    # -- loading and reading ------------------------------------------------------------

    def load(self, open_rows: Iterable[SessionRow]) -> None:
        """Sessions still open in the database (after a restart): their news clock starts now."""
        now = self._clock()
        with self._lock:
            for row in open_rows:
                if row.status in OPEN_STATUSES:
                    self._open[row.session_id] = _Open(row, now)

    def active_for_cp(self, cp_id: str) -> SessionRow | None:
        with self._lock:
            return next((s.row for s in self._open.values() if s.row.cp_id == cp_id), None)

    def running_for_cp(self, cp_id: str) -> SessionRow | None:
        """The CP's open session unless Central has already interrupted it."""
        with self._lock:
            return next((s.row for s in self._open.values()
                         if s.row.cp_id == cp_id and s.interrupt_reason is None), None)

    def active_for_driver(self, driver_id: str) -> SessionRow | None:
        with self._lock:
            return next((s.row for s in self._open.values() if s.row.driver_id == driver_id), None)

    def open_sessions(self) -> list[SessionRow]:
        with self._lock:
            return [s.row for s in self._open.values()]

    # -- lifecycle -------------------------------------------------------------------------

    def open(self, session_id: str, request_id: str, cp_id: str, driver_id: str, price: Decimal) -> SessionRow:
        row = SessionRow(session_id, request_id, cp_id, driver_id, price, self._utcnow(), None,
                         Decimal(0), Decimal(0), "AUTHORISED", None, False, 0)
        with self._lock:
            self._open[session_id] = _Open(row, self._clock())
        return row

    def telemetry(self, session_id: str, seq: int, kwh: Decimal) -> SessionRow | None:
        """Apply one telemetry record; the updated row, or None when ignored (unknown, closed, old seq)."""
        with self._lock:
            s = self._open.get(session_id)
            if s is None:
                return None
            s.last_news = self._clock()
            if seq <= s.row.last_seq:
                return None
            kwh = max(kwh, s.row.kwh)
            s.row = replace(s.row, status="SUPPLYING", last_seq=seq, kwh=kwh,
                            amount_eur=amount_for(kwh, s.row.price_eur_kwh))
            return s.row

    def end(self, session_id: str, seq: int, kwh: Decimal, reason: str) -> SessionRow | None:
        """The Engine ended the supply: the closed row (the ticket), or None if already closed/unknown."""
        with self._lock:
            s = self._open.get(session_id)
            if s is None:
                return None
            if seq > s.row.last_seq:
                s.row = replace(s.row, last_seq=seq, kwh=max(kwh, s.row.kwh))
            if reason == NORMAL_END and s.interrupt_reason is None:
                return self._close(s, "COMPLETED", NORMAL_END)
            return self._close(s, "INTERRUPTED", s.interrupt_reason or reason)

    def interrupt(self, cp_id: str, reason: str) -> SessionRow | None:
        """Central ends the CP's supply (Stop, fault, lost Monitor); it closes on the Engine's
        ``supply.end`` or after ``end_grace``. Returns the session, or None if the CP had none."""
        with self._lock:
            s = next((s for s in self._open.values() if s.row.cp_id == cp_id), None)
            if s is None:
                return None
            if s.interrupt_reason is None:
                s.interrupt_reason = reason
                s.interrupted_at = self._clock()
            return s.row

    def due(self) -> list[SessionRow]:
        """Close the sessions whose grace or news deadline passed; returns their tickets."""
        now = self._clock()
        closed = []
        with self._lock:
            for s in list(self._open.values()):
                if s.interrupted_at is not None and now - s.interrupted_at >= self.end_grace:
                    closed.append(self._close(s, "INTERRUPTED", s.interrupt_reason or "interrupted"))
                elif now - s.last_news >= self.stale_after:
                    closed.append(self._close(s, "INTERRUPTED",
                                              f"no news from the CP for {self.stale_after:g} s"))
        return closed

    def _close(self, s: _Open, status: str, reason: str) -> SessionRow:
        s.row = replace(s.row, status=status, end_reason=reason, ended_at=self._utcnow(),
                        amount_eur=amount_for(s.row.kwh, s.row.price_eur_kwh, CENT))
        del self._open[s.row.session_id]
        return s.row


__all__ = ["SupplyBook", "amount_for", "NORMAL_END", "DEFAULT_END_GRACE", "DEFAULT_STALE_AFTER"]
