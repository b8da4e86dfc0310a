"""Every read of Central's API over real HTTP against a real Central: CPs in each state with their
supply, registration and key state; ongoing requests; messages; drivers, accounts, sessions and the
audit log (paged); the weather; Central's health. Each answer is checked against its documented
model (ev_central/api/models.py)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from ev_central.api import models as m
from ev_central.core.states import Event
from ev_central.store import SessionRow
from ev_central.weather import CityReport, WeatherOffice
from ev_common.protocol import Avr
from ev_common.records import Telemetry
from tests.support.clock import FakeClock
from tests.support.waiting import wait_until

from .conftest import register_cp

T0 = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def supply(running, cp_id: str, session_id: str, driver: str = "D1", kwh: str = "1.5", **who) -> None:
    """A supply in course at ``cp_id`` in Central's domain (as the panel's demo opens them)."""
    central = running.central
    central.book.open(session_id, f"request-{session_id}", cp_id, driver, Decimal("0.48"), **who)
    central.network.apply(cp_id, Event.SUPPLY_STARTED, f"supply {session_id} started")
    on_cp = driver or who["account_id"]  # what SUP carried to the CP: the driver, or the tag's account
    central.supplies.on_telemetry(Telemetry(cp_id, session_id, on_cp, 1, Decimal(kwh), Decimal("0.72"),
                                            Decimal("11")))


def test_cps_in_every_state_with_supply_registration_and_reason(running):
    store = running.central.store
    register_cp(store, "CP1")
    register_cp(store, "CP3")
    store.deregister_cp("CP3")
    running.api.api.registrations.refresh()
    running.monitor("CP1", "C/Mayor, 45", "0.48")
    faulty = running.monitor("CP2", "Plaza Nueva 1", "0.50")
    running.monitor("CP3").close()
    running.monitor("CP4", "Av. del Puerto, 3", "0.35")
    running.monitor("CP5")
    faulty.send(Avr("CP2", "Engine does not answer"))
    wait_until(lambda: running.state("CP2") == "AVERIADO", 3, "CP2 AVERIADO")
    wait_until(lambda: running.state("CP3") == "DESCONECTADO", 3, "CP3 DESCONECTADO")
    supply(running, "CP4", "s-cp4", tag_uid="16AC936B1692E73A", account_id="FLAT3B", driver="")
    running.operator().post("/api/cps/CP5/stop").raise_for_status()

    answer = running.http().get("/api/cps")
    assert answer.status_code == 200
    cps = {cp.cp_id: cp for cp in m.CPList.model_validate(answer.json()).cps}
    assert [cp_id for cp_id in cps] == ["CP1", "CP2", "CP3", "CP4", "CP5"]
    one = cps["CP1"]
    assert (one.location, one.price_eur_kwh, one.state, one.meaning, one.reason) == (
        "C/Mayor, 45", "0.48", "ACTIVADO", "available", None)
    assert one.registration.state == "registered" and one.registration.since is not None
    assert one.key is None  # open mode: CPs have no keys
    assert (cps["CP2"].state, cps["CP2"].fault, cps["CP2"].reason) == (
        "AVERIADO", "Engine does not answer", "Engine fault: Engine does not answer")
    assert (cps["CP3"].state, cps["CP3"].reason, cps["CP3"].registration.state) == (
        "DESCONECTADO", "no Monitor connected", "deregistered")
    four = cps["CP4"]
    assert four.state == "SUMINISTRANDO" and four.registration.state == "not registered"
    assert (four.supply.session_id, four.supply.driver_id, four.supply.account_id, four.supply.tag) == (
        "s-cp4", None, "FLAT3B", "...E73A")
    assert (four.supply.kwh, four.supply.amount_eur) == ("1.5", "0.7200")
    assert "16AC936B1692E73A" not in answer.text  # a tag's UID is a key: never shown whole
    assert (cps["CP5"].state, cps["CP5"].stopped, cps["CP5"].reason) == (
        "PARADO", True, "Out of Order: stopped by the operator")

    single = running.http().get("/api/cps/CP4")
    assert single.status_code == 200 and m.CP.model_validate(single.json()) == four
    missing = running.http().get("/api/cps/CP9")
    assert (missing.status_code, missing.json()) == (404, {"error": "not_found", "message": "no CP CP9"})
    assert "credential" not in answer.text and "hash" not in answer.text


def test_requests_messages_and_the_weather(running):
    running.monitor("CP1")
    running.monitor("CP2")
    running.central.book.open("s-auth", "r-auth", "CP1", "D7", Decimal("0.48"))
    supply(running, "CP2", "s-sup", driver="D8")
    answer = running.http().get("/api/requests")
    requests = m.RequestList.model_validate(answer.json()).requests
    assert {(r.who, r.cp_id, r.status, r.via) for r in requests} == {("D7", "CP1", "authorised", "Kafka"),
                                                                    ("D8", "CP2", "supplying", "Kafka")}

    logging.getLogger("ev_central.test").error("the thing failed: %s", "badly")
    logging.getLogger("ev_central.test").warning("watch out")
    logging.getLogger("ev_central.live").info("CP2 1.500 kWh")  # per-second figures are not messages
    messages = m.MessageList.model_validate(running.http().get("/api/messages", params={"limit": 500}).json())
    texts = [(message.level, message.text) for message in messages.messages]
    assert ("error", "the thing failed: badly") in texts and ("warning", "watch out") in texts
    assert not any("kWh" in text for _, text in texts)
    assert len(running.http().get("/api/messages", params={"limit": 2}).json()["messages"]) == 2
    assert running.http().get("/api/messages", params={"limit": 501}).status_code == 422

    office = running.central.weather
    office.report([CityReport("Alicante,ES", Decimal("12.5"), ["CP1"], None, False),
                   CityReport("Teruel,ES", None, ["CP2"], "OpenWeather answered 500", False)], source_ip="10.0.0.9")
    office.alert("Teruel,ES", Decimal("-2.5"), ["CP2"], source_ip="10.0.0.9")
    weather = m.Weather.model_validate(running.http().get("/api/weather").json())
    cities = {city.city: city for city in weather.cities}
    assert weather.available and weather.ev_w.silent is False and weather.ev_w.last_seen is not None
    assert (cities["Alicante,ES"].temperature, cities["Alicante,ES"].alert) == ("12.5", False)
    assert (cities["Teruel,ES"].alert, cities["Teruel,ES"].error, cities["Teruel,ES"].cp_ids) == (
        True, "OpenWeather answered 500", ["CP2"])
    cp2 = running.http().get("/api/cps/CP2").json()
    assert (cp2["state"], cp2["weather_hold"], cp2["stopped"]) == ("PARADO", True, False)
    assert cp2["reason"] == "Out of Order: weather alert (Teruel,ES)"


def test_drivers_accounts_and_sessions_paged(running):
    store = running.central.store
    store.add_account("FLAT3B", "Flat 3B", "apartment")
    store.add_account("ACME", "Acme Ltd", "company")
    for driver in ("D1", "D2", "D3", "D4", "D5"):
        store.add_driver(driver, f"Driver {driver} Personal-Name")
    store.set_driver_account("D2", "FLAT3B")
    running.monitor("CP1")
    supply(running, "CP1", "s-live", driver="D3")
    client = running.http()

    first = m.DriverPage.model_validate(client.get("/api/drivers", params={"limit": 2}).json())
    assert [d.driver_id for d in first.drivers] == ["D1", "D2"] and first.next == "D2"
    assert first.drivers[1].account_id == "FLAT3B"
    second = m.DriverPage.model_validate(client.get("/api/drivers", params={"limit": 2, "after": first.next}).json())
    assert [(d.driver_id, d.supplying_at) for d in second.drivers] == [("D3", "CP1"), ("D4", None)]
    last = m.DriverPage.model_validate(client.get("/api/drivers", params={"limit": 2, "after": "D4"}).json())
    assert [d.driver_id for d in last.drivers] == ["D5"] and last.next is None
    assert "Personal-Name" not in client.get("/api/drivers").text  # only ids, as the panel shows

    accounts = m.AccountPage.model_validate(client.get("/api/accounts").json())
    assert [(a.account_id, a.name, a.kind, a.active) for a in accounts.accounts] == [
        ("ACME", "Acme Ltd", "company", True), ("FLAT3B", "Flat 3B", "apartment", True)]
    assert accounts.next is None

    rows = [SessionRow(f"s{n}", f"r{n}", "CP1", "D1", Decimal("0.48"), T0 + timedelta(minutes=n),
                       T0 + timedelta(minutes=n, seconds=30), Decimal("1.2345"), Decimal("0.5926"), "COMPLETED",
                       "unplugged", True, 3, tag_uid="04A23B1C" if n == 2 else None) for n in range(5)]
    store.save_sessions(rows)
    page = m.SessionPage.model_validate(client.get("/api/sessions", params={"limit": 3, "cp_id": "CP1",
                                                                            "driver_id": "D1"}).json())
    assert [s.session_id for s in page.sessions] == ["s4", "s3", "s2"] and page.next == "s2"
    assert page.sessions[2].tag == "...3B1C" and "04A23B1C" not in client.get("/api/sessions").text
    assert (page.sessions[0].kwh, page.sessions[0].amount_eur, page.sessions[0].end_reason) == (
        "1.2345", "0.5926", "unplugged")
    rest = m.SessionPage.model_validate(client.get("/api/sessions", params={"limit": 3, "after": "s2",
                                                                            "driver_id": "D1"}).json())
    assert [s.session_id for s in rest.sessions] == ["s1", "s0"] and rest.next is None


def test_the_audit_log_newest_first_then_older_and_newer_pages(running):
    audit = running.central.audit
    for n in range(12):
        audit.record("cp.fault", f"CP{n}", f"fault {n}", "ok", "10.0.0.1")
    audit.record("key.revoke", "operator", "CP1: 1 key(s) revoked")
    assert audit.wait_idle(5)
    client = running.http()
    newest = m.AuditPage.model_validate(client.get("/api/audit", params={"limit": 5}).json())
    head = newest.head
    assert [e.seq for e in newest.entries] == list(range(head - 4, head + 1)) and newest.next is None
    assert newest.entries[-1].action == "key.revoke" and len(newest.entries[-1].hash) == 64
    older = m.AuditPage.model_validate(client.get("/api/audit", params={"limit": 5, "before": head - 4}).json())
    assert [e.seq for e in older.entries] == list(range(head - 9, head - 4))
    newer = m.AuditPage.model_validate(client.get("/api/audit", params={"limit": 3, "after": head - 6}).json())
    assert [e.seq for e in newer.entries] == [head - 5, head - 4, head - 3] and newer.next == head - 3
    faults = m.AuditPage.model_validate(client.get("/api/audit", params={"action": "cp.", "limit": 4}).json())
    assert [e.details for e in faults.entries] == ["fault 8", "fault 9", "fault 10", "fault 11"]
    assert {e.source_ip for e in faults.entries} == {"10.0.0.1"}
    assert client.get("/api/audit", params={"after": 1, "before": 5}).status_code == 422
    assert client.get("/api/audit", params={"action": "x' OR 1=1"}).status_code == 422


def test_health_names_what_fails_and_since_when(start_api):
    running = start_api()
    running.monitor("CP1")
    running.monitor("CP2").close()
    wait_until(lambda: running.state("CP2") == "DESCONECTADO", 3, "CP2 DESCONECTADO")
    clock = FakeClock(0.0)
    office = WeatherOffice(running.central.supplies, running.central.store, running.central.audit, clock=clock)
    running.central.weather = office
    office.report([CityReport("Alicante,ES", Decimal("3"), ["CP1"], None, False)], source_ip="10.0.0.9")

    health = m.Health.model_validate(running.http().get("/api/health").json())
    assert health.ok and health.level == "warning" and health.mode == "open"
    assert health.text == running.view.health().text
    assert "Monitors: 1 of 2 connected, CP2 without its Monitor since" in health.text
    assert (health.monitors.total, health.monitors.connected, health.monitors.missing_count) == (2, 1, 1)
    assert health.monitors.missing[0]["cp_id"] == "CP2"
    assert health.kafka == {"configured": False, "ok": None, "since": None}
    assert health.database == {"ok": True, "since": None}
    assert health.registry["configured"] is False and "--registry-url" in health.registry["error"]
    assert health.ev_w == {"configured": True, "ok": True, "silent": False, "last_seen": health.ev_w["last_seen"]}
    assert [f.part for f in health.failing] == ["monitors"]

    clock.advance(13)  # more than 3 of EV_W's cycles without a word
    health = m.Health.model_validate(running.http().get("/api/health").json())
    assert health.ev_w["silent"] is True and "EV_W silent since" in health.text
    failing = {f.part: f for f in health.failing}
    assert failing["ev_w"].since is not None
    assert "EV_W silent since" in running.view.health().text and running.view.health().level == "warning"
