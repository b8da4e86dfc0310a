"""Hypothesis: on any bytes the receivers return only declared events, end, and stay bounded;
every message built round-trips; every ReceiveError makes a sendable answer."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from ev_common.mcsp import (
    CLOSED,
    KEY_BYTES,
    MAX_LINE,
    NEED_DATA,
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
)

from .feeding import FEEDINGS

DECLARED = {
    RequestReceiver: (StartRequest, EndRequest),
    AnswerReceiver: (StartOk, EndOk, ErrorAnswer),
}

VALID = [
    StartRequest("Tankstelle1", "16AC936B1692E73A").to_bytes(),
    EndRequest("Tankstelle1", "23", "16AC936B").to_bytes(),
    StartOk("23").to_bytes(),
    EndOk("2.75", "1.32").to_bytes(),
    ErrorAnswer(401, "Key is not registered").to_bytes(),
]
# byte soup biased toward the protocol's own pieces, so that near-valid messages are common
soup = st.lists(
    st.one_of(
        st.sampled_from([b"MMETERING/1.0 ", b"MMETERING/2.0 ", b"START", b"END", b"OK", b"ERROR", b"\r\n",
                         b"\n", b"\r", b"Content-Length: ", b"2", b"3", b"Name: CP1", b"Key: 16AC936B",
                         b"Session-Id: 23", b"Message: x", b"Code: 401", b"Energy-kWh: 1.5",
                         b"Amount-EUR: 0.75", b": ", b" ", b"\xff"]),
        st.sampled_from(VALID),
        st.binary(max_size=8),
    ),
    max_size=120,
).map(b"".join)
wire = st.one_of(st.binary(max_size=4 * MAX_LINE), soup)
receivers = st.sampled_from([RequestReceiver, AnswerReceiver])


@settings(max_examples=400, deadline=None)
@given(data=wire, cuts=st.lists(st.integers(min_value=0), max_size=20), receiver_class=receivers)
def test_receivers_return_only_declared_events_and_stay_bounded(data, cuts, receiver_class):
    receiver = receiver_class()
    positions = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(positions, positions[1:])] + [b""]
    steps = 0
    for chunk in chunks:
        receiver.feed(chunk)
        while True:
            steps += 1
            assert steps <= len(data) + 10, "the receiver does not terminate"
            event = receiver.next_event()
            if event is NEED_DATA:
                assert receiver.pending < MAX_LINE
                break
            if event is CLOSED:
                assert chunk == b""
                return
            if isinstance(event, ReceiveError):
                assert event.code in (ErrorCode.BAD_REQUEST, ErrorCode.VERSION_NOT_SUPPORTED)
                answer = event.answer()  # always sendable
                assert _reparse(answer) == answer
                assert receiver.next_event() is event and receiver.pending == 0
                return
            assert isinstance(event, DECLARED[receiver_class])
            assert _reparse(event) == event
    raise AssertionError("the stream ended without CLOSED or an error")


def _reparse(message):
    receiver = (RequestReceiver if isinstance(message, (StartRequest, EndRequest)) else AnswerReceiver)()
    receiver.feed(message.to_bytes())
    return receiver.next_event()


ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
keys = st.sampled_from(KEY_BYTES).flatmap(lambda n: st.binary(min_size=n, max_size=n)).flatmap(
    lambda b: st.sampled_from([b.hex(), b.hex().upper(), b.hex(":"), b.hex("-").upper(), b.hex(" ")]))
energies = st.decimals(min_value=0, max_value=Decimal("99999999.9999"), places=4)
amounts = st.decimals(min_value=0, max_value=Decimal("99999999.99"), places=2)
texts = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=200).map(
    lambda t: t.strip(" ") or "x")
messages = st.one_of(
    st.builds(StartRequest, ids, keys),
    st.builds(EndRequest, ids, ids, keys),
    st.builds(StartOk, ids),
    st.builds(EndOk, energies, amounts),
    st.just(EndOk()),
    st.builds(ErrorAnswer, st.integers(100, 999), texts),
)


@settings(max_examples=300, deadline=None)
@given(sequence=st.lists(messages, min_size=1, max_size=4), lf=st.booleans(), feeding=st.sampled_from(list(FEEDINGS)))
def test_messages_round_trip_in_sequence(sequence, lf, feeding):
    side = RequestReceiver if isinstance(sequence[0], (StartRequest, EndRequest)) else AnswerReceiver
    sequence = [m for m in sequence if isinstance(m, DECLARED[side])]
    data = b"".join(m.to_bytes() for m in sequence)
    if lf:
        data = data.replace(b"\r\n", b"\n")
    assert FEEDINGS[feeding](data, side) == sequence


@settings(max_examples=300, deadline=None)
@given(name=st.one_of(st.text(max_size=70), st.integers()), key=st.one_of(st.text(max_size=40), st.none()))
def test_building_a_request_either_succeeds_and_round_trips_or_raises_local_error(name, key):
    try:
        message = StartRequest(name, key)
    except LocalProtocolError:
        return
    assert _reparse(message) == message


@settings(max_examples=300, deadline=None)
@given(energy=st.one_of(st.decimals(allow_nan=True), st.floats(), st.text(max_size=12), st.integers()),
       amount=st.one_of(st.decimals(allow_nan=True), st.floats(), st.integers()))
def test_rounding_an_end_answer_either_succeeds_and_round_trips_or_raises_local_error(energy, amount):
    try:
        message = EndOk.rounded(energy, amount)
    except LocalProtocolError:
        return
    assert _reparse(message) == message


@settings(max_examples=300, deadline=None)
@given(energy=st.one_of(st.decimals(allow_nan=True), st.floats(), st.text(max_size=12), st.integers()),
       amount=st.one_of(st.decimals(allow_nan=True), st.floats(), st.text(max_size=12)))
def test_building_an_end_answer_either_succeeds_and_round_trips_or_raises_local_error(energy, amount):
    try:
        message = EndOk(energy, amount)
    except LocalProtocolError:
        return
    assert _reparse(message) == message
