"""Central's weather office (ev_central/weather.py) with a real Central in this process (its store
on SQLite and on MySQL, no Kafka: a recording notifier stands for it) and fake Monitors on real
sockets that answer SUP, play the Engine's supply.end when stopped, and record what Central
tells them (STOP, RESUME). EV_W's side is in the other tests of this folder."""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator

import pytest

from ev_central.app import Central
from ev_central.console import execute
from ev_central.panel.widgets import tile_lines
from ev_central.store import open_store
from ev_central.view import CentralView, MessageLog
from ev_central.weather import AlertOutcome, CityReport, WeatherSnapshot, city_name
from ev_common.link import Link, LinkConfig, LinkError
from ev_common.protocol import Auth, Message, Reg, Resume, Stop, Sup, Supr
from ev_common.records import SupplyAlert, SupplyEnd, SupplyRequest, Ticket
from tests.support.waiting import wait_until

HOST = "127.0.0.1"
FAST = LinkConfig(connect_timeout=1.0, handshake_timeout=1.0, ack_timeout=0.5, max_retries=3, write_timeout=1.0)
QUIET = 3600.0  # the fake Monitors send no heartbeats
WAIT = 5.0
EV_W_IP = "10.0.0.9"
COLD = Decimal("-2.5")


class Notifier:
    """What Central would put on Kafka for drivers: kept, and every delivery confirmed."""

    def __init__(self) -> None:
        self.records: list = []
        self._lock = threading.Lock()

    def to_driver(self, driver_id, record, on_delivery=None) -> None:
        with self._lock:
            self.records.append(record)
        if on_delivery is not None:
            on_delivery(True)

    def cp_status(self, record) -> None:
        pass

    def of(self, kind) -> list:
        with self._lock:
            return [r for r in self.records if isinstance(r, kind)]


class FakeCP:
    """A Monitor and its Engine reduced to a link: SUP is answered OK, a STOP during a supply ends
    it as the Engine does (supply.end "stopped", straight into Central's service), and every
    STOP and RESUME is recorded."""

    def __init__(self, central: Central, cp_id: str) -> None:
        self.central, self.cp_id = central, cp_id
        self.received: list[Message] = []
        self.supplying: str | None = None
        self.link = Link.connect(*central.address, FAST)
        self.link.send(Reg(cp_id, "C/Mayor 1, Alicante", Decimal("0.48")))
        self._auth = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"fake-{cp_id}", daemon=True)
        self._thread.start()
        assert self._auth.wait(WAIT), "no AUTH"

    def _read(self) -> None:
        try:
            while not self.link.closed:
                message = self.link.recv(timeout=0.1)
                if message is None:
                    continue
                self.received.append(message)
                if isinstance(message, Auth):
                    self._auth.set()
                elif isinstance(message, Sup):
                    self.supplying = message.session_id
                    self.link.send(Supr(self.cp_id, message.session_id, "OK", ""))
                elif isinstance(message, Stop) and self.supplying:
                    session, self.supplying = self.supplying, None
                    self.central.supplies.on_supply_end(SupplyEnd(self.cp_id, session, "D001", 3, Decimal("1.25"),
                                                                  Decimal("0.60"), "stopped"))
        except LinkError:
            pass

    def commands(self) -> list[str]:
        return [m.OPCODE for m in list(self.received) if isinstance(m, (Stop, Resume))]

    def close(self) -> None:
        self.link.close("test over")
        self._thread.join(2)


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def db_url(request, tmp_path: Path) -> str:
    return request.getfixturevalue("fresh_mysql_url") if request.param == "mysql" else f"sqlite:///{tmp_path}/c.db"


@pytest.fixture
def start_central(db_url: str) -> Iterator[Callable[[], Central]]:
    started: list[Central] = []

    def start() -> Central:
        store = open_store(db_url)
        store.add_driver("D001")
        central = Central(store, HOST, 0, silence_timeout=QUIET, link_config=FAST, end_grace=2.0)
        central.supplies.notifier = Notifier()
        started.append(central)
        return central.start()

    yield start
    for central in reversed(started):
        central.stop()


@pytest.fixture
def central(start_central) -> Central:
    return start_central()


@pytest.fixture
def connect() -> Iterator[Callable[[Central, str], FakeCP]]:
    opened: list[FakeCP] = []

    def open_one(central: Central, cp_id: str) -> FakeCP:
        cp = FakeCP(central, cp_id)
        opened.append(cp)
        wait_until(lambda: central.network.get(cp_id) is not None, WAIT, f"{cp_id} registered")
        return cp

    yield open_one
    for cp in opened:
        cp.close()


def state(central: Central, cp_id: str) -> str:
    return central.network.get(cp_id).state


def wait_state(central: Central, cp_id: str, expected: str) -> None:
    wait_until(lambda: state(central, cp_id) == expected, WAIT, f"{cp_id} {expected} (is {state(central, cp_id)})")


def audited(central: Central, action: str) -> list:
    assert central.audit.wait_idle(WAIT)
    return central.store.list_audit(action=action)


# -- alert and clear -------------------------------------------------------------------------------


def test_an_alert_stops_the_citys_cps_and_a_clear_resumes_them(central, connect):
    cps = {cp_id: connect(central, cp_id) for cp_id in ("CP001", "CP002", "CP003")}
    wait_until(lambda: all(state(central, c) == "ACTIVADO" for c in cps), WAIT, "three CPs ACTIVADO")

    outcome = central.weather.alert("Alicante,ES", COLD, ["CP001", "CP002"], source_ip=EV_W_IP)
    assert outcome == AlertOutcome("Alicante,ES", True, ["CP001", "CP002"], [], False)
    assert [state(central, c) for c in cps] == ["PARADO", "PARADO", "ACTIVADO"]
    assert not central.network.get("CP001").stopped  # not an operator's stop
    wait_until(lambda: cps["CP001"].commands() == ["STOP"] and cps["CP002"].commands() == ["STOP"], WAIT,
               "STOP at both CPs")
    assert cps["CP003"].commands() == []

    view = CentralView(central, MessageLog())
    tile = next(t for t in view.tiles() if t.cp_id == "CP001")
    assert tile.note == "weather alert (Alicante,ES)"
    assert tile_lines(tile)[3:] == ["PARADO", "Out of Order", "weather alert (Alicante,ES)"]
    assert "CP001 PARADO (weather alert)" in execute(central, "list")

    (entry,) = audited(central, "weather.alert")
    assert (entry.entry.actor, entry.entry.source_ip, entry.entry.outcome) == ("EV_W", EV_W_IP, "ok")
    assert entry.entry.details == "Alicante,ES: -2.5 °C; stopped CP001, CP002"

    outcome = central.weather.clear("Alicante,ES", source_ip=EV_W_IP)
    assert outcome == AlertOutcome("Alicante,ES", False, [], ["CP001", "CP002"], False)
    assert [state(central, c) for c in cps] == ["ACTIVADO"] * 3
    wait_until(lambda: cps["CP001"].commands() == ["STOP", "RESUME"], WAIT, "RESUME at CP001")
    (entry,) = audited(central, "weather.clear")
    assert (entry.entry.actor, entry.entry.source_ip) == ("EV_W", EV_W_IP)
    assert entry.entry.details == "Alicante,ES: ?; resumed CP001, CP002"
    assert [t.note for t in view.tiles()] == [None, None, None]
    assert central.weather.alerts() == []


def test_a_running_supply_ends_with_reason_weather_alert(central, connect):
    cp = connect(central, "CP001")
    wait_state(central, "CP001", "ACTIVADO")
    central.supplies.on_request(SupplyRequest("req-1", "D001", "CP001"))
    wait_state(central, "CP001", "SUMINISTRANDO")

    central.weather.alert("Alicante,ES", Decimal("-0.5"), ["CP001"], source_ip=EV_W_IP)
    assert state(central, "CP001") == "PARADO"
    notifier: Notifier = central.supplies.notifier
    ticket = wait_until(lambda: notifier.of(Ticket), WAIT, "the ticket")[0]
    assert (ticket.status, ticket.end_reason, ticket.kwh) == ("INTERRUPTED", "weather alert", Decimal("1.25"))
    (alert,) = notifier.of(SupplyAlert)
    assert (alert.reason, alert.state) == ("weather alert", "PARADO")
    assert cp.supplying is None and "STOP" in cp.commands()
    stored = central.store.get_session(ticket.session_id)
    assert (stored.status, stored.end_reason) == ("INTERRUPTED", "weather alert")

    # while the alert lasts, the CP refuses supplies and says why
    central.supplies.on_request(SupplyRequest("req-2", "D001", "CP001"))
    denied = wait_until(lambda: [r for r in notifier.records if r.TYPE == "request.denied"], WAIT, "the denial")
    assert denied[0].reason == "CP001 is not available (Out of Order: weather alert)"


def test_an_operator_stop_survives_a_clear(central, connect):
    cps = {cp_id: connect(central, cp_id) for cp_id in ("CP001", "CP002")}
    wait_until(lambda: all(state(central, c) == "ACTIVADO" for c in cps), WAIT, "both ACTIVADO")
    assert execute(central, "stop CP002") == "stop: CP002 PARADO"
    central.weather.alert("Alicante,ES", COLD, ["CP001", "CP002"], source_ip=EV_W_IP)

    outcome = central.weather.clear("alicante, es", source_ip=EV_W_IP)  # the same city, spelt otherwise
    assert (outcome.city, outcome.resumed) == ("Alicante,ES", ["CP001"])
    assert (state(central, "CP001"), state(central, "CP002")) == ("ACTIVADO", "PARADO")
    assert central.network.get("CP002").stopped
    wait_until(lambda: cps["CP001"].commands() == ["STOP", "RESUME"], WAIT, "CP001 resumed")
    assert cps["CP002"].commands() == ["STOP", "STOP"]  # the operator's, the weather's; no RESUME
    assert audited(central, "weather.clear")[0].entry.details == (
        "Alicante,ES: ?; resumed CP001; still stopped by the operator CP002")
    assert execute(central, "resume CP002") == "resume: CP002 ACTIVADO"


def test_an_operator_resume_during_an_alert_keeps_the_cp_out_of_service(central, connect):
    cp = connect(central, "CP001")
    wait_state(central, "CP001", "ACTIVADO")
    central.weather.alert("Alicante,ES", COLD, ["CP001"], source_ip=EV_W_IP)
    execute(central, "stop CP001")
    answer = execute(central, "resume CP001")
    assert answer == "resume: CP001 PARADO (held by a weather alert until it clears)"
    row = central.network.get("CP001")
    assert (row.state, row.stopped) == ("PARADO", False)
    assert "RESUME" not in cp.commands()  # its Engine stays stopped
    central.weather.clear("Alicante,ES", source_ip=EV_W_IP)
    assert state(central, "CP001") == "ACTIVADO"
    wait_until(lambda: cp.commands()[-1:] == ["RESUME"], WAIT, "RESUME once the alert cleared")


def test_a_repeated_alert_changes_nothing_and_other_cps_change_it(central, connect):
    cps = {cp_id: connect(central, cp_id) for cp_id in ("CP001", "CP002")}
    wait_until(lambda: all(state(central, c) == "ACTIVADO" for c in cps), WAIT, "both ACTIVADO")
    central.weather.alert("Alicante,ES", COLD, ["CP001"], source_ip=EV_W_IP)
    wait_until(lambda: cps["CP001"].commands() == ["STOP"], WAIT, "STOP")

    again = central.weather.alert("ALICANTE,es".capitalize(), Decimal("-7"), ["CP001", "CP001"], source_ip=EV_W_IP)
    assert again == AlertOutcome("Alicante,ES", True, [], [], True)
    assert len(audited(central, "weather.alert")) == 1
    assert central.weather.alerts()[0].temperature == COLD

    moved = central.weather.alert("Alicante,ES", Decimal("-3"), ["CP002"], source_ip=EV_W_IP)
    assert (moved.stopped, moved.resumed, moved.unchanged) == (["CP002"], ["CP001"], False)
    assert (state(central, "CP001"), state(central, "CP002")) == ("ACTIVADO", "PARADO")
    assert central.weather.alerts()[0].cp_ids == ("CP002",)


def test_a_cp_under_two_alerts_is_resumed_when_both_cleared(central, connect):
    connect(central, "CP001")
    wait_state(central, "CP001", "ACTIVADO")
    central.weather.alert("Alicante,ES", COLD, ["CP001"], source_ip=EV_W_IP)
    assert central.weather.alert("Elche,ES", COLD, ["CP001"], source_ip=EV_W_IP).stopped == []
    assert central.weather.clear("Alicante,ES", source_ip=EV_W_IP).resumed == []
    assert state(central, "CP001") == "PARADO"
    assert central.weather.note_for("CP001") == "weather alert (Elche,ES)"
    assert central.weather.clear("Elche,ES", source_ip=EV_W_IP).resumed == ["CP001"]
    assert state(central, "CP001") == "ACTIVADO"


def test_a_cp_unknown_at_the_alert_is_held_when_it_signs_up(central, connect):
    outcome = central.weather.alert("Alicante,ES", COLD, ["CP007"], source_ip=EV_W_IP)
    assert outcome.stopped == []
    cp = connect(central, "CP007")
    wait_state(central, "CP007", "PARADO")
    wait_until(lambda: "STOP" in cp.commands(), WAIT, "STOP at registration")
    assert "not known to Central yet" in audited(central, "weather.alert")[0].entry.details


def test_malformed_calls_are_refused_and_change_nothing(central):
    for city, temperature, cp_ids in (("", COLD, []), ("Alicante,ES", Decimal("0"), []),
                                      ("Alicante,ES", Decimal("3.5"), []), ("Alicante,ES", "cold", []),
                                      ("Alicante,ES", Decimal("NaN"), []), ("Alicante,ES", COLD, ["CP 1"]),
                                      ("Alicante,ES", COLD, "CP001"), ("A\x00,ES", COLD, [])):
        with pytest.raises(ValueError):
            central.weather.alert(city, temperature, cp_ids, source_ip=EV_W_IP)
    with pytest.raises(KeyError):
        central.weather.clear("Alicante,ES", source_ip=EV_W_IP)
    with pytest.raises(ValueError):
        central.weather.report([CityReport("Alicante,ES", Decimal("500"), [], None, False)], source_ip=EV_W_IP)
    assert central.weather.alerts() == [] and audited(central, "weather.") == []
    assert city_name(" san  vicente del raspeig ,es ") == "san vicente del raspeig,ES"


# -- a restart --------------------------------------------------------------------------------------


def test_alerts_survive_a_restart_of_central(start_central, connect):
    central = start_central()
    connect(central, "CP001")
    connect(central, "CP002")
    wait_until(lambda: state(central, "CP002") == "ACTIVADO", WAIT, "CP002 ACTIVADO")
    central.weather.alert("Alicante,ES", COLD, ["CP001"], source_ip=EV_W_IP)
    execute(central, "stop CP002")
    central.weather.alert("Elche,ES", Decimal("-1"), ["CP002"], source_ip=EV_W_IP)
    central.stop()

    again = start_central()
    assert [(a.city, a.cp_ids, a.temperature) for a in again.weather.alerts()] == [
        ("Alicante,ES", ("CP001",), COLD), ("Elche,ES", ("CP002",), Decimal("-1"))]
    cp1, cp2 = connect(again, "CP001"), connect(again, "CP002")
    wait_state(again, "CP001", "PARADO")
    wait_until(lambda: "STOP" in cp1.commands() and "STOP" in cp2.commands(), WAIT, "STOP at registration")
    assert again.network.weather_held("CP001") and not again.network.get("CP001").stopped
    assert again.weather.alert("Alicante,ES", Decimal("-4"), ["CP001"], source_ip=EV_W_IP).unchanged
    assert again.weather.clear("Alicante,ES", source_ip=EV_W_IP).resumed == ["CP001"]
    assert again.weather.clear("Elche,ES", source_ip=EV_W_IP).resumed == []  # the operator's stop holds it
    assert (state(again, "CP001"), state(again, "CP002")) == ("ACTIVADO", "PARADO")
    again.stop()
    assert start_central().weather.alerts() == []


# -- reports and silence ------------------------------------------------------------------------------


def test_reports_are_shown_and_silence_is_said_once(central, caplog):
    caplog.set_level(logging.INFO, logger="ev_central.weather")
    office = central.weather
    office.silence = 0.5
    snapshot = office.snapshot()
    assert snapshot == WeatherSnapshot([], None, False)
    assert office.status_part() == ("", False)  # EV_W never heard from, no alert: nothing said

    office.report([CityReport("Alicante,ES", Decimal("12.5"), ["CP001"], None, False),
                   CityReport("Madrid,ES", None, ["CP002"], "timed out after 3 s", True)], source_ip=EV_W_IP)
    office.alert("Oslo,NO", Decimal("-8"), ["CP009"], source_ip=EV_W_IP)
    snapshot = office.snapshot()
    assert [(c.city, c.temperature, c.alert, c.error, c.simulated, c.cp_ids) for c in snapshot.cities] == [
        ("Alicante,ES", Decimal("12.5"), False, None, False, ["CP001"]),
        ("Madrid,ES", None, False, "timed out after 3 s", True, ["CP002"]),
        ("Oslo,NO", Decimal("-8"), True, None, False, ["CP009"])]
    assert snapshot.cities[2].alert_since is not None and snapshot.cities[2].last_report_at is None
    assert snapshot.ev_w_last_seen is not None and not snapshot.ev_w_silent
    assert office.status_part() == ("EV_W OK · weather alert: Oslo,NO", False)

    wait_until(lambda: office.snapshot().ev_w_silent, WAIT, "EV_W silent")
    wait_until(lambda: any("EV_W silent since" in r.message for r in caplog.records), WAIT, "the warning")
    text, trouble = office.status_part()
    assert trouble and text.startswith("EV_W silent since ") and text.endswith("· weather alert: Oslo,NO")
    health = CentralView(central, MessageLog()).health()
    assert "EV_W silent since" in health.text and health.level == "warning"
    office.sweep()
    office.sweep()
    assert sum("EV_W silent" in r.message for r in caplog.records) == 1
    assert [r.levelno for r in caplog.records if "EV_W silent" in r.message] == [logging.WARNING]

    office.report([CityReport("Alicante,ES", Decimal("11"), ["CP001"], None, False)], source_ip=EV_W_IP)
    assert not office.snapshot().ev_w_silent
    back = [r for r in caplog.records if "EV_W reporting again" in r.message]
    assert len(back) == 1 and back[0].levelno == logging.INFO
    # a city no longer reported leaves the list; one under an alert stays
    assert [c.city for c in office.snapshot().cities] == ["Alicante,ES", "Oslo,NO"]


def test_alerts_in_force_without_ev_w_since_the_start_are_a_silence(start_central, caplog):
    central = start_central()
    central.weather.alert("Oslo,NO", Decimal("-8"), ["CP009"], source_ip=EV_W_IP)
    central.stop()
    caplog.set_level(logging.WARNING, logger="ev_central.weather")
    again = start_central()
    again.weather.silence = 0.3
    wait_until(lambda: again.weather.snapshot().ev_w_silent, WAIT, "silent")
    wait_until(lambda: any("no report since Central started" in r.message for r in caplog.records), WAIT,
               "the warning")
    assert again.weather.snapshot().ev_w_last_seen is None
