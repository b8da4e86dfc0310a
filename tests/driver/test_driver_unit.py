"""The driver's request state machine, driven by fake records (no Kafka)."""

from __future__ import annotations

import dataclasses
import io
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ev_common.records import (
    CPStatus,
    RequestAuthorised,
    RequestDenied,
    RequestReceived,
    SupplyAlert,
    SupplyProgress,
    SupplyRequest,
    Ticket,
)
from ev_driver import cli
from ev_driver.driver import CPDirectory, Driver, Outcome, run_file, run_single, totals
from ev_driver.menu import run_menu
from ev_driver.screen import Screen, eur, kwh, price
from tests.support.waiting import wait_until

D = "D1"
T0 = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)


class FakeClock:
    """Monotonic time that moves ``step`` seconds each time it is read; ``at(t, fn)`` runs fn once t is passed."""

    def __init__(self, step: float = 1.0) -> None:
        self.now = 0.0
        self.step = step
        self.hooks: list[tuple[float, object]] = []

    def at(self, moment: float, action) -> None:
        self.hooks.append((moment, action))

    def __call__(self) -> float:
        self.now += self.step
        due = [h for h in self.hooks if h[0] <= self.now]
        self.hooks = [h for h in self.hooks if h[0] > self.now]
        for _, action in due:
            action()
        return self.now


# -- records as Central would send them ----------------------------------------------------------


def received(req: SupplyRequest):
    return RequestReceived(request_id=req.request_id, driver_id=req.driver_id, cp_id=req.cp_id)


def authorised(req: SupplyRequest, session: str, price_: str = "0.50"):
    return RequestAuthorised(request_id=req.request_id, driver_id=req.driver_id, cp_id=req.cp_id,
                             session_id=session, price_eur_kwh=Decimal(price_))


def denied(req: SupplyRequest, reason: str):
    return RequestDenied(request_id=req.request_id, driver_id=req.driver_id, cp_id=req.cp_id, reason=reason)


def progress(session: str, cp: str, seq: int, kwh_: str, eur_: str, driver: str = D):
    return SupplyProgress(session_id=session, driver_id=driver, cp_id=cp, seq=seq, kwh=Decimal(kwh_),
                          amount_eur=Decimal(eur_), power_kw=Decimal("7.2"))


def ticket(session: str, cp: str, kwh_: str, eur_: str, status: str = "COMPLETED", reason: str = "unplugged",
           request_id: str = "r-old", driver: str = D):
    return Ticket(session_id=session, request_id=request_id, driver_id=driver, cp_id=cp, started_at=T0,
                  ended_at=T0 + timedelta(minutes=5, seconds=3), kwh=Decimal(kwh_), price_eur_kwh=Decimal("0.50"),
                  amount_eur=Decimal(eur_), status=status, end_reason=reason)


def alert(session: str, cp: str, state: str, reason: str):
    return SupplyAlert(session_id=session, driver_id=D, cp_id=cp, state=state, reason=reason)


class FakeCentral:
    """Answers each request at once, on the caller's thread, with the records ``script(request)`` gives."""

    def __init__(self) -> None:
        self.requests: list[SupplyRequest] = []
        self.scripts: dict[str, object] = {}
        self.driver: Driver | None = None

    def on(self, cp_id: str, script) -> None:
        self.scripts[cp_id] = script

    def send(self, request: SupplyRequest) -> None:
        self.requests.append(request)
        for record in self.scripts.get(request.cp_id, lambda r: [])(request):
            self.driver.handle(D, record)


def full_supply(session: str):
    def script(req):
        return [received(req), authorised(req, session), progress(session, req.cp_id, 1, "0.5", "0.25"),
                progress(session, req.cp_id, 2, "1.0", "0.50"),
                ticket(session, req.cp_id, "1.0", "0.50", request_id=req.request_id)]
    return script


@pytest.fixture
def out():
    return io.StringIO()


@pytest.fixture
def central():
    return FakeCentral()


@pytest.fixture
def make_driver(out, central):
    def make(**kwargs) -> Driver:
        kwargs.setdefault("clock", FakeClock())
        kwargs.setdefault("tick", 0.001)
        screen = Screen(out, now=lambda: datetime(2026, 11, 21, 11, 0, 0))
        driver = Driver(D, central.send, screen, **kwargs)
        central.driver = driver
        return driver
    return make


# -- one request ------------------------------------------------------------------------------------


def test_authorised_progress_ticket(make_driver, central, out):
    driver = make_driver()
    central.on("CP1", full_supply("S1"))
    result = driver.request("CP1")
    request = central.requests[0]
    assert (request.driver_id, request.cp_id, request.source) == (D, "CP1", "driver")
    assert len(request.request_id) == 32 and int(request.request_id, 16) >= 0
    assert result.outcome is Outcome.COMPLETED and result.ok
    assert (result.session_id, result.kwh, result.amount_eur) == ("S1", Decimal("1.0"), Decimal("0.50"))
    text = out.getvalue()
    for expected in [
        f"11:00:00 Supply requested at CP1 (request {request.request_id[:8]}); waiting for Central...",
        "11:00:00 Central received the request for CP1",
        "11:00:00 AUTHORISED at CP1: session S1, price 0.50 EUR/kWh",
        "11:00:00 Charging at CP1: 0.500 kWh, 0.25 EUR (7.20 kW)",
        "11:00:00 Charging at CP1: 1.000 kWh, 0.50 EUR (7.20 kW)",
        "11:00:00 ===== TICKET of your supply at CP1: COMPLETED =====",
        "Session    S1", f"Request    {request.request_id}", "Driver     D1", "CP         CP1",
        "Energy     1.000 kWh", "Price      0.50 EUR/kWh", "Amount     0.50 EUR",
        "Status     COMPLETED (unplugged)", "(5 min 03 s)",
    ]:
        assert expected in text, expected
    assert text.index("received") < text.index("AUTHORISED") < text.index("Charging") < text.index("TICKET")


def test_denied(make_driver, central, out):
    driver = make_driver()
    central.on("CP2", lambda req: [received(req), denied(req, "CP2 is AVERIADO")])
    result = driver.request("CP2")
    assert result.outcome is Outcome.DENIED and result.reason == "CP2 is AVERIADO" and not result.ok
    assert "DENIED at CP2: CP2 is AVERIADO" in out.getvalue()
    assert run_single(driver, "CP2")[1] == 1


def test_no_answer_is_cannot_connect_after_the_timeout(make_driver, central, out):
    clock = FakeClock(step=0.5)
    driver = make_driver(clock=clock)  # default timeout: 10 s
    result = driver.request("CP1")
    assert result.outcome is Outcome.NO_ANSWER and not result.ok
    assert 10.0 <= clock.now <= 11.0
    assert "FAILED at CP1: Cannot connect to CENTRAL (no answer from Central in 10 s)" in out.getvalue()


def test_received_alone_does_not_stop_the_timeout(make_driver, central, out):
    driver = make_driver(timeout=3)
    central.on("CP1", lambda req: [received(req)])
    assert driver.request("CP1").outcome is Outcome.NO_ANSWER
    assert "Central received the request for CP1" in out.getvalue()
    assert "Cannot connect to CENTRAL" in out.getvalue()


def test_authorised_then_silence_gives_up_and_a_late_ticket_is_still_shown(make_driver, central, out):
    clock = FakeClock()
    driver = make_driver(clock=clock, supply_timeout=30)
    central.on("CP1", lambda req: [received(req), authorised(req, "S1")])
    result = driver.request("CP1")
    assert result.outcome is Outcome.LOST and result.session_id == "S1"
    assert "FAILED at CP1: Cannot connect to CENTRAL (no news of the supply for 30 s)" in out.getvalue()
    driver.handle(D, ticket("S1", "CP1", "2.0", "1.00", request_id=result.request_id))
    assert "TICKET of a given-up supply at CP1: COMPLETED" in out.getvalue()


def test_any_news_of_the_supply_restarts_its_timeout(make_driver, central, out):
    clock = FakeClock()
    driver = make_driver(clock=clock, supply_timeout=10)
    central.on("CP1", lambda req: [authorised(req, "S1")])
    for moment, seq in ((8, 1), (16, 2), (24, 3)):
        clock.at(moment, lambda seq=seq: driver.handle(D, progress("S1", "CP1", seq, str(seq), str(seq))))
    clock.at(30, lambda: driver.handle(D, alert("S1", "CP1", "AVERIADO", "Engine fault")))
    result = driver.request("CP1")
    assert result.outcome is Outcome.LOST
    assert 40 <= clock.now <= 42  # 10 s after the alert, not after authorisation
    assert "ALERT from CP1: AVERIADO: Engine fault" in out.getvalue()


def test_alert_then_interrupted_ticket(make_driver, central, out):
    driver = make_driver()
    central.on("CP1", lambda req: [authorised(req, "S1"), progress("S1", "CP1", 1, "0.2", "0.10"),
                                   alert("S1", "CP1", "AVERIADO", "Engine fault"),
                                   ticket("S1", "CP1", "0.2", "0.10", "INTERRUPTED", "Engine fault",
                                          request_id=req.request_id)])
    result, code = run_single(driver, "CP1")
    assert result.outcome is Outcome.INTERRUPTED and result.reason == "Engine fault" and code == 1
    text = out.getvalue()
    assert "ALERT from CP1: AVERIADO: Engine fault" in text
    assert "TICKET of your supply at CP1: INTERRUPTED" in text and "INTERRUPTED (Engine fault)" in text


def test_duplicates_are_shown_once(make_driver, central, out):
    driver = make_driver()

    def twice(req):
        records = full_supply("S1")(req)
        return [records[0], records[0], records[1], records[1], records[2], records[2], records[3],
                alert("S1", "CP1", "PARADO", "stopped"), alert("S1", "CP1", "PARADO", "stopped"),
                records[2], records[4], records[4]]
    central.on("CP1", twice)
    assert driver.request("CP1").ok
    driver.handle(D, ticket("S1", "CP1", "1.0", "0.50"))  # once more, after the end
    text = out.getvalue()
    assert text.count("TICKET") == 1
    assert text.count("Charging at CP1: 0.500 kWh") == 1
    assert text.count("AUTHORISED") == 1 and text.count("Central received") == 1
    assert text.count("ALERT") == 1


def test_ticket_of_an_earlier_session_is_shown(make_driver, central, out):
    driver = make_driver()
    # No request in progress: the app was restarted while S0 was running.
    driver.handle(D, progress("S0", "CP7", 9, "3.0", "1.50"))
    driver.handle(D, ticket("S0", "CP7", "3.2", "1.60"))
    driver.handle(D, ticket("S0", "CP7", "3.2", "1.60"))
    text = out.getvalue()
    assert "[earlier supply at CP7] Charging at CP7: 3.000 kWh, 1.50 EUR" in text
    assert text.count("TICKET of an earlier supply at CP7: COMPLETED") == 1
    assert "Amount     1.60 EUR" in text


def test_earlier_ticket_during_a_request_does_not_end_it(make_driver, central, out):
    driver = make_driver()

    def script(req):
        return [received(req), ticket("S0", "CP7", "3.2", "1.60"), authorised(req, "S1"),
                progress("S0", "CP7", 4, "1.0", "0.5"), ticket("S1", "CP1", "1.0", "0.50", request_id=req.request_id)]
    central.on("CP1", script)
    result = driver.request("CP1")
    assert result.outcome is Outcome.COMPLETED and result.session_id == "S1"
    text = out.getvalue()
    assert "TICKET of an earlier supply at CP7" in text and "TICKET of your supply at CP1" in text
    assert "[earlier supply at CP7] Charging at CP7" in text


def test_ticket_found_by_request_id_when_authorisation_was_missed(make_driver, central, out):
    driver = make_driver()
    central.on("CP1", lambda req: [ticket("S1", "CP1", "1.0", "0.50", request_id=req.request_id)])
    assert driver.request("CP1").outcome is Outcome.COMPLETED


def test_late_answers_are_labelled(make_driver, central, out):
    driver = make_driver(timeout=2)
    result = driver.request("CP1")
    assert result.outcome is Outcome.NO_ANSWER
    request = central.requests[0]
    driver.handle(D, authorised(request, "S9"))
    driver.handle(D, authorised(request, "S9"))
    assert out.getvalue().count("[given-up request at CP1] authorised after all: session S9") == 1
    driver.handle(D, progress("S9", "CP1", 1, "0.1", "0.05"))
    assert "[given-up supply at CP1] Charging at CP1: 0.100 kWh" in out.getvalue()
    driver.handle(D, denied(SupplyRequest(request_id="old", driver_id=D, cp_id="CP4"), "expired"))
    assert "[earlier request at CP4] DENIED at CP4: expired" in out.getvalue()
    driver.handle(D, authorised(SupplyRequest(request_id="old2", driver_id=D, cp_id="CP5"), "S5"))
    assert "[earlier request at CP5] AUTHORISED: session S5" in out.getvalue()


def test_records_of_other_drivers_are_ignored(make_driver, central, out):
    driver = make_driver(timeout=2)
    central.on("CP1", lambda req: [
        RequestDenied(request_id=req.request_id, driver_id="D2", cp_id="CP1", reason="not yours"),
        ticket("S1", "CP1", "1", "1", request_id=req.request_id, driver="D2")])
    assert driver.request("CP1").outcome is Outcome.NO_ANSWER
    driver.handle("D2", ticket("S5", "CP1", "1", "1"))  # another key
    driver.handle(None, ticket("S5", "CP1", "1", "1"))
    assert "TICKET" not in out.getvalue() and "DENIED" not in out.getvalue()


def test_stop_cancels_the_request(make_driver, central, out):
    stop = threading.Event()
    driver = make_driver(stop=stop)

    def then_stop(req):
        stop.set()  # Ctrl+C while waiting for Central
        return [received(req)]
    central.on("CP1", then_stop)
    assert driver.request("CP1").outcome is Outcome.CANCELLED
    assert "abandoned" in out.getvalue()


class FakeLink:
    def __init__(self, down: bool = False) -> None:
        self.ready = threading.Event()
        self.down = down


def test_first_request_waits_until_answers_can_be_heard(make_driver, central, out):
    clock = FakeClock()
    link = FakeLink()
    driver = make_driver(clock=clock, link=link, timeout=5)
    clock.at(12, link.ready.set)  # the group join took 12 s (a restart after a crash)
    result = driver.request("CP1")  # nobody answers
    assert result.outcome is Outcome.NO_ANSWER
    assert 17 <= clock.now <= 19  # 5 s after the join, not after the start
    text = out.getvalue()
    assert text.index("Connecting to Kafka") < text.index("Supply requested at CP1")
    driver.request("CP1")
    assert out.getvalue().count("Connecting to Kafka") == 1  # only before the first request


def test_no_wait_for_the_join_when_kafka_is_unreachable(make_driver, central, out):
    clock = FakeClock()
    driver = make_driver(clock=clock, link=FakeLink(down=True), timeout=5)
    assert driver.request("CP1").outcome is Outcome.NO_ANSWER
    assert clock.now <= 7 and "Connecting" not in out.getvalue()
    assert len(central.requests) == 1


def test_join_wait_is_bounded(make_driver, central, out):
    clock = FakeClock()
    driver = make_driver(clock=clock, link=FakeLink(), timeout=5, join_timeout=30)
    assert driver.request("CP1").outcome is Outcome.NO_ANSWER
    assert 35 <= clock.now <= 38 and len(central.requests) == 1


def test_closed_while_connecting_sends_nothing(make_driver, central, out):
    stop = threading.Event()
    clock = FakeClock()
    driver = make_driver(clock=clock, link=FakeLink(), stop=stop)
    clock.at(3, stop.set)
    assert driver.request("CP1").outcome is Outcome.CANCELLED
    assert central.requests == []


# -- file mode, summary, exit codes ---------------------------------------------------------------------


def test_run_file_summary_and_exit_code(make_driver, central, out):
    driver = make_driver(timeout=3)
    central.on("CP1", full_supply("S1"))
    central.on("CP2", lambda req: [received(req), denied(req, "CP2 is AVERIADO")])
    central.on("CP4", lambda req: [authorised(req, "S4"), progress("S4", "CP4", 1, "0.25", "0.125"),
                                   ticket("S4", "CP4", "0.25", "0.13", "INTERRUPTED", "stopped by Central",
                                          request_id=req.request_id)])
    results, code = run_file(driver, ["CP1", "CP2", "CP3", "CP4"], pause=0)
    assert code == 0  # failures are reported, not an error of the program
    assert [r.outcome for r in results] == [Outcome.COMPLETED, Outcome.DENIED, Outcome.NO_ANSWER,
                                            Outcome.INTERRUPTED]
    assert [r.position for r in results] == [1, 2, 3, 4]
    total = totals(results)
    assert (total.requests, total.kwh, total.amount_eur) == (4, Decimal("1.25"), Decimal("0.63"))
    text = out.getvalue()
    for n, cp in enumerate(["CP1", "CP2", "CP3", "CP4"], start=1):
        assert f"[{n} of 4] Supply requested at {cp}" in text
    assert text.count("Next request in 0 s") == 3
    assert "===== Summary for driver D1 =====" in text
    lines = text.splitlines()
    row = {cp: next(line for line in lines if line.strip().startswith(f"{n}  {cp} "))
           for n, cp in enumerate(["CP1", "CP2", "CP3", "CP4"], start=1)}
    assert "COMPLETED" in row["CP1"] and row["CP1"].split()[-2:] == ["1.000", "0.50"]
    assert "DENIED: CP2 is AVERIADO" in row["CP2"] and row["CP2"].split()[-2:] == ["-", "-"]
    assert "FAILED: Cannot connect to CENTRAL" in row["CP3"]
    assert "INTERRUPTED: stopped by Central" in row["CP4"] and row["CP4"].split()[-2:] == ["0.250", "0.13"]
    assert ("Total: 4 request(s): 1 completed, 1 interrupted, 1 denied, 1 without answer; 1.250 kWh, 0.63 EUR"
            in text)


def test_run_file_stopped_between_entries(make_driver, central, out):
    stop = threading.Event()
    driver = make_driver(stop=stop)
    def then_stop(req):
        stop.set()
        return full_supply("S1")(req)
    central.on("CP1", then_stop)
    results, code = run_file(driver, ["CP1", "CP2"], pause=60)
    assert code == 1 and len(results) == 1
    assert "Summary" in out.getvalue()


def test_run_single_exit_codes(make_driver, central):
    driver = make_driver(timeout=2)
    central.on("CP1", full_supply("S1"))
    assert run_single(driver, "CP1")[1] == 0
    assert run_single(driver, "CP9")[1] == 1  # no answer


# -- available CPs and the menu --------------------------------------------------------------------------


def status(cp: str, state: str, location: str = "Alicante") -> CPStatus:
    return CPStatus(cp_id=cp, state=state, location=location, price_eur_kwh=Decimal("0.4800"))


def test_cp_directory_keeps_the_last_state():
    cps = CPDirectory(Screen(io.StringIO()), settle=0)
    cps.handle("CP1", status("CP1", "DESCONECTADO"))
    cps.handle("CP2", status("CP2", "ACTIVADO"))
    cps.handle("CP1", status("CP1", "ACTIVADO"))
    cps.handle("CP2", status("CP2", "SUMINISTRANDO"))
    cps.handle("CP3", ticket("S", "CP3", "1", "1"))  # not a status: ignored
    assert [cp.cp_id for cp in cps.available()] == ["CP1"]
    assert cps.state_of("CP2") == "SUMINISTRANDO" and cps.state_of("CP9") is None


def feeder(out: io.StringIO, driver: Driver, *steps: str):
    """A read_line for run_menu: each step is a line, served once the request in progress (if
    any) has ended; ``"wait:TEXT"`` first waits until TEXT is on screen, ``"now:LINE"`` serves
    LINE at once, even while a request runs. Then end of input."""
    pending = list(steps)

    def read_line():
        while pending:
            step = pending.pop(0)
            if step.startswith("wait:"):
                wait_until(lambda: step[5:] in out.getvalue(), 5, repr(step[5:]))
                continue
            if step.startswith("now:"):
                return step[4:]
            wait_until(lambda: driver.busy is None, 5, "the request in progress to end")
            return step
        return None
    return read_line


def test_menu(make_driver, central, out):
    driver = make_driver(timeout=2)
    central.on("CP1", full_supply("S1"))
    cps = CPDirectory()
    read_line = feeder(out, driver, "", "l", "x", "r CP 1", "r", "CP1", "r CP2", "LIST", "q", "never read")

    def list_after_statuses():
        line = read_line()
        if line == "LIST":
            cps.handle("CP5", status("CP5", "ACTIVADO", "Calle Mayor 1"))
            cps.handle("CP6", status("CP6", "AVERIADO"))
            return "l"
        return line
    assert run_menu(driver, cps, driver.screen, list_after_statuses) == 0
    assert read_line() == "never read"
    text = out.getvalue()
    assert "No CP known yet" in text
    assert "Unknown command 'x'" in text
    assert "'CP 1' is not a CP id" in text
    assert "TICKET of your supply at CP1" in text
    assert "FAILED at CP2: Cannot connect to CENTRAL" in text
    assert "Available CPs: 1, cheapest first" in text and "CP5" in text and "0.48 EUR/kWh  Calle Mayor 1" in text
    assert "not available: CP6 (AVERIADO)" in text
    assert [r.cp_id for r in central.requests] == ["CP1", "CP2"]


def still_driver(make_driver, **kwargs) -> Driver:
    """A driver whose clock stands still: a request runs until it is answered or cancelled."""
    return make_driver(clock=lambda: 0.0, tick=0.01, **kwargs)


def test_commands_during_a_supply_are_answered_and_c_cancels_it(make_driver, central, out):
    driver = still_driver(make_driver)
    central.on("CP1", lambda req: [received(req), authorised(req, "S1")])  # plugged in, charging...
    read_line = feeder(out, driver, "now:r CP1", "wait:AUTHORISED at CP1", "now:x", "now:r CP2", "now:l",
                       "now:h", "now:c", "c", "q")
    assert run_menu(driver, CPDirectory(), driver.screen, read_line) == 0
    text = out.getvalue()
    assert text.count("A supply is in progress at CP1: c cancels, q quits") == 2  # x, and r CP2
    assert text.count("Menu:") == 2 and "No CP known yet" in text
    assert ("Request at CP1 abandoned. It was authorised: the supply goes on at CP1 (unplug there to end it) "
            "and its ticket will be shown here when it comes") in text
    assert "No request in progress: nothing to cancel" in text
    assert [r.cp_id for r in central.requests] == ["CP1"]
    driver.handle(D, ticket("S1", "CP1", "1.0", "0.50", request_id=central.requests[0].request_id))
    assert "TICKET of a given-up supply at CP1: COMPLETED" in out.getvalue()


def test_cancel_before_central_answers_then_a_late_authorisation_is_shown(make_driver, central, out):
    driver = still_driver(make_driver)
    read_line = feeder(out, driver, "now:r CP1", "wait:Supply requested at CP1", "now:c", "q")
    assert run_menu(driver, CPDirectory(), driver.screen, read_line) == 0
    assert "Request at CP1 abandoned; if Central authorises it after all, you will be told" in out.getvalue()
    driver.handle(D, authorised(central.requests[0], "S1"))
    assert "[given-up request at CP1] authorised after all: session S1" in out.getvalue()


def test_quit_during_a_supply_cancels_it_first(make_driver, central, out):
    driver = still_driver(make_driver)
    central.on("CP1", lambda req: [authorised(req, "S1")])
    read_line = feeder(out, driver, "now:r CP1", "wait:AUTHORISED at CP1", "now:q")
    assert run_menu(driver, CPDirectory(), driver.screen, read_line) == 0
    text = out.getvalue()
    assert "the supply goes on at CP1 (unplug there to end it) and its ticket will be shown when the app runs again" \
        in text
    assert text.index("abandoned") < text.index("Bye") and driver.busy is None


def test_cancel_while_connecting_sends_nothing(make_driver, central, out):
    link = FakeLink()  # the notifications consumer never joins
    driver = still_driver(make_driver, link=link)
    read_line = feeder(out, driver, "now:r CP1", "wait:Connecting to Kafka", "now:c", "q")
    assert run_menu(driver, CPDirectory(), driver.screen, read_line) == 0
    assert "Request at CP1 abandoned before it was sent" in out.getvalue() and central.requests == []


def test_list_says_kafka_is_unreachable(make_driver, out):
    driver = make_driver()
    driver.screen.kafka_unreachable("k:9092")
    cps = CPDirectory()
    assert run_menu(driver, cps, driver.screen, feeder(out, driver, "l")) == 0
    assert "The CPs are not known: Kafka is unreachable at k:9092 (retrying in the background)" in out.getvalue()
    assert "fills a few seconds" not in out.getvalue()
    cps.handle("CP5", status("CP5", "ACTIVADO"))
    assert run_menu(driver, cps, driver.screen, feeder(out, driver, "l")) == 0
    assert "Available CPs: 1, cheapest first (as last known: Kafka is unreachable at k:9092)" in out.getvalue()
    driver.screen.kafka_reachable("k:9092")
    assert run_menu(driver, CPDirectory(), driver.screen, feeder(out, driver, "l")) == 0
    assert "No CP known yet: the list fills a few seconds after start" in out.getvalue()


def test_menu_ends_at_end_of_input(make_driver, out):
    driver = make_driver()
    assert run_menu(driver, CPDirectory(), driver.screen, lambda: None) == 0
    assert "Bye" in out.getvalue()


# -- formatting and the command line ------------------------------------------------------------------


@pytest.mark.parametrize("func,value,text", [
    (kwh, "1.2345", "1.235"), (kwh, "0", "0.000"), (kwh, "12.5", "12.500"),
    (eur, "0.125", "0.13"), (eur, "3", "3.00"), (eur, "0.4449", "0.44"),
    (price, "0.4800", "0.48"), (price, "0.475", "0.475"), (price, "1", "1.00"),
])
def test_number_formats(func, value, text):
    assert func(Decimal(value)) == text


def test_bad_services_file_exits_2_before_touching_kafka(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "setup_logging", lambda *args, **kwargs: None)  # keep pytest's logging
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    args = ["--kafka", "127.0.0.1:1", "--driver_id", D]
    assert cli.main(args + ["--file", str(empty)]) == 2
    assert "lists no CP" in capsys.readouterr().out
    assert cli.main(args + ["--file", str(tmp_path / "missing.txt")]) == 2
    assert "cannot read the services file" in capsys.readouterr().out


def test_parser(monkeypatch):
    monkeypatch.setenv("EV_KAFKA", "kafka.lab:9092")
    monkeypatch.setenv("EV_TOPIC_PREFIX", "demo-")
    args = cli.build_parser().parse_args(["--driver_id", D])
    assert (args.kafka, args.topic_prefix, args.file, args.cp) == ("kafka.lab:9092", "demo-", None, None)
    assert (args.timeout, args.supply_timeout, args.pause) == (10, 120, 4)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--driver_id", D, "--file", "f", "--cp", "CP1"])
    for bad in (["--cp", "CP 1"], ["--timeout", "0"], ["--pause", "-1"], ["--kafka", "nohost"]):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["--driver_id", D, *bad])


def test_a_corrected_ticket_is_shown_once_and_counts_in_the_summary(make_driver, central, out):
    driver = make_driver()
    central.on("CP1", full_supply("S1"))
    results, _ = run_file(driver, ["CP1"], pause=0)
    fixed = dataclasses.replace(ticket("S1", "CP1", "1.4", "0.70", request_id=results[0].request_id), corrected=True)
    driver.handle(D, fixed)
    driver.handle(D, fixed)  # delivered twice
    driver.handle(D, ticket("S1", "CP1", "1.0", "0.50", request_id=results[0].request_id))  # the first, again
    text = out.getvalue()
    assert text.count("CORRECTED TICKET of an earlier supply at CP1 (the CP's final figures came late; "
                      "this one counts): COMPLETED") == 1
    assert text.count("TICKET of your supply at CP1") == 1 and "Amount     0.70 EUR" in text
    assert results[0].amount_eur == Decimal("0.70")  # a later summary counts the final figures
