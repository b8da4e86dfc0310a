"""Kafka records check their fields against what the protocol and the database take: a value
out of range is refused when the record is built, and at decode it is a BadRecord naming the
field (consumers log and skip those)."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from ev_common.records import (
    BadRecord,
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
    decode,
    encode,
)

T0 = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
D = Decimal

GOOD: dict[type[Record], Record] = {
    SupplyRequest: SupplyRequest("req-1", "D001", "CP001"),
    RequestReceived: RequestReceived("req-1", "D001", "CP001"),
    RequestAuthorised: RequestAuthorised("req-1", "D001", "CP001", "s_1", D("0.3500")),
    RequestDenied: RequestDenied("req-1", "D001", "CP001", "CP001 is not available"),
    SupplyProgress: SupplyProgress("s_1", "D001", "CP001", 7, D("1.2345"), D("0.4321"), D("11")),
    SupplyAlert: SupplyAlert("s_1", "D001", "CP001", "AVERIADO", "CP fault"),
    Ticket: Ticket("s_1", "req-1", "D001", "CP001", T0, T0, D("12.5"), D("0.35"), D("4.375"),
                   "COMPLETED", "unplugged"),
    Telemetry: Telemetry("CP001", "s_1", "D001", 3, D("0.5"), D("0.2"), D("7.4")),
    SupplyEnd: SupplyEnd("CP001", "s_1", "D001", 4, D("0.6"), D("0.21"), "unplugged"),
    CPStatus: CPStatus("CP001", "ACTIVADO", "Calle Mayor 1", D("0.35")),
}

#: field -> values out of range, as they travel on the wire (JSON)
BAD_WIRE: dict[str, list[Any]] = {
    "driver_id": ["", "D" * 65, "D 1", "D\n1", "D#1", "Dñ", 7],
    "cp_id": ["", "C" * 65, "CP/1", "CP\x001"],
    "session_id": ["", "s" * 65, "s.1"],
    "request_id": ["", "r" * 65, "r 1"],
    "reason": ["r" * 201, "bad\nline", "bell\x07", "del\x7f", "\ud800"],
    "end_reason": ["e" * 201, "tab\there"],
    "location": ["l" * 201, "a\rb"],
    "state": ["S" * 17, "ACTIVADO\n"],
    "status": ["X" * 17],
    "kwh": ["-0.0001", "100000000", "1E+30", "0.00001", "NaN", "Infinity"],
    "amount_eur": ["-1", "99999999.99995", "1.23456", "-Infinity"],
    "price_eur_kwh": ["-0.01", "1000.0001", "0.12345", "NaN"],
    "seq": [-1, 2**31, 2**63],
    "power_kw": ["-1", "1000.5", "NaN"],
}


def cases() -> list[Any]:
    out = []
    for cls, good in GOOD.items():
        names = {f.name for f in dataclasses.fields(cls)}
        for field_name, values in BAD_WIRE.items():
            if field_name in names:
                for value in values:
                    out.append(pytest.param(cls, field_name, value, id=f"{cls.TYPE}.{field_name}={value!r:.20}"))
    return out


@pytest.mark.parametrize(("cls", "field_name", "value"), cases())
def test_an_out_of_range_field_at_decode_is_a_bad_record_naming_it(
    cls: type[Record], field_name: str, value: Any
) -> None:
    data = GOOD[cls].to_json()
    data[field_name] = value
    raw = json.dumps(data).encode()
    with pytest.raises(BadRecord) as caught:
        decode(raw)
    assert f"{cls.TYPE}.{field_name}" in str(caught.value)


@pytest.mark.parametrize("record", list(GOOD.values()), ids=lambda r: r.TYPE)
def test_good_records_round_trip(record: Record) -> None:
    assert decode(encode(record)) == record


@pytest.mark.parametrize(
    ("record", "changes"),
    [
        (GOOD[Telemetry], {"kwh": D("1.00001")}),
        (GOOD[Telemetry], {"seq": 2**31}),
        (GOOD[Ticket], {"end_reason": "x" * 201}),
        (GOOD[Ticket], {"ended_at": datetime(2026, 1, 1)}),
        (GOOD[CPStatus], {"driver_id": "bad id"}),
        (GOOD[SupplyRequest], {"request_id": ""}),
    ],
)
def test_an_out_of_range_field_is_refused_when_the_record_is_built(record: Record, changes: dict) -> None:
    (name,) = changes
    with pytest.raises(ValueError, match=rf"{record.TYPE}\.{name}"):
        dataclasses.replace(record, **changes)


def test_the_limits_themselves_are_allowed() -> None:
    longest = "A" * 64
    assert Telemetry(longest, "s-_9", "d", 2**31 - 1, D("99999999.9999"), D("0"), D("1000"))
    assert Ticket("s", "r", "d", "c", T0, T0, D("0.0000"), D("1000.0000"), D("1.5000"),
                  "INTERRUPTED", "é" * 200, corrected=True)
    assert CPStatus("CP1", "DESCONECTADO", "ñ 😀" * 50, D("0"), driver_id=None)
    assert RequestDenied("r", "d", "c", "")


def test_fields_and_defaults_are_unchanged() -> None:
    assert [f.name for f in dataclasses.fields(Ticket)][-1] == "corrected"
    assert GOOD[Ticket].corrected is False
    assert GOOD[SupplyRequest].source == "driver"
    assert GOOD[CPStatus].driver_id is None
