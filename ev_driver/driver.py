"""The driver's logic: one request at a time, followed through the notifications.

``Driver.request(cp_id)`` sends a ``supply.request`` and blocks until the request
ends: denied, no answer in ``timeout`` (Cannot connect to CENTRAL), a ticket, no
news of the authorised supply for ``supply_timeout``, the app closing, or
``Driver.cancel()`` from another thread (the menu's ``c``): an abandoned request is
only forgotten here; what comes of it later is shown, labelled.
``Driver.handle(key, record)`` is fed by the notifications consumer (another
thread); it routes each record to the request in progress by ``request_id`` /
``session_id`` and shows the others too, labelled (an earlier supply, for
example the one that was running when the app was killed). A ticket is shown
once per ``session_id``, progress once per ``seq``.

Nothing here touches Kafka: ``send`` is any callable taking the record, and the
clock and the polling tick are injectable, so tests drive it with fake records.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Callable, Protocol

from ev_common.records import (
    CPStatus,
    Record,
    RequestAuthorised,
    RequestDenied,
    RequestReceived,
    SupplyAlert,
    SupplyProgress,
    SupplyRequest,
    Ticket,
)
from ev_common.words import ACTIVADO

from .screen import Screen, available_text

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
DEFAULT_SUPPLY_TIMEOUT = 120.0
DEFAULT_PAUSE = 4.0
DEFAULT_JOIN_TIMEOUT = 30.0
DEFAULT_SETTLE = 1.0  # statuses arriving within this time are shown together


class Link(Protocol):
    """What the driver needs to know of its Kafka side (ev_driver.bus.DriverBus)."""

    ready: threading.Event  # the notifications consumer has joined its group: answers will be heard

    @property
    def down(self) -> bool: ...  # Kafka is known to be unreachable


class Outcome(str, Enum):
    COMPLETED = "COMPLETED"  # ticket COMPLETED
    INTERRUPTED = "INTERRUPTED"  # ticket INTERRUPTED (fault, stop, ...)
    DENIED = "DENIED"  # request.denied
    NO_ANSWER = "NO_ANSWER"  # neither authorised nor denied within the timeout
    LOST = "LOST"  # authorised, then no news for the supply timeout
    CANCELLED = "CANCELLED"  # the app was closed meanwhile, or the driver cancelled it


@dataclass
class Result:
    """How one request ended; ``kwh``/``amount_eur`` come from its ticket."""

    position: int
    cp_id: str
    request_id: str
    outcome: Outcome
    reason: str = ""
    session_id: str | None = None
    ticket: Ticket | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.COMPLETED

    @property
    def kwh(self) -> Decimal | None:
        return self.ticket.kwh if self.ticket else None

    @property
    def amount_eur(self) -> Decimal | None:
        return self.ticket.amount_eur if self.ticket else None


@dataclass
class Totals:
    requests: int
    counts: dict[str, int]
    kwh: Decimal
    amount_eur: Decimal


def totals(results: list[Result]) -> Totals:
    counts = {outcome.name: 0 for outcome in Outcome}
    for result in results:
        counts[result.outcome.name] += 1
    return Totals(len(results), counts,
                  sum((r.kwh for r in results if r.kwh is not None), Decimal(0)),
                  sum((r.amount_eur for r in results if r.amount_eur is not None), Decimal(0)))


@dataclass
class _Request:
    position: int
    cp_id: str
    request_id: str
    sent_at: float
    phase: str = "sent"  # sent | received | authorised
    session_id: str | None = None
    last_news: float = 0.0
    result: Result | None = None

    def finish(self, outcome: Outcome, reason: str = "", ticket: Ticket | None = None) -> None:
        self.result = Result(self.position, self.cp_id, self.request_id, outcome, reason, self.session_id, ticket)


@dataclass
class _Seen:
    """What was already shown of one session (records may arrive twice)."""

    cp_id: str
    last_seq: int = 0
    alerts: set[tuple[str, str]] = field(default_factory=set)


class Driver:
    def __init__(self, driver_id: str, send: Callable[[SupplyRequest], None], screen: Screen, *,
                 timeout: float = DEFAULT_TIMEOUT, supply_timeout: float = DEFAULT_SUPPLY_TIMEOUT,
                 stop: threading.Event | None = None, clock: Callable[[], float] = time.monotonic,
                 tick: float = 0.1, new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
                 link: Link | None = None, join_timeout: float = DEFAULT_JOIN_TIMEOUT) -> None:
        self.driver_id = driver_id
        self._send = send
        self.screen = screen
        self.timeout = timeout
        self.supply_timeout = supply_timeout
        self.stop = stop or threading.Event()
        self._clock = clock
        self._tick = tick
        self._new_id = new_id
        self._link = link
        self.join_timeout = join_timeout
        self._cond = threading.Condition()
        self._current: _Request | None = None
        self._past: dict[str, _Request] = {}  # request_id -> requests of this run that ended
        self._past_sessions: dict[str, _Request] = {}  # session_id -> the same
        self._sessions: dict[str, _Seen] = {}  # session_id -> what was shown
        self._tickets: set[tuple[str, bool]] = set()  # (session_id, corrected) of the tickets shown
        self._late_answers: set[tuple[str, str]] = set()
        self._busy: str | None = None  # the CP of the request in progress (from connecting to its end)
        self._cancel: bool | None = None  # cancel() was called: closing (True) or not (False)

    @property
    def link(self) -> Link | None:
        return self._link

    @property
    def busy(self) -> str | None:
        """The CP of the request in progress, if one is."""
        return self._busy

    def claim(self, cp_id: str) -> None:
        """Mark a request at ``cp_id`` as in progress before ``request`` runs in another thread,
        so that it can be cancelled from now on (``request`` does it itself otherwise)."""
        with self._cond:
            if self._busy is None:
                self._busy, self._cancel = cp_id, None

    def cancel(self, closing: bool = False) -> str | None:
        """Abandon the request in progress (``closing``: because the app is quitting); returns
        its CP, or None when no request is in progress. ``request`` returns soon after."""
        with self._cond:
            if self._busy is None:
                return None
            if self._cancel is None:
                self._cancel = closing
            self._cond.notify_all()
            return self._busy

    # -- the request in progress (main thread) ------------------------------------------------------

    def request(self, cp_id: str, position: tuple[int, int] | None = None) -> Result:
        """Ask for a supply at ``cp_id`` and follow it to its end; ``position`` = (n, of) in a file."""
        self.claim(cp_id)
        try:
            return self._request(cp_id, position)
        finally:
            with self._cond:
                self._busy, self._cancel = None, None

    def _request(self, cp_id: str, position: tuple[int, int] | None) -> Result:
        self._await_link()
        req = _Request(position[0] if position else 1, cp_id, self._new_id(), self._clock())
        if self.stop.is_set():  # closed while connecting: nothing is sent
            req.finish(Outcome.CANCELLED, "the app was closed")
            self.screen.cancelled(cp_id)
            return req.result
        if self._cancel is not None:  # cancelled while connecting: nothing is sent
            req.finish(Outcome.CANCELLED, "cancelled by the driver")
            self.screen.abandoned(cp_id, "unsent", self._cancel)
            return req.result
        with self._cond:
            self._current = req
        self.screen.request_sent(cp_id, req.request_id, position)
        try:
            self._send(SupplyRequest(request_id=req.request_id, driver_id=self.driver_id, cp_id=cp_id,
                                     source="driver"))
            log.info("requested a supply at %s (request %s)", cp_id, req.request_id)
        except Exception as exc:  # the producer refused it: the request can only time out
            log.error("could not queue the request for %s: %s", cp_id, exc)
        with self._cond:
            try:
                while req.result is None:
                    self._check(req)
                    if req.result is None:
                        self._cond.wait(self._tick)
            finally:
                if req.result is None:  # an exception while waiting
                    req.finish(Outcome.CANCELLED)
                self._current = None
                self._past[req.request_id] = req
                if req.session_id:
                    self._past_sessions[req.session_id] = req
        log.info("request %s at %s ended: %s %s", req.request_id, cp_id, req.result.outcome.value, req.result.reason)
        return req.result

    def _await_link(self) -> None:
        """Before the first request: wait until answers can be heard (the notifications consumer
        joined its group, which takes seconds, more after a crash), unless Kafka is unreachable;
        so that the request's timeout measures Central, not the group join."""
        link = self._link
        if link is None or link.ready.is_set() or link.down:
            return
        self.screen.connecting()
        deadline = self._clock() + self.join_timeout
        while (not (link.ready.is_set() or link.down or self.stop.is_set()) and self._cancel is None
               and self._clock() < deadline):
            link.ready.wait(self._tick)
        if not link.ready.is_set():
            log.info("sending the request before the notifications consumer is ready")

    def _check(self, req: _Request) -> None:
        """Under the lock: end ``req`` if the app is closing or a deadline passed."""
        if self.stop.is_set():
            req.finish(Outcome.CANCELLED, "the app was closed")
            self.screen.cancelled(req.cp_id)
            return
        if self._cancel is not None:
            req.finish(Outcome.CANCELLED, "cancelled by the driver")
            self.screen.abandoned(req.cp_id, req.phase, self._cancel)
            return
        now = self._clock()
        if req.phase != "authorised":
            if now - req.sent_at >= self.timeout:
                req.finish(Outcome.NO_ANSWER, f"no answer from Central in {self.timeout:g} s")
                self.screen.failure(req.cp_id, req.result.reason)
        elif now - req.last_news >= self.supply_timeout:
            req.finish(Outcome.LOST, f"no news of the supply for {self.supply_timeout:g} s")
            self.screen.failure(req.cp_id, req.result.reason)

    # -- notifications (consumer thread) ---------------------------------------------------------------

    def handle(self, key: str | None, record: Record) -> None:
        """One record of ev.driver.notifications; records of other drivers are ignored."""
        if key != self.driver_id or getattr(record, "driver_id", None) != self.driver_id:
            return
        with self._cond:
            if isinstance(record, (RequestReceived, RequestAuthorised, RequestDenied)):
                self._on_request_step(record)
            elif isinstance(record, (SupplyProgress, SupplyAlert, Ticket)):
                self._on_supply(record)
            else:
                log.warning("ignored a %s record on the notifications topic", record.TYPE)
            self._cond.notify_all()

    def _on_request_step(self, record: RequestReceived | RequestAuthorised | RequestDenied) -> None:
        req = self._current
        if req is not None and req.result is None and record.request_id == req.request_id:
            if isinstance(record, RequestReceived):
                if req.phase == "sent":
                    req.phase = "received"
                    self.screen.received(req.cp_id)
            elif req.phase == "authorised":
                log.info("ignored a second answer to request %s", req.request_id)
            elif isinstance(record, RequestAuthorised):
                req.phase = "authorised"
                req.session_id = record.session_id
                req.last_news = self._clock()
                self._sessions.setdefault(record.session_id, _Seen(req.cp_id))
                self.screen.authorised(req.cp_id, record.session_id, record.price_eur_kwh)
            else:
                req.finish(Outcome.DENIED, record.reason)
                self.screen.denied(req.cp_id, record.reason)
            return
        # An answer to a request that is not (or no longer) in progress: a late answer to
        # one of this run's requests, or one to a request of an earlier run of the app.
        if isinstance(record, RequestReceived):
            log.info("Central received request %s at %s (not in progress)", record.request_id, record.cp_id)
            return
        answer = (record.request_id, record.TYPE)
        if answer in self._late_answers:
            return
        self._late_answers.add(answer)
        label = self._label_for_request(record.request_id, record.cp_id)
        if isinstance(record, RequestAuthorised):
            self._sessions.setdefault(record.session_id, _Seen(record.cp_id))
            if record.request_id in self._past:
                self._past_sessions[record.session_id] = self._past[record.request_id]
            self.screen.late_authorised(record.cp_id, record.session_id, label,
                                        given_up=record.request_id in self._past)
        else:
            self.screen.denied(record.cp_id, record.reason, label)

    def _on_supply(self, record: SupplyProgress | SupplyAlert | Ticket) -> None:
        req = self._current
        current = req is not None and req.result is None and (
            (req.session_id is not None and record.session_id == req.session_id)
            or (isinstance(record, Ticket) and record.request_id == req.request_id))
        label = None if current else self._label_for_session(record)
        seen = self._sessions.setdefault(record.session_id, _Seen(record.cp_id))
        if isinstance(record, Ticket):
            if (record.session_id, record.corrected) in self._tickets:
                log.info("ticket of session %s already shown", record.session_id)
                return
            self._tickets.add((record.session_id, record.corrected))
            self.screen.ticket(record, label)
            past = self._past.get(record.request_id)
            if record.corrected and past is not None and past.result is not None:
                past.result.ticket = record  # the summary counts the Engine's final figures
            if current:
                req.session_id = record.session_id
                outcome = Outcome.COMPLETED if record.status == "COMPLETED" else Outcome.INTERRUPTED
                req.finish(outcome, "" if outcome is Outcome.COMPLETED else record.end_reason, record)
            return
        if isinstance(record, SupplyProgress):
            if record.seq <= seen.last_seq:
                return
            seen.last_seq = record.seq
            self.screen.progress(record.cp_id, record.kwh, record.amount_eur, record.power_kw, label)
        else:
            alert = (record.state, record.reason)
            if alert in seen.alerts:
                return
            seen.alerts.add(alert)
            self.screen.alert(record.cp_id, record.state, record.reason, label)
        if current:
            req.last_news = self._clock()

    def _label_for_request(self, request_id: str, cp_id: str) -> str:
        past = self._past.get(request_id)
        if past is not None and past.result is not None:
            return f"given-up request at {cp_id}"
        return f"earlier request at {cp_id}"

    def _label_for_session(self, record) -> str:
        past = self._past_sessions.get(record.session_id)
        if past is None and isinstance(record, Ticket):
            past = self._past.get(record.request_id)
        if past is not None and past.result is not None and past.result.outcome in (Outcome.LOST, Outcome.NO_ANSWER,
                                                                                     Outcome.CANCELLED):
            return f"given-up supply at {record.cp_id}"
        return f"earlier supply at {record.cp_id}"


class CPDirectory:
    """The last ``cp.status`` of every CP (fed by the ev.cp.status consumer).

    How many CPs are available now and the cheapest of them (``screen.available_text``) are
    shown on ``screen`` (default: a Screen on stdout) once known and whenever that line
    changes; a burst of statuses (the topic read from its beginning at start, a CP changing
    state twice in a row) is shown once, when it has settled for ``settle`` seconds (0: at
    once, in the caller's thread)."""

    AVAILABLE = ACTIVADO

    def __init__(self, screen: Screen | None = None, *, settle: float = DEFAULT_SETTLE,
                 schedule: Callable[[float, Callable[[], None]], None] | None = None) -> None:
        self.screen = screen
        self.settle = settle
        self._schedule = schedule or _later
        self._lock = threading.Lock()
        self._last: dict[str, CPStatus] = {}
        self._pending = False  # a showing of the available CPs is scheduled
        self._shown: str | None = None  # the line last shown

    def handle(self, key: str | None, record: Record) -> None:
        if isinstance(record, CPStatus):
            with self._lock:  # one key, one partition: the last record read is the newest
                self._last[record.cp_id] = record
                if self._pending:
                    return
                self._pending = True
            if self.settle > 0:
                self._schedule(self.settle, self.show_available)
            else:
                self.show_available()

    def show_available(self) -> None:
        """Show the CPs available now, if they are not what was last shown."""
        with self._lock:
            self._pending = False
            available = [cp for cp in self._last.values() if cp.state == self.AVAILABLE]
            text = available_text(available)
            if text == self._shown:
                return
            self._shown = text
        if self.screen is None:
            self.screen = Screen()
        self.screen.available_cps(available)

    def all(self) -> list[CPStatus]:
        with self._lock:
            return sorted(self._last.values(), key=lambda cp: cp.cp_id)

    def available(self) -> list[CPStatus]:
        return [cp for cp in self.all() if cp.state == self.AVAILABLE]

    def state_of(self, cp_id: str) -> str | None:
        with self._lock:
            status = self._last.get(cp_id)
        return status.state if status else None


def _later(seconds: float, action: Callable[[], None]) -> None:
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()


# -- the modes that make requests one after another ----------------------------------------------------


def run_file(driver: Driver, entries: list[str], pause: float = DEFAULT_PAUSE) -> tuple[list[Result], int]:
    """Request every entry in turn, waiting ``pause`` s after each one ends; show the summary.

    The exit code is 0 when every entry was tried (failures are in the summary), 1 if the
    app was closed before the end."""
    results: list[Result] = []
    for number, cp_id in enumerate(entries, start=1):
        results.append(driver.request(cp_id, (number, len(entries))))
        if driver.stop.is_set():
            break
        if number < len(entries):
            driver.screen.pause(pause, len(entries) - number)
            if driver.stop.wait(pause):
                break
    driver.screen.summary(driver.driver_id, results, totals(results))
    return results, (0 if len(results) == len(entries) and not driver.stop.is_set() else 1)


def run_single(driver: Driver, cp_id: str) -> tuple[Result, int]:
    """One request; exit code 0 only if it ended with a COMPLETED ticket."""
    result = driver.request(cp_id)
    return result, (0 if result.ok else 1)
