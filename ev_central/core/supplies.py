"""The supplies Central has authorised: open sessions, their figures, their end.

Pure domain, thread-safe, clocks injected. The rules:

* a session opens when Central and the CP both accept a request; its price is
  frozen then;
* telemetry carries a per-session ``seq``: a record whose seq was already
  applied is ignored, so figures never move backwards;
* a session closes exactly once, on the first of: the Engine's ``supply.end``;
  ``end_grace`` seconds after Central interrupted it (Stop, fault, lost Monitor)
  without hearing the Engine's end; ``stale_after`` seconds without any news.
  A closed session *is* its ticket; copies of ``supply.end`` change nothing;
* the energy on a ticket is the energy the Engine delivered: a session Central had
  to close without the Engine's ``supply.end`` (``engine_final`` false) takes the
  Engine's final figures when they arrive later, once: that is a *corrected* ticket;
* a session a CP reports after registering again (``SST``) is re-adopted while it
  is still open: the interruption that the lost Monitor caused is forgotten;
* every change of a row raises its ``version``, so that the store never replaces a
  newer row with an older one, whatever thread writes it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Callable, Iterable

from ev_common.bounded import keep_newest

from .entities import OPEN_STATUSES, SessionRow

CENT = Decimal("0.01")
FOUR_PLACES = Decimal("0.0001")
DEFAULT_END_GRACE = 5.0
DEFAULT_STALE_AFTER = 90.0
END_EXPECTED_WITHIN = 30.0  # a CP said it ended a supply: its supply.end should be read by then
NORMAL_END = "unplugged"
CLOSED_KEPT = 10_000  # recently closed sessions kept in memory, for late ends and repeated requests


def amount_for(kwh: Decimal, price: Decimal, places: Decimal = FOUR_PLACES) -> Decimal:
    return (kwh * price).quantize(places, rounding=ROUND_HALF_UP)


@dataclass
class _Open:
    row: SessionRow
    last_news: float
    interrupted_at: float | None = None
    interrupt_reason: str | None = None
    end_expected_by: float | None = None  # the CP said it no longer holds the supply
    end_expected_why: str = ""


_NONE: dict = {}  # (never written)


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
        self._by_cp: dict[str, dict[str, _Open]] = {}  # cp_id -> its open sessions, oldest first
        self._closed: OrderedDict[str, SessionRow] = OrderedDict()  # the newest last

    # -- loading and reading ------------------------------------------------------------

    def load(self, open_rows: Iterable[SessionRow]) -> None:
        """Sessions still open in the database (after a restart): their news clock starts now."""
        now = self._clock()
        with self._lock:
            for row in open_rows:
                if row.status in OPEN_STATUSES:
                    self._add(_Open(row, now))

    @property
    def open_count(self) -> int:
        """Sessions open now (read without the lock: a glance, for the log's pace)."""
        return len(self._open)

    def active_for_cp(self, cp_id: str) -> SessionRow | None:
        with self._lock:
            return next((s.row for s in self._by_cp.get(cp_id, _NONE).values()), None)

    def running_for_cp(self, cp_id: str) -> SessionRow | None:
        """The CP's open session unless Central has already interrupted it."""
        with self._lock:
            return next((s.row for s in self._by_cp.get(cp_id, _NONE).values() if s.interrupt_reason is None), None)

    def active_for_driver(self, driver_id: str) -> SessionRow | None:
        with self._lock:
            return next((s.row for s in self._open.values() if s.row.driver_id == driver_id), None)

    def active_for_tag(self, tag_uid: str) -> SessionRow | None:
        with self._lock:
            return next((s.row for s in self._open.values() if s.row.tag_uid == tag_uid), None)

    def open_sessions(self) -> list[SessionRow]:
        with self._lock:
            return [s.row for s in self._open.values()]

    def is_open(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._open

    def closed(self, session_id: str) -> SessionRow | None:
        """A session closed recently (kept in memory), or None."""
        with self._lock:
            return self._closed.get(session_id)

    def decided(self, request_id: str) -> SessionRow | None:
        """The session a request opened (still open or closed recently): a repeated request is not
        decided again."""
        with self._lock:
            for row in (*(s.row for s in self._open.values()), *self._closed.values()):
                if row.request_id == request_id:
                    return row
        return None

    def remember_closed(self, row: SessionRow) -> None:
        """A closed session read back from the store (after a restart), so that a late end of
        it can still correct its ticket."""
        with self._lock:
            if row.session_id not in self._open and row.status not in OPEN_STATUSES:
                self._keep_closed(row)

    # -- lifecycle -------------------------------------------------------------------------

    def open(self, session_id: str, request_id: str, cp_id: str, driver_id: str, price: Decimal, *,
             tag_uid: str | None = None, account_id: str | None = None) -> SessionRow:
        """A new session: for a driver of the app (``driver_id``), or for an RFID tag (``tag_uid``,
        ``driver_id`` empty); booked to ``account_id`` (None: to no account)."""
        row = SessionRow(session_id, request_id, cp_id, driver_id, price, self._utcnow(), None,
                         Decimal(0), Decimal(0), "AUTHORISED", None, False, 0, version=1,
                         tag_uid=tag_uid, account_id=account_id)
        with self._lock:
            self._add(_Open(row, self._clock()))
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
            self._figures(s, seq, kwh, status="SUPPLYING")
            return s.row

    def readopt(self, session_id: str, cp_id: str, seq: int, kwh: Decimal) -> SessionRow | None:
        """The CP, registered again, reports it still holds this supply: if Central still has it
        open there, the interruption its lost Monitor caused is forgotten and the figures taken.
        Returns the session, or None when Central does not have it open at ``cp_id``."""
        with self._lock:
            s = self._open.get(session_id)
            if s is None or s.row.cp_id != cp_id:
                return None
            s.last_news = self._clock()
            s.interrupt_reason = s.interrupted_at = s.end_expected_by = None
            if seq > s.row.last_seq:
                self._figures(s, seq, kwh, status="SUPPLYING" if seq > 0 else s.row.status)
            return s.row

    def end(self, session_id: str, seq: int, kwh: Decimal, reason: str) -> SessionRow | None:
        """The Engine ended the supply: the closed row (the ticket); for a session Central had
        already closed without the Engine's figures, the corrected row (``corrected`` set,
        ``ticket_sent`` cleared) if the figures differ; None if there is nothing to do (already
        final, unknown)."""
        with self._lock:
            s = self._open.get(session_id)
            if s is None:
                return self._correct(session_id, seq, kwh)
            if seq > s.row.last_seq:
                self._figures(s, seq, kwh)
            s.row = replace(s.row, engine_final=True)
            if reason == NORMAL_END and s.interrupt_reason is None:
                return self._close(s, "COMPLETED", NORMAL_END)
            return self._close(s, "INTERRUPTED", s.interrupt_reason or reason)

    def _correct(self, session_id: str, seq: int, kwh: Decimal) -> SessionRow | None:
        row = self._closed.get(session_id)
        if row is None or row.engine_final:
            return None
        kwh = max(kwh, row.kwh)
        changed = kwh != row.kwh
        row = replace(row, engine_final=True, last_seq=max(seq, row.last_seq), kwh=kwh,
                      amount_eur=amount_for(kwh, row.price_eur_kwh, CENT), version=row.version + 1,
                      **({"corrected": True, "ticket_sent": False} if changed else {}))
        self._keep_closed(row)
        return row if changed else None

    def _figures(self, s: _Open, seq: int, kwh: Decimal, **changes) -> None:
        kwh = max(kwh, s.row.kwh)
        s.row = replace(s.row, last_seq=seq, kwh=kwh, amount_eur=amount_for(kwh, s.row.price_eur_kwh),
                        version=s.row.version + 1, **changes)

    def interrupt(self, cp_id: str, reason: str) -> SessionRow | None:
        """Central ends the CP's supply (Stop, fault, lost Monitor); it closes on the Engine's
        ``supply.end`` or after ``end_grace``. Returns the session, or None if the CP had none."""
        with self._lock:
            s = next(iter(self._by_cp.get(cp_id, _NONE).values()), None)
            if s is None:
                return None
            if s.interrupt_reason is None:
                s.interrupt_reason = reason
                s.interrupted_at = self._clock()
            return s.row

    def expect_end(self, cp_id: str, why: str, within: float = END_EXPECTED_WITHIN) -> SessionRow | None:
        """The CP says it no longer holds its supply: its ``supply.end`` (which decides the
        ticket, ``COMPLETED`` or not) is on its way; if it is not read within ``within``
        seconds the session closes ``INTERRUPTED`` with ``why``. Returns the session, or None."""
        with self._lock:
            s = next(iter(self._by_cp.get(cp_id, _NONE).values()), None)
            if s is None:
                return None
            if s.end_expected_by is None:
                s.end_expected_by, s.end_expected_why = self._clock() + within, why
            return s.row

    def due(self) -> list[SessionRow]:
        """Close the sessions whose grace or news deadline passed; returns their tickets."""
        now = self._clock()
        closed = []
        with self._lock:
            for s in list(self._open.values()):
                if s.interrupted_at is not None and now - s.interrupted_at >= self.end_grace:
                    closed.append(self._close(s, "INTERRUPTED", s.interrupt_reason or "interrupted"))
                elif s.end_expected_by is not None and now >= s.end_expected_by:
                    closed.append(self._close(s, "INTERRUPTED", s.end_expected_why))
                elif now - s.last_news >= self.stale_after:
                    closed.append(self._close(s, "INTERRUPTED",
                                              f"no news from the CP for {self.stale_after:g} s"))
        return closed

    def _close(self, s: _Open, status: str, reason: str) -> SessionRow:
        s.row = replace(s.row, status=status, end_reason=reason[:200], ended_at=self._utcnow(),
                        amount_eur=amount_for(s.row.kwh, s.row.price_eur_kwh, CENT), version=s.row.version + 1)
        del self._open[s.row.session_id]
        mine = self._by_cp.get(s.row.cp_id)
        if mine is not None:
            mine.pop(s.row.session_id, None)
            if not mine:
                del self._by_cp[s.row.cp_id]
        self._keep_closed(s.row)
        return s.row

    def _add(self, s: _Open) -> None:
        self._open[s.row.session_id] = s
        self._by_cp.setdefault(s.row.cp_id, {})[s.row.session_id] = s

    def _keep_closed(self, row: SessionRow) -> None:
        keep_newest(self._closed, row.session_id, row, CLOSED_KEPT)


__all__ = ["SupplyBook", "amount_for", "NORMAL_END", "DEFAULT_END_GRACE", "DEFAULT_STALE_AFTER"]
