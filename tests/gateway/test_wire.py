"""The records between gateways and the core: every field checked, both ways."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ev_central.gateway.wire import Beacon, Command, CPEvent, RosterEntry, decode, encode
from ev_common.protocol import Can, Reg, Sst, Stop, Sup, Supr
from ev_common.records import BadRecord

INC = "0123456789abcdef"
ASK = "a" * 32


def roundtrip(record):
    again = decode(encode(record))
    assert again == record
    return again


def test_every_record_comes_back_as_it_went():
    roundtrip(CPEvent("cp.registered", "CP001", "G1", INC, 7, location="C/ Mayor 45", price_eur_kwh=Decimal("0.48"),
                      key_version=3, peer="10.0.0.7:5123", since_ms=1_700_000_000_000))
    roundtrip(CPEvent("cp.fault", "CP001", "G1", INC, 7, reason="Engine not answering"))
    roundtrip(CPEvent("cp.recovered", "CP001", "G1", INC, 7))
    roundtrip(CPEvent("cp.lost", "CP001", "G1", INC, 7, reason="no sign of life from the Monitor for 2.6 s"))
    roundtrip(CPEvent("cp.answer", "CP001", "G1", INC, 7, ask_id=ASK, message=Supr("CP001", "S1", "OK", "")))
    roundtrip(CPEvent("cp.undelivered", "CP001", "G1", INC, 7, ask_id=ASK, reason="no session"))
    roundtrip(CPEvent("cp.supply", "CP001", "G1", INC, 7,
                      message=Sst("CP001", "SUPPLYING", "S1", 4, Decimal("1.25"))))
    for message in (Sup("CP001", "S1", "D001", Decimal("0.48")), Stop("CP001"), Can("CP001", "S1", "gave up")):
        roundtrip(Command("cp.command", "G1", INC, 123, "CP001", 7, message, ASK if isinstance(message, Sup) else ""))
    roundtrip(Command("cp.drop", "G1", INC, 123, "CP001", 7, reason="replaced"))
    roundtrip(Command("roster.request", "G1", INC, 123))
    entries = tuple(RosterEntry(f"CP{i:03d}", i + 1, 5, "Somewhere", Decimal("0.5"), "" if i else "fault") for i in range(3))
    roundtrip(Beacon("G1", INC, 1, 2, 3, 1000, "0.0.0.0:5000", roster_id=9, part=1, parts=1, roster=entries))
    roundtrip(Beacon("G1", INC, 1, 2, 3, 1000, leaving=True))


def value(**fields) -> bytes:
    base = {"type": "cp.registered", "v": 1, "ts": datetime.now(timezone.utc).isoformat(), "cp_id": "CP001",
            "gateway": "G1", "incarnation": INC, "session": 1, "location": "Here", "price_eur_kwh": "0.50",
            "key_version": 0, "peer": "1.2.3.4:5", "since_ms": 1}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


@pytest.mark.parametrize("fields", [
    {"cp_id": "C" * 65}, {"cp_id": "CP 1"}, {"gateway": "G" * 33}, {"gateway": "G.1"}, {"incarnation": "XYZ"},
    {"session": 0}, {"session": "1"}, {"session": True}, {"location": "x" * 201}, {"location": ""},
    {"location": "a\nb"}, {"price_eur_kwh": "0.12345"}, {"price_eur_kwh": "-1"}, {"price_eur_kwh": "1001"},
    {"price_eur_kwh": 0.5}, {"price_eur_kwh": "NaN"}, {"peer": "p" * 65}, {"key_version": -1},
    {"reason": "r" * 201}, {"reason": "bad\x07"}, {"type": "cp.unknown"}, {"v": 2}, {"ts": "yesterday"},
    {"ts": "2026-01-01T00:00:00"}, {"cp_id": ...}, {"message": "SUPR#CP001#S1#OK#"},
])
def test_a_bad_event_is_refused(fields):
    with pytest.raises(BadRecord):
        decode(value(**fields))


@pytest.mark.parametrize("kind,message,ask", [
    ("cp.answer", "AUTH#OK#fine", ASK),  # not a SUPR
    ("cp.answer", "SUPR#CP002#S1#OK#", ASK),  # another CP's answer
    ("cp.answer", "SUPR#CP001#S1#MAYBE#", ASK),  # not the protocol's
    ("cp.answer", "SUPR#CP001#S1#OK#", "short"),  # no correlation
    ("cp.supply", "SST#CP001#NOWHERE##0#0", ""),
])
def test_a_bad_message_inside_an_event_is_refused(kind, message, ask):
    with pytest.raises(BadRecord):
        decode(value(type=kind, message=message, ask_id=ask))


@pytest.mark.parametrize("message", [
    Reg("CP001", "Here", Decimal("0.5")).to_data().decode(),  # a Monitor's message, never a command
    "SUP#CP002#S1#D1#0.5",  # another CP
    "STOP#CP001#extra",
])
def test_a_command_carries_only_what_the_core_may_send_that_cp(message):
    raw = json.dumps({"type": "cp.command", "v": 1, "ts": datetime.now(timezone.utc).isoformat(), "gateway": "G1",
                      "incarnation": INC, "deadline_ms": 5, "cp_id": "CP001", "session": 1, "message": message,
                      "ask_id": ASK}).encode()
    with pytest.raises(BadRecord):
        decode(raw)


def test_a_sup_command_needs_its_correlation():
    with pytest.raises(ValueError):
        Command("cp.command", "G1", INC, 5, "CP001", 1, Sup("CP001", "S1", "D1", Decimal("0.5")))


def test_rosters_are_bounded_and_checked():
    beacon = Beacon("G1", INC, 1, 2, 3, 1000, roster_id=1, part=1, parts=1).to_json()
    beacon["roster"] = [["CP001", 1, 1, "Here", "0.5", "", ""]] * 1001
    with pytest.raises(BadRecord):
        decode(json.dumps(beacon).encode())
    beacon["roster"] = [["CP001", 1, 1, "Here", "0.5", ""]]  # a field short
    with pytest.raises(BadRecord):
        decode(json.dumps(beacon).encode())
    beacon["roster"] = [["CP001", 1, 1, "x" * 201, "0.5", "", ""]]
    with pytest.raises(BadRecord):
        decode(json.dumps(beacon).encode())
    beacon.update(part=2, parts=1, roster=[])
    with pytest.raises(BadRecord):
        decode(json.dumps(beacon).encode())


def test_not_json_too_big_and_odd_values_are_refused():
    for raw in (b"", b"[]", b"not json", b"{" + b" " * 1_000_001 + b"}", None,
                json.dumps({"type": "gateway.beacon", "v": 1, "ts": (datetime.now(timezone.utc)
                                                                    - timedelta(days=1)).isoformat()}).encode()):
        with pytest.raises(BadRecord):
            decode(raw)
