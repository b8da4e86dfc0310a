"""Framing: tables that drive encode and decode, fed whole, in halves and byte by byte."""

from __future__ import annotations

import pytest

from ev_common.protocol import (
    ACK,
    ENQ,
    EOT,
    MAX_DATA,
    NACK,
    BadChecksum,
    Control,
    ControlByte,
    ControlByteInData,
    EmptyFrame,
    Frame,
    FrameDecoder,
    FrameTooLong,
    InvalidEncoding,
    LocalProtocolError,
    TruncatedFrame,
    encode_frame,
    lrc,
)

from .feeding import FEEDINGS


def frame(text: str) -> bytes:
    return encode_frame(text.encode())


def raw_frame(data: bytes, lrc_byte: int | None = None) -> bytes:
    """A frame built by hand, bypassing the encoder's checks."""
    return b"\x02" + data + b"\x03" + bytes((lrc(data) if lrc_byte is None else lrc_byte,))


def test_lrc_is_xor_of_data_only():
    assert lrc(b"") == 0
    assert lrc(b"A") == 0x41
    assert lrc(b"AB") == 0x41 ^ 0x42
    # the seed's own example
    assert encode_frame(b"REG#CP001#C/Mayor, 45#0.48") == raw_frame(b"REG#CP001#C/Mayor, 45#0.48")


# (name, bytes on the wire, expected events/errors): every row runs whole, in halves, bytewise
GOOD = [
    ("one frame", frame("REG#CP001#C/Mayor, 45#0.48"), [Frame("REG#CP001#C/Mayor, 45#0.48")]),
    ("two frames in one chunk", frame("A#1") + frame("B#2"), [Frame("A#1"), Frame("B#2")]),
    ("control bytes", bytes((ENQ, ACK, NACK, EOT)),
     [Control(ControlByte.ENQ), Control(ControlByte.ACK), Control(ControlByte.NACK), Control(ControlByte.EOT)]),
    ("control bytes between frames", frame("A") + bytes((ACK,)) + frame("B") + bytes((NACK,)),
     [Frame("A"), Control(ControlByte.ACK), Frame("B"), Control(ControlByte.NACK)]),
    ("garbage before STX", b"hello\xff\x00\x03" + frame("AUTH#OK#x"), [Frame("AUTH#OK#x")]),
    ("utf-8 text", frame("REG#CP1#Plaza España, 3#0.5"), [Frame("REG#CP1#Plaza España, 3#0.5")]),
    # LRC of "AC" is 0x02 (STX), of "AB" 0x03 (ETX), of "AG" 0x06 (ACK): the LRC is positional
    ("LRC bytes that look like STX, ETX, ACK", frame("AC") + frame("AB") + frame("AG"),
     [Frame("AC"), Frame("AB"), Frame("AG")]),
    ("largest frame", frame("X" * MAX_DATA), [Frame("X" * MAX_DATA)]),
    ("empty fields", frame("AUTH#OK#"), [Frame("AUTH#OK#")]),
]

# the malformed-input corpus: each row says what the decoder reports, and that it goes on
MALFORMED = [
    ("bad LRC", raw_frame(b"REG#CP1#x#1", 0x00), [BadChecksum]),
    ("bad LRC then good frame", raw_frame(b"A#1", 0x7F) + frame("B#2"), [BadChecksum, Frame("B#2")]),
    ("missing ETX, new STX", b"\x02REG#CP1" + frame("B"), [TruncatedFrame, Frame("B")]),
    ("truncated at EOF", b"\x02REG#CP1#x", [TruncatedFrame]),
    ("truncated at EOF before LRC", b"\x02REG#CP1#x\x03", [TruncatedFrame]),
    ("oversize frame", raw_frame(b"X" * (MAX_DATA + 1)), [FrameTooLong]),
    ("oversize then good frame", raw_frame(b"X" * (MAX_DATA + 10)) + frame("OK"), [FrameTooLong, Frame("OK")]),
    ("oversize with no ETX then good frame", b"\x02" + b"Y" * (MAX_DATA * 3) + frame("OK"),
     [FrameTooLong, Frame("OK")]),
    ("empty DATA", raw_frame(b""), [EmptyFrame]),
    ("control byte in DATA", raw_frame(b"REG#C\x01P1"), [ControlByteInData]),
    ("ACK byte in DATA then good frame", raw_frame(b"A\x06B") + frame("C"), [ControlByteInData, Frame("C")]),
    ("NUL in DATA", raw_frame(b"A\x00B"), [ControlByteInData]),
    ("invalid UTF-8", raw_frame(b"REG#\xff\xfe#x#1"), [InvalidEncoding]),
    ("overlong UTF-8", raw_frame(b"A#\xc0\xaf"), [InvalidEncoding]),
    ("garbage only", b"\xff" * 100 + b"hello", []),
    ("bad frame followed by good one", raw_frame(b"X", 0) + frame("GOOD#1"), [BadChecksum, Frame("GOOD#1")]),
    ("stray ETX and LRC before frame", b"\x03\x41" + frame("A"), [Frame("A")]),
]


@pytest.mark.parametrize("feeding", FEEDINGS)
@pytest.mark.parametrize("name,data,expected", GOOD + MALFORMED, ids=[r[0] for r in GOOD + MALFORMED])
def test_decoder_table(name, data, expected, feeding):
    assert FEEDINGS[feeding](data) == expected


ENCODED = [
    ("REG#CP001#C/Mayor, 45#0.48", b"\x02REG#CP001#C/Mayor, 45#0.48\x03\x6a"),
    ("AUTH#OK#Autenticacion exitosa", b"\x02AUTH#OK#Autenticacion exitosa\x03\x0e"),
    ("AC", b"\x02AC\x03\x02"),
]


@pytest.mark.parametrize("text,wire", ENCODED, ids=[r[0] for r in ENCODED])
def test_encode_and_decode_table(text, wire):
    assert encode_frame(text.encode()) == wire
    for feed in FEEDINGS.values():
        assert feed(wire) == [Frame(text)]
        assert feed(wire + wire[:3]) == [Frame(text), TruncatedFrame]  # trailing partial frame


def test_trailing_partial_frame_waits_for_more():
    decoder = FrameDecoder()
    decoder.feed(frame("A#1") + b"\x02B#")
    assert decoder.next_event() == Frame("A#1")
    from ev_common.protocol import NEED_DATA

    assert decoder.next_event() is NEED_DATA
    assert decoder.in_frame
    decoder.feed(b"2\x03" + bytes((lrc(b"B#2"),)))
    assert decoder.next_event() == Frame("B#2")


@pytest.mark.parametrize(
    "data,reason",
    [(b"", "empty"), (b"X" * (MAX_DATA + 1), "limit"), (b"A\x03B", "control"), (b"A\nB", "control")],
)
def test_encoder_refuses_what_receivers_reject(data, reason):
    with pytest.raises(LocalProtocolError, match=reason):
        encode_frame(data)


def test_errors_keep_the_offending_bytes():
    bad = raw_frame(b"REG#CP1#x#1", 0x00)
    decoder = FrameDecoder()
    decoder.feed(bad)
    with pytest.raises(BadChecksum) as info:
        decoder.next_event()
    assert info.value.raw == bad
    assert "LRC mismatch" in str(info.value)


def test_oversize_error_keeps_bounded_prefix():
    decoder = FrameDecoder()
    decoder.feed(b"\x02" + b"Z" * (MAX_DATA * 4))
    with pytest.raises(FrameTooLong) as info:
        decoder.next_event()
    assert info.value.raw.startswith(b"\x02ZZZ")
    assert len(info.value.raw) <= 128
    assert decoder.pending <= MAX_DATA * 4  # the skipped bytes are released as they are read
    decoder.next_event()
    assert decoder.pending == 0
