"""MCSP messages: exact bytes, round trips through both receivers, every field rule."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ev_common.mcsp import (
    DEFAULT_MESSAGES,
    AnswerReceiver,
    EndOk,
    EndRequest,
    ErrorAnswer,
    ErrorCode,
    LocalProtocolError,
    ReceiveError,
    RequestReceiver,
    StartOk,
    StartRequest,
    check_key,
)

from .feeding import FEEDINGS

KEY = "16AC936B1692E73A"  # the spec's example: 8 bytes

# (message, exact bytes sent): to_bytes() gives the bytes and parsing them gives the message
WIRE = [
    (StartRequest("Tankstelle1", KEY),
     b"MMETERING/1.0 START\r\nContent-Length: 2\r\nName: Tankstelle1\r\nKey: 16AC936B1692E73A\r\n"),
    (EndRequest("Tankstelle1", "23", KEY),
     b"MMETERING/1.0 END\r\nContent-Length: 3\r\nName: Tankstelle1\r\nSession-Id: 23\r\n"
     b"Key: 16AC936B1692E73A\r\n"),
    (StartOk("23"), b"MMETERING/1.0 OK\r\nContent-Length: 1\r\nSession-Id: 23\r\n"),
    (EndOk(Decimal("2.75"), Decimal("1.32")),
     b"MMETERING/1.0 OK\r\nContent-Length: 2\r\nEnergy-kWh: 2.7500\r\nAmount-EUR: 1.32\r\n"),
    (EndOk(), b"MMETERING/1.0 OK\r\nContent-Length: 0\r\n"),
    (ErrorAnswer(401, "Key is not registered"),
     b"MMETERING/1.0 ERROR\r\nContent-Length: 2\r\nMessage: Key is not registered\r\nCode: 401\r\n"),
]


def _receiver_for(message):
    return RequestReceiver if isinstance(message, (StartRequest, EndRequest)) else AnswerReceiver


@pytest.mark.parametrize("message,wire", WIRE, ids=[type(m).__name__ + str(i) for i, (m, _) in enumerate(WIRE)])
def test_to_bytes_and_parse_table(message, wire):
    assert message.to_bytes() == wire
    for feed in FEEDINGS.values():
        assert feed(wire, _receiver_for(message)) == [message]
        assert feed(wire.replace(b"\r\n", b"\n"), _receiver_for(message)) == [message]  # LF only
        assert feed(wire + wire, _receiver_for(message)) == [message, message]  # trailing data


ROUND_TRIPS = [
    StartRequest("a", "01020304"),
    StartRequest("CP_0-1", "04A1B2C3D4E5F6"),  # 7 bytes
    StartRequest("x" * 64, "00112233445566778899"),  # 10 bytes
    EndRequest("CP1", "s" * 64, "DEADBEEF"),
    StartOk("0"),
    EndOk(0, 0),
    EndOk(Decimal("99999999.9999"), Decimal("99999999.99")),
    EndOk("0.0001", "0.01"),
    EndOk(12.5, 3),
    ErrorAnswer(ErrorCode.CP_UNREACHABLE, "Charging point cannot be reached"),
    ErrorAnswer(999, "x" * 200),
    ErrorAnswer(400, "a: b ~ !"),
]


@pytest.mark.parametrize("message", ROUND_TRIPS, ids=repr)
def test_round_trip(message):
    wire = message.to_bytes()
    receiver = _receiver_for(message)()
    receiver.feed(wire)
    assert receiver.next_event() == message


@pytest.mark.parametrize("given,normal", [
    ("16AC936B1692E73A", KEY),
    ("16ac936b1692e73a", KEY),
    ("16:ac:93:6b:16:92:e7:3a", KEY),
    ("16-AC-93-6B", "16AC936B"),
    ("16 AC 93 6B 16 92 E7", "16AC936B1692E7"),
    ("00112233445566778899", "00112233445566778899"),
])
def test_key_is_normalised(given, normal):
    assert check_key(given) == normal
    assert StartRequest("CP1", given).key == normal
    assert EndRequest("CP1", "1", given).key == normal


@pytest.mark.parametrize("bad", [
    "", "16AC93", "16AC936B16", "16AC936B1692E73A00", "0011223344556677889900",  # 3, 5, 9, 11 bytes
    "16AC936G", "16AC936", "16:AC-93:6B", "16::AC:93:6B", "16:AC:93:6B:", "16 AC936B", "1 6AC936B",
    " 16AC936B", "0x16AC936B", 0x16AC936B, None,
])
def test_bad_keys_are_refused(bad):
    with pytest.raises(LocalProtocolError, match="Key"):
        StartRequest("CP1", bad)


@pytest.mark.parametrize("build", [
    lambda: StartRequest("", KEY),
    lambda: StartRequest("x" * 65, KEY),
    lambda: StartRequest("Tank stelle", KEY),
    lambda: StartRequest("Tankstelle\u00e9", KEY),
    lambda: StartRequest(1, KEY),
    lambda: EndRequest("CP1", "", KEY),
    lambda: EndRequest("CP1", "2 3", KEY),
    lambda: StartOk("23:1"),
    lambda: StartOk(23),
    lambda: EndOk(Decimal("1"), None),
    lambda: EndOk(None, Decimal("1")),
    lambda: EndOk(Decimal("-0.0001"), 0),
    lambda: EndOk(Decimal("1.00001"), 0),
    lambda: EndOk(0, Decimal("1.001")),
    lambda: EndOk(Decimal("1e8"), 0),
    lambda: EndOk(Decimal("NaN"), 0),
    lambda: EndOk(float("inf"), 0),
    lambda: EndOk(True, 0),
    lambda: EndOk("2,75", 0),
    lambda: ErrorAnswer(99, "x"),
    lambda: ErrorAnswer(1000, "x"),
    lambda: ErrorAnswer("40a", "x"),
    lambda: ErrorAnswer(400, ""),
    lambda: ErrorAnswer(400, " padded"),
    lambda: ErrorAnswer(400, "x" * 201),
    lambda: ErrorAnswer(400, "line\r\nbreak"),
    lambda: ErrorAnswer(400, "Schlüssel"),
])
def test_invalid_messages_are_refused(build):
    with pytest.raises(LocalProtocolError):
        build()


def test_local_protocol_error_is_a_value_error():
    assert issubclass(LocalProtocolError, ValueError)


def test_decimals_keep_their_places():
    ok = EndOk(Decimal("2.75"), Decimal("1.3"))
    assert (str(ok.energy_kwh), str(ok.amount_eur)) == ("2.7500", "1.30")
    assert EndOk(2.75, 1.3) == ok
    assert EndOk(Decimal("-0"), -0.0).to_bytes().endswith(b"Energy-kWh: 0.0000\r\nAmount-EUR: 0.00\r\n")


def test_end_ok_rounded_rounds_half_up():
    ok = EndOk.rounded(Decimal("2.123456"), Decimal("1.325"))
    assert (ok.energy_kwh, ok.amount_eur) == (Decimal("2.1235"), Decimal("1.33"))
    with pytest.raises(LocalProtocolError):
        EndOk.rounded("x", 1)


def test_error_answer_for_code_has_default_messages():
    for code in ErrorCode:
        assert ErrorAnswer.for_code(code).message == DEFAULT_MESSAGES[code]
    assert ErrorAnswer.for_code(401) == ErrorAnswer(401, "Key is not registered")  # as drawn
    assert ErrorAnswer.for_code(409, "CP1 is busy").message == "CP1 is busy"
    assert ErrorAnswer.for_code(418).message == "Error"


def test_error_codes_are_the_documented_ones():
    assert sorted(ErrorCode) == [400, 401, 403, 404, 409, 503, 505]


def test_receive_error_answer_round_trips():
    error = ReceiveError(400, "x" * 300, b"y" * 300)
    assert len(error.message) == 200 and len(error.raw) == 64
    assert ErrorAnswer(400, "x" * 200) == error.answer()


def test_messages_are_frozen():
    message = StartRequest("CP1", KEY)
    with pytest.raises(AttributeError):
        message.name = "CP2"  # type: ignore[misc]


def test_docs_list_every_code_header_and_limit():
    from pathlib import Path

    from ev_common.mcsp import MAX_HEADERS, MAX_LINE, MAX_MESSAGE

    doc = Path(__file__).resolve().parents[2].joinpath("docs", "mcsp.md").read_text()
    for code in ErrorCode:
        assert f"| {int(code)} | `{code.name}` | {DEFAULT_MESSAGES[code]} |" in doc
    for header in ("Content-Length", "Name", "Key", "Session-Id", "Energy-kWh", "Amount-EUR", "Message", "Code"):
        assert f"| `{header}` |" in doc
    assert f"| {MAX_LINE} bytes |" in doc and f"| {MAX_HEADERS} |" in doc and f"| {MAX_MESSAGE} bytes |" in doc
    assert "## 6. At Central: the MCSP port" in doc and "| 64; one more is answered 503 and closed |" in doc
