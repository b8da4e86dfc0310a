"""Link.send_nowait over real loopback sockets: the frame goes out at once, its ACK is read by
whoever reads the link next, a late or NACKed frame is retransmitted by check_unacked (and
the link given up after max_retries), and the next blocking send waits for it first."""

from __future__ import annotations

import socket
import time

from ev_common.link import Link, LinkBroken
from ev_common.protocol import ACK, NACK, Auth, Hb, encode_frame
from tests.link.test_link import FAST, RawPeer, open_session, read_frame
from tests.support.waiting import wait_until

AUTH_FRAME = encode_frame(Auth.accepted().to_data())


def test_the_frame_goes_out_at_once_and_its_ack_is_taken_by_the_next_read():
    def peer(sock):
        open_session(sock)
        frame = read_frame(sock)
        sock.sendall(bytes((ACK,)) + encode_frame(b"HB#CP001"))  # ACK, then a message of its own
        return frame, sock.recv(1)

    raw = RawPeer(peer)
    link = Link.connect(*raw.address, config=FAST)
    try:
        started = time.monotonic()
        assert link.send_nowait(Auth.accepted()) is True
        assert time.monotonic() - started < FAST.ack_timeout  # did not wait for the ACK
        assert link.unacked
        assert not link.send_nowait(Hb("CP001"))  # one frame in flight at a time
        messages = wait_until(lambda: link.take_ready(), 3, "the peer's message")
        assert messages == [Hb("CP001")]
        link.check_unacked()  # its ACK came with that read
        assert not link.unacked
        frame, ack_of_hb = raw.join()
        assert frame == AUTH_FRAME and ack_of_hb == bytes((ACK,))
    finally:
        link.close()


def test_a_nacked_frame_is_retransmitted_by_check_unacked():
    def peer(sock):
        open_session(sock)
        first = read_frame(sock)
        sock.sendall(bytes((NACK,)))
        again = read_frame(sock)
        sock.sendall(bytes((ACK,)))
        return first, again

    raw = RawPeer(peer)
    link = Link.connect(*raw.address, config=FAST)
    try:
        assert link.send_nowait(Auth.accepted())

        def acknowledged() -> bool:
            link.take_ready()
            link.check_unacked()
            return not link.unacked

        wait_until(acknowledged, 3, "the retransmitted frame to be ACKed")
        assert raw.join() == (AUTH_FRAME, AUTH_FRAME)
        assert link.stats["retransmitted"] == 1 and link.stats["sent"] == 1
    finally:
        link.close()


def test_a_frame_never_acknowledged_breaks_the_link_after_max_retries():
    def peer(sock):
        open_session(sock)
        frames = [read_frame(sock) for _ in range(1 + FAST.max_retries)]
        sock.settimeout(3)
        try:
            rest = sock.recv(1)  # the link gives up: EOF (or its EOT)
        except OSError:
            rest = b""
        return frames, rest

    raw = RawPeer(peer)
    link = Link.connect(*raw.address, config=FAST)
    assert link.send_nowait(Auth.accepted())

    def given_up() -> bool:
        link.check_unacked()
        return link.closed

    wait_until(given_up, 5, "the link to give up the frame")
    frames, _rest = raw.join()
    assert frames == [AUTH_FRAME] * (1 + FAST.max_retries)
    assert isinstance(link.close_cause(), LinkBroken)


def test_a_blocking_send_waits_for_the_earlier_frame_first():
    def peer(sock: socket.socket):
        open_session(sock)
        first = read_frame(sock)
        time.sleep(0.1)  # the ACK comes late, but within the ACK timeout
        sock.sendall(bytes((ACK,)))
        second = read_frame(sock)
        sock.sendall(bytes((ACK,)))
        return first, second

    raw = RawPeer(peer)
    link = Link.connect(*raw.address, config=FAST)
    try:
        assert link.send_nowait(Auth.accepted())
        link.send(Hb("CP001"))  # reads the first ACK, then sends and waits for its own
        assert not link.unacked
        assert raw.join() == (AUTH_FRAME, encode_frame(b"HB#CP001"))
        assert link.stats["sent"] == 2 and link.stats["retransmitted"] == 0
    finally:
        link.close()
