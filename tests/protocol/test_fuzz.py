"""Hypothesis: on arbitrary bytes the decoder raises only declared errors, ends, and stays bounded."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ev_common.protocol import (
    MAX_DATA,
    MESSAGES,
    NEED_DATA,
    Frame,
    FrameDecoder,
    FrameError,
    MessageError,
    encode_frame,
)

from .feeding import FEEDINGS, feed_chunks

wire_bytes = st.binary(max_size=3 * MAX_DATA)
# byte soup biased toward protocol bytes, so that frames, ETX and LRC clashes are common
soup = st.lists(
    st.one_of(st.sampled_from([b"\x02", b"\x03", b"\x04", b"\x05", b"\x06", b"\x15", b"#", b"REG", b"A"]),
              st.binary(max_size=8)),
    max_size=300,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(wire_bytes, soup), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_decoder_raises_only_frame_errors_and_stays_bounded(data, cuts):
    decoder = FrameDecoder()
    positions = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    steps = 0
    for start, end in zip(positions, positions[1:]):
        decoder.feed(data[start:end])
        while True:
            steps += 1
            assert steps <= 2 * len(data) + 10, "decoder does not terminate"
            try:
                event = decoder.next_event()
            except FrameError:
                continue
            if event is NEED_DATA:
                break
            if isinstance(event, Frame):
                assert 0 < len(event.text.encode()) <= MAX_DATA
                try:
                    MESSAGES.decode(event.text)  # content errors are typed too
                except MessageError:
                    pass
        assert decoder.pending <= MAX_DATA + 1
    try:
        decoder.close()
    except FrameError:
        pass


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.text(st.characters(min_codepoint=0x20, exclude_categories=("Cs",)), min_size=1,
                              max_size=200), max_size=5),
       noise=st.binary(max_size=50).filter(lambda b: b"\x02" not in b))
def test_valid_frames_survive_any_feeding(texts, noise):
    wire = noise + b"".join(encode_frame(t.encode()) for t in texts)
    expected = [Frame(t) for t in texts]
    for feed in FEEDINGS.values():
        events = [e for e in feed(wire) if isinstance(e, Frame)]
        assert events == expected


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_message_decode_raises_only_message_errors(text):
    try:
        MESSAGES.decode(text)
    except MessageError:
        pass


def test_feed_chunks_helper_matches_whole():
    data = encode_frame(b"A#1") + b"\x06"
    assert feed_chunks([data]) == feed_chunks([data[:1], data[1:]])


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=50))
def test_building_a_field_either_succeeds_and_encodes_or_raises_local_error(text):
    from ev_common.protocol import Auth, LocalProtocolError

    try:
        message = Auth("OK", text)
    except LocalProtocolError:
        return
    assert MESSAGES.decode(message.to_data().decode()) == message
