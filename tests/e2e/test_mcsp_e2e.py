"""End to end: RFID tags over MCSP with every program a real process, the real broker, and the
database on MySQL and on SQLite. START/END at a real Engine, an idempotent END, a second START
while busy, the account's statement against the sessions, the END answers and the driver's ticket,
and a Central restarted (killed) between START and END."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from decimal import Decimal

import pytest

from ev_common.mcsp import EndOk, EndRequest, ErrorAnswer, StartOk, StartRequest
from tests.support.mcsp_station import Station
from tests.support.processes import ROOT
from tests.support.services import free_port, port_open
from tests.support.system import EVSystem
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

UID = "16AC936B1692E73A"
OTHER = "04A224B2C3D4E5"


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def db_url(request, tmp_path) -> str:
    if request.param == "mysql":
        return request.getfixturevalue("fresh_mysql_url")
    return f"sqlite:///{tmp_path / 'central.db'}"


@pytest.fixture
def system(runner, kafka_bootstrap, kafka_topic_prefix, db_url):
    system = EVSystem(runner, kafka_bootstrap, db_url, kafka_topic_prefix)
    store = system.store
    store.add_account("FLAT3B", "Flat 3B", "apartment")
    store.add_tag(UID, "FLAT3B")
    store.add_account("FLAT4A", "Flat 4A", "apartment")
    store.add_tag(OTHER, "FLAT4A")
    store.add_driver("D001")
    store.set_driver_account("D001", "FLAT3B")
    system.mcsp_port = free_port()
    start_central(system)
    yield system
    runner.stop_all()
    system.close()


def start_central(system: EVSystem) -> None:
    system.start_central("--mcsp-port", str(system.mcsp_port), "--ui", "log")
    wait_until(lambda: port_open("127.0.0.1", system.mcsp_port), 20, "Central's MCSP port")


def rfid(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ev_rfid", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def session(system: EVSystem, session_id: str):
    return system.store.get_session(session_id)


def supplying(system: EVSystem, session_id: str) -> bool:
    row = session(system, session_id)
    return row is not None and row.status == "SUPPLYING" and row.kwh > 0


def test_start_end_at_a_real_engine_and_the_statement(system):
    cp = system.start_cp("CP001", "--auto", "--auto-seconds", "120", price="0.48")
    station = Station(("127.0.0.1", system.mcsp_port))
    started = station.ask(StartRequest("CP001", UID))
    assert isinstance(started, StartOk), started
    cp.engine.wait_for_output(r"supply AUTHORISED for driver FLAT3B")  # SUP carries the tag's account
    busy = station.ask(StartRequest("CP001", OTHER))  # a second START while busy
    assert isinstance(busy, ErrorAnswer) and busy.code == 409, busy
    wait_until(lambda: supplying(system, started.session_id), 20, "telemetry of the tag's supply in the database")
    system.wait_cp_state("CP001", "SUMINISTRANDO", 5)

    ended = station.ask(EndRequest("CP001", started.session_id, UID))
    assert isinstance(ended, EndOk) and ended.energy_kwh > 0, ended
    cp.engine.wait_for_output(r"ended \(unplugged\)")
    row = wait_until(lambda: (r := session(system, started.session_id)) and r.ended_at and r, 10, "the closed row")
    assert (row.status, row.end_reason, row.tag_uid, row.account_id, row.driver_id) == (
        "COMPLETED", "unplugged", UID, "FLAT3B", "")
    assert row.kwh == ended.energy_kwh and row.amount_eur == ended.amount_eur  # the Engine's figures
    assert station.ask(EndRequest("CP001", started.session_id, UID)) == ended  # idempotent
    # the stand-alone client, as a station that is no Engine would use it
    central = f"127.0.0.1:{system.mcsp_port}"
    again = rfid("end", "--central", central, "--station", "CP001", "--key", UID, "--session", started.session_id)
    assert again.returncode == 0 and f"Energy-kWh: {ended.energy_kwh}" in again.stdout, again
    refused = rfid("start", "--central", central, "--station", "CP001", "--key", "01:02:03:04")
    assert refused.returncode == 1 and "Message: Key is not registered\nCode: 401" in refused.stdout, refused
    system.wait_cp_state("CP001", "ACTIVADO", 10)
    system.central.wait_for_output(r"MCSP START at CP001 with tag \.\.\.E73A")
    assert UID not in system.central.output()  # the key is never logged whole

    # a driver of the same account: its supply is booked to the account too
    system.start_cp("CP002", "--auto", "--auto-seconds", "2", price="0.50")
    driver = system.start_driver("D001", "--cp", "CP002")
    assert driver.wait_exit(60) == 0, driver.output()
    ticket_eur = Decimal(re.search(r"Amount\s+([\d.]+) EUR", driver.output()).group(1))
    station.close()

    statement = subprocess.run(
        [sys.executable, "-m", "ev_central", "accounts", "statement", "FLAT3B", "--csv", "--db", system.db_url],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert statement.returncode == 0, statement.stderr
    rows = list(csv.DictReader(io.StringIO(statement.stdout)))
    assert {(r["tag"], r["driver_id"]) for r in rows} == {(UID, ""), ("", "D001")}
    assert sum(Decimal(r["amount_eur"]) for r in rows) == ended.amount_eur + ticket_eur
    stored = system.store.account_statement("FLAT3B")
    assert stored.total_amount_eur == ended.amount_eur + ticket_eur
    assert stored.total_kwh == sum(s.kwh for s in stored.sessions)
    assert {s.status for s in stored.sessions} == {"COMPLETED"}


def test_central_killed_between_start_and_end_keeps_the_session(system):
    system.start_cp("CP001", "--auto", "--auto-seconds", "120")
    station = Station(("127.0.0.1", system.mcsp_port))
    started = station.ask(StartRequest("CP001", UID))
    assert isinstance(started, StartOk), started
    wait_until(lambda: supplying(system, started.session_id), 20, "the tag's supply under way")
    station.close()
    system.central.kill()
    start_central(system)
    system.wait_cp_state("CP001", "SUMINISTRANDO", 20)  # the Monitor registered again; the supply went on

    station = Station(("127.0.0.1", system.mcsp_port))
    ended = station.ask(EndRequest("CP001", started.session_id, UID))
    assert isinstance(ended, EndOk), ended
    station.close()
    [row] = [s for s in system.sessions(cp_id="CP001")]
    assert (row.session_id, row.status, row.kwh, row.amount_eur) == (
        started.session_id, "COMPLETED", ended.energy_kwh, ended.amount_eur)
