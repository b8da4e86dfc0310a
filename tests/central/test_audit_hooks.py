"""What Central audits, on the fakes of test_supply_service (no sockets, no broker, no database):
supplies authorised, denied and ended, CP changes, operator commands, MCSP errors; and that no
tag UID reaches the audit."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from ev_central import audit as audited
from ev_central.audit import ACTIONS, AuditStats
from ev_central.console import execute
from ev_central.core.entities import TagRow
from ev_central.mcsp_server import MCSPServer
from ev_central.supply_service import Refusal, Why
from ev_central.view import audit_trouble
from tests.central.test_supply_service import Central
from tests.central.test_supply_service_tags import UID, account


class Recorded:
    """Stands for AuditLog: keeps every entry recorded."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str, str, str]] = []

    def record(self, action: str, actor: str, details: str = "", outcome: str = "ok", source_ip: str = "") -> None:
        self.entries.append((action, actor, details, outcome, source_ip))

    def of(self, action: str) -> list[tuple[str, str, str, str, str]]:
        return [entry for entry in self.entries if entry[0] == action]

    def one(self, action: str) -> tuple[str, str, str, str, str]:
        (entry,) = self.of(action)
        return entry


@pytest.fixture
def central() -> Central:
    c = Central()
    c.service.audit = c.audit = Recorded()
    c.add_cp("CP1")
    c.add_cp("CP2", "Plaza 2", Decimal("0.60"))
    c.store.tags[UID] = (TagRow(UID, "FLAT3B", True, c.clock.utc()), account())
    return c


def test_a_supply_authorised_and_ended(central):
    authorised = central.authorise("D1", "CP1")
    assert central.audit.one(audited.SUPPLY_START) == (
        "supply.start", "driver D1", f"cp CP1, session {authorised.session_id}, account -, 0.48 EUR/kWh, via Kafka",
        "ok", "")
    central.end(authorised.session_id, 3, "2.5", "unplugged")
    action, actor, details, outcome, _ = central.audit.one(audited.SUPPLY_END)
    assert (action, actor, outcome) == ("supply.end", "driver D1", "ok")
    assert details == f"cp CP1, session {authorised.session_id}, 2.5 kWh, 1.20 EUR, COMPLETED, reason unplugged"


def test_an_interrupted_supply_and_its_corrected_ticket(central):
    authorised = central.authorise("D1", "CP1")
    central.service.stop("CP1")  # the operator's stop interrupts it; its figures come later
    central.clock.advance(10)
    central.service.sweep()
    (ended,) = central.audit.of(audited.SUPPLY_END)
    assert ended[3] == "interrupted" and "INTERRUPTED" in ended[2]
    central.end(authorised.session_id, 5, "3.0", "stopped")
    corrected = central.audit.of(audited.SUPPLY_END)[-1]
    assert corrected[3] == "corrected" and "3.0 kWh, 1.44 EUR" in corrected[2]
    assert central.audit.one(audited.CP_STOP) == (
        "cp.stop", "operator", "CP1 SUMINISTRANDO -> PARADO: stopped by the operator", "ok", "")


def test_denials_say_why(central):
    central.request("D9", "CP1", request_id="r-9")
    assert central.audit.one(audited.SUPPLY_DENY) == (
        "supply.deny", "driver D9", "cp CP1, request r-9: driver D9 is not registered", "refused", "")
    central.request("D1", "CP1", age=3600)
    assert "request expired" in central.audit.of(audited.SUPPLY_DENY)[-1][2]


def test_a_tag_is_audited_masked_with_the_stations_address(central):
    row = central.service.start_by_tag("CP1", UID, source_ip="10.0.0.9")
    assert central.audit.one(audited.SUPPLY_START) == (
        "supply.start", "tag ...E73A", f"cp CP1, session {row.session_id}, account FLAT3B, 0.48 EUR/kWh, via MCSP",
        "ok", "10.0.0.9")
    central.service.start_by_tag("CP2", "04A224B2C3D4E5", source_ip="10.0.0.9")
    assert central.audit.one(audited.SUPPLY_DENY) == (
        "supply.deny", "tag ...D4E5", "cp CP2 (MCSP): Key is not registered", "refused", "10.0.0.9")
    central.end(row.session_id, 2, "1.0", "unplugged", driver_id="FLAT3B")
    assert central.audit.one(audited.SUPPLY_END)[1] == "tag ...E73A"
    assert not any(UID in field or "04A224B2C3D4E5" in field for entry in central.audit.entries for field in entry)


def test_cp_changes(central):
    assert [(e[1], e[2]) for e in central.audit.of(audited.CP_REGISTER)] == [
        ("CP1", "new -> ACTIVADO: signed up"), ("CP2", "new -> ACTIVADO: signed up")]
    central.on_change(central.network.engine_fault("CP1", "mon-CP1", "Engine answers KO"))
    central.on_change(central.network.engine_fault("CP1", "mon-CP1", "Engine answers KO"))  # no change: once
    central.on_change(central.network.engine_ok("CP1", "mon-CP1"))
    central.on_change(central.network.session_ended("CP1", "mon-CP1", "the Monitor closed its socket"))
    central.service.stop("CP2")
    central.service.resume("CP2")
    assert [(e[0], e[1], e[2]) for e in central.audit.entries[2:]] == [
        ("cp.fault", "CP1", "ACTIVADO -> AVERIADO: Engine fault: Engine answers KO"),
        ("cp.recover", "CP1", "AVERIADO -> ACTIVADO: Engine recovered"),
        ("cp.disconnect", "CP1", "ACTIVADO -> DESCONECTADO: the Monitor closed its socket"),
        ("cp.stop", "operator", "CP2 ACTIVADO -> PARADO: stopped by the operator"),
        ("cp.resume", "operator", "CP2 PARADO -> ACTIVADO: resumed by the operator"),
    ]


def test_the_monitors_address_is_noted_at_registration_and_kept(central):
    session = SimpleNamespace(link=SimpleNamespace(peer="10.0.0.7:40122"))
    central.on_change(central.network.register("CP3", "Calle 3", Decimal("0.5"), session)[0])
    central.on_change(central.network.session_ended("CP3", session, "silent"))
    assert [(e[0], e[4]) for e in central.audit.entries if e[1] == "CP3"] == [
        ("cp.register", "10.0.0.7"), ("cp.disconnect", "10.0.0.7")]


def test_secure_mode_leaves_registrations_to_auth(central):
    central.service.audit_registrations = False
    central.add_cp("CP3")
    assert [e[1] for e in central.audit.of(audited.CP_REGISTER)] == ["CP1", "CP2"]


def test_operator_commands_and_their_answers(central):
    central.cp_ids = lambda: ["CP1", "CP2"]
    central.stop_cp, central.resume_cp = central.service.stop, central.service.resume
    for line in ("stop  CP1", "resume CP9", "frobnicate", "help", ""):
        execute(central, line)
    commands = central.audit.of(audited.OPERATOR_COMMAND)
    assert [(c[1], c[2].split(" -> ")[0], c[3], c[4]) for c in commands] == [
        ("operator", "stop CP1", "ok", ""), ("operator", "resume CP9", "refused", ""),
        ("operator", "frobnicate", "refused", ""), ("operator", "help", "ok", "")]
    assert commands[0][2] == "stop CP1 -> stop: CP1 PARADO"


# -- MCSP errors -------------------------------------------------------------------------------------------


class Supplies:
    def start_by_tag(self, cp_id, tag_uid, *, source_ip=""):
        return Refusal(Why.DISABLED, "Key is disabled")

    def end_by_tag(self, cp_id, session_id, tag_uid):
        raise RuntimeError("boom")


def test_mcsp_errors_are_audited_without_a_key():
    from ev_common.mcsp import EndRequest, ErrorAnswer, StartRequest

    recorded = Recorded()
    server = MCSPServer(Supplies(), "127.0.0.1", 0, audit=recorded).start()
    try:
        assert isinstance(server._handle(StartRequest("CP4", UID), "10.0.0.9:5123"), ErrorAnswer)
        server._handle(EndRequest("CP4", "s1", UID), "[::1]:5123")
        server._audit(None, "malformed request", ErrorAnswer(400, f"Key must be a tag UID of 4, 7, 8 or 10 bytes "
                                                                  f"in hex, not '{UID}Z'"), "10.0.0.9:5124")
    finally:
        server.stop()
    assert recorded.entries == [
        ("mcsp.error", "CP4", "station CP4, START: ERROR 403 Key is disabled, from 10.0.0.9:5123", "refused",
         "10.0.0.9"),
        ("mcsp.error", "CP4", "station CP4, END: ERROR 503 Central could not serve the request, from [::1]:5123",
         "refused", "::1"),
        ("mcsp.error", "MCSP station", "station -, malformed request: ERROR 400 Key must be a tag UID of 4, 7, 8 "
                                       "or 10 bytes in hex, from 10.0.0.9:5124", "refused", "10.0.0.9"),
    ]


# -- the panel and the docs ---------------------------------------------------------------------------------


def test_the_status_line_names_audit_trouble_only():
    assert audit_trouble(None) == "" and audit_trouble(audited.NO_AUDIT) == ""
    stats = SimpleNamespace(stats=lambda: AuditStats(queued=3, written=9, spooled=120, failed=0, db_ok=False))
    assert audit_trouble(stats) == "audit: 120 entries spooled"
    stats = SimpleNamespace(stats=lambda: AuditStats(queued=0, written=9, spooled=1, failed=2))
    assert audit_trouble(stats) == "audit: 1 entry spooled, 2 failed (see the log)"


def test_docs_list_every_action():
    text = (Path(__file__).parents[2] / "docs" / "security.md").read_text(encoding="utf-8")
    audit_section = text[text.index("## Audit"):]
    missing = [action for action in ACTIONS if f"`{action}`" not in audit_section]
    assert not missing, missing
