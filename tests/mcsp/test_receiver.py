"""MCSP receivers: tables fed whole, in halves and byte by byte, alone and with trailing data."""

from __future__ import annotations

import pytest

from ev_common.mcsp import (
    CLOSED,
    MAX_HEADERS,
    MAX_LINE,
    MAX_MESSAGE,
    NEED_DATA,
    AnswerReceiver,
    EndOk,
    EndRequest,
    ErrorAnswer,
    ReceiveError,
    RequestReceiver,
    StartOk,
    StartRequest,
)

from .feeding import FEEDINGS, Err

KEY = "16AC936B1692E73A"
START = StartRequest("Tankstelle1", KEY)
END = EndRequest("Tankstelle1", "23", KEY)

# the spec's drawing, line for line (LF endings)
DRAWN_1 = b"MMETERING/1.0 START\nContent-Length: 2\nName: Tankstelle1\nKey: 16AC936B1692E73A\n"
DRAWN_2 = b"MMETERING/1.0 OK\nSession-Id: 23\n"
DRAWN_3 = (b"MMETERING/1.0 END\nContent-Length: 3\nName: Tankstelle1\nSession-Id: 23\n"
           b"Key: 16AC936B1692E73A\n")
DRAWN_4 = b"MMETERING/1.0 OK\n"
DRAWN_2A = b"MMETERING/1.0 ERROR\nMessage: Key is not registered\nCode: 401\n"


def start(*headers: bytes, line: bytes = b"MMETERING/1.0 START") -> bytes:
    return b"\r\n".join((line,) + headers) + b"\r\n"


CL2, CL3 = b"Content-Length: 2", b"Content-Length: 3"
NAME, KEYH, SID = b"Name: Tankstelle1", b"Key: 16AC936B1692E73A", b"Session-Id: 23"

# (name, bytes, expected): requests to a RequestReceiver
REQUESTS = [
    ("drawn START (1)", DRAWN_1, [START]),
    ("drawn END (3)", DRAWN_3, [END]),
    ("drawn START then END", DRAWN_1 + DRAWN_3, [START, END]),
    ("CRLF", DRAWN_1.replace(b"\n", b"\r\n"), [START]),
    ("mixed line endings", b"MMETERING/1.0 START\r\nContent-Length: 2\nName: Tankstelle1\r\nKey: 16AC936B1692E73A\n",
     [START]),
    ("headers in any order", start(CL2, KEYH, NAME), [START]),
    ("END headers in any order", start(CL3, KEYH, SID, NAME, line=b"MMETERING/1.0 END"), [END]),
    ("header names in any case", start(b"content-LENGTH: 2", b"NAME: Tankstelle1", b"key: 16ac936b1692e73a"),
     [START]),
    ("no space or more spaces after the colon", start(b"Content-Length:2", b"Name:   Tankstelle1",
                                                        b"Key:16AC936B1692E73A"), [START]),
    ("trailing spaces", start(b"Content-Length: 2 ", b"Name: Tankstelle1  ", b"Key: 16AC936B1692E73A ",
                              line=b"MMETERING/1.0 START  "), [START]),
    ("key with colons", start(CL2, NAME, b"Key: 16:ac:93:6b:16:92:e7:3a"), [START]),
    ("key with spaces", start(CL2, NAME, b"Key: 16 AC 93 6B"), [StartRequest("Tankstelle1", "16AC936B")]),
    ("empty lines between and before requests", b"\r\n\n" + DRAWN_1 + b"\n\r\n" + DRAWN_3 + b"\n", [START, END]),
    ("last line without its ending at the end of the stream", DRAWN_1[:-1], [START]),
    ("nothing", b"", []),
    ("only empty lines", b"\n\r\n\n", []),
]

REQUEST_ERRORS = [
    ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", [Err(400, "start line")]),
    ("binary garbage", b"\x00\x01\x02\r\n", [Err(400, "control byte 0x00")]),
    ("non-ASCII byte", start(CL2, b"Name: Tankstelle\xc3\xa9", KEYH), [Err(400, "non-ASCII byte 0xc3")]),
    ("tab", start(CL2, b"Name:\tTankstelle1", KEYH), [Err(400, "control byte 0x09")]),
    ("bare CR", b"MMETERING/1.0 START\rContent-Length: 2\r\n", [Err(400, "control byte 0x0d")]),
    ("lower-case protocol", start(CL2, NAME, KEYH, line=b"mmetering/1.0 START"), [Err(400, "start line")]),
    ("leading space", start(CL2, NAME, KEYH, line=b" MMETERING/1.0 START"), [Err(400, "start line")]),
    ("no action", start(CL2, NAME, KEYH, line=b"MMETERING/1.0"), [Err(400, "unknown action")]),
    ("unknown action", start(CL2, NAME, KEYH, line=b"MMETERING/1.0 STOP"), [Err(400, "unknown action")]),
    ("lower-case action", start(CL2, NAME, KEYH, line=b"MMETERING/1.0 start"), [Err(400, "unknown action")]),
    ("an answer sent to the server", DRAWN_2, [Err(400, "an answer, not a request")]),
    ("version 2.0", start(CL2, NAME, KEYH, line=b"MMETERING/2.0 START"), [Err(505, "MMETERING/2.0")]),
    ("version 1.1", start(CL2, NAME, KEYH, line=b"MMETERING/1.1 START"), [Err(505)]),
    ("version 2.0 with an unknown action", start(line=b"MMETERING/2.0 HELLO"), [Err(505)]),
    ("version without minor", start(CL2, NAME, KEYH, line=b"MMETERING/1 START"), [Err(400, "start line")]),
    ("missing Content-Length", start(NAME, KEYH), [Err(400, "lacks Content-Length")]),
    ("Content-Length not first", start(NAME, CL2, KEYH), [Err(400, "lacks Content-Length")]),
    ("start line only, then empty line", b"MMETERING/1.0 START\r\n\r\n", [Err(400, "lacks Content-Length")]),
    ("start line, then another", b"MMETERING/1.0 START\r\n" + DRAWN_1, [Err(400, "lacks Content-Length")]),
    ("Content-Length too large for START", start(CL3, NAME, KEYH, SID), [Err(400, "START carries 2")]),
    ("Content-Length too small for START", start(b"Content-Length: 1", NAME, KEYH), [Err(400, "START carries 2")]),
    ("Content-Length too small for END", start(CL2, NAME, KEYH, line=b"MMETERING/1.0 END"), [Err(400, "END carries 3")]),
    ("Content-Length 0", start(b"Content-Length: 0"), [Err(400, "START carries 2")]),
    ("Content-Length in bytes", start(b"Content-Length: 47", NAME, KEYH), [Err(400, "limit of 16")]),
    ("Content-Length over the limit", start(b"Content-Length: 17"), [Err(400, "limit of 16")]),
    ("Content-Length not a number", start(b"Content-Length: two", NAME, KEYH), [Err(400, "number of header")]),
    ("Content-Length signed", start(b"Content-Length: +2", NAME, KEYH), [Err(400, "number of header")]),
    ("Content-Length leading zero", start(b"Content-Length: 02", NAME, KEYH), [Err(400, "number of header")]),
    ("Content-Length empty", start(b"Content-Length:", NAME, KEYH), [Err(400, "number of header")]),
    ("Content-Length repeated", start(CL2, CL2, NAME), [Err(400, "repeated header")]),
    ("fewer header lines than counted, then empty line", start(CL2, NAME, b""), [Err(400, "an empty line")]),
    ("fewer header lines than counted, then a request", start(CL2, NAME) + DRAWN_1, [Err(400, "a new start line")]),
    ("fewer header lines than counted, stream ends", start(CL2, NAME), [Err(400, "stream ended")]),
    ("stream ends after the start line", b"MMETERING/1.0 START\r\n", [Err(400, "stream ended")]),
    ("more header lines than counted", start(CL2, NAME, KEYH, SID), [START, Err(400, "start line")]),
    ("repeated header", start(CL2, NAME, NAME), [Err(400, "repeated header Name")]),
    ("repeated header in another case", start(CL2, NAME, b"name: x"), [Err(400, "repeated header Name")]),
    ("unknown header", start(CL2, NAME, b"Host: x"), [Err(400, "unknown header 'Host'")]),
    ("header of another message", start(CL2, NAME, SID), [Err(400, "does not belong in START")]),
    ("answer header in a request", start(CL3, NAME, KEYH, b"Code: 401", line=b"MMETERING/1.0 END"),
     [Err(400, "does not belong in END")]),
    ("missing header in END", start(CL3, NAME, KEYH, b"Name: x", line=b"MMETERING/1.0 END"),
     [Err(400, "repeated header")]),
    ("header without colon", start(CL2, NAME, b"Key 16AC936B"), [Err(400, "malformed header")]),
    ("header with space before colon", start(CL2, NAME, b"Key : 16AC936B"), [Err(400, "malformed header")]),
    ("header starting with space", start(CL2, NAME, b" Key: 16AC936B"), [Err(400, "malformed header")]),
    ("empty header name", start(CL2, NAME, b": 16AC936B"), [Err(400, "malformed header")]),
    ("bad Name", start(CL2, b"Name: Tank stelle", KEYH), [Err(400, "Name must be")]),
    ("empty Name", start(CL2, b"Name:", KEYH), [Err(400, "Name must be")]),
    ("Name too long", start(CL2, b"Name: " + b"x" * 65, KEYH), [Err(400, "Name must be")]),
    ("bad Key", start(CL2, NAME, b"Key: 16AC93"), [Err(400, "Key must be")]),
    ("bad Session-Id", start(CL3, NAME, b"Session-Id: 2;3", KEYH, line=b"MMETERING/1.0 END"),
     [Err(400, "Session-Id must be")]),
    ("line too long", start(CL2, b"Name: " + b"x" * MAX_LINE, KEYH), [Err(400, f"longer than {MAX_LINE}")]),
    ("endless line", b"MMETERING/1.0 START" + b"x" * (4 * MAX_LINE), [Err(400, f"longer than {MAX_LINE}")]),
    ("message too long", b"\n" * MAX_MESSAGE + DRAWN_1, [Err(400, f"longer than {MAX_MESSAGE}")]),
    ("good request, then garbage", DRAWN_1 + b"hello\r\n", [START, Err(400, "start line")]),
    ("error is final: a good request after it is not read", b"hello\r\n" + DRAWN_1, [Err(400, "start line")]),
]


def _run(rows):
    return pytest.mark.parametrize("name,data,expected", rows, ids=[r[0] for r in rows])


@pytest.mark.parametrize("feeding", FEEDINGS)
@_run(REQUESTS + REQUEST_ERRORS)
def test_request_table(name, data, expected, feeding):
    assert FEEDINGS[feeding](data, RequestReceiver) == expected


@pytest.mark.parametrize("feeding", FEEDINGS)
@_run(REQUESTS)
def test_request_table_with_trailing_request(name, data, expected, feeding):
    trailing = END.to_bytes()
    if data and not data.endswith(b"\n"):
        data += b"\n"
    assert FEEDINGS[feeding](data + trailing, RequestReceiver) == expected + [END]


@pytest.mark.parametrize("feeding", FEEDINGS)
@_run([r for r in REQUEST_ERRORS if "stream end" not in r[0] and "endless" not in r[0]])
def test_request_errors_stay_errors_with_trailing_data(name, data, expected, feeding):
    assert FEEDINGS[feeding](data + START.to_bytes(), RequestReceiver) == expected


ENERGY = EndOk("2.75", "1.32")

# (name, bytes, expected): answers to an AnswerReceiver
ANSWERS = [
    ("drawn OK (2) at the end of the stream", DRAWN_2, [StartOk("23")]),
    ("drawn OK (4) at the end of the stream", DRAWN_4, [EndOk()]),
    ("drawn ERROR (2a) at the end of the stream", DRAWN_2A, [ErrorAnswer(401, "Key is not registered")]),
    ("drawn answers ended by the next start line", DRAWN_2 + DRAWN_4 + DRAWN_2A,
     [StartOk("23"), EndOk(), ErrorAnswer(401, "Key is not registered")]),
    ("drawn answers ended by empty lines", DRAWN_2 + b"\n" + DRAWN_4 + b"\r\n" + DRAWN_2A + b"\n",
     [StartOk("23"), EndOk(), ErrorAnswer(401, "Key is not registered")]),
    ("with Content-Length", StartOk("23").to_bytes() + ENERGY.to_bytes() + EndOk().to_bytes(),
     [StartOk("23"), ENERGY, EndOk()]),
    ("END answer", b"MMETERING/1.0 OK\nContent-Length: 2\nEnergy-kWh: 2.75\nAmount-EUR: 1.32\n", [ENERGY]),
    ("END answer, integers", b"MMETERING/1.0 OK\nContent-Length: 2\nAmount-EUR: 1\nEnergy-kWh: 0\n",
     [EndOk(0, 1)]),
    ("END answer without Content-Length", b"MMETERING/1.0 OK\nEnergy-kWh: 2.7500\nAmount-EUR: 1.32\n", [ENERGY]),
    ("ERROR with Content-Length, code order", b"MMETERING/1.0 ERROR\nContent-Length: 2\nCode: 505\nMessage: x\n",
     [ErrorAnswer(505, "x")]),
    ("ERROR with an unknown code", b"MMETERING/1.0 ERROR\r\nContent-Length: 2\r\nMessage: Teapot\r\nCode: 418\r\n",
     [ErrorAnswer(418, "Teapot")]),
    ("nothing", b"", []),
]

ANSWER_ERRORS = [
    ("a request sent to the station", DRAWN_1, [Err(400, "a request, not an answer")]),
    ("version 2.0", b"MMETERING/2.0 OK\nContent-Length: 0\n", [Err(505)]),
    ("OK with Session-Id and energy", b"MMETERING/1.0 OK\nSession-Id: 23\nEnergy-kWh: 1\nAmount-EUR: 1\n",
     [Err(400, "OK carries")]),
    ("OK with energy only", b"MMETERING/1.0 OK\nContent-Length: 1\nEnergy-kWh: 1\n", [Err(400, "OK carries")]),
    ("OK with Content-Length 3", b"MMETERING/1.0 OK\nContent-Length: 3\n", [Err(400, "OK carries 0 or 1 or 2")]),
    ("ERROR with Content-Length 1", b"MMETERING/1.0 ERROR\nContent-Length: 1\nCode: 401\n", [Err(400, "ERROR carries 2")]),
    ("ERROR without Code", b"MMETERING/1.0 ERROR\nMessage: x\n\n", [Err(400, "lacks the header Code")]),
    ("ERROR with a bad code", b"MMETERING/1.0 ERROR\nMessage: x\nCode: 4011\n", [Err(400, "Code must be")]),
    ("ERROR with an empty message", b"MMETERING/1.0 ERROR\nMessage:\nCode: 401\n", [Err(400, "Message must be")]),
    ("energy with too many places", b"MMETERING/1.0 OK\nEnergy-kWh: 1.00001\nAmount-EUR: 1\n",
     [Err(400, "more than 4 decimal places")]),
    ("amount with too many places", b"MMETERING/1.0 OK\nEnergy-kWh: 1\nAmount-EUR: 1.001\n",
     [Err(400, "more than 2 decimal places")]),
    ("energy in exponent form", b"MMETERING/1.0 OK\nEnergy-kWh: 1e3\nAmount-EUR: 1\n", [Err(400, "Energy-kWh must be")]),
    ("negative amount", b"MMETERING/1.0 OK\nEnergy-kWh: 1\nAmount-EUR: -1\n", [Err(400, "Amount-EUR must be")]),
    ("Content-Length after a header", b"MMETERING/1.0 OK\nSession-Id: 23\nContent-Length: 1\n",
     [Err(400, "not the first header")]),
    ("counted answer cut short", b"MMETERING/1.0 ERROR\nContent-Length: 2\nCode: 401\n", [Err(400, "stream ended")]),
    ("many headers without Content-Length",
     b"MMETERING/1.0 OK\n" + b"".join(b"Session-Id: %d\n" % i for i in range(MAX_HEADERS + 1)),
     [Err(400, "repeated header")]),
    ("unknown header", b"MMETERING/1.0 OK\nSession-Id: 23\nServer: x\n", [Err(400, "unknown header")]),
]


@pytest.mark.parametrize("feeding", FEEDINGS)
@_run(ANSWERS + ANSWER_ERRORS)
def test_answer_table(name, data, expected, feeding):
    assert FEEDINGS[feeding](data, AnswerReceiver) == expected


@pytest.mark.parametrize("feeding", FEEDINGS)
@_run(ANSWERS)
def test_answer_table_with_trailing_answer(name, data, expected, feeding):
    trailing = ErrorAnswer(409, "busy").to_bytes()
    assert FEEDINGS[feeding](data + trailing, AnswerReceiver) == expected + [ErrorAnswer(409, "busy")]


def test_answer_without_content_length_waits_for_its_end():
    receiver = AnswerReceiver()
    receiver.feed(DRAWN_2)
    assert receiver.next_event() is NEED_DATA  # more headers could follow
    assert receiver.in_message
    receiver.feed(b"\r\n")
    assert receiver.next_event() == StartOk("23")
    assert receiver.next_event() is NEED_DATA
    receiver.feed(b"")
    assert receiver.next_event() is CLOSED
    assert receiver.next_event() is CLOSED


def test_counted_answer_is_complete_without_waiting():
    receiver = AnswerReceiver()
    receiver.feed(StartOk("23").to_bytes())
    assert receiver.next_event() == StartOk("23")
    assert receiver.next_event() is NEED_DATA
    assert not receiver.in_message


def test_request_is_complete_after_its_last_header():
    receiver = RequestReceiver()
    receiver.feed(DRAWN_1 + DRAWN_3[:20])
    assert receiver.next_event() == START
    assert receiver.next_event() is NEED_DATA
    assert receiver.in_message and receiver.pending == 2  # the start line is read, "Co" waits


def test_too_long_line_is_refused_before_it_ends():
    receiver = RequestReceiver()
    receiver.feed(b"MMETERING/1.0 START\r\nName: ")
    assert receiver.next_event() is NEED_DATA
    receiver.feed(b"x" * (MAX_LINE - 7))
    assert receiver.next_event() is NEED_DATA  # 255 bytes without LF: still allowed
    receiver.feed(b"x")
    event = receiver.next_event()
    assert isinstance(event, ReceiveError) and event.code == 400 and len(event.raw) <= 64
    assert receiver.pending == 0
    receiver.feed(b"x" * 100_000)  # dropped, never buffered
    assert receiver.pending == 0
    assert receiver.next_event() is event
    assert receiver.error is event


def test_longest_line_is_accepted():
    name = b"x" * 64
    line = b"Key: " + b"0" * 20 + b" " * (MAX_LINE - 27)  # trailing spaces are stripped
    assert len(line) + 2 == MAX_LINE
    receiver = RequestReceiver()
    receiver.feed(start(CL2, b"Name: " + name, line))
    assert receiver.next_event() == StartRequest(name.decode(), "0" * 20)


def test_limits_are_parameters():
    receiver = RequestReceiver(max_line=16)
    receiver.feed(DRAWN_1)
    assert receiver.next_event() == Err(400, "longer than 16")
    receiver = RequestReceiver(max_message=64)
    receiver.feed(DRAWN_1)
    assert receiver.next_event() == Err(400, "longer than 64")
    receiver = RequestReceiver(max_headers=1)
    receiver.feed(DRAWN_1)
    assert receiver.next_event() == Err(400, "limit of 1")
    receiver = AnswerReceiver(max_headers=1)
    receiver.feed(b"MMETERING/1.0 OK\nEnergy-kWh: 1\nAmount-EUR: 1\n")
    assert receiver.next_event() == Err(400, "more than 1 header lines")


def test_receive_error_answer_is_sendable():
    receiver = RequestReceiver()
    receiver.feed(b"MMETERING/2.0 START\r\n")
    error = receiver.next_event()
    assert error.answer() == ErrorAnswer(505, error.message)
    assert error.answer().to_bytes().startswith(b"MMETERING/1.0 ERROR\r\nContent-Length: 2\r\nMessage: ")


def test_feeding_after_the_end_of_the_stream_is_a_mistake():
    receiver = RequestReceiver()
    receiver.feed(b"")
    with pytest.raises(RuntimeError):
        receiver.feed(b"x")


def test_a_whole_session_on_one_connection():
    server, station = RequestReceiver(), AnswerReceiver()
    server.feed(StartRequest("CP1", "04:a1:b2:c3").to_bytes())
    request = server.next_event()
    assert request == StartRequest("CP1", "04A1B2C3")
    station.feed(StartOk("s-1").to_bytes())
    session = station.next_event().session_id
    server.feed(EndRequest("CP1", session, request.key).to_bytes())
    assert server.next_event() == EndRequest("CP1", "s-1", "04A1B2C3")
    station.feed(EndOk.rounded("7.123456", "2.3456").to_bytes())
    assert station.next_event() == EndOk("7.1235", "2.35")
    server.feed(b"")
    station.feed(b"")
    assert server.next_event() is CLOSED and station.next_event() is CLOSED
