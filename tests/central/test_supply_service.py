"""SupplyService with a real ChargingNetwork and SupplyBook on fake clocks, and small fakes for the
Monitor gateway, the Kafka notifier, the store and the sessions writer: no sockets, no broker, no DB."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ev_central.core.entities import AccountRow, TagRow
from ev_central.core.network import ChargingNetwork, StateChange
from ev_central.core.states import State
from ev_central.core.supplies import SupplyBook
from ev_central.persistence import WriteBehind
from ev_central.server import CPUnreachable
from ev_central.store.base import SessionRow, StoreError, StoreUnavailable
from ev_central.supply_service import CP_ANSWER_TIMEOUT, DriverDirectory, SupplyService
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

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
PRICE = Decimal("0.48")
END_GRACE = 5.0
STALE_AFTER = 90.0
WAIT = 2.0  # upper bound for the thread hand-offs of the concurrency test


# -- fakes ----------------------------------------------------------------------------------------


class Clock:
    """Monotonic seconds for the domain and the matching UTC time for timestamps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def utc(self) -> datetime:
        return T0 + timedelta(seconds=self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeGateway:
    """The Monitor side: ``answers[cp_id]`` is "OK", ("KO", reason) or an exception to raise."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.answers: dict[str, object] = {}
        self.asked: list[tuple[str, Sup, float]] = []
        self.commands: list[tuple[str, Message]] = []
        self.delivers = True
        self.during_ask: Callable[[str, Sup], None] | None = None

    def ask(self, cp_id: str, question: Sup, timeout: float) -> Supr:
        self.asked.append((cp_id, question, timeout))
        self.events.append(f"ask {cp_id}")
        if self.during_ask is not None:
            self.during_ask(cp_id, question)
        answer = self.answers.get(cp_id, "OK")
        if isinstance(answer, Exception):
            raise answer
        status, reason = ("OK", "") if answer == "OK" else answer
        return Supr(cp_id, question.session_id, status, reason)

    def command(self, cp_id: str, message: Message) -> bool:
        self.commands.append((cp_id, message))
        return self.delivers


class FakeNotifier:
    """Records what Central would publish; ``deliver`` plays the broker's delivery report."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.sent: list[tuple[str, Record]] = []
        self.statuses: list[CPStatus] = []
        self.callbacks: list[tuple[Record, Callable[[bool], None] | None]] = []
        self._lock = threading.Lock()

    def to_driver(self, driver_id: str, record: Record, on_delivery: Callable[[bool], None] | None = None) -> None:
        with self._lock:
            self.sent.append((driver_id, record))
            self.callbacks.append((record, on_delivery))
            self.events.append(f"to_driver {driver_id} {record.TYPE}")

    def cp_status(self, record: CPStatus) -> None:
        with self._lock:
            self.statuses.append(record)
            self.events.append(f"cp_status {record.cp_id} {record.state}")

    def to(self, driver_id: str) -> list[Record]:
        return [record for driver, record in self.sent if driver == driver_id]

    def tickets(self) -> list[Ticket]:
        return [record for _, record in self.sent if isinstance(record, Ticket)]

    def deliver(self, record: Record, ok: bool) -> None:
        (callback,) = [cb for sent, cb in self.callbacks if sent is record]
        assert callback is not None, f"{record.TYPE} was sent without a delivery callback"
        callback(ok)


class FakeStore:
    """In memory: registered drivers, saved sessions, unsent tickets; switchable failures."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.drivers = {"D1", "D2"}
        self.down = False  # driver_exists raises StoreUnavailable
        self.save_error: StoreError | None = None  # save_sessions raises it
        self.sessions: dict[str, SessionRow] = {}
        self.saved: list[list[SessionRow]] = []
        self.unsent: list[SessionRow] = []
        self.driver_checks = 0
        self.accounts: dict[str, AccountRow] = {}  # driver id -> its account
        self.tags: dict[str, tuple[TagRow, AccountRow]] = {}

    def driver_exists(self, driver_id: str) -> bool:
        self.driver_checks += 1
        if self.down:
            raise StoreUnavailable("cannot reach the database")
        return driver_id in self.drivers

    def account_of_driver(self, driver_id: str) -> AccountRow | None:
        if self.down:
            raise StoreUnavailable("cannot reach the database")
        return self.accounts.get(driver_id)

    def find_tag(self, tag_uid: str) -> tuple[TagRow, AccountRow] | None:
        if self.down:
            raise StoreUnavailable("cannot reach the database")
        return self.tags.get(tag_uid)

    def get_session(self, session_id: str) -> SessionRow | None:
        if self.down:
            raise StoreUnavailable("cannot reach the database")
        return self.sessions.get(session_id)

    def save_sessions(self, rows) -> None:
        rows = list(rows)
        if self.save_error is not None:
            raise self.save_error
        self.saved.append(rows)
        for row in rows:
            self.sessions[row.session_id] = row
            self.events.append(f"save_sessions {row.session_id} {row.status}")

    def load_unsent_tickets(self) -> list[SessionRow]:
        return list(self.unsent)


class RecordingWriter:
    """Stands for ``WriteBehind[SessionRow]``: keeps every row put, in order."""

    def __init__(self) -> None:
        self.rows: list[SessionRow] = []
        self.waiting: list = []  # on_durable callbacks not called yet

    def put(self, row: SessionRow, on_durable=None) -> None:
        self.rows.append(row)
        if on_durable is not None:
            self.waiting.append(on_durable)

    def make_durable(self) -> int:
        """Play the writer saving everything put so far; returns how many callbacks ran."""
        waiting, self.waiting = self.waiting, []
        for callback in waiting:
            callback()
        return len(waiting)

    def last(self, session_id: str) -> SessionRow:
        return [row for row in self.rows if row.session_id == session_id][-1]


class Central:
    """The service wired like ev_central.app.Central, around the fakes above."""

    def __init__(self, writer=None) -> None:
        self.clock = Clock()
        self.events: list[str] = []
        self.network = ChargingNetwork(clock=self.clock, utcnow=self.clock.utc)
        ids = (f"s{n}" for n in itertools.count(1))
        self.book = SupplyBook(clock=self.clock, utcnow=self.clock.utc, new_id=lambda: next(ids),
                               end_grace=END_GRACE, stale_after=STALE_AFTER)
        self.gateway = FakeGateway(self.events)
        self.notifier = FakeNotifier(self.events)
        self.store = FakeStore(self.events)
        self.writer = writer if writer is not None else RecordingWriter()
        self.changes: list[StateChange] = []
        self.said: list[str] = []
        self.service = SupplyService(self.network, self.book, self.gateway, DriverDirectory(self.store),
                                     self.notifier, self.writer, self.store, observe=self.changes.append,
                                     utcnow=self.clock.utc, clock=self.clock, say=self.said.append)
        self._requests = itertools.count(1)

    def on_change(self, change: StateChange | None) -> None:
        """What the Monitor side does with a CP change: hand it to the service (which records it
        in ``changes``; its effects run at once, on this thread, in these tests)."""
        self.service.changed(change)

    def add_cp(self, cp_id: str, location: str = "Calle Mayor 1", price: Decimal = PRICE) -> None:
        change, _ = self.network.register(cp_id, location, price, f"mon-{cp_id}")
        self.on_change(change)

    def state(self, cp_id: str) -> State:
        return State(self.network.get(cp_id).state)

    def request(self, driver_id: str, cp_id: str, *, age: float = 0.0, request_id: str | None = None) -> None:
        rid = request_id or f"r{next(self._requests)}"
        self.service.on_request(SupplyRequest(rid, driver_id, cp_id, ts=self.clock.utc() - timedelta(seconds=age)))

    def authorise(self, driver_id: str = "D1", cp_id: str = "CP1") -> RequestAuthorised:
        self.request(driver_id, cp_id)
        last = self.notifier.to(driver_id)[-1]
        assert isinstance(last, RequestAuthorised), last
        return last

    def telemetry(self, session_id: str, seq: int, kwh: str, *, cp_id: str = "CP1", driver_id: str = "D1",
                  power: str = "7.2") -> None:
        self.service.on_telemetry(Telemetry(cp_id, session_id, driver_id, seq, Decimal(kwh), Decimal(0),
                                            Decimal(power)))

    def end(self, session_id: str, seq: int, kwh: str, reason: str, *, cp_id: str = "CP1",
            driver_id: str = "D1") -> None:
        self.service.on_supply_end(SupplyEnd(cp_id, session_id, driver_id, seq, Decimal(kwh), Decimal(0), reason))


@pytest.fixture
def central() -> Central:
    c = Central()
    c.add_cp("CP1")
    c.add_cp("CP2", "Plaza 2", Decimal("0.60"))
    return c


def only_denial(central: Central, driver_id: str) -> str:
    """The driver heard exactly received -> denied; returns the reason."""
    records = central.notifier.to(driver_id)
    assert [type(r) for r in records] == [RequestReceived, RequestDenied], records
    assert records[0].request_id == records[1].request_id
    return records[1].reason


def assert_nothing_reserved(central: Central, *cp_ids: str) -> None:
    assert central.book.open_sessions() == []
    assert central.writer.rows == []
    for cp_id in cp_ids:
        assert central.state(cp_id) is State.ACTIVADO


# -- 1. authorisation --------------------------------------------------------------------------------


def test_request_is_received_then_authorised_with_session_and_frozen_price(central):
    central.request("D1", "CP1", request_id="req-1")

    received, authorised = central.notifier.to("D1")
    assert received == RequestReceived("req-1", "D1", "CP1", ts=received.ts)
    assert authorised == RequestAuthorised("req-1", "D1", "CP1", "s1", PRICE, ts=authorised.ts)
    assert central.gateway.asked == [("CP1", Sup("CP1", "s1", "D1", PRICE), CP_ANSWER_TIMEOUT)]
    assert central.state("CP1") is State.SUMINISTRANDO
    supply_started = central.changes[-1]
    assert (supply_started.old, supply_started.new, supply_started.interrupts_supply) == (
        State.ACTIVADO, State.SUMINISTRANDO, False)

    row = central.book.active_for_cp("CP1")
    assert (row.session_id, row.request_id, row.cp_id, row.driver_id, row.price_eur_kwh, row.status,
            row.started_at, row.ended_at, row.kwh, row.last_seq, row.ticket_sent) == (
        "s1", "req-1", "CP1", "D1", PRICE, "AUTHORISED", T0, None, 0, 0, False)
    assert central.book.active_for_driver("D1") == row
    assert central.writer.rows == [row]
    assert central.notifier.statuses[-1] == CPStatus("CP1", "SUMINISTRANDO", "Calle Mayor 1", PRICE, "D1",
                                                     ts=central.notifier.statuses[-1].ts)
    assert any("authorised: driver D1 at CP1" in line for line in central.said)


def test_price_is_the_cps_at_authorisation_and_each_cp_keeps_its_own(central):
    central.authorise("D1", "CP1")
    second = central.authorise("D2", "CP2")
    assert second.price_eur_kwh == Decimal("0.60")
    assert central.gateway.asked[-1][1] == Sup("CP2", "s2", "D2", Decimal("0.60"))
    assert {row.cp_id: row.price_eur_kwh for row in central.book.open_sessions()} == {
        "CP1": PRICE, "CP2": Decimal("0.60")}


# -- 2. denials ---------------------------------------------------------------------------------------


def test_unregistered_driver_is_denied_and_the_cp_is_not_asked(central):
    central.request("D9", "CP1")
    assert only_denial(central, "D9") == "driver D9 is not registered"
    assert central.gateway.asked == []
    assert_nothing_reserved(central, "CP1")


def test_unknown_cp_is_denied(central):
    central.request("D1", "CP9")
    assert only_denial(central, "D1") == "unknown CP CP9"
    assert central.gateway.asked == []
    assert central.book.open_sessions() == []


def test_stopped_cp_is_denied_as_out_of_order(central):
    central.service.stop("CP1")
    central.request("D1", "CP1")
    assert only_denial(central, "D1") == "CP1 is not available (Out of Order)"
    assert central.gateway.asked == []
    assert central.state("CP1") is State.PARADO


def test_faulty_cp_is_denied(central):
    central.on_change(central.network.engine_fault("CP1", "mon-CP1", "engine KO"))
    central.request("D1", "CP1")
    assert only_denial(central, "D1") == "CP1 is not available (AVERIADO)"
    assert central.gateway.asked == []
    assert central.state("CP1") is State.AVERIADO


def test_disconnected_cp_is_denied(central):
    central.on_change(central.network.session_ended("CP1", "mon-CP1", "socket closed"))
    central.request("D1", "CP1")
    assert only_denial(central, "D1") == "CP1 is not available (DESCONECTADO)"
    assert central.gateway.asked == []
    assert central.state("CP1") is State.DESCONECTADO


def test_cp_supplying_another_driver_is_denied(central):
    central.authorise("D1", "CP1")
    central.request("D2", "CP1")
    assert only_denial(central, "D2") == "CP1 is not available (SUMINISTRANDO)"
    assert len(central.gateway.asked) == 1
    assert central.book.active_for_cp("CP1").driver_id == "D1"
    assert central.state("CP1") is State.SUMINISTRANDO


def test_driver_with_a_supply_in_course_is_denied_elsewhere(central):
    central.authorise("D1", "CP1")
    central.request("D1", "CP2")
    received, denied = central.notifier.to("D1")[2:]
    assert isinstance(received, RequestReceived) and isinstance(denied, RequestDenied)
    assert denied.reason == "driver D1 already has a supply in course at CP1"
    assert central.state("CP2") is State.ACTIVADO
    assert [cp for cp, _, _ in central.gateway.asked] == ["CP1"]


@pytest.mark.parametrize("reason, text", [("not plugged in", "CP1 refused: not plugged in"),
                                          ("", "CP1 refused: no reason given")])
def test_cp_refusal_denies_and_frees_the_cp(central, reason, text):
    central.gateway.answers["CP1"] = ("KO", reason)
    central.request("D1", "CP1")
    assert only_denial(central, "D1") == text
    assert len(central.gateway.asked) == 1
    assert_nothing_reserved(central, "CP1")
    assert [(c.old, c.new) for c in central.changes[-2:]] == [(State.ACTIVADO, State.SUMINISTRANDO),
                                                            (State.SUMINISTRANDO, State.ACTIVADO)]
    assert (central.notifier.statuses[-1].state, central.notifier.statuses[-1].driver_id) == ("ACTIVADO", None)


def test_unreachable_cp_denies_and_frees_the_cp(central):
    central.gateway.answers["CP1"] = CPUnreachable("CP1 did not answer within 3 s")
    central.request("D1", "CP1")
    assert only_denial(central, "D1") == "CP1 did not confirm: CP1 did not answer within 3 s"
    assert_nothing_reserved(central, "CP1")
    assert (central.notifier.statuses[-1].state, central.notifier.statuses[-1].driver_id) == ("ACTIVADO", None)
    # and the CP takes the next request
    central.gateway.answers.clear()
    assert central.authorise("D1", "CP1").session_id == "s2"


def test_expired_request_is_denied_without_asking_anyone(central):
    central.request("D1", "CP1", age=31)
    assert only_denial(central, "D1") == "request expired (31 s old, the limit is 30 s)"
    assert central.store.driver_checks == 0
    assert central.gateway.asked == []
    assert_nothing_reserved(central, "CP1")


def test_request_exactly_at_the_ttl_is_still_served(central):
    central.request("D1", "CP1", age=30)
    assert isinstance(central.notifier.to("D1")[-1], RequestAuthorised)


def test_database_down_and_driver_unknown_is_denied(central):
    central.store.down = True
    central.request("D1", "CP1")
    assert only_denial(central, "D1") == (
        "Central cannot check drivers now (database unreachable); try again later")
    assert central.gateway.asked == []
    assert_nothing_reserved(central, "CP1")


def test_database_down_but_driver_seen_before_is_authorised(central):
    first = central.authorise("D1", "CP1")
    central.end(first.session_id, 1, "0.1", "unplugged")
    central.store.down = True
    central.request("D1", "CP1", request_id="again")
    again = central.notifier.to("D1")[-1]
    assert isinstance(again, RequestAuthorised) and again.request_id == "again"
    assert central.state("CP1") is State.SUMINISTRANDO


def test_driver_found_unregistered_is_forgotten_for_outages(central):
    first = central.authorise("D1", "CP1")
    central.end(first.session_id, 1, "0.1", "unplugged")
    central.store.drivers.discard("D1")
    central.request("D1", "CP1")
    assert central.notifier.to("D1")[-1].reason == "driver D1 is not registered"
    central.store.down = True
    central.request("D1", "CP1")
    assert central.notifier.to("D1")[-1].reason.startswith("Central cannot check drivers now")


# -- 3. one driver, two requests at once ----------------------------------------------------------------


def test_a_driver_asking_twice_at_once_gets_one_supply(central):
    in_ask, second_decided = threading.Event(), threading.Event()

    def hold_first(cp_id, question):
        if cp_id == "CP1":
            in_ask.set()
            assert second_decided.wait(WAIT), "the second request was not decided"

    central.gateway.during_ask = hold_first
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(central.request, "D1", "CP1", request_id="first")
        assert in_ask.wait(WAIT)
        second = pool.submit(central.request, "D1", "CP2", request_id="second")
        second.add_done_callback(lambda _: second_decided.set())
        second.result(WAIT)
        first.result(WAIT)

    summary = [(type(r).__name__, r.request_id) for r in central.notifier.to("D1")]
    assert summary == [("RequestReceived", "first"), ("RequestReceived", "second"),
                       ("RequestDenied", "second"), ("RequestAuthorised", "first")]
    assert central.notifier.to("D1")[2].reason == "driver D1 already has a request being decided"
    assert [cp for cp, _, _ in central.gateway.asked] == ["CP1"]
    assert (central.state("CP1"), central.state("CP2")) == (State.SUMINISTRANDO, State.ACTIVADO)
    # the pending mark is gone: a third request meets the supply in course
    central.request("D1", "CP2")
    assert central.notifier.to("D1")[-1].reason == "driver D1 already has a supply in course at CP1"


# -- 4. telemetry ------------------------------------------------------------------------------------------


def test_telemetry_is_forwarded_once_per_seq_in_order(central):
    sid = central.authorise().session_id
    before = len(central.notifier.sent)

    central.telemetry(sid, 1, "0.5", power="7.2")
    central.telemetry(sid, 1, "0.5")  # a copy
    central.telemetry(sid, 3, "1.5", power="11")
    central.telemetry(sid, 2, "1.0")  # late
    central.telemetry("nope", 1, "9")  # unknown session

    progress = [r for _, r in central.notifier.sent[before:]]
    assert progress == [
        SupplyProgress(sid, "D1", "CP1", 1, Decimal("0.5"), Decimal("0.2400"), Decimal("7.2"), ts=progress[0].ts),
        SupplyProgress(sid, "D1", "CP1", 3, Decimal("1.5"), Decimal("0.7200"), Decimal(11), ts=progress[1].ts),
    ]
    assert [(r.status, r.last_seq, r.kwh) for r in central.writer.rows[1:]] == [
        ("SUPPLYING", 1, Decimal("0.5")), ("SUPPLYING", 3, Decimal("1.5"))]


# -- 5. and 6. the end and its ticket --------------------------------------------------------------------


def test_unplugged_end_completes_stores_then_tickets_once_and_frees_the_cp(central):
    sid = central.authorise().session_id
    central.telemetry(sid, 1, "0.5")
    central.clock.advance(60)
    central.events.clear()

    central.end(sid, 2, "1.0", "unplugged")

    (ticket,) = central.notifier.tickets()
    assert ticket == Ticket(sid, "r1", "D1", "CP1", T0, T0 + timedelta(seconds=60), Decimal("1.0"), PRICE,
                            Decimal("0.48"), "COMPLETED", "unplugged", ts=ticket.ts)
    stored = central.store.sessions[sid]
    assert (stored.status, stored.kwh, stored.amount_eur, stored.end_reason, stored.last_seq,
            stored.ticket_sent) == ("COMPLETED", Decimal("1.0"), Decimal("0.48"), "unplugged", 2, False)
    assert central.store.saved == [[stored]]
    assert central.events.index(f"save_sessions {sid} COMPLETED") < central.events.index("to_driver D1 supply.ticket")
    assert central.state("CP1") is State.ACTIVADO
    assert central.book.open_sessions() == []
    assert (central.notifier.statuses[-1].state, central.notifier.statuses[-1].driver_id) == ("ACTIVADO", None)

    sent = len(central.notifier.sent)
    central.end(sid, 2, "1.0", "unplugged")  # Kafka hands it over again
    assert len(central.notifier.sent) == sent and len(central.store.saved) == 1

    central.notifier.deliver(ticket, True)
    assert central.writer.rows[-1] == replace(stored, ticket_sent=True)


def test_undelivered_ticket_is_not_marked_sent(central):
    sid = central.authorise().session_id
    central.end(sid, 1, "0.2", "unplugged")
    rows = len(central.writer.rows)
    central.notifier.deliver(central.notifier.tickets()[0], False)
    assert len(central.writer.rows) == rows
    assert central.store.sessions[sid].ticket_sent is False


def test_end_with_a_lower_seq_keeps_the_latest_figures(central):
    sid = central.authorise().session_id
    central.telemetry(sid, 5, "2.0")
    central.end(sid, 4, "1.9", "unplugged")
    (ticket,) = central.notifier.tickets()
    assert (ticket.kwh, ticket.amount_eur, ticket.status) == (Decimal("2.0"), Decimal("0.96"), "COMPLETED")


@pytest.mark.parametrize("error", [StoreUnavailable("database gone"), StoreError("row refused")])
def test_store_failure_at_close_still_writes_behind_and_sends_the_ticket(central, error):
    sid = central.authorise().session_id
    central.telemetry(sid, 1, "0.5")
    central.store.save_error = error

    central.end(sid, 2, "0.75", "unplugged")

    final = central.writer.rows[-1]
    assert (final.session_id, final.status, final.kwh, final.amount_eur, final.ended_at) == (
        sid, "COMPLETED", Decimal("0.75"), Decimal("0.36"), T0)
    (ticket,) = central.notifier.tickets()
    assert (ticket.session_id, ticket.status, ticket.kwh) == (sid, "COMPLETED", Decimal("0.75"))
    assert central.store.sessions == {}
    assert central.state("CP1") is State.ACTIVADO
    central.notifier.deliver(ticket, True)
    assert central.writer.rows[-1] == replace(final, ticket_sent=True)


# -- 7. and 8. Stop and Resume -------------------------------------------------------------------------------


def test_stop_during_a_supply_alerts_then_interrupts_then_resume_reopens(central):
    sid = central.authorise().session_id
    central.telemetry(sid, 1, "0.4")

    change = central.service.stop("CP1")

    assert (change.old, change.new, change.stopped, change.interrupts_supply) == (
        State.SUMINISTRANDO, State.PARADO, True, True)
    assert central.gateway.commands == [("CP1", Stop("CP1"))]
    assert central.state("CP1") is State.PARADO
    alert = central.notifier.to("D1")[-1]
    assert alert == SupplyAlert(sid, "D1", "CP1", "PARADO", "stopped by Central", ts=alert.ts)
    assert central.notifier.statuses[-1].state == "PARADO"
    assert central.notifier.tickets() == []  # the Engine's end comes next

    central.end(sid, 2, "0.5", "stopped")

    (ticket,) = central.notifier.tickets()
    assert (ticket.status, ticket.end_reason, ticket.kwh, ticket.amount_eur) == (
        "INTERRUPTED", "stopped by Central", Decimal("0.5"), Decimal("0.24"))
    assert central.store.sessions[sid].status == "INTERRUPTED"
    assert central.state("CP1") is State.PARADO  # stays stopped after the supply
    central.request("D1", "CP1")
    assert central.notifier.to("D1")[-1].reason == "CP1 is not available (Out of Order)"

    change = central.service.resume("CP1")
    assert (change.old, change.new, change.stopped) == (State.PARADO, State.ACTIVADO, False)
    assert central.gateway.commands[-1] == ("CP1", Resume("CP1"))
    assert central.state("CP1") is State.ACTIVADO
    assert (central.notifier.statuses[-1].state, central.notifier.statuses[-1].driver_id) == ("ACTIVADO", None)


def test_unplugged_after_a_stop_is_still_an_interruption(central):
    sid = central.authorise().session_id
    central.service.stop("CP1")
    central.end(sid, 1, "0.3", "unplugged")
    (ticket,) = central.notifier.tickets()
    assert (ticket.status, ticket.end_reason) == ("INTERRUPTED", "stopped by Central")


def test_stop_without_a_monitor_still_stops_the_cp(central):
    central.gateway.delivers = False
    change = central.service.stop("CP1")
    assert (change.cp_id, change.old, change.new, change.stopped) == ("CP1", State.ACTIVADO, State.PARADO, True)
    assert central.state("CP1") is State.PARADO and central.network.get("CP1").stopped
    assert central.gateway.commands == [("CP1", Stop("CP1"))]
    assert central.said[-1] == ("Stop sent to CP1 (its Monitor is not connected: applied at its next "
                                "registration)")
    assert central.notifier.statuses[-1].state == "PARADO"


def test_stop_of_a_disconnected_cp_applies_at_its_next_registration(central):
    central.on_change(central.network.session_ended("CP1", "mon-CP1", "socket closed"))
    central.gateway.delivers = False
    change = central.service.stop("CP1")
    assert (change.new, change.stopped) == (State.DESCONECTADO, True)
    central.add_cp("CP1")
    assert central.state("CP1") is State.PARADO
    central.request("D1", "CP1")
    assert only_denial(central, "D1") == "CP1 is not available (Out of Order)"


def test_stop_of_an_unknown_cp_raises_key_error(central):
    with pytest.raises(KeyError):
        central.service.stop("CP9")
    assert central.gateway.commands == []


# -- 9. faults, lost Monitors, silence ------------------------------------------------------------------------


def test_fault_during_a_supply_alerts_and_closes_after_the_end_grace(central):
    sid = central.authorise().session_id
    central.telemetry(sid, 1, "0.5")
    central.telemetry(sid, 2, "0.8")

    central.on_change(central.network.engine_fault("CP1", "mon-CP1", "overheating"))

    alert = central.notifier.to("D1")[-1]
    assert alert == SupplyAlert(sid, "D1", "CP1", "AVERIADO", "CP fault", ts=alert.ts)
    central.service.sweep()
    central.clock.advance(END_GRACE - 0.1)
    central.service.sweep()
    assert central.notifier.tickets() == []

    central.clock.advance(0.1)
    central.service.sweep()

    (ticket,) = central.notifier.tickets()
    assert (ticket.status, ticket.end_reason, ticket.kwh, ticket.amount_eur, ticket.ended_at) == (
        "INTERRUPTED", "CP fault", Decimal("0.8"), Decimal("0.38"), T0 + timedelta(seconds=END_GRACE))
    assert central.store.sessions[sid].status == "INTERRUPTED"
    assert central.state("CP1") is State.AVERIADO
    central.service.sweep()
    central.end(sid, 3, "0.9", "fault")  # the Engine's late end: its figures count
    central.end(sid, 3, "0.9", "fault")
    first, corrected = central.notifier.tickets()
    assert (corrected.corrected, corrected.kwh, corrected.amount_eur) == (True, Decimal("0.9"), Decimal("0.43"))


def test_lost_monitor_during_a_supply_is_an_interruption(central):
    sid = central.authorise().session_id
    central.on_change(central.network.session_ended("CP1", "mon-CP1", "socket closed"))
    alert = central.notifier.to("D1")[-1]
    assert (type(alert), alert.state, alert.reason) == (SupplyAlert, "DESCONECTADO", "Monitor lost")
    central.end(sid, 1, "0.2", "monitor lost")
    (ticket,) = central.notifier.tickets()
    assert (ticket.status, ticket.end_reason) == ("INTERRUPTED", "Monitor lost")
    assert central.state("CP1") is State.DESCONECTADO


def test_silent_supply_closes_after_stale_after_and_frees_the_cp(central):
    sid = central.authorise().session_id
    central.telemetry(sid, 1, "0.3")
    central.clock.advance(STALE_AFTER - 1)
    central.service.sweep()
    assert central.notifier.tickets() == []
    central.clock.advance(1)
    central.service.sweep()
    (ticket,) = central.notifier.tickets()
    assert (ticket.status, ticket.end_reason, ticket.kwh) == ("INTERRUPTED", "no news from the CP for 90 s",
                                                               Decimal("0.3"))
    assert central.state("CP1") is State.ACTIVADO


# -- 10. tickets after a restart ---------------------------------------------------------------------------------


def closed_row(session_id: str, driver_id: str, *, ended: bool = True) -> SessionRow:
    return SessionRow(session_id, f"req-{session_id}", "CP1", driver_id, PRICE, T0 - timedelta(hours=1),
                      T0 - timedelta(minutes=30) if ended else None, Decimal("2.5"), Decimal("1.20"),
                      "COMPLETED", "unplugged", False, 9)


def test_resend_unsent_tickets_sends_each_stored_ticket(central):
    rows = [closed_row("old1", "D1"), closed_row("old2", "D2", ended=False)]
    central.store.unsent = rows

    assert central.service.resend_unsent_tickets() == 2

    tickets = central.notifier.tickets()
    assert [(driver, r.session_id) for driver, r in central.notifier.sent] == [("D1", "old1"), ("D2", "old2")]
    assert tickets[0] == Ticket("old1", "req-old1", "D1", "CP1", T0 - timedelta(hours=1), T0 - timedelta(minutes=30),
                                Decimal("2.5"), PRICE, Decimal("1.20"), "COMPLETED", "unplugged", ts=tickets[0].ts)
    assert tickets[1].ended_at == T0  # never stamped: now
    central.notifier.deliver(tickets[1], True)
    central.notifier.deliver(tickets[0], True)
    assert central.writer.rows == [replace(rows[1], ticket_sent=True), replace(rows[0], ticket_sent=True)]


def test_resend_with_nothing_unsent_sends_nothing(central):
    assert central.service.resend_unsent_tickets() == 0
    assert central.notifier.sent == []


# -- races and ordering ---------------------------------------------------------------------------------------------


def test_final_row_is_not_overwritten_by_an_older_pending_write():
    events: list[str] = []
    store = FakeStore(events)
    writer: WriteBehind[SessionRow] = WriteBehind(store.save_sessions, lambda row: row.session_id, "sessions")
    central = Central(writer=writer)
    central.store = store
    central.service.store = store
    central.service.drivers = DriverDirectory(store)
    central.add_cp("CP1")
    sid = central.authorise().session_id
    central.telemetry(sid, 1, "0.5")  # pending in the writer (e.g. it is backing off after an outage)
    central.end(sid, 2, "1.0", "unplugged")  # the database answers again: saved directly
    assert store.sessions[sid].status == "COMPLETED"
    central.notifier.deliver(central.notifier.tickets()[0], False)  # the broker did not take the ticket

    writer.start()
    try:
        assert writer.wait_idle(WAIT)
    finally:
        writer.stop(WAIT)

    assert store.sessions[sid].status == "COMPLETED"  # the final row is written last


def test_stop_while_the_cp_is_being_asked_does_not_leave_a_stray_session(central):
    central.gateway.during_ask = lambda cp_id, question: central.service.stop(cp_id)

    central.request("D1", "CP1")
    central.clock.advance(END_GRACE)
    central.service.sweep()

    assert central.state("CP1") is State.PARADO
    last = central.notifier.to("D1")[-1]
    assert isinstance(last, RequestDenied) or (isinstance(last, Ticket) and last.status == "INTERRUPTED"), last
    assert central.book.open_sessions() == []


def test_a_ticket_the_broker_did_not_take_is_sent_again(central):
    central.add_cp("CP1")
    sid = central.authorise().session_id
    central.end(sid, 1, "1.0", "unplugged")
    [ticket] = central.notifier.tickets()
    central.notifier.deliver(ticket, False)
    central.service.sweep()
    assert len(central.notifier.tickets()) == 2  # sent again at the next sweep
    central.notifier.deliver(central.notifier.tickets()[-1], True)
    central.clock.advance(10)
    central.service.sweep()
    assert len(central.notifier.tickets()) == 2  # delivered: not sent a third time


# -- 9. nothing lost: late answers, late figures, a CP registered again -----------------------------


def test_a_cp_that_did_not_answer_in_time_is_told_to_cancel_the_supply(central):
    central.gateway.answers["CP1"] = CPUnreachable("CP1 did not answer within 3 s")
    central.request("D1", "CP1")
    assert "did not confirm" in only_denial(central, "D1")
    assert central.gateway.commands == [("CP1", Can("CP1", "s1", "Central gave up waiting for the CP's answer"))]
    assert_nothing_reserved(central, "CP1")


def test_a_cp_that_refused_is_not_sent_a_cancel(central):
    central.gateway.answers["CP1"] = ("KO", "busy")
    central.request("D1", "CP1")
    assert central.gateway.commands == []


def test_telemetry_of_a_session_central_has_not_open_cancels_it_at_the_cp_once(central):
    central.telemetry("ghost", 1, "0.1")
    central.telemetry("ghost", 2, "0.2")
    assert central.gateway.commands == [("CP1", Can("CP1", "ghost", "Central has no open supply with this id"))]
    assert central.writer.rows == []


def test_the_engines_late_figures_correct_the_ticket_once(central):
    auth = central.authorise()
    central.telemetry(auth.session_id, 1, "0.7")
    central.on_change(central.network.session_ended("CP1", "mon-CP1", "Monitor connection lost"))
    central.clock.advance(END_GRACE)
    central.service.sweep()
    [first] = central.notifier.tickets()
    assert (first.kwh, first.corrected) == (Decimal("0.7"), False)

    central.end(auth.session_id, 9, "2.75", "monitor lost")
    central.end(auth.session_id, 9, "2.75", "monitor lost")  # Kafka hands it over again
    first_again, corrected = central.notifier.tickets()
    assert (corrected.kwh, corrected.amount_eur, corrected.corrected) == (Decimal("2.75"), Decimal("1.32"), True)
    stored = central.store.sessions[auth.session_id]
    assert (stored.kwh, stored.engine_final, stored.corrected) == (Decimal("2.75"), True, True)
    assert any("corrected ticket" in line for line in central.said)


def test_a_cp_registered_again_with_its_supply_is_readopted(central):
    auth = central.authorise()
    central.telemetry(auth.session_id, 1, "0.7")
    central.on_change(central.network.session_ended("CP1", "mon-CP1", "Monitor connection lost"))
    assert central.state("CP1") is State.DESCONECTADO
    change, _ = central.network.register("CP1", "Calle Mayor 1", PRICE, "mon-CP1-again")
    central.on_change(change)
    replies = central.service.on_supply_state("CP1", Sst("CP1", "SUPPLYING", auth.session_id, 3, Decimal("1.5")))
    assert replies == []
    assert central.state("CP1") is State.SUMINISTRANDO
    central.clock.advance(END_GRACE * 3)
    central.service.sweep()
    assert central.notifier.tickets() == []  # not closed: the supply goes on
    central.end(auth.session_id, 5, "2.0", "unplugged")
    [ticket] = central.notifier.tickets()
    assert (ticket.status, ticket.kwh) == ("COMPLETED", Decimal("2.0"))


def test_a_cp_reporting_a_supply_central_does_not_know_is_told_to_cancel_it(central):
    replies = central.service.on_supply_state("CP1", Sst("CP1", "SUPPLYING", "old", 3, Decimal("1.5")))
    assert replies == [Can("CP1", "old", "Central has no open supply with this id")]
    assert central.state("CP1") is State.ACTIVADO


def test_a_cp_reporting_no_supply_gets_its_ticket_from_its_supply_end(central):
    auth = central.authorise()
    assert central.service.on_supply_state("CP1", Sst.idle("CP1")) == []
    central.clock.advance(END_GRACE * 2)
    central.service.sweep()
    assert central.notifier.tickets() == []  # the end is on its way through Kafka
    central.end(auth.session_id, 4, "1.0", "unplugged")
    [ticket] = central.notifier.tickets()
    assert (ticket.status, ticket.kwh) == ("COMPLETED", Decimal("1.0"))
    assert central.state("CP1") is State.ACTIVADO


def test_a_cp_reporting_no_supply_whose_end_never_comes_is_closed_later(central):
    auth = central.authorise()
    central.telemetry(auth.session_id, 1, "0.4")
    central.service.on_supply_state("CP1", Sst.idle("CP1"))
    central.clock.advance(30)
    central.service.sweep()
    [ticket] = central.notifier.tickets()
    assert (ticket.status, ticket.kwh) == ("INTERRUPTED", Decimal("0.4"))
    assert "did not arrive" in ticket.end_reason
    assert central.state("CP1") is State.ACTIVADO


def test_a_request_handed_over_again_is_not_decided_again(central):
    central.request("D1", "CP1", request_id="req-1")
    before = list(central.notifier.sent)
    central.request("D1", "CP1", request_id="req-1")
    assert central.notifier.sent == before


def test_telemetry_and_ends_are_acknowledged_only_once_durable(central):
    auth = central.authorise()
    acked = []
    central.service.on_telemetry(Telemetry("CP1", auth.session_id, "D1", 1, Decimal("0.5"), Decimal(0),
                                           Decimal("7")), lambda: acked.append("telemetry"))
    central.service.on_supply_end(SupplyEnd("CP1", auth.session_id, "D1", 2, Decimal("0.6"), Decimal(0),
                                            "unplugged"), lambda: acked.append("end"))
    central.service.on_supply_end(SupplyEnd("CP1", auth.session_id, "D1", 2, Decimal("0.6"), Decimal(0),
                                            "unplugged"), lambda: acked.append("repeat"))
    assert acked == ["repeat"]  # nothing to write for a repeat
    assert central.writer.make_durable() == 2
    assert acked == ["repeat", "telemetry", "end"]


def test_a_cp_whose_engine_ended_a_supply_for_a_fault_is_never_shown_available(central):
    auth = central.authorise()
    central.end(auth.session_id, 3, "0.5", "fault")  # the Engine's end arrives before its Monitor's AVR
    assert central.state("CP1") is State.SUMINISTRANDO  # not ACTIVADO: the CP is broken
    assert [s.state for s in central.notifier.statuses if s.cp_id == "CP1"][-1] != "ACTIVADO"
    central.request("D2", "CP1")  # a request at that moment
    assert "not available" in only_denial(central, "D2")
    central.on_change(central.network.engine_fault("CP1", "mon-CP1", "Engine answers KO"))
    assert central.state("CP1") is State.AVERIADO
    central.clock.advance(3)
    central.service.sweep()
    assert central.state("CP1") is State.AVERIADO  # the hold ends without freeing a broken CP


def test_a_fault_end_its_monitor_never_reports_frees_the_cp_after_a_while(central):
    auth = central.authorise()
    central.end(auth.session_id, 3, "0.5", "fault")
    central.clock.advance(2.4)
    central.service.sweep()
    assert central.state("CP1") is State.SUMINISTRANDO
    central.clock.advance(0.2)
    central.service.sweep()
    assert central.state("CP1") is State.ACTIVADO


def test_a_cp_that_cannot_reach_kafka_is_out_of_service_but_its_supply_ends_on_its_own_figures(central):
    from ev_common.words import CANNOT_REPORT

    auth = central.authorise()
    central.telemetry(auth.session_id, 1, "0.4")
    # the supply ended at the CP during a Kafka outage; idle, the Engine now answers KO for it
    central.on_change(central.network.engine_fault("CP1", "mon-CP1", f"Engine answers KO ({CANNOT_REPORT})"))
    assert central.state("CP1") is State.AVERIADO  # no new supply there
    assert not [r for r in central.notifier.to("D1") if isinstance(r, SupplyAlert)]  # not a fault of the supply
    central.clock.advance(END_GRACE * 3)
    central.service.sweep()
    assert central.notifier.tickets() == []
    central.end(auth.session_id, 4, "1.2", "unplugged")  # Kafka back: the Engine's end arrives
    [ticket] = central.notifier.tickets()
    assert (ticket.status, ticket.kwh) == ("COMPLETED", Decimal("1.2"))
    assert central.state("CP1") is State.AVERIADO  # until its Monitor reports the recovery


# -- many changes at once (a storm's batch of registrations) ---------------------------------------


def test_many_changes_at_once_cause_what_each_would_with_one_line_per_kind(caplog) -> None:
    import logging

    from ev_central.supply_service import LOUD_CHANGES

    c = Central()
    c.add_cp("CP01")
    c.network.session_ended("CP01", "mon-CP01", "gone")
    caplog.set_level(logging.INFO, logger="ev_central.supply_service")
    count = LOUD_CHANGES + 3
    results = c.network.register_many([(f"CP{i:02d}", "Street", PRICE, f"m{i}") for i in range(1, count + 1)])
    before = len(c.changes)
    c.service.changed_many([change for change, _ in results])

    assert [change.cp_id for change in c.changes[before:]] == [f"CP{i:02d}" for i in range(1, count + 1)]
    statuses = [s for s in c.notifier.statuses if s.state == "ACTIVADO"]
    assert {s.cp_id for s in statuses} >= {f"CP{i:02d}" for i in range(1, count + 1)}  # each one published
    lines = sorted(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert lines == ["1 CP(s) DESCONECTADO -> ACTIVADO: CP01",
                     f"{count - 1} CP(s) new -> ACTIVADO: CP02, CP03, CP04, CP05, CP06 and {count - 6} more"]


def test_a_few_changes_at_once_are_logged_one_by_one(caplog) -> None:
    import logging

    c = Central()
    caplog.set_level(logging.INFO, logger="ev_central.supply_service")
    results = c.network.register_many([("CP1", "Street", PRICE, "m1"), ("CP2", "Street", PRICE, "m2")])
    c.service.changed_many([change for change, _ in results])
    assert sorted(r.getMessage() for r in caplog.records) == ["CP1: new CP signed up -> ACTIVADO",
                                                             "CP2: new CP signed up -> ACTIVADO"]


def test_figures_are_logged_at_each_record_while_few_supplies_run_then_every_tenth(caplog) -> None:
    import logging

    from ev_central.supply_service import LIVE_LOG_ALL_UP_TO, LIVE_LOG_EVERY

    c = Central()
    count = LIVE_LOG_ALL_UP_TO + 1
    sessions = []
    for n in range(count):
        c.add_cp(f"CP{n:02d}")
        c.store.drivers.add(f"D{n:02d}")
        sessions.append(c.authorise(f"D{n:02d}", f"CP{n:02d}").session_id)
    caplog.set_level(logging.INFO, logger="ev_central.live")

    def logged(seq: int) -> int:
        caplog.clear()
        for n, session_id in enumerate(sessions):
            c.telemetry(session_id, seq, f"{seq / 1000:.4f}", cp_id=f"CP{n:02d}", driver_id=f"D{n:02d}")
        return len([r for r in caplog.records if r.name == "ev_central.live"])

    assert logged(1) == count  # the first record of each supply
    assert [logged(seq) for seq in range(2, LIVE_LOG_EVERY + 1)] == [0] * (LIVE_LOG_EVERY - 1)
    assert logged(LIVE_LOG_EVERY + 1) == count
    c.end(sessions[0], LIVE_LOG_EVERY + 2, "0.0120", "unplugged", cp_id="CP00", driver_id="D00")
    assert logged(LIVE_LOG_EVERY + 3) == count - 1  # few enough again: every record of every supply
