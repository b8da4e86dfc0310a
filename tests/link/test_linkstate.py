"""The link state machine without sockets or a clock: tables of what a peer sends, fed whole,
in halves, byte by byte and with trailing data (as the framer's tests do), and time driven
explicitly through ``now``: handshakes, ACK/NACK, the inbound bound, one frame in flight with
a queue behind it, retransmission and its limit, EOT, end of stream, closing and failing."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ev_common.linkstate import (
    Acked,
    Broken,
    Closed,
    LinkBroken,
    LinkClosed,
    LinkConfig,
    LinkState,
    LinkTimeout,
    NeverOpened,
    Opened,
    OutboundFull,
    Received,
    Refused,
    Role,
    SessionRefused,
)
from ev_common.protocol import (
    ACK,
    ENQ,
    EOT,
    ETX,
    NACK,
    STX,
    Auth,
    Frame,
    Hb,
    LocalProtocolError,
    Reg,
    UnknownOpcode,
    encode_frame,
    lrc,
)
from tests.protocol import feeding as framer_feeding

CFG = LinkConfig(handshake_timeout=3.0, ack_timeout=1.0, max_retries=3, max_inbound=256, max_outbound=4)
A, N, Q, E = bytes((ACK,)), bytes((NACK,)), bytes((ENQ,)), bytes((EOT,))
PEER = "peer"


def frame(message) -> bytes:
    return encode_frame(message.to_data())


AUTH = Auth.accepted("hi")
HB = Hb("CP001")
REG = Reg("CP001", "C/Mayor, 45", Decimal("0.48"))
BAD_LRC = bytes((STX,)) + b"HB#CP001" + bytes((ETX, lrc(b"HB#CP001") ^ 0xFF))
UNKNOWN = encode_frame(b"NOPE#x")
TRAILING = frame(Hb("CP999"))


def new(role: Role, config: LinkConfig = CFG, **kwargs) -> LinkState:
    state = LinkState(role, config, peer=PEER, **kwargs)
    state.start(0.0)
    return state


def opened(role: Role = Role.SERVER, config: LinkConfig = CFG) -> LinkState:
    state = new(role, config)
    state.feed(Q if role is Role.SERVER else A, 0.0)
    assert state.events() == [Opened()]
    return state


def run(state: LinkState, chunks, eof: bool = False) -> tuple[list, bytes]:
    """Feed ``chunks`` (then the end of stream); every event and every byte to write, in order."""
    events, out = [], b""
    for chunk in chunks:
        out += state.feed(chunk, 0.0)
        events += state.events()
    if eof:
        out += state.feed(b"", 0.0)
        events += state.events()
    return events, out


def whole(data: bytes) -> list[bytes]:
    return [data]


def halves(data: bytes) -> list[bytes]:
    mid = len(data) // 2
    return [c for c in (data[:mid], data[mid:]) if c]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


FEEDINGS = {"whole": whole, "halves": halves, "bytewise": bytewise}
# the framer's own feedings (tests/protocol/feeding.py) that split the bytes the same way
FRAMER_FEEDINGS = {whole: framer_feeding.whole, halves: framer_feeding.halves, bytewise: framer_feeding.bytewise}


# -- tables: what the peer sends -> events and bytes we answer ----------------------------------------

# (name, role, bytes from the peer, end of stream after them, events, bytes we write)
TABLE = [
    ("client opens", Role.CLIENT, A, False, [Opened()], b""),
    ("client refused", Role.CLIENT, N, False,
     [Refused(SessionRefused("peer refused the session (NACK)"))], b""),
    ("client: frame right after the ACK", Role.CLIENT, A + frame(AUTH), False, [Opened(), Received(AUTH)], A),
    ("client: noise, bad LRC, good frame", Role.CLIENT, A + b"zz" + BAD_LRC + frame(AUTH), False,
     [Opened(), Received(AUTH)], N + A),
    ("client: unknown opcode is ACKed, delivered as its error", Role.CLIENT, A + UNKNOWN, False,
     [Opened(), Received(UnknownOpcode(b"NOPE#x", "NOPE"))], A),
    ("client: EOT ends, what follows is ignored", Role.CLIENT, A + frame(AUTH) + E + frame(HB), False,
     [Opened(), Received(AUTH), Closed(LinkClosed("peer ended the session (EOT)"))], A),
    ("client: peer closes mid-frame", Role.CLIENT, A + b"\x02AUTH#OK#cut", True,
     [Opened(), Broken(LinkBroken("peer closed the connection mid-frame "
                                  "(truncated frame: stream ended inside a frame (bytes: b'\\x02AUTH#OK#cut'))"))], b""),
    ("client: peer closes between frames", Role.CLIENT, A + frame(AUTH), True,
     [Opened(), Received(AUTH), Closed(LinkClosed("peer closed the connection"))], A),
    ("client: peer closes instead of answering", Role.CLIENT, b"", True,
     [Broken(LinkBroken("peer closed the connection instead of answering ENQ"))], b""),
    ("client: a frame instead of ACK", Role.CLIENT, frame(AUTH), False,
     [Broken(LinkBroken("peer answered ENQ with a frame, expected ACK or NACK"))], b""),
    ("client: EOT instead of ACK", Role.CLIENT, E, False,
     [Broken(LinkBroken("peer answered ENQ with EOT, expected ACK or NACK"))], b""),
    ("client: stray ACK, NACK and ENQ change nothing", Role.CLIENT, A + A + N + Q + frame(HB), False,
     [Opened(), Received(HB)], A),
    ("server opens", Role.SERVER, Q, False, [Opened()], A),
    ("server: noise before ENQ", Role.SERVER, b"GET / HTTP" + Q + frame(REG), False,
     [Opened(), Received(REG)], A + A),
    ("server: frames pipelined after ENQ", Role.SERVER, Q + frame(REG) + frame(HB) + frame(HB), False,
     [Opened(), Received(REG), Received(HB), Received(HB)], A + A + A + A),
    # the seed's Monitor speaks frames only: its first frame is an implied ENQ
    ("server: a frame instead of ENQ opens the session", Role.SERVER, frame(REG) + frame(HB), False,
     [Opened(), Received(REG), Received(HB)], A + A),
    ("server: a malformed frame instead of ENQ is told NACK and EOT", Role.SERVER, b"\x02REG\x03\x00", False,
     [Broken(LinkBroken("peer sent a malformed frame (LRC mismatch: computed 0x50, received 0x00 "
                        "(bytes: b'\\x02REG\\x03\\x00')) instead of ENQ"))], N + E),
    ("server: ACK instead of ENQ is told NACK and EOT", Role.SERVER, A, False,
     [Broken(LinkBroken("peer sent ACK instead of ENQ"))], N + E),
    ("server: closed without a byte (a port probe)", Role.SERVER, b"", True,
     [Broken(NeverOpened("peer closed the connection without sending anything"))], b""),
    ("server: EOT after a frame", Role.SERVER, Q + frame(HB) + E, False,
     [Opened(), Received(HB), Closed(LinkClosed("peer ended the session (EOT)"))], A + A),
]


@pytest.mark.parametrize("feeding", FEEDINGS.values(), ids=FEEDINGS.keys())
@pytest.mark.parametrize("name, role, data, eof, events, out", TABLE, ids=[row[0] for row in TABLE])
def test_table(feeding, name, role, data, eof, events, out) -> None:
    state = new(role)
    assert run(state, feeding(data), eof) == (events, out)


@pytest.mark.parametrize("feeding", FEEDINGS.values(), ids=FEEDINGS.keys())
@pytest.mark.parametrize("name, role, data, eof, events, out", [row for row in TABLE if not row[3]],
                         ids=[row[0] for row in TABLE if not row[3]])
def test_table_with_trailing_data(feeding, name, role, data, eof, events, out) -> None:
    """A frame right behind the row's bytes: served as one more message, unless the row ended the session."""
    state = new(role)
    got = run(state, feeding(data + TRAILING))
    if events and isinstance(events[-1], (Closed, Broken, Refused)):
        assert got == (events, out)
    else:
        assert got == (events + [Received(Hb("CP999"))], out + A)


def test_server_refusing_answers_nack_and_ends() -> None:
    state = new(Role.SERVER, refuse="too many sessions")
    assert run(state, [Q + frame(REG)]) == (
        [Refused(SessionRefused("refused session from peer: too many sessions"))], N)
    assert state.closed and state.feed(frame(REG), 0.0) == b"" and state.events() == ()


@pytest.mark.parametrize("feeding", FEEDINGS.values(), ids=FEEDINGS.keys())
def test_frames_delivered_are_those_the_framer_decodes(feeding) -> None:
    """Whatever the bytes, an open link delivers (and ACKs) exactly the frames the framer decodes."""
    stream = b"\x00" + frame(HB) + BAD_LRC + b"\x02\x03\x00" + frame(AUTH) + b"\x02AUTH\x02" + frame(REG)
    framer = FRAMER_FEEDINGS[feeding](stream)
    state = opened()
    events, out = run(state, feeding(stream))
    decoded = [e for e in framer if isinstance(e, Frame)]
    assert [e.message.to_data().decode() for e in events] == [f.text for f in decoded]
    assert out.count(A) == len(decoded) and out.count(N) == len(framer) - len(decoded)


# -- the inbound bound --------------------------------------------------------------------------------


@pytest.mark.parametrize("feeding", FEEDINGS.values(), ids=FEEDINGS.keys())
def test_frames_beyond_max_inbound_are_nacked(feeding) -> None:
    """A driver that holds what it took says so with ``backlog``; taken and released, there is room again."""
    state = opened(config=LinkConfig(max_inbound=2))
    events, out = [], b""
    for chunk in feeding(frame(HB) * 3):
        out += state.feed(chunk, 0.0)
        taken = state.events()
        state.backlog += len(taken)
        events += taken
    assert events == [Received(HB)] * 2 and out == A + A + N
    assert state.stats["refused_full"] == 1
    state.backlog = 0
    assert run(state, [frame(HB)]) == ([Received(HB)], A)


def test_the_drivers_backlog_counts_against_max_inbound() -> None:
    state = opened(config=LinkConfig(max_inbound=2))
    state.backlog = 2
    assert run(state, [frame(HB)]) == ([], N)
    state.backlog = 1
    assert run(state, [frame(HB) * 2]) == ([Received(HB)], A + N)


# -- sending: one frame in flight, a queue behind it --------------------------------------------------


def test_one_frame_in_flight_the_rest_queued_in_order() -> None:
    state = opened()
    assert state.send(REG, 0.0, "reg") == frame(REG)
    assert state.send(HB, 0.1, "hb1") == b""  # behind REG
    assert state.send(Hb("CP002"), 0.2, "hb2") == b""
    assert state.queued == 3 and state.next_deadline() == 1.0
    assert state.feed(A, 0.5) == frame(HB)  # REG ACKed: the next goes at once
    assert state.events() == [Acked("reg")] and state.next_deadline() == 1.5
    assert state.feed(A, 0.6) == frame(Hb("CP002"))
    assert state.events() == [Acked("hb1")]
    assert state.feed(A + A, 0.7) == b"" and state.events() == [Acked("hb2")]  # the second ACK: stray
    assert state.queued == 0 and state.next_deadline() is None
    assert state.stats["sent"] == 3 and state.stats["stray_ack"] == 1


@pytest.mark.parametrize("feeding", FEEDINGS.values(), ids=FEEDINGS.keys())
def test_acks_interleaved_with_the_peers_frames(feeding) -> None:
    """Full duplex: our ACK arrives between the peer's frames, in any chunking."""
    state = opened(Role.CLIENT)
    state.send(REG, 0.0, "reg")
    state.send(HB, 0.0, "hb")
    events, out = run(state, feeding(frame(AUTH) + A + frame(HB) + A))
    assert events == [Received(AUTH), Acked("reg"), Received(HB), Acked("hb")]
    assert out == A + frame(HB) + A


def test_messages_sent_before_the_handshake_go_once_open() -> None:
    state = LinkState(Role.CLIENT, CFG, peer=PEER)
    assert state.start(10.0) == Q and state.next_deadline() == 13.0
    assert state.send(REG, 10.0, 1) == b""
    assert state.feed(A, 10.5) == frame(REG)
    assert state.events() == [Opened()] and state.next_deadline() == 11.5


def test_nack_retransmits_up_to_max_retries_then_breaks() -> None:
    state = opened()
    state.send(REG, 0.0, "reg")
    state.send(HB, 0.0, "hb")
    for attempt in range(CFG.max_retries):
        assert state.feed(N, 0.1 * attempt) == frame(REG)
    assert state.stats["retransmitted"] == 3
    assert state.feed(N, 1.0) == b""
    assert state.events() == [Broken(LinkBroken("peer: REG not acknowledged after 3 retransmissions (NACK)"),
                                     ("reg", "hb"))]
    assert state.closed and state.next_deadline() is None
    with pytest.raises(LinkBroken, match="after 3 retransmissions"):
        state.send(HB, 1.0)


def test_ack_timeout_retransmits_on_time_then_breaks() -> None:
    state = opened()
    assert state.send(REG, 0.0, "reg") == frame(REG)
    assert state.on_timer(0.999) == b""  # not due yet
    now = 1.0
    for _ in range(CFG.max_retries):
        assert state.next_deadline() == now
        assert state.on_timer(now) == frame(REG)
        now += CFG.ack_timeout
    assert state.on_timer(now - 0.001) == b""
    assert state.on_timer(now) == b""
    assert state.events() == [Broken(LinkBroken("peer: REG not acknowledged after 3 retransmissions "
                                                "(no ACK within 1 s)"), ("reg",))]


def test_a_late_ack_after_a_retransmission_is_stray() -> None:
    state = opened()
    state.send(REG, 0.0, "reg")
    assert state.on_timer(1.0) == frame(REG)
    assert state.feed(A, 1.1) == b"" and state.events() == [Acked("reg")]  # the first copy's ACK
    assert state.feed(A, 1.2) == b"" and state.events() == ()  # the second copy's
    assert state.stats["stray_ack"] == 1 and state.stats["sent"] == 1 and state.stats["retransmitted"] == 1


def test_the_outbound_queue_is_bounded() -> None:
    state = opened()
    for i in range(CFG.max_outbound):
        state.send(HB, 0.0, i)
    with pytest.raises(OutboundFull):
        state.send(HB, 0.0, "one too many")
    state.feed(A, 0.1)
    assert state.events() == [Acked(0)]
    state.send(HB, 0.1, "room again")


def test_a_message_no_receiver_would_accept_is_refused_before_queueing() -> None:
    state = opened()
    with pytest.raises(LocalProtocolError):
        state.send(Auth("OK", "x" * 5000), 0.0)
    assert state.queued == 0


# -- handshake deadlines ------------------------------------------------------------------------------


@pytest.mark.parametrize("role, text", [(Role.CLIENT, "peer did not answer ENQ within 3 s"),
                                        (Role.SERVER, "peer sent no ENQ within 3 s")])
def test_handshake_deadline(role: Role, text: str) -> None:
    state = new(role)
    assert state.next_deadline() == 3.0
    assert state.on_timer(2.999) == b"" and state.events() == ()
    assert state.on_timer(3.0) == b""
    (event,) = state.events()
    assert isinstance(event, Broken) and isinstance(event.cause, LinkTimeout) and str(event.cause) == text


def test_an_open_idle_link_has_no_deadline() -> None:
    state = opened()
    assert state.next_deadline() is None and state.on_timer(1e9) == b"" and state.events() == ()


# -- ending it ourselves ------------------------------------------------------------------------------


def test_close_writes_eot_once_and_reports_what_was_not_delivered() -> None:
    state = opened()
    state.send(REG, 0.0, "reg")
    state.send(HB, 0.0, "hb")
    assert state.close("bye") == E
    assert state.events() == [Closed(LinkClosed("peer: bye"), ("reg", "hb"))]
    assert state.close("again") == b"" and state.events() == ()
    with pytest.raises(LinkClosed, match="bye"):
        state.send(HB, 0.0)
    assert state.feed(frame(HB), 0.0) == b"" and state.on_timer(9.0) == b"" and state.events() == ()


def test_close_without_eot_and_before_open() -> None:
    assert opened().close("quietly", send_eot=False) == b""
    state = new(Role.CLIENT)
    assert state.close("gave up") == b""  # no session to end with EOT yet
    assert state.events() == [Closed(LinkClosed("peer: gave up"))]


def test_fail_ends_with_the_drivers_cause() -> None:
    state = opened()
    state.send(HB, 0.0, 7)
    state.fail(LinkBroken("peer: write failed"))
    state.fail(LinkBroken("ignored: already over"))
    assert state.events() == [Broken(LinkBroken("peer: write failed"), (7,))]


# -- two state machines talking ------------------------------------------------------------------------


@pytest.mark.parametrize("feeding", FEEDINGS.values(), ids=FEEDINGS.keys())
def test_a_client_and_a_server_exchange_messages_both_ways(feeding) -> None:
    """Both send at once; bytes cross in any chunking; everything arrives once, in order, ACKed."""
    client = LinkState(Role.CLIENT, CFG, peer="server")
    server = LinkState(Role.SERVER, CFG, peer="client")
    to_server, to_client = client.start(0.0), server.start(0.0)
    got = {"client": [], "server": []}
    acked = {"client": [], "server": []}
    for i in range(3):
        to_server += client.send(Hb(f"CP{i:03d}"), 0.0, f"c{i}")
    for step in range(50):
        if not (to_server or to_client):
            break
        if step == 1:  # once the server is open, it pushes too
            for i in range(3):
                to_client += server.send(Auth.accepted(f"push {i}"), 0.0, f"s{i}")
        data, to_server = to_server, b""
        for chunk in feeding(data):
            to_client += server.feed(chunk, 0.0)
        data, to_client = to_client, b""
        for chunk in feeding(data):
            to_server += client.feed(chunk, 0.0)
        for name, state in (("client", client), ("server", server)):
            for event in state.events():
                if isinstance(event, Received):
                    got[name].append(event.message)
                elif isinstance(event, Acked):
                    acked[name].append(event.tag)
    assert got["server"] == [Hb(f"CP{i:03d}") for i in range(3)]
    assert got["client"] == [Auth.accepted(f"push {i}") for i in range(3)]
    assert acked == {"client": ["c0", "c1", "c2"], "server": ["s0", "s1", "s2"]}
    assert client.stats["retransmitted"] == server.stats["retransmitted"] == 0


# -- the same frame again (a Monitor's sign of life every second) --------------------------------------


def test_a_frame_repeated_alone_is_not_decoded_again() -> None:
    """A chunk that is exactly the last chunk's one well-formed frame yields that frame's event
    again: the same message object (immutable), ACKed, counted; nothing is decoded."""
    state = opened()
    first, out1 = run(state, [frame(HB)])
    second, out2 = run(state, [frame(HB)])
    third, out3 = run(state, [frame(HB)])
    assert first == second == third == [Received(HB)] and out1 == out2 == out3 == A
    assert second[0].message is first[0].message and third[0] is first[0]
    assert state.stats["received"] == 3


def test_a_repeated_frame_is_still_bounded_by_max_inbound() -> None:
    state = opened(config=LinkConfig(max_inbound=2))
    assert run(state, [frame(HB)]) == ([Received(HB)], A)
    state.backlog = 2  # the driver holds two unread
    assert run(state, [frame(HB)]) == ([], N)
    assert state.stats["refused_full"] == 1
    state.backlog = 0
    assert run(state, [frame(HB)]) == ([Received(HB)], A)


def test_what_is_not_one_whole_good_frame_is_decoded_as_always() -> None:
    state = opened()
    run(state, [frame(HB)])
    other = Hb("CP002")
    assert run(state, [frame(other)]) == ([Received(other)], A)  # another frame: decoded, and now the repeat
    assert run(state, [frame(HB) * 2]) == ([Received(HB)] * 2, A + A)  # two frames in one chunk
    events, out = run(state, [UNKNOWN])
    assert out == A and isinstance(events[0].message, UnknownOpcode)
    again, out = run(state, [UNKNOWN])  # bad content is never the repeat: decoded (and refused) again
    assert out == A and isinstance(again[0].message, UnknownOpcode) and again[0] is not events[0]
    assert run(state, [BAD_LRC]) == ([], N)
    assert run(state, [BAD_LRC]) == ([], N)


def test_a_repeated_chunk_after_a_partial_frame_is_decoded_with_it() -> None:
    """The repeat is taken only when the decoder holds nothing: after half a frame, the same
    bytes are the rest of a longer stream and are decoded with it."""
    state = opened()
    run(state, [frame(HB)])
    whole_reg = frame(REG)
    assert run(state, [whole_reg[:5]]) == ([], b"")
    events, out = run(state, [whole_reg[5:] + frame(HB)])
    assert events == [Received(REG), Received(HB)] and out == A + A
    events, out = run(state, [whole_reg[:5], frame(HB)])  # STX inside a frame: the half frame is refused
    assert Received(HB) in events and out.endswith(A)
