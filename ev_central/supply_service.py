"""Supplies, end to end: requests in, the CP asked, telemetry applied, tickets out.

``SupplyService`` holds the rules of the application; what it talks to is
injected: the CP network and supply book (domain), the Monitor gateway (ask a
CP, push a command), the driver directory, the notifier (Kafka) and the
writers (database). Every handler is idempotent, because Kafka may hand a record
over twice.

Decisions are taken on the caller's thread, under the domain's locks; their
effects (a row for a writer, a record on Kafka, a log line for the panel) go
through ``Effects``, carried out in order by one thread (ev_central/effects.py).
Every CP change, from the Monitor side or from here, comes in through ``changed``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from datetime import datetime, timezone
from typing import Callable, Protocol

from ev_common.bounded import keep_newest
from ev_common.protocol import Can, Message, Resume, Sst, Stop, Sup, Supr
from ev_common.records import (
    CPStatus,
    Record,
    RequestAuthorised,
    RequestDenied,
    RequestReceived,
    SupplyAlert,
    SupplyEnd,
    SupplyProgress,
    SupplyRequest,
    Telemetry,
    Ticket,
)
from ev_common.words import CANNOT_REPORT, OUT_OF_ORDER, STOPPED_BY_CENTRAL

from .core.network import ChargingNetwork, StateChange
from .core.states import Event, IllegalTransition, State
from .core.supplies import SupplyBook
from .effects import Effects
from .persistence import WriteBehind
from .store.base import CPRow, SessionRow, Store, StoreError

log = logging.getLogger(__name__)
live_log = logging.getLogger("ev_central.live")  # per-second figures: shown on tiles, not in the message list

DEFAULT_REQUEST_TTL = 30.0
CP_ANSWER_TIMEOUT = 3.0
TICKET_RETRY = 5.0  # seconds between tries of a ticket the broker did not take
CANCELS_KEPT = 1024  # unknown sessions already cancelled at their CP (one CAN each)
UNKNOWN_SUPPLY = "Central has no open supply with this id"
ENGINE_FAULT_END = "fault"  # supply.end's reason when the Engine ended it for a fault
FAULT_REPORT_WAIT = 2.5  # s: the Monitor checks every second and reports a fault at once


class CPGateway(Protocol):
    def ask(self, cp_id: str, question: Sup, timeout: float) -> Supr: ...

    def command(self, cp_id: str, message: Message) -> bool: ...


class Notifier(Protocol):
    def to_driver(self, driver_id: str, record: Record, on_delivery: Callable[[bool], None] | None = None) -> None: ...

    def cp_status(self, record: CPStatus) -> None: ...


class DriverDirectory:
    """Is a driver registered? Asks the database; remembers answers for when it is down."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def is_registered(self, driver_id: str) -> bool | None:
        """True/False, or None when the database cannot say and the driver is not remembered."""
        try:
            registered = self.store.driver_exists(driver_id)
        except StoreError as exc:
            with self._lock:
                if driver_id in self._known:
                    return True
            log.warning("cannot check driver %s: %s", driver_id, exc)
            return None
        with self._lock:
            (self._known.add if registered else self._known.discard)(driver_id)
        return registered


class SupplyService:
    def __init__(self, network: ChargingNetwork, book: SupplyBook, cps: CPGateway, drivers: DriverDirectory,
                 notifier: Notifier, sessions: WriteBehind[SessionRow], store: Store, *,
                 cp_rows: WriteBehind[CPRow] | None = None, effects: Effects | None = None,
                 observe: Callable[[StateChange], None] | None = None,
                 request_ttl: float = DEFAULT_REQUEST_TTL, cp_answer_timeout: float = CP_ANSWER_TIMEOUT,
                 utcnow: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 clock: Callable[[], float] = time.monotonic, say: Callable[[str], None] | None = None) -> None:
        self.network = network
        self.book = book
        self.cps = cps
        self.drivers = drivers
        self.notifier = notifier
        self.sessions = sessions
        self.store = store
        self.cp_rows = cp_rows  # the CP rows' writer
        self._effects = effects or Effects()  # not started: effects run on the caller's thread
        self._observe = observe  # sees every CP change, in order (tests)
        self.request_ttl = request_ttl
        self.cp_answer_timeout = cp_answer_timeout
        self._utcnow = utcnow
        self._clock = clock
        self._undelivered: dict[str, SessionRow] = {}  # tickets to send again
        self._next_retry = 0.0
        self._say = say or (lambda text: log.info("%s", text))
        self._pending: dict[str, SupplyRequest] = {}  # driver_id -> their request being decided
        self._cancelled: OrderedDict[str, None] = OrderedDict()  # sessions cancelled at their CP
        self._held: dict[str, float] = {}  # cp_id -> when to free a CP whose Engine ended a supply for a fault
        self._lock = threading.Lock()

    # -- requests ----------------------------------------------------------------------------

    def on_request(self, request: SupplyRequest) -> None:
        """Decide one request; every step is told to the driver and shown at Central."""
        r = request
        if self.book.decided(r.request_id) is not None:  # Kafka handed it over again (after a restart)
            log.info("request %s was decided before; not decided again", r.request_id[:8])
            return
        self._notify(r.driver_id, RequestReceived(r.request_id, r.driver_id, r.cp_id))
        self._say(f"request {r.request_id[:8]} from driver {r.driver_id} for {r.cp_id}"
                  + (" (made at the CP)" if r.source == "cp" else ""))
        age = (self._utcnow() - r.ts).total_seconds()
        if age > self.request_ttl:
            return self._deny(r, f"request expired ({age:.0f} s old, the limit is {self.request_ttl:g} s)")
        with self._lock:
            if r.driver_id in self._pending:
                return self._deny(r, f"driver {r.driver_id} already has a request being decided")
            self._pending[r.driver_id] = r
        try:
            self._decide(r)
        finally:
            with self._lock:
                self._pending.pop(r.driver_id, None)

    def _decide(self, r: SupplyRequest) -> None:
        registered = self.drivers.is_registered(r.driver_id)
        if registered is None:
            return self._deny(r, "Central cannot check drivers now (database unreachable); try again later")
        if not registered:
            return self._deny(r, f"driver {r.driver_id} is not registered")
        cp = self.network.get(r.cp_id)
        if cp is None:
            return self._deny(r, f"unknown CP {r.cp_id}")
        busy = self.book.active_for_driver(r.driver_id)
        if busy is not None:
            return self._deny(r, f"driver {r.driver_id} already has a supply in course at {busy.cp_id}")
        try:  # reserve the CP: only an ACTIVADO CP can start a supply, atomically
            self._network_event(r.cp_id, Event.SUPPLY_STARTED, f"supply for driver {r.driver_id} being authorised")
        except IllegalTransition as exc:  # its state now, not as read above
            reason = OUT_OF_ORDER if exc.state is State.PARADO else exc.state.value
            return self._deny(r, f"{r.cp_id} is not available ({reason})")
        session_id = self.book.new_id()
        price = cp.price_eur_kwh
        try:
            answer = self.cps.ask(r.cp_id, Sup(r.cp_id, session_id, r.driver_id, price), self.cp_answer_timeout)
            refusal = None if answer.ok else f"{r.cp_id} refused: {answer.reason or 'no reason given'}"
        except Exception as exc:  # CPUnreachable, or the link failing under us
            refusal = f"{r.cp_id} did not confirm: {exc}"
            # the CP may take it late: it must never supply a session Central does not know
            self._cancel_at_cp(r.cp_id, session_id, "Central gave up waiting for the CP's answer")
        if refusal is not None:
            self._release(r.cp_id, "supply not authorised")
            return self._deny(r, refusal)
        row = self.book.open(session_id, r.request_id, r.cp_id, r.driver_id, price)
        self.sessions.put(row)
        self._notify(r.driver_id, RequestAuthorised(r.request_id, r.driver_id, r.cp_id, session_id, price))
        self._say(f"authorised: driver {r.driver_id} at {r.cp_id}, session {session_id[:8]}, {price} EUR/kWh")
        self._publish_status(r.cp_id)
        # A Stop, fault or lost Monitor while the CP was being asked found no session to interrupt;
        # the session exists now, so any later change interrupts it: catch the one that came before.
        now = self.network.get(r.cp_id)
        if now is not None and now.state != State.SUMINISTRANDO.value:
            reason = _interruption_for(State(now.state), "CP changed while being asked")
            if self.book.interrupt(r.cp_id, reason) is not None:
                self._notify(r.driver_id, SupplyAlert(session_id, r.driver_id, r.cp_id, now.state, reason))
                self._say(f"supply {session_id[:8]} at {r.cp_id} interrupted: {reason}")

    def _deny(self, r: SupplyRequest, reason: str) -> None:
        self._notify(r.driver_id, RequestDenied(r.request_id, r.driver_id, r.cp_id, reason))
        self._say(f"denied: driver {r.driver_id} at {r.cp_id}: {reason}")

    def pending_requests(self) -> list[SupplyRequest]:
        """Requests being decided now."""
        with self._lock:
            return list(self._pending.values())

    # -- telemetry ------------------------------------------------------------------------------

    def on_telemetry(self, t: Telemetry, on_durable: Callable[[], None] | None = None) -> None:
        """Apply one telemetry record; ``on_durable`` runs once its effect is in the database
        (at once when it has none)."""
        row = self.book.telemetry(t.session_id, t.seq, t.kwh)
        if row is None:
            if not self.book.is_open(t.session_id):  # the CP supplies a session Central has not open
                self._cancel_at_cp(t.cp_id, t.session_id, UNKNOWN_SUPPLY)
            if on_durable is not None:
                on_durable()
            return
        self.sessions.put(row, on_durable)
        self._notify(row.driver_id, SupplyProgress(row.session_id, row.driver_id, row.cp_id, t.seq,
                                                              row.kwh, row.amount_eur, t.power_kw))
        live_log.info("%s SUMINISTRANDO to driver %s: %.3f kWh, %.2f EUR (%s kW)", row.cp_id, row.driver_id,
                      row.kwh, row.amount_eur, t.power_kw)

    def on_supply_end(self, e: SupplyEnd, on_durable: Callable[[], None] | None = None) -> None:
        """The Engine's final figures: the ticket, or a corrected ticket for a session Central had to
        close without them. ``on_durable`` runs once the closed row is in the database."""
        done = on_durable or (lambda: None)
        if not self.book.is_open(e.session_id) and self.book.closed(e.session_id) is None:
            self._recall(e.session_id)  # closed before a restart: read it back
        row = self.book.end(e.session_id, e.seq, e.kwh, e.reason)
        if row is None:
            log.info("%s: end of session %s already handled (or unknown); ignored", e.cp_id, e.session_id[:8])
            return done()
        if row.corrected:
            self._correct(row, done)
        else:
            self._finish(row, done, engine_fault=e.reason == ENGINE_FAULT_END)

    def _recall(self, session_id: str) -> None:
        try:
            row = self.store.get_session(session_id)
        except StoreError as exc:
            log.warning("cannot look up session %s (%s): a late end of it cannot correct its ticket now",
                        session_id[:8], exc)
            return
        if row is not None:
            self.book.remember_closed(row)

    def on_supply_state(self, cp_id: str, report: Sst) -> list[Message]:
        """What a CP, registered again, says it holds (``SST``): Central re-adopts a supply it has
        still open, ends one the CP no longer holds, and cancels one it does not know (the
        returned messages go to the CP)."""
        mine = self.book.active_for_cp(cp_id)
        if mine is not None and mine.session_id != report.session_id:  # ended at the CP meanwhile
            why = "the CP ended it; its final figures did not arrive"
            if self.book.expect_end(cp_id, why) is not None:
                self._say(f"{cp_id} no longer holds supply {mine.session_id[:8]}: waiting for its final figures")
        if report.phase == "IDLE":
            return []
        row = self.book.readopt(report.session_id, cp_id, report.seq, report.kwh)
        if row is None:
            self._remember_cancel(report.session_id)
            self._say(f"{cp_id} holds supply {report.session_id[:8]}, which Central has not open: cancelling it")
            return [Can(cp_id, report.session_id, UNKNOWN_SUPPLY)]
        self.sessions.put(row)
        cp = self.network.get(cp_id)
        if cp is not None and cp.state == State.ACTIVADO.value:
            self._network_event(cp_id, Event.SUPPLY_STARTED, "the CP reports its supply goes on")
        self._say(f"{cp_id} registered again and goes on with supply {row.session_id[:8]} ({row.kwh:.3f} kWh)")
        return []

    def sweep(self) -> None:
        """Close sessions whose grace or news deadline passed, and send again the tickets the
        broker did not take (call every fraction of a second)."""
        for row in self.book.due():
            self._finish(row)
        now = self._clock()
        with self._lock:
            due = [cp_id for cp_id, at in self._held.items() if now >= at]
            for cp_id in due:
                del self._held[cp_id]
        for cp_id in due:  # its Monitor did not report the fault: the CP is free after all
            self._release(cp_id, "supply ended by an Engine fault its Monitor did not report")
        if self._undelivered and self._clock() >= self._next_retry:
            self._next_retry = self._clock() + TICKET_RETRY
            with self._lock:
                rows, self._undelivered = list(self._undelivered.values()), {}
            log.info("sending %d undelivered ticket(s) again", len(rows))
            for row in rows:
                self.send_ticket(row)

    def _finish(self, row: SessionRow, on_durable: Callable[[], None] | None = None, *,
                engine_fault: bool = False) -> None:
        """A session closed: store it, free the CP, send the ticket (once). A supply the Engine
        ended for a fault does not free the CP: its Monitor reports the fault within a second
        or two (``AVERIADO``); showing it ``ACTIVADO`` meanwhile would offer a broken CP."""
        self._store_now(row, on_durable)
        if engine_fault:
            with self._lock:
                self._held[row.cp_id] = self._clock() + FAULT_REPORT_WAIT
        else:
            self._release(row.cp_id, f"supply {row.session_id[:8]} ended: {row.end_reason}")
        self.send_ticket(row)
        self._say(f"ticket {row.session_id[:8]}: driver {row.driver_id} at {row.cp_id}, {row.kwh:.3f} kWh, "
                  f"{row.amount_eur:.2f} EUR, {row.status} ({row.end_reason})")

    def _correct(self, row: SessionRow, on_durable: Callable[[], None] | None = None) -> None:
        """The Engine's final figures came after the ticket: the row takes them, the driver gets a
        corrected ticket (once: the row is final now)."""
        self._store_now(row, on_durable)
        self.send_ticket(row)
        self._say(f"corrected ticket {row.session_id[:8]}: driver {row.driver_id} at {row.cp_id}, the Engine "
                  f"delivered {row.kwh:.3f} kWh, {row.amount_eur:.2f} EUR")

    def _store_now(self, row: SessionRow, on_durable: Callable[[], None] | None) -> None:
        """Durable before the ticket leaves, when the database allows; the writer has it otherwise
        (and replaces any older version of it that still waits there)."""
        if getattr(self.sessions, "db_ok", True):  # during an outage the writer alone tries: no caller waits
            try:
                self.store.save_sessions([row])
            except StoreError:
                pass
        self.sessions.put(row, on_durable)

    def send_ticket(self, row: SessionRow) -> None:
        ticket = Ticket(row.session_id, row.request_id, row.driver_id, row.cp_id, row.started_at,
                        row.ended_at or self._utcnow(), row.kwh, row.price_eur_kwh, row.amount_eur, row.status,
                        row.end_reason or "", corrected=row.corrected)

        def delivered(ok: bool) -> None:
            if ok:
                self.sessions.put(_with_ticket_sent(row))
            else:  # tried again by sweep(); the driver shows one ticket per session
                with self._lock:
                    self._undelivered[row.session_id] = row

        self._notify(row.driver_id, ticket, on_delivery=delivered)

    def resend_unsent_tickets(self) -> int:
        """After a restart: send the tickets that were stored but never reached the broker."""
        rows = self.store.load_unsent_tickets()
        for row in rows:
            self.send_ticket(row)
        return len(rows)

    # -- CP changes and operator commands ----------------------------------------------------------

    def changed(self, change: StateChange | None) -> None:
        """A CP changed (from any thread): its supply is interrupted now if it must be; the row,
        the log line, the driver's alert and the status record follow on the effects thread."""
        if change is None:
            return
        interrupts = change.interrupts_supply and CANNOT_REPORT not in change.cause  # (see ev_common.words)
        interrupted = self.book.interrupt(change.cp_id, _interruption(change)) if interrupts else None
        self._effects.submit(self._apply_change, change, interrupted)
        if (not change.interrupts_supply and change.event is Event.REGISTERED and change.new is State.ACTIVADO
                and self.book.running_for_cp(change.cp_id) is not None):
            # Central restarted while this CP supplied: the supply goes on, so does SUMINISTRANDO
            self._network_event(change.cp_id, Event.SUPPLY_STARTED, "supply in course since before Central restarted")

    def _apply_change(self, change: StateChange, interrupted: SessionRow | None) -> None:
        """(effects thread) What a CP change causes outside Central's memory."""
        if self._observe is not None:
            self._observe(change)
        if change.row is not None and self.cp_rows is not None:
            self.cp_rows.put(change.row)
        if change.old is None:
            log.info("%s: new CP signed up -> %s", change.cp_id, change.new)
        elif change.state_changed:
            log.info("%s: %s -> %s (%s)", change.cp_id, change.old, change.new, change.cause)
        if interrupted is not None:
            reason = _interruption(change)
            self.notifier.to_driver(interrupted.driver_id, SupplyAlert(interrupted.session_id, interrupted.driver_id,
                                                                       interrupted.cp_id, change.new.value, reason))
            self._say(f"supply {interrupted.session_id[:8]} at {interrupted.cp_id} interrupted: {reason}")
        if change.state_changed or change.old is None:
            self._publish_status_now(change.cp_id)

    def stop(self, cp_id: str) -> StateChange:
        change = self._network_event(cp_id, Event.STOP, "stopped by the operator")
        delivered = self.cps.command(cp_id, Stop(cp_id))
        self._say(f"Stop sent to {cp_id}" + ("" if delivered else " (its Monitor is not connected: applied at "
                                                                   "its next registration)"))
        return change

    def resume(self, cp_id: str) -> StateChange:
        change = self._network_event(cp_id, Event.RESUME, "resumed by the operator")
        delivered = self.cps.command(cp_id, Resume(cp_id))
        self._say(f"Resume sent to {cp_id}" + ("" if delivered else " (its Monitor is not connected)"))
        return change

    def publish_all_status(self) -> None:
        for row in self.network.snapshot():
            self._publish_status(row.cp_id)

    # -- internals -------------------------------------------------------------------------------------

    def _network_event(self, cp_id: str, event: Event, cause: str) -> StateChange:
        change = self.network.apply(cp_id, event, cause)
        self.changed(change)
        return change

    def _notify(self, driver_id: str, record: Record, on_delivery: Callable[[bool], None] | None = None) -> None:
        self._effects.submit(self.notifier.to_driver, driver_id, record, on_delivery)

    def _cancel_at_cp(self, cp_id: str, session_id: str, reason: str) -> None:
        """Tell the CP to end (or never start) a supply Central does not have open; once per session."""
        if not self._remember_cancel(session_id):
            return
        if self.network.get(cp_id) is None:
            return
        delivered = self.cps.command(cp_id, Can(cp_id, session_id, reason))
        log.warning("%s: supply %s cancelled at the CP (%s)%s", cp_id, session_id[:8], reason,
                    "" if delivered else "; its Monitor is not connected: cancelled when it reports the supply")

    def _remember_cancel(self, session_id: str) -> bool:
        """False if this session was cancelled before."""
        with self._lock:
            if session_id in self._cancelled:
                return False
            keep_newest(self._cancelled, session_id, None, CANCELS_KEPT)
            return True

    def _release(self, cp_id: str, cause: str) -> None:
        row = self.network.get(cp_id)
        if row is not None and row.state == State.SUMINISTRANDO.value and self.book.active_for_cp(cp_id) is None:
            self._network_event(cp_id, Event.SUPPLY_ENDED, cause)

    def _publish_status(self, cp_id: str) -> None:
        """The CP's status as it is when the effects thread publishes it: never an older one."""
        self._effects.submit(self._publish_status_now, cp_id)

    def _publish_status_now(self, cp_id: str) -> None:
        row = self.network.get(cp_id)
        if row is None:
            return
        supply = self.book.active_for_cp(cp_id)
        self.notifier.cp_status(CPStatus(cp_id, row.state, row.location, row.price_eur_kwh,
                                         supply.driver_id if supply else None))


def _interruption(change: StateChange) -> str:
    return _interruption_for(change.new, change.cause)


def _interruption_for(state: State, otherwise: str) -> str:
    if state is State.PARADO:
        return STOPPED_BY_CENTRAL
    if state is State.AVERIADO:
        return "CP fault"
    if state is State.DESCONECTADO:
        return "Monitor lost"
    return otherwise


def _with_ticket_sent(row: SessionRow) -> SessionRow:
    return replace(row, ticket_sent=True)
