"""Crash cases of the assignment, with real processes killed abruptly (SIGKILL), the real
broker (cut off behind a proxy) and real MySQL: the rest goes on and nothing is lost."""

from __future__ import annotations

import re
import signal
import time

import pytest

from ev_central.store import open_store
from tests.support.proxy import CuttableProxy
from tests.support.services import free_port, parse_mysql_url
from tests.support.system import EVSystem
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

MODES = pytest.mark.parametrize("secure", [False, True], ids=["open", "secure"])


@pytest.fixture(params=[False, True], ids=["open", "secure"])
def system(request, runner, kafka_bootstrap, kafka_topic_prefix, fresh_mysql_url):
    """Every crash case in open mode (Release 1) and in secure mode (TLS, credentials, sealed
    records): Central on a new MySQL database with drivers D001 and D002."""
    system = EVSystem(runner, kafka_bootstrap, fresh_mysql_url, kafka_topic_prefix, secure=request.param)
    system.register_drivers("D001", "D002")
    system.start_central()
    yield system
    runner.stop_all()
    system.close()


def ended_sessions(store, driver_id):
    return [s for s in store.list_sessions(driver_id=driver_id) if s.status in ("COMPLETED", "INTERRUPTED")]


def test_monitor_dies_mid_supply(system):
    cp = system.start_cp("CP001", "--auto", "--auto-seconds", "60")
    driver = system.start_driver("D001", "--cp", "CP001")
    driver.wait_for_output(r"Charging at CP001", timeout=30)
    cp.monitor.kill()
    system.wait_cp_state("CP001", "DESCONECTADO", 1.5)  # at once
    cp.engine.wait_for_output(r"supply of driver D001 ended \(monitor lost\)", timeout=5)  # within 3 s
    assert driver.wait_exit(30) == 1
    assert re.search(r"TICKET of your supply at CP001: INTERRUPTED", driver.output()), driver.output()
    [session] = ended_sessions(system.store, "D001")
    assert (session.status, session.end_reason) == ("INTERRUPTED", "Monitor lost") and session.kwh > 0
    cp.engine.proc.stdin.write(b"rD002\n")  # a manual request at the CP: refused without its Monitor
    cp.engine.proc.stdin.flush()
    cp.engine.wait_for_output(r"cannot request a supply: no Monitor connected")
    refused = system.start_driver("D002", "--cp", "CP001", "--timeout", "5", name="driver-D002")
    assert refused.wait_exit(60) == 1 and "DENIED at CP001" in refused.output()


def test_engine_dies_mid_supply_and_reports_it_when_back(system):
    cp = system.start_cp("CP001", "--auto", "--auto-seconds", "60")
    driver = system.start_driver("D001", "--cp", "CP001")
    driver.wait_for_output(r"Charging at CP001", timeout=30)
    wait_until(lambda: [s for s in system.sessions(driver_id="D001") if s.kwh > 0], 10, "telemetry at Central")
    killed = time.monotonic()
    cp.engine.kill()
    system.wait_cp_state("CP001", "AVERIADO", 3)
    assert time.monotonic() - killed <= 2.5
    driver.wait_for_output(r"ALERT from CP001: AVERIADO", timeout=10)  # the driver is told
    last_kwh = max(s.kwh for s in system.sessions(driver_id="D001"))
    engine = system.start_engine("CP001", cp.engine_argv)  # the same Engine again, same journal
    engine.wait_for_output(r"reported the supply interrupted by the last stop: driver D001", timeout=10)
    assert driver.wait_exit(30) == 1
    assert re.search(r"TICKET of your supply at CP001: INTERRUPTED", driver.output()), driver.output()
    [session] = ended_sessions(system.store, "D001")
    assert session.status == "INTERRUPTED" and session.kwh >= last_kwh > 0  # nothing supplied is lost
    system.wait_cp_state("CP001", "ACTIVADO", 10)


def test_driver_dies_mid_supply_and_sees_its_ticket_when_back(system):
    system.start_cp("CP001", "--auto", "--auto-seconds", "6")
    driver = system.start_driver("D001", "--cp", "CP001")
    driver.wait_for_output(r"Charging at CP001", timeout=30)
    driver.kill()
    wait_until(lambda: ended_sessions(system.store, "D001"), 30, "the supply to go on to its end")
    [session] = ended_sessions(system.store, "D001")
    assert session.status == "COMPLETED"  # the supply went on without the app
    back = system.start_driver("D001", name="driver-D001-back")  # the app again, interactive
    back.wait_for_output(r"TICKET of an? .*CP001: COMPLETED", timeout=40)
    assert session.session_id in back.output()


def test_central_dies_mid_supply(system):
    cp = system.start_cp("CP001", "--auto", "--auto-seconds", "8")
    driver = system.start_driver("D001", "--cp", "CP001", "--supply-timeout", "120")
    driver.wait_for_output(r"Charging at CP001", timeout=30)
    system.central.kill()
    cp.monitor.wait_for_output(r"Cannot connect to CENTRAL", timeout=10)
    cp.engine.wait_for_output(r"supply of driver D001 ended \(unplugged\)", timeout=20)  # the CP finished it
    refused = system.start_driver("D002", "--cp", "CP001", "--timeout", "3", name="driver-D002")
    assert refused.wait_exit(60) == 1
    assert "Cannot connect to CENTRAL" in refused.output()  # no new supplies while Central is away
    mark = cp.monitor.mark()
    system.start_central()
    cp.monitor.wait_for_output(r"Registered at Central as CP001", after=mark, timeout=15)
    system.wait_cp_state("CP001", "ACTIVADO", 15)
    assert driver.wait_exit(60) == 0, driver.output()  # the ticket of the supply that ended meanwhile
    assert driver.output().count("TICKET of your supply at CP001") == 1
    [session] = ended_sessions(system.store, "D001")
    assert session.status == "COMPLETED" and session.ticket_sent


@MODES
def test_broker_outage_mid_supply_loses_nothing_and_service_resumes(runner, tansu_factory, kafka_topic_prefix,
                                                                    fresh_mysql_url, secure):
    """The broker becomes unreachable (every connection cut, new ones refused; it keeps its
    data, as Apache Kafka does) while a supply runs and ends: nobody dies, and once it is
    back the held telemetry, end and ticket arrive and the next supply works."""
    port = free_port()
    proxy = CuttableProxy("127.0.0.1", port)
    tansu_factory(port=port, advertised_port=proxy.port)
    system = EVSystem(runner, f"127.0.0.1:{proxy.port}", fresh_mysql_url, kafka_topic_prefix, secure=secure)
    try:
        system.register_drivers("D001", "D002")
        system.start_central()
        cp = system.start_cp("CP001", "--auto", "--auto-seconds", "4")
        first = system.start_driver("D001", "--cp", "CP001", "--supply-timeout", "120")
        first.wait_for_output(r"Charging at CP001", timeout=30)
        proxy.cut()  # the outage
        system.central.wait_for_output(r"Kafka unreachable", timeout=20)
        cp.engine.wait_for_output(r"supply of driver D001 ended", timeout=20)  # ended during the outage
        proxy.restore()  # (a request made meanwhile: tests/driver/test_driver_kafka.py, dead broker)
        assert first.wait_exit(60) == 0, first.output()  # its ticket, after the outage
        assert first.output().count("TICKET of your supply at CP001: COMPLETED") == 1, first.output()
        [session] = ended_sessions(system.store, "D001")
        assert session.status == "COMPLETED" and session.kwh > 0 and session.ticket_sent
        after = system.start_driver("D002", "--cp", "CP001", "--timeout", "40", name="driver-after")
        assert after.wait_exit(120) == 0, after.output()
        for program in (system.central, cp.engine, cp.monitor):
            assert program.proc.poll() is None, f"{program.name} died:\n{program.output()[-2000:]}"
        assert [s.status for s in ended_sessions(system.store, "D002")] == ["COMPLETED"]
    finally:
        runner.stop_all()
        system.close()
        proxy.close()


def test_central_stopped_with_ctrl_c_exits_cleanly(system):
    system.start_cp("CP001")
    assert system.central.stop(signal.SIGINT) == 0
    system.cps["CP001"].monitor.wait_for_output(r"Cannot connect to CENTRAL", timeout=10)
    assert "Traceback" not in system.central.output()


@MODES
def test_database_outage_loses_no_ticket(runner, kafka_bootstrap, kafka_topic_prefix, fresh_mysql_url, secure):
    url = parse_mysql_url(fresh_mysql_url)
    proxy = CuttableProxy(url.host, url.port)
    system = EVSystem(runner, kafka_bootstrap, fresh_mysql_url.replace(f"{url.host}:{url.port}",
                                                                       f"127.0.0.1:{proxy.port}"),
                      kafka_topic_prefix, secure=secure)
    direct = open_store(fresh_mysql_url)  # reads the database around the proxy
    try:
        system.register_drivers("D001")
        system.start_central()
        system.start_cp("CP001", "--auto", "--auto-seconds", "2")
        before = system.start_driver("D001", "--cp", "CP001", name="driver-before")
        assert before.wait_exit(60) == 0, before.output()  # Central now knows D001

        proxy.cut()  # the database is gone
        during = system.start_driver("D001", "--cp", "CP001", name="driver-during")
        assert during.wait_exit(60) == 0, during.output()  # served from memory: ticket and all
        system.central.wait_for_output(r"database unreachable", timeout=20)
        assert len(ended_sessions(direct, "D001")) == 1  # the second is not written yet

        proxy.restore()
        wait_until(lambda: len([s for s in ended_sessions(direct, "D001") if s.ticket_sent]) == 2, 40,
                   "the session of the outage to be written with its ticket")
        system.central.wait_for_output(r"database back", timeout=20)
        assert system.central.proc.poll() is None
    finally:
        runner.stop_all()
        direct.close()
        system.close()
        proxy.close()
