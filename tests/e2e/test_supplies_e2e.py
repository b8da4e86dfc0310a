"""End to end: supplies with every program as a real process, the real broker, real MySQL
(and SQLite): a complete supply, a services file across two CPs, Stop and a fault during a
supply, an unregistered driver."""

from __future__ import annotations

import re
import signal
from decimal import ROUND_HALF_UP, Decimal

import pytest
from confluent_kafka import Producer

from ev_driver.screen import kwh as screen_kwh
from tests.support.system import EVSystem
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


def make_system(runner, kafka_bootstrap, kafka_topic_prefix, db_url):
    system = EVSystem(runner, kafka_bootstrap, db_url, kafka_topic_prefix)
    system.register_drivers("D001", "D002")
    system.start_central()
    return system


@pytest.fixture
def system(runner, kafka_bootstrap, kafka_topic_prefix, fresh_mysql_url):
    system = make_system(runner, kafka_bootstrap, kafka_topic_prefix, fresh_mysql_url)
    yield system
    runner.stop_all()  # before the database is dropped
    system.close()


def test_complete_supply_with_ticket(system):
    system.start_cp("CP001", "--auto", "--auto-seconds", "3", price="0.48")
    garbage = Producer({"bootstrap.servers": system.kafka})
    for topic in (system.prefix + "ev.driver.requests", system.prefix + "ev.cp.telemetry"):
        for value in (b"not json", b'{"type":"supply.request","v":1}', b'{"type":"telemetry","v":99}'):
            garbage.produce(topic, key=b"D001", value=value)
    assert garbage.flush(10) == 0
    driver = system.start_driver("D001", "--cp", "CP001")
    assert driver.wait_exit(60) == 0, driver.output()
    out = driver.output()
    for step in (r"Supply requested at CP001", r"Central received the request for CP001",
                 r"AUTHORISED at CP001: session \w+, price 0\.48 EUR/kWh", r"Charging at CP001: [\d.]+ kWh",
                 r"TICKET of your supply at CP001: COMPLETED"):
        assert re.search(step, out), f"driver did not show {step!r}:\n{out}"
    [session] = system.sessions(driver_id="D001")
    assert (session.status, session.end_reason, session.ticket_sent) == ("COMPLETED", "unplugged", True)
    assert session.kwh > 0
    assert session.amount_eur == (session.kwh * session.price_eur_kwh).quantize(Decimal("0.01"), ROUND_HALF_UP)
    assert re.search(rf"Energy\s+{screen_kwh(session.kwh)} kWh", out), out  # as the app rounds it
    system.wait_cp_state("CP001", "ACTIVADO", 5)
    system.central.wait_for_output(r"ticket \w+: driver D001 at CP001")
    system.central.wait_for_output(r"CP001 SUMINISTRANDO to driver D001: [\d.]+ kWh, [\d.]+ EUR")
    assert system.central.output().count("skipped a malformed record") == 6


def test_services_file_across_two_cps_with_denials(system, tmp_path):
    system.start_cp("CP001", "--auto", "--auto-seconds", "1")
    system.start_cp("CP002", "--auto", "--auto-seconds", "1")
    system.start_cp("CP003", "--auto", "--auto-seconds", "1")
    system.operator("stop CP003")
    system.wait_cp_state("CP003", "PARADO", 5)
    entries = ["CP001", "CP002", "NOPE", "CP001", "CP003", "CP002", "# a comment", "", "CP001", "CP002",
               "CP001", "CP002"]
    services = tmp_path / "services.txt"
    services.write_text("\n".join(entries) + "\n")
    driver = system.start_driver("D001", "--file", str(services), "--pause", "0.5")
    assert driver.wait_exit(120) == 0, driver.output()
    out = driver.output()
    assert "[10 of 10]" in out
    assert re.search(r"DENIED at NOPE: unknown CP NOPE", out), out
    assert re.search(r"DENIED at CP003: CP003 is not available \(Out of Order\)", out), out
    sessions = system.sessions(driver_id="D001")
    assert len(sessions) == 8 and all(s.status == "COMPLETED" and s.ticket_sent for s in sessions)
    assert {s.cp_id for s in sessions} == {"CP001", "CP002"}
    assert out.count("TICKET of your supply") == 8


def test_stop_during_a_supply_then_resume(system):
    system.start_cp("CP001", "--auto", "--auto-seconds", "60")
    driver = system.start_driver("D001", "--cp", "CP001")
    driver.wait_for_output(r"Charging at CP001", timeout=30)
    system.operator("stop CP001")
    assert driver.wait_exit(30) == 1  # the supply did not complete
    out = driver.output()
    assert re.search(r"ALERT from CP001: PARADO: stopped by Central", out), out
    assert re.search(r"TICKET of your supply at CP001: INTERRUPTED", out), out
    [session] = system.sessions(driver_id="D001")
    assert (session.status, session.end_reason) == ("INTERRUPTED", "stopped by Central")
    assert session.kwh > 0
    system.wait_cp_state("CP001", "PARADO", 5)
    system.cps["CP001"].engine.wait_for_output(r"Central STOPPED this CP")
    denied = system.start_driver("D002", "--cp", "CP001", name="driver-D002-denied")
    assert denied.wait_exit(60) == 1
    assert "Out of Order" in denied.output()
    system.operator("resume CP001")
    system.wait_cp_state("CP001", "ACTIVADO", 5)


def test_fault_during_a_supply_interrupts_it(system):
    cp = system.start_cp("CP001", "--auto", "--auto-seconds", "60")
    driver = system.start_driver("D001", "--cp", "CP001")
    driver.wait_for_output(r"Charging at CP001", timeout=30)
    cp.engine.send_signal(signal.SIGUSR1)  # the KO key
    assert driver.wait_exit(30) == 1
    out = driver.output()
    assert re.search(r"TICKET of your supply at CP001: INTERRUPTED", out), out
    [session] = system.sessions(driver_id="D001")
    assert session.status == "INTERRUPTED" and session.kwh > 0
    system.wait_cp_state("CP001", "AVERIADO", 5)
    cp.engine.send_signal(signal.SIGUSR1)
    system.wait_cp_state("CP001", "ACTIVADO", 5)


def test_unregistered_driver_is_denied(system):
    system.start_cp("CP001", "--auto")
    driver = system.start_driver("D999", "--cp", "CP001")
    assert driver.wait_exit(60) == 1
    assert re.search(r"DENIED at CP001: driver D999 is not registered", driver.output()), driver.output()
    assert system.sessions(driver_id="D999") == []
    system.wait_cp_state("CP001", "ACTIVADO", 5)


def test_manual_request_at_the_cp(system):
    cp = system.start_cp("CP001")  # manual: a person plugs and unplugs
    driver = system.start_driver("D001")  # interactive app, to watch the supply requested at the CP
    driver.wait_for_output(r"Ctrl\+C quits")
    cp.engine.proc.stdin.write(b"rD001\n")  # [r] request a supply, driver id, Enter
    cp.engine.proc.stdin.flush()
    cp.engine.wait_for_output(r"supply AUTHORISED for driver D001", timeout=30)
    cp.engine.proc.stdin.write(b"p")
    cp.engine.proc.stdin.flush()
    cp.engine.wait_for_output(r"plugged in")
    wait_until(lambda: any(s.status == "SUPPLYING" for s in system.sessions(driver_id="D001")), 10,
               "telemetry to reach Central")
    cp.engine.proc.stdin.write(b"u")
    cp.engine.proc.stdin.flush()
    wait_until(lambda: [s.status for s in system.sessions(driver_id="D001")] == ["COMPLETED"], 15,
               "the ticket of the manual supply")
    driver.wait_for_output(r"TICKET of .*CP001: COMPLETED", timeout=15)


def test_complete_supply_on_embedded_sqlite(runner, kafka_bootstrap, kafka_topic_prefix, tmp_path):
    system = make_system(runner, kafka_bootstrap, kafka_topic_prefix, f"sqlite:///{tmp_path / 'central.db'}")
    try:
        system.start_cp("CP001", "--auto", "--auto-seconds", "2")
        driver = system.start_driver("D002", "--cp", "CP001")
        assert driver.wait_exit(60) == 0, driver.output()
        [session] = system.sessions(driver_id="D002")
        assert session.status == "COMPLETED" and session.ticket_sent
    finally:
        runner.stop_all()
        system.close()
