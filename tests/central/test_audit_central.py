"""A real Central (SQLite and MySQL, no Kafka) with fake Monitors and an RFID station: a supply
authorised and ended, a fault and its recovery, an operator's command and an MCSP error end
up in the audit log, in order, and the chain verifies; what the database could not take at
the stop is appended at the next start."""

from __future__ import annotations

from decimal import Decimal
from typing import Iterator

import pytest

from ev_central.app import Central
from ev_central.audit import AuditLog, verify
from ev_central.console import execute
from ev_central.store import open_store
from ev_common.mcsp import EndOk, EndRequest, ErrorAnswer, StartOk, StartRequest
from ev_common.protocol import Avr, Rec
from tests.central.test_central_integration import FakeMonitor
from tests.central.test_mcsp_server import FAST, HOST, OTHER, QUIET, UID, FakeCP
from tests.support.mcsp_station import Station
from tests.support.waiting import wait_until

WAIT = 10.0


@pytest.fixture
def central(db_url: str, tmp_path) -> Iterator[Central]:
    store = open_store(db_url)
    store.add_account("FLAT3B", "Flat 3B", "apartment")
    store.add_tag(UID, "FLAT3B")
    started = Central(store, HOST, 0, silence_timeout=QUIET, link_config=FAST, mcsp_port=0,
                      audit=AuditLog(store, tmp_path / "audit-spool.jsonl")).start()
    started.supplies.tag_end_wait = 3.0
    yield started
    started.stop()


def entries(central: Central, action: str | None = None) -> list[tuple[str, str, str, str, str]]:
    assert central.effects.wait_idle(WAIT) and central.audit.wait_idle(WAIT)
    return [(r.entry.action, r.entry.actor, r.entry.details, r.entry.outcome, r.entry.source_ip)
            for r in central.store.list_audit(action=action)]


def test_a_supply_a_fault_a_command_and_an_mcsp_error_are_audited(central: Central) -> None:
    cp = FakeCP(central, "CP1")
    station = Station(central.mcsp_address)
    try:
        wait_until(lambda: central.network.get("CP1").state == "ACTIVADO", 5, "CP1 ACTIVADO")
        started = station.ask(StartRequest("CP1", UID))
        assert isinstance(started, StartOk)
        assert isinstance(station.ask(EndRequest("CP1", started.session_id, UID)), EndOk)
        assert isinstance(station.ask(StartRequest("CP1", OTHER)), ErrorAnswer)  # not registered
    finally:
        station.close()

    (registered,) = entries(central, "cp.register")
    assert registered[:2] == ("cp.register", "CP1") and registered[4] == "127.0.0.1"
    (start,) = entries(central, "supply.start")
    assert start == ("supply.start", "tag ...E73A", f"cp CP1, session {started.session_id}, account FLAT3B, "
                     "0.48 EUR/kWh, via MCSP", "ok", "127.0.0.1")
    (end,) = entries(central, "supply.end")
    assert end == ("supply.end", "tag ...E73A", f"cp CP1, session {started.session_id}, 2.75 kWh, 1.32 EUR, "
                   "COMPLETED, reason unplugged", "ok", "")
    (deny,) = entries(central, "supply.deny")
    assert deny[1:] == ("tag ...D4E5", "cp CP1 (MCSP): Key is not registered", "refused", "127.0.0.1")
    (error,) = entries(central, "mcsp.error")
    assert error[1] == "CP1" and "START: ERROR 401 Key is not registered" in error[2]

    cp.link.send(Avr("CP1", "Engine answers KO (simulated fault)"))
    wait_until(lambda: central.network.get("CP1").state == "AVERIADO", 5, "CP1 AVERIADO")
    cp.link.send(Rec("CP1"))
    wait_until(lambda: central.network.get("CP1").state == "ACTIVADO", 5, "CP1 ACTIVADO again")
    assert central.effects.wait_idle(WAIT)  # (the effects thread records the recovery)
    assert execute(central, "stop CP1") == "stop: CP1 PARADO"
    cp.close()
    wait_until(lambda: central.network.get("CP1").state == "DESCONECTADO", 5, "CP1 DESCONECTADO")

    found = entries(central)
    actions = [e[0] for e in found]
    assert actions[:7] == ["cp.register", "supply.start", "supply.end", "supply.deny", "mcsp.error", "cp.fault",
                           "cp.recover"]
    assert set(actions[7:9]) == {"cp.stop", "operator.command"}  # (the effects thread records the change)
    assert actions[9:] == ["cp.disconnect"]
    by_action = {e[0]: e for e in found}
    assert by_action["cp.fault"][1:] == ("CP1", "ACTIVADO -> AVERIADO: Engine fault: Engine answers KO (simulated "
                                                "fault)", "ok", "127.0.0.1")
    assert by_action["operator.command"][1:] == ("operator", "stop CP1 -> stop: CP1 PARADO", "ok", "")
    assert not any(UID in field or OTHER in field for entry in found for field in entry)
    check = verify(central.store)
    assert check.ok and check.checked == len(found)


def test_a_plain_monitor_session_is_audited_with_its_address(central: Central) -> None:
    monitor = FakeMonitor(central.address)
    try:
        assert monitor.register("CP7").ok
    finally:
        monitor.close()
    wait_until(lambda: central.network.get("CP7").state == "DESCONECTADO", 5, "CP7 DESCONECTADO")
    found = entries(central)
    assert [(e[0], e[1], e[4]) for e in found] == [("cp.register", "CP7", "127.0.0.1"),
                                                   ("cp.disconnect", "CP7", "127.0.0.1")]


def test_what_the_database_did_not_take_is_appended_at_the_next_start(db_url: str, tmp_path) -> None:
    spool = tmp_path / "audit-spool.jsonl"
    store = open_store(db_url)
    first = Central(store, HOST, 0, silence_timeout=QUIET, link_config=FAST, audit=AuditLog(store, spool))
    first.audit.record("operator.command", "operator", "recorded while the writer had not started")
    first.audit.stop()  # (Central not started: the entry goes to the spool)
    first.stop()
    assert spool.exists()

    store = open_store(db_url)
    again = Central(store, HOST, 0, silence_timeout=QUIET, link_config=FAST, audit=AuditLog(store, spool)).start()
    try:
        assert again.audit.wait_idle(WAIT)
        assert [r.entry.details for r in store.list_audit()] == ["recorded while the writer had not started"]
        assert not spool.exists()
    finally:
        again.stop()


def test_central_builds_its_own_audit_log_next_to_the_database(tmp_path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/ev.db")
    central = Central(store, HOST, 0, silence_timeout=QUIET, link_config=FAST)
    try:
        assert isinstance(central.audit, AuditLog)
        assert central.audit.spool.path == tmp_path / "ev.db.audit-spool.jsonl"
        assert central.supplies.audit is central.audit
    finally:
        central.stop()


def test_the_status_line_says_when_audit_entries_wait_in_the_spool(tmp_path) -> None:
    from ev_central.view import CentralView, MessageLog

    store = open_store(f"sqlite:///{tmp_path}/ev.db")
    central = Central(store, HOST, 0, silence_timeout=QUIET, link_config=FAST,
                      audit=AuditLog(store, tmp_path / "audit-spool.jsonl"))
    try:
        view = CentralView(central, MessageLog())
        assert "audit" not in view.health().text and view.health().level == "ok"
        central.audit.record("operator.command", "operator", "list -> no CPs yet")
        central.audit.stop()  # (not started: the entry waits in the spool)
        health = view.health()
        assert "audit: 1 entry spooled" in health.text and health.level == "warning" and health.ok
    finally:
        central.stop()
