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
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Callable, Protocol

from ev_common.bounded import keep_newest
from ev_common.mcsp import masked
from ev_common.protocol import Can, Fin, Message, Resume, Sst, Stop, Sup, Supr
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
from ev_common.words import CANNOT_REPORT, KEYS_REVOKED, OUT_OF_ORDER, STOPPED_BY_CENTRAL, WEATHER_ALERT, some_of

from . import audit as audited
from .audit import NO_AUDIT, Recorder
from .core.network import ChargingNetwork, StateChange
from .core.states import Event, IllegalTransition, State
from .core.supplies import SupplyBook
from .effects import Effects
from .persistence import WriteBehind
from .core.entities import AccountRow
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
TAG_END_WAIT = 10.0  # s an RFID END waits for the Engine's final figures (more than the end grace)
REMEMBERED = 100_000  # drivers and tags remembered for when the database is down
FINISHED_KEPT = 20_000  # closed and stored sessions remembered, for END answers (more than the book keeps)
# a supply's figures are logged (ev_central.live) at each telemetry record while at most this many
# supplies run, else at every LIVE_LOG_EVERY-th record (a thousand supplies: a line each 10 s, not 1,000 a second)
LIVE_LOG_ALL_UP_TO = 20
LIVE_LOG_EVERY = 10
LOUD_CHANGES = 8  # changes that come together up to this many are logged one by one


class CPGateway(Protocol):
    def ask(self, cp_id: str, question: Sup, timeout: float) -> Supr: ...

    def command(self, cp_id: str, message: Message) -> bool: ...


class Notifier(Protocol):
    def to_driver(self, driver_id: str, record: Record, on_delivery: Callable[[bool], None] | None = None) -> None: ...

    def cp_status(self, record: CPStatus) -> None: ...


@dataclass(frozen=True)
class Charger:
    """Who charges: a driver of the app (``driver_id``) or an RFID tag (``tag_uid``, no driver
    id); and the account the energy is booked to (None: to no account)."""

    driver_id: str = ""
    tag_uid: str | None = None
    account_id: str | None = None

    @property
    def on_cp(self) -> str:
        """The id ``SUP`` carries to the CP (docs/protocol.md): the driver, or the tag's account."""
        return self.driver_id or self.account_id or "-"

    def __str__(self) -> str:
        return who_charges(self.driver_id, self.tag_uid, self.account_id)


def who_charges(driver_id: str, tag_uid: str | None, account_id: str | None) -> str:
    """``driver D001`` or ``tag ...E73A of account FLAT3B``."""
    if tag_uid:
        return f"tag {masked(tag_uid)}" + (f" of account {account_id}" if account_id else "")
    return f"driver {driver_id}"


class Why(Enum):
    """Why a supply was not authorised (an MCSP answer's code follows from it: docs/mcsp.md)."""

    NOT_REGISTERED = "not registered"  # no such driver, no such tag
    DISABLED = "disabled"  # the tag or the account may not charge
    UNKNOWN = "unknown"  # no such CP, or no such session at that CP
    NOT_AVAILABLE = "not available"  # the CP is not ACTIVADO, refused, or the charger is busy
    UNREACHABLE = "unreachable"  # the CP did not answer
    CANNOT_CHECK = "cannot check"  # the database is down and the answer is not remembered
    NOT_YOURS = "not yours"  # a key that is not the session's
    EXPIRED = "expired"  # a request older than its time to live


@dataclass(frozen=True)
class Refusal:
    why: Why
    reason: str


class DriverDirectory:
    """Is a driver registered, and which account pays for it? Asks the database; remembers the
    answers for when it is down."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: OrderedDict[str, AccountRow | None] = OrderedDict()
        self._lock = threading.Lock()

    def is_registered(self, driver_id: str) -> bool | None:
        """True/False, or None when the database cannot say and the driver is not remembered."""
        registered, _ = self.lookup(driver_id)
        return registered

    def lookup(self, driver_id: str) -> tuple[bool | None, AccountRow | None]:
        """(registered, the driver's account or None); registered is None when the database
        cannot say and the driver is not remembered."""
        try:
            registered = self.store.driver_exists(driver_id)
            account = self.store.account_of_driver(driver_id) if registered else None
        except StoreError as exc:
            with self._lock:
                if driver_id in self._known:
                    return True, self._known[driver_id]
            log.warning("cannot check driver %s: %s", driver_id, exc)
            return None, None
        with self._lock:
            if registered:
                keep_newest(self._known, driver_id, account, REMEMBERED)
            else:
                self._known.pop(driver_id, None)
        return registered, account


class TagDirectory:
    """Which account does a tag belong to, and may it charge? Asks the database; remembers the
    answers for when it is down."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: OrderedDict[str, tuple[bool, AccountRow]] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, tag_uid: str) -> tuple[bool, AccountRow] | Refusal:
        """(the tag is active, its account) or a refusal: not registered, or cannot check."""
        try:
            found = self.store.find_tag(tag_uid)
        except StoreError as exc:
            with self._lock:
                remembered = self._known.get(tag_uid)
            if remembered is not None:
                return remembered
            log.warning("cannot check tag %s: %s", masked(tag_uid), exc)
            return Refusal(Why.CANNOT_CHECK, "Central cannot check tags now (database unreachable); try again later")
        with self._lock:
            if found is None:
                self._known.pop(tag_uid, None)
            else:
                keep_newest(self._known, tag_uid, (found[0].active, found[1]), REMEMBERED)
        if found is None:
            return Refusal(Why.NOT_REGISTERED, "Key is not registered")
        return found[0].active, found[1]


@dataclass(frozen=True)
class Pending:
    """A request being decided: who asks, for which CP, since when, and how it came."""

    at: datetime
    who: Charger
    cp_id: str
    via: str  # "Kafka" (the driver's app or the CP's menu) or "MCSP" (an RFID tag)


class SupplyService:
    def __init__(self, network: ChargingNetwork, book: SupplyBook, cps: CPGateway, drivers: DriverDirectory,
                 notifier: Notifier, sessions: WriteBehind[SessionRow], store: Store, *,
                 cp_rows: WriteBehind[CPRow] | None = None, effects: Effects | None = None,
                 observe: Callable[[StateChange], None] | None = None,
                 request_ttl: float = DEFAULT_REQUEST_TTL, cp_answer_timeout: float = CP_ANSWER_TIMEOUT,
                 utcnow: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 clock: Callable[[], float] = time.monotonic, say: Callable[[str], None] | None = None,
                 tags: TagDirectory | None = None, tag_end_wait: float = TAG_END_WAIT,
                 audit: Recorder = NO_AUDIT) -> None:
        self.network = network
        self.book = book
        self.cps = cps
        self.drivers = drivers
        self.tags = tags or TagDirectory(store)
        self.tag_end_wait = tag_end_wait
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
        self._pending: dict[str, Pending] = {}  # "driver D1" / "tag ..." -> their request being decided
        self._cancelled: OrderedDict[str, None] = OrderedDict()  # sessions cancelled at their CP
        self._held: dict[str, float] = {}  # cp_id -> when to free a CP whose Engine ended a supply for a fault
        self._lock = threading.Lock()
        self._finished: OrderedDict[str, None] = OrderedDict()  # sessions closed and stored, the newest last
        self._finishing = threading.Condition()
        self.audit = audit  # supplies and CP changes are audited (ev_central/audit.py)
        self.audit_registrations = True  # cp.register for each REG (secure mode audits "auth" instead)
        self._peers: dict[str, str] = {}  # cp_id -> its Monitor's address, for the audit (one per CP)
        # Listeners (the API's live events, ev_central/api): each CP change once its effects are done
        # (effects thread), each telemetry record once applied (its consumer's thread), each supply
        # opened (once its CP said yes: after the CP's change to SUMINISTRANDO). Keep them cheap.
        self.on_cp_change: Callable[[StateChange, SessionRow | None], None] | None = None
        self.on_progress: Callable[[SessionRow, int], None] | None = None
        self.on_supply_open: Callable[[SessionRow], None] | None = None

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
        outcome = self._deciding(Charger(r.driver_id), r.cp_id, "Kafka", lambda: self._decide(r), at=r.ts)
        if isinstance(outcome, Refusal):
            self._deny(r, outcome.reason)

    def _decide(self, r: SupplyRequest) -> SessionRow | Refusal:
        registered, account = self.drivers.lookup(r.driver_id)
        if registered is None:
            return Refusal(Why.CANNOT_CHECK, "Central cannot check drivers now (database unreachable); "
                                             "try again later")
        if not registered:
            return Refusal(Why.NOT_REGISTERED, f"driver {r.driver_id} is not registered")
        if account is not None and not account.active:
            return Refusal(Why.DISABLED, f"account {account.account_id} of driver {r.driver_id} is disabled")
        who = Charger(r.driver_id, account_id=account.account_id if account else None)

        def authorised(row: SessionRow) -> None:
            self._notify(r.driver_id, RequestAuthorised(r.request_id, r.driver_id, r.cp_id, row.session_id,
                                                        row.price_eur_kwh))

        return self._authorise(who, r.cp_id, r.request_id, authorised)

    def _deny(self, r: SupplyRequest, reason: str) -> None:
        self._notify(r.driver_id, RequestDenied(r.request_id, r.driver_id, r.cp_id, reason))
        self._say(f"denied: driver {r.driver_id} at {r.cp_id}: {reason}")
        self.audit.record(audited.SUPPLY_DENY, f"driver {r.driver_id}", f"cp {r.cp_id}, request {r.request_id}: "
                                                                       f"{reason}", audited.REFUSED)

    def _deciding(self, who: Charger, cp_id: str, via: str, decide: Callable[[], SessionRow | Refusal], *,
                  at: datetime | None = None) -> SessionRow | Refusal:
        """Run ``decide`` unless a request of the same driver or tag is being decided (then that
        is the refusal); meanwhile the request is among the ongoing ones."""
        key = f"tag {who.tag_uid}" if who.tag_uid else f"driver {who.driver_id}"
        with self._lock:
            if key in self._pending:
                return Refusal(Why.NOT_AVAILABLE, f"{who} already has a request being decided")
            self._pending[key] = Pending(at or self._utcnow(), who, cp_id, via)
        try:
            return decide()
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def _authorise(self, who: Charger, cp_id: str, request_id: str,
                   authorised: Callable[[SessionRow], None], *, source_ip: str = "") -> SessionRow | Refusal:
        """The checks every request shares, then the CP asked: the open session, or why not.
        ``authorised`` runs once the session is open, before anything else is said of it."""
        cp = self.network.get(cp_id)
        if cp is None:
            return Refusal(Why.UNKNOWN, f"unknown CP {cp_id}")
        busy = self.book.active_for_tag(who.tag_uid) if who.tag_uid else self.book.active_for_driver(who.driver_id)
        if busy is not None:
            return Refusal(Why.NOT_AVAILABLE, f"{who} already has a supply in course at {busy.cp_id}")
        try:  # reserve the CP: only an ACTIVADO CP can start a supply, atomically
            self._network_event(cp_id, Event.SUPPLY_STARTED, f"supply for {who} being authorised")
        except IllegalTransition as exc:  # its state now, not as read above
            reason = OUT_OF_ORDER if exc.state is State.PARADO else exc.state.value
            if exc.state is State.PARADO and self._weather_only(cp_id):
                reason = f"{OUT_OF_ORDER}: {WEATHER_ALERT}"
            why = Why.UNREACHABLE if exc.state is State.DESCONECTADO else Why.NOT_AVAILABLE
            return Refusal(why, f"{cp_id} is not available ({reason})")
        session_id = self.book.new_id()
        price = cp.price_eur_kwh
        refusal = None
        try:
            answer = self.cps.ask(cp_id, Sup(cp_id, session_id, who.on_cp, price), self.cp_answer_timeout)
            if not answer.ok:
                refusal = Refusal(Why.NOT_AVAILABLE, f"{cp_id} refused: {answer.reason or 'no reason given'}")
        except Exception as exc:  # CPUnreachable, or the link failing under us
            refusal = Refusal(Why.UNREACHABLE, f"{cp_id} did not confirm: {exc}")
            # the CP may take it late: it must never supply a session Central does not know
            self._cancel_at_cp(cp_id, session_id, "Central gave up waiting for the CP's answer")
        if refusal is not None:
            self._release(cp_id, "supply not authorised")
            return refusal
        row = self.book.open(session_id, request_id, cp_id, who.driver_id, price, tag_uid=who.tag_uid,
                             account_id=who.account_id)
        self.sessions.put(row)
        authorised(row)
        if self.on_supply_open is not None:
            self.on_supply_open(row)
        self._say(f"authorised: {who} at {cp_id}, session {session_id[:8]}, {price} EUR/kWh")
        self.audit.record(audited.SUPPLY_START, who_charges(who.driver_id, who.tag_uid, None),
                          f"cp {cp_id}, session {session_id}, account {who.account_id or '-'}, {price} EUR/kWh, "
                          f"via {'MCSP' if who.tag_uid else 'Kafka'}", audited.OK, source_ip)
        self._publish_status(cp_id)
        # A Stop, fault or lost Monitor while the CP was being asked found no session to interrupt;
        # the session exists now, so any later change interrupts it: catch the one that came before.
        now = self.network.get(cp_id)
        if now is not None and now.state != State.SUMINISTRANDO.value:
            reason = _interruption_for(State(now.state), "CP changed while being asked",
                                       weather=self._weather_only(cp_id))
            if self.book.interrupt(cp_id, reason) is not None:
                if who.driver_id:
                    self._notify(who.driver_id, SupplyAlert(session_id, who.driver_id, cp_id, now.state, reason))
                self._say(f"supply {session_id[:8]} at {cp_id} interrupted: {reason}")
        return row

    # -- RFID tags (MCSP, docs/mcsp.md) ----------------------------------------------------------

    def start_by_tag(self, cp_id: str, tag_uid: str, *, source_ip: str = "") -> SessionRow | Refusal:
        """A tag presented at ``cp_id`` (``START``, from the station at ``source_ip``): its session
        once the CP accepted it, or why not."""
        self._say(f"MCSP START at {cp_id} with tag {masked(tag_uid)}")
        outcome = self._deciding(Charger(tag_uid=tag_uid), cp_id, "MCSP",
                                 lambda: self._decide_tag(cp_id, tag_uid, source_ip))
        if isinstance(outcome, Refusal):
            self._say(f"denied: tag {masked(tag_uid)} at {cp_id}: {outcome.reason}")
            self.audit.record(audited.SUPPLY_DENY, f"tag {masked(tag_uid)}", f"cp {cp_id} (MCSP): {outcome.reason}",
                              audited.REFUSED, source_ip)
        return outcome

    def _decide_tag(self, cp_id: str, tag_uid: str, source_ip: str = "") -> SessionRow | Refusal:
        found = self.tags.lookup(tag_uid)
        if isinstance(found, Refusal):
            return found
        active, account = found
        if not active:
            return Refusal(Why.DISABLED, "Key is disabled")
        if not account.active:
            return Refusal(Why.DISABLED, f"Account {account.account_id} is disabled")
        who = Charger(tag_uid=tag_uid, account_id=account.account_id)
        return self._authorise(who, cp_id, uuid.uuid4().hex, lambda row: None, source_ip=source_ip)

    def end_by_tag(self, cp_id: str, session_id: str, tag_uid: str) -> SessionRow | Refusal:
        """The tag that opened ``session_id`` at ``cp_id`` ends it (``END``): the closed session,
        with the Engine's final figures, or why not. Ending a closed session gives it again."""
        self._say(f"MCSP END at {cp_id} of session {session_id[:8]} with tag {masked(tag_uid)}")
        outcome = self._end_by_tag(cp_id, session_id, tag_uid)
        if isinstance(outcome, Refusal):
            self._say(f"END of session {session_id[:8]} at {cp_id} not done: {outcome.reason}")
        return outcome

    def _end_by_tag(self, cp_id: str, session_id: str, tag_uid: str) -> SessionRow | Refusal:
        row = self._session(session_id)
        if isinstance(row, Refusal):
            return row
        if row is None or row.cp_id != cp_id or row.tag_uid is None:
            return Refusal(Why.UNKNOWN, f"No session {session_id} of a tag at station {cp_id}")
        if row.tag_uid != tag_uid:
            return Refusal(Why.NOT_YOURS, f"Key is not the key of session {session_id}")
        if row.ended_at is None and not self.cps.command(cp_id, Fin(cp_id, session_id)):
            return Refusal(Why.UNREACHABLE, f"Central cannot reach {cp_id} (its Monitor is not connected); "
                                            f"the session goes on")
        finished = self._wait_finished(session_id, self.tag_end_wait)
        if finished is None:
            return Refusal(Why.UNREACHABLE, f"{cp_id} did not report the end within {self.tag_end_wait:g} s; "
                                            f"END again for the figures")
        return finished

    def _session(self, session_id: str) -> SessionRow | Refusal | None:
        """A session open, closed recently, or stored; None if there is none."""
        row = next((r for r in self.book.open_sessions() if r.session_id == session_id), None)
        row = row or self.book.closed(session_id)
        if row is not None:
            return row
        try:
            row = self.store.get_session(session_id)
        except StoreError as exc:
            log.warning("cannot look up session %s: %s", session_id[:8], exc)
            return Refusal(Why.CANNOT_CHECK, "Central cannot look up sessions now (database unreachable); "
                                             "try again later")
        if row is not None and row.ended_at is not None:
            self._mark_finished(row.session_id)  # stored closed: as final as it gets
        return row

    def _wait_finished(self, session_id: str, timeout: float) -> SessionRow | None:
        """Wait until ``session_id`` is closed *and* its row stored (or with the writer, during an
        outage): the figures an END answers with are booked. The closed row, or None."""
        deadline = time.monotonic() + timeout  # a real wait, whatever clock the rules run on
        with self._finishing:
            while session_id not in self._finished:
                left = deadline - time.monotonic()
                if left <= 0:
                    return self.book.closed(session_id)  # closed but not stored yet (a slow store), or open
                self._finishing.wait(min(left, 0.25))
        return self.book.closed(session_id) or self._stored(session_id)

    def _stored(self, session_id: str) -> SessionRow | None:
        try:
            return self.store.get_session(session_id)
        except StoreError:
            return None

    def _mark_finished(self, session_id: str) -> None:
        with self._finishing:
            keep_newest(self._finished, session_id, None, FINISHED_KEPT)
            self._finishing.notify_all()

    def pending_requests(self) -> list[Pending]:
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
        if row.driver_id:
            self._notify(row.driver_id, SupplyProgress(row.session_id, row.driver_id, row.cp_id, t.seq,
                                                       row.kwh, row.amount_eur, t.power_kw))
        if t.seq % LIVE_LOG_EVERY == 1 or self.book.open_count <= LIVE_LOG_ALL_UP_TO:
            live_log.info("%s SUMINISTRANDO to %s: %.3f kWh, %.2f EUR (%s kW)", row.cp_id, _who(row),
                          row.kwh, row.amount_eur, t.power_kw)
        if self.on_progress is not None:
            self.on_progress(row, t.seq)

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
        self._audit_end(row, audited.OK if row.status == "COMPLETED" else audited.INTERRUPTED)  # before END answers
        self._mark_finished(row.session_id)
        if engine_fault:
            with self._lock:
                self._held[row.cp_id] = self._clock() + FAULT_REPORT_WAIT
        else:
            self._release(row.cp_id, f"supply {row.session_id[:8]} ended: {row.end_reason}")
        self.send_ticket(row)
        self._say(f"ticket {row.session_id[:8]}: {_who(row)} at {row.cp_id}, {row.kwh:.3f} kWh, "
                  f"{row.amount_eur:.2f} EUR, {row.status} ({row.end_reason})")

    def _correct(self, row: SessionRow, on_durable: Callable[[], None] | None = None) -> None:
        """The Engine's final figures came after the ticket: the row takes them, the driver gets a
        corrected ticket (once: the row is final now)."""
        self._store_now(row, on_durable)
        self._audit_end(row, audited.CORRECTED)
        self.send_ticket(row)
        self._say(f"corrected ticket {row.session_id[:8]}: {_who(row)} at {row.cp_id}, the Engine "
                  f"delivered {row.kwh:.3f} kWh, {row.amount_eur:.2f} EUR")

    def _audit_end(self, row: SessionRow, outcome: str) -> None:
        self.audit.record(audited.SUPPLY_END, who_charges(row.driver_id, row.tag_uid, None),
                          f"cp {row.cp_id}, session {row.session_id}, {row.kwh} kWh, {row.amount_eur} EUR, "
                          f"{row.status}, reason {row.end_reason or '-'}", outcome)

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
        """The ticket to its driver over Kafka. A tag's session has no driver to tell: its END
        answer carries the figures, and the account's statement lists it (docs/mcsp.md)."""
        if not row.driver_id:
            if not row.ticket_sent:
                self.sessions.put(_with_ticket_sent(row))
            return
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
        if change is not None:
            self.changed_many([change])

    def changed_many(self, changes: list[StateChange]) -> None:
        """``changed`` for many changes at once (a storm's batch of registrations): what they
        cause outside is one task of the effects thread, which logs up to ``LOUD_CHANGES`` of them
        one by one, and more as one line per kind of change."""
        interrupted = [self._interrupt_if_due(change) for change in changes]
        if len(changes) <= LOUD_CHANGES:
            for change, stopped in zip(changes, interrupted):
                self._effects.submit(self._apply_change, change, stopped)
        else:
            self._effects.submit(self._apply_changes, changes, interrupted)
        for change in changes:
            if (not change.interrupts_supply and change.event is Event.REGISTERED and change.new is State.ACTIVADO
                    and self.book.running_for_cp(change.cp_id) is not None):
                # Central restarted while this CP supplied: the supply goes on, so does SUMINISTRANDO
                self._network_event(change.cp_id, Event.SUPPLY_STARTED,
                                    "supply in course since before Central restarted")

    def _interrupt_if_due(self, change: StateChange) -> SessionRow | None:
        """The CP's supply, interrupted now if the change ends it (see ev_common.words)."""
        if change.interrupts_supply and CANNOT_REPORT not in change.cause:
            return self.book.interrupt(change.cp_id, _interruption(change))
        return None

    def _apply_changes(self, changes: list[StateChange], interrupted: list[SessionRow | None]) -> None:
        """(effects thread) ``_apply_change`` for each, with one log line per kind of change."""
        kinds: dict[str, list[str]] = {}
        for change, stopped in zip(changes, interrupted):
            self._apply_change(change, stopped, loud=False)
            if change.old is None or change.state_changed:
                moved = f"{'new' if change.old is None else change.old} -> {change.new}"
                kinds.setdefault(moved, []).append(change.cp_id)
        for moved, cp_ids in kinds.items():
            log.info("%d CP(s) %s: %s", len(cp_ids), moved, some_of(cp_ids))

    def _apply_change(self, change: StateChange, interrupted: SessionRow | None, loud: bool = True) -> None:
        """(effects thread) What a CP change causes outside Central's memory."""
        if self._observe is not None:
            self._observe(change)
        if change.row is not None and self.cp_rows is not None:
            self.cp_rows.put(change.row)
        say = log.info if loud else log.debug
        if change.old is None:
            say("%s: new CP signed up -> %s", change.cp_id, change.new)
        elif change.state_changed:
            say("%s: %s -> %s (%s)", change.cp_id, change.old, change.new, change.cause)
        if interrupted is not None:
            reason = _interruption(change)
            if interrupted.driver_id:
                self.notifier.to_driver(interrupted.driver_id, SupplyAlert(
                    interrupted.session_id, interrupted.driver_id, interrupted.cp_id, change.new.value, reason))
            self._say(f"supply {interrupted.session_id[:8]} at {interrupted.cp_id} interrupted: {reason}")
        if change.state_changed or change.old is None:
            self._publish_status_now(change.cp_id)
        self._audit_change(change)
        if self.on_cp_change is not None:
            self.on_cp_change(change, interrupted)

    def _audit_change(self, change: StateChange) -> None:
        """(effects thread) The audit entry of a CP change, if it is one the audit keeps."""
        event, moved = change.event, f"{change.old.value if change.old else 'new'} -> {change.new.value}"
        actor, action, source = change.cp_id, None, self._peer_of(change.cp_id, event is Event.REGISTERED)
        if event is Event.REGISTERED:
            action = audited.CP_REGISTER if self.audit_registrations else None
        elif event is Event.ENGINE_FAULT and change.state_changed and change.new is State.AVERIADO:
            action = audited.CP_FAULT
        elif event is Event.ENGINE_OK and change.old is State.AVERIADO and change.state_changed:
            action = audited.CP_RECOVER
        elif event is Event.MONITOR_LOST and change.state_changed:
            action = audited.CP_DISCONNECT
        elif event in (Event.STOP, Event.RESUME):
            action, actor = (audited.CP_STOP if event is Event.STOP else audited.CP_RESUME), audited.OPERATOR
            moved, source = f"{change.cp_id} {moved}", ""  # typed at Central
        if action is not None:
            self.audit.record(action, actor, f"{moved}: {change.cause}", audited.OK, source)

    def _peer_of(self, cp_id: str, registered: bool) -> str:
        """The address of the CP's Monitor (for the audit): its session's, noted at each
        registration, so that it is known when the session is gone."""
        if self.audit is NO_AUDIT:
            return ""
        if registered:
            peer = getattr(getattr(self.network.owner(cp_id), "link", None), "peer", "")
            self._peers[cp_id] = audited.source_host(peer) if isinstance(peer, str) and peer else ""
        return self._peers.get(cp_id, "")

    def stop(self, cp_id: str) -> StateChange:
        change = self._network_event(cp_id, Event.STOP, "stopped by the operator")
        delivered = self.cps.command(cp_id, Stop(cp_id))
        self._say(f"Stop sent to {cp_id}" + ("" if delivered else " (its Monitor is not connected: applied at "
                                                                   "its next registration)"))
        return change

    def resume(self, cp_id: str) -> StateChange:
        """The operator's Resume clears the operator's stop only: a CP a weather alert holds stays
        PARADO (and its Engine stopped) until the alert clears (``change.weather``)."""
        change = self._network_event(cp_id, Event.RESUME, "resumed by the operator")
        if change.weather:
            self._say(f"{cp_id} resumed by the operator, but a {WEATHER_ALERT} holds it out of service "
                      f"until the alert clears")
            return change
        delivered = self.cps.command(cp_id, Resume(cp_id))
        self._say(f"Resume sent to {cp_id}" + ("" if delivered else " (its Monitor is not connected)"))
        return change

    def weather_stop(self, cp_id: str, cause: str) -> StateChange | None:
        """A weather alert holds ``cp_id`` out of service: PARADO (a running supply ends, its
        reason "weather alert"), and STOP to the CP. None for a CP Central does not know yet
        (held from the moment it signs up)."""
        change = self.network.weather_hold(cp_id, True, cause)
        if change is None:
            return None
        self.changed(change)
        delivered = self.cps.command(cp_id, Stop(cp_id))
        log.debug("%s: STOP for the weather %s", cp_id, "sent" if delivered else "at its next registration")
        return change

    def weather_clear(self, cp_id: str, cause: str) -> StateChange | None:
        """No weather alert holds ``cp_id`` any more: back in service (RESUME to the CP) unless
        the operator stopped it. None for a CP Central does not know."""
        change = self.network.weather_hold(cp_id, False, cause)
        if change is None:
            return None
        self.changed(change)
        if not change.stopped:
            self.cps.command(cp_id, Resume(cp_id))
        return change

    def _weather_only(self, cp_id: str) -> bool:
        """Out of service for the weather and not by the operator (the reason people are told)."""
        row = self.network.get(cp_id)
        return row is not None and not row.stopped and self.network.weather_held(cp_id)

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
                                         supply.driver_id or None if supply else None))


def _interruption(change: StateChange) -> str:
    if change.cause == KEYS_REVOKED:  # out of service for its keys, not for a lost link
        return KEYS_REVOKED
    if change.event is Event.WEATHER_STOP:
        return WEATHER_ALERT
    return _interruption_for(change.new, change.cause)


def _interruption_for(state: State, otherwise: str, *, weather: bool = False) -> str:
    if state is State.PARADO:
        return WEATHER_ALERT if weather else STOPPED_BY_CENTRAL
    if state is State.AVERIADO:
        return "CP fault"
    if state is State.DESCONECTADO:
        return "Monitor lost"
    return otherwise


def _who(row: SessionRow) -> str:
    return who_charges(row.driver_id, row.tag_uid, row.account_id)


def _with_ticket_sent(row: SessionRow) -> SessionRow:
    return replace(row, ticket_sent=True)
