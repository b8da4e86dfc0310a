"""The link layer over real loopback sockets (port 0): session opening, ACK/NACK,
retransmission and its limit, silent peers, a peer closing mid-frame, EOT, full duplex."""

from __future__ import annotations

import socket
import threading
import time
from decimal import Decimal

import pytest

from ev_common.link import Link, LinkBroken, LinkClosed, LinkConfig, LinkServer, LinkTimeout, SessionRefused
from ev_common.protocol import ACK, ENQ, EOT, NACK, Auth, Reg, UnknownOpcode, encode_frame, lrc

FAST = LinkConfig(connect_timeout=1.0, handshake_timeout=1.0, ack_timeout=0.2, max_retries=3, write_timeout=1.0)
REG = Reg("CP001", "C/Mayor, 45", Decimal("0.48"))


class RawPeer:
    """A scripted server for one connection: ``script(sock)`` runs in a thread."""

    def __init__(self, script):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(5)
        self.address = self.listener.getsockname()
        self.error: BaseException | None = None
        self.result = None
        self._thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self._thread.start()

    def _run(self, script):
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(5)
            with conn:
                self.result = script(conn)
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self.listener.close()

    def join(self):
        self._thread.join(10)
        assert not self._thread.is_alive(), "raw peer did not finish"
        if self.error:
            raise self.error
        return self.result


def read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"peer closed after {data!r}")
        data += chunk
    return data


def read_frame(sock) -> bytes:
    """Read one whole frame (STX ... ETX LRC) from a raw socket."""
    data = read_exactly(sock, 1)
    assert data == b"\x02", data
    while not data.endswith(b"\x03"):
        data += read_exactly(sock, 1)
    return data + read_exactly(sock, 1)


def open_session(sock):
    assert read_exactly(sock, 1) == bytes((ENQ,))
    sock.sendall(bytes((ACK,)))


def echo_server(handler=None, **kwargs):
    def default(link):
        while True:
            msg = link.recv(timeout=5)
            if msg is None:
                return
            link.send(Auth.accepted(f"hello {msg.cp_id}"))

    return LinkServer("127.0.0.1", 0, handler or default, config=FAST, **kwargs).start()


# -- session opening --------------------------------------------------------------


def test_request_ack_answer_ack_round_trip():
    server = echo_server()
    try:
        with Link.connect(*server.address, config=FAST) as link:
            link.send(REG)
            assert link.recv(timeout=2) == Auth("OK", "hello CP001")
            assert link.stats["sent"] == 1 and link.stats["received"] == 1
    finally:
        server.stop()


def test_server_refuses_with_nack_when_full():
    server = echo_server(max_sessions=0)
    try:
        with pytest.raises(SessionRefused, match="NACK"):
            Link.connect(*server.address, config=FAST)
    finally:
        server.stop()


def test_connect_to_closed_port_is_a_clear_error():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(LinkBroken, match="cannot connect"):
        Link.connect("127.0.0.1", port, config=FAST)


def test_server_that_never_answers_enq_times_out():
    peer = RawPeer(lambda sock: read_exactly(sock, 1) and time.sleep(1.5))
    started = time.monotonic()
    with pytest.raises(LinkTimeout, match="did not answer ENQ"):
        Link.connect(*peer.address, config=FAST)
    assert time.monotonic() - started < 1.4
    peer.join()


def test_client_that_never_sends_enq_is_dropped():
    server = echo_server()
    try:
        with socket.create_connection(server.address, timeout=3) as sock:
            assert sock.recv(1) == b""  # closed after handshake_timeout, no ACK
    finally:
        server.stop()


# -- acknowledgement and retransmission -------------------------------------------------


def test_nack_then_retransmit():
    expected = encode_frame(REG.to_data())

    def script(sock):
        open_session(sock)
        first = read_frame(sock)
        sock.sendall(bytes((NACK,)))
        second = read_frame(sock)
        sock.sendall(bytes((ACK,)))
        return first, second

    peer = RawPeer(script)
    link = Link.connect(*peer.address, config=FAST)
    link.send(REG)
    assert peer.join() == (expected, expected)
    assert link.stats["retransmitted"] == 1
    link.close()


def test_retransmit_limit_breaks_the_link():
    def script(sock):
        open_session(sock)
        copies = 0
        for _ in range(4):
            read_frame(sock)
            copies += 1
            sock.sendall(bytes((NACK,)))
        return copies

    peer = RawPeer(script)
    link = Link.connect(*peer.address, config=FAST)
    with pytest.raises(LinkBroken, match="after 3 retransmissions"):
        link.send(REG)
    assert peer.join() == 4  # the first send and 3 retransmissions, no more
    assert link.closed
    with pytest.raises(LinkBroken):
        link.send(REG)


def test_silent_peer_hits_ack_timeout():
    def script(sock):
        open_session(sock)
        copies = [read_frame(sock) for _ in range(4)]
        read_exactly(sock, 1)  # waits for our side to give up (EOF raises)
        return copies

    peer = RawPeer(script)
    link = Link.connect(*peer.address, config=FAST)
    started = time.monotonic()
    with pytest.raises(LinkBroken, match="no ACK within"):
        link.send(REG)
    elapsed = time.monotonic() - started
    assert 4 * FAST.ack_timeout <= elapsed < 4 * FAST.ack_timeout + 1.0
    with pytest.raises(EOFError):
        peer.join()


def test_recv_timeout_returns_none_and_link_stays_open():
    peer = RawPeer(lambda sock: (open_session(sock), time.sleep(0.5)))
    link = Link.connect(*peer.address, config=FAST)
    assert link.recv(timeout=0.1) is None
    assert not link.closed
    peer.join()
    link.close()


# -- what a peer sends us ----------------------------------------------------------------


def test_malformed_frame_gets_nack_and_session_goes_on():
    good = encode_frame(b"AUTH#OK#fine")
    bad = b"\x02AUTH#OK#fine\x03" + bytes((lrc(b"AUTH#OK#fine") ^ 0xFF,))

    def script(sock):
        open_session(sock)
        sock.sendall(b"noise" + bad)
        answer_bad = read_exactly(sock, 1)
        sock.sendall(good)
        answer_good = read_exactly(sock, 1)
        return answer_bad, answer_good

    peer = RawPeer(script)
    link = Link.connect(*peer.address, config=FAST)
    assert link.recv(timeout=2) == Auth("OK", "fine")
    assert peer.join() == (bytes((NACK,)), bytes((ACK,)))
    assert link.stats["nacked"] == 1
    link.close()


def test_unknown_opcode_is_acked_and_raised_as_content_error():
    def script(sock):
        open_session(sock)
        sock.sendall(encode_frame(b"ZAP#1") + encode_frame(b"AUTH#OK#after"))
        return read_exactly(sock, 2)

    peer = RawPeer(script)
    link = Link.connect(*peer.address, config=FAST)
    with pytest.raises(UnknownOpcode) as info:
        link.recv(timeout=2)
    assert info.value.raw == b"ZAP#1"
    assert link.recv(timeout=2) == Auth("OK", "after")
    assert peer.join() == bytes((ACK, ACK))
    link.close()


def test_peer_closing_mid_frame_is_reported():
    def script(sock):
        open_session(sock)
        sock.sendall(b"\x02AUTH#OK#cut sh")

    peer = RawPeer(script)
    link = Link.connect(*peer.address, config=FAST)
    with pytest.raises(LinkBroken, match="mid-frame"):
        link.recv(timeout=2)
    peer.join()


def test_peer_closing_between_frames_is_a_clean_close():
    peer = RawPeer(open_session)
    link = Link.connect(*peer.address, config=FAST)
    with pytest.raises(LinkClosed, match="closed the connection"):
        link.recv(timeout=2)
    peer.join()


def test_eot_ends_the_session_after_queued_messages():
    def script(sock):
        open_session(sock)
        sock.sendall(encode_frame(b"AUTH#OK#last words") + bytes((EOT,)))
        read_exactly(sock, 1)  # our ACK

    peer = RawPeer(script)
    link = Link.connect(*peer.address, config=FAST)
    assert link.recv(timeout=2) == Auth("OK", "last words")
    with pytest.raises(LinkClosed, match="EOT"):
        link.recv(timeout=2)
    assert link.closed
    peer.join()


def test_close_sends_eot():
    def script(sock):
        open_session(sock)
        return sock.recv(10)

    peer = RawPeer(script)
    Link.connect(*peer.address, config=FAST).close()
    assert peer.join() == bytes((EOT,))


def test_unread_messages_are_bounded_by_nack():
    """Nobody reads: a sender waiting for its ACK pumps the socket, queues two frames, NACKs the third."""
    config = LinkConfig(ack_timeout=1.0, max_inbound=2)
    frames = [encode_frame(f"AUTH#OK#{i}".encode()) for i in range(3)]

    def script(sock):
        open_session(sock)
        sock.sendall(b"".join(frames))
        ours = read_frame(sock)  # written before any reply byte
        replies = read_exactly(sock, 3)
        sock.sendall(bytes((ACK,)))
        return ours, replies

    peer = RawPeer(script)
    link = Link.connect(*peer.address, config=config)
    link.send(REG)
    assert peer.join() == (encode_frame(REG.to_data()), bytes((ACK, ACK, NACK)))
    assert [link.recv(timeout=1).text for _ in range(2)] == ["0", "1"]
    link.close()


# -- full duplex ----------------------------------------------------------------------------


def test_both_sides_send_at_once_without_deadlock():
    """Server pushes commands while the client sends requests; a client thread
    waits for its ACK while another reads; nothing is lost or duplicated."""
    n = 200
    server_got = []

    def handler(link):
        pusher = threading.Thread(target=lambda: [link.send(Auth("OK", f"push {i}")) for i in range(n)])
        pusher.start()
        while len(server_got) < n:
            msg = link.recv(timeout=5)
            assert msg is not None
            server_got.append(msg.location)
            link.send(Auth("KO", f"answer {msg.location}"))  # answered from the receiving thread
        pusher.join()
        link.recv(timeout=5)  # until the client closes

    server = echo_server(handler)
    client_got = []
    try:
        link = Link.connect(*server.address, config=FAST)
        reader = threading.Thread(target=lambda: [client_got.append(link.recv(timeout=5)) for _ in range(2 * n)])
        reader.start()
        for i in range(n):
            link.send(Reg("CP1", f"req {i}", Decimal(1)))
        reader.join(20)
        assert not reader.is_alive()
        link.close()
    finally:
        server.stop()
    assert server_got == [f"req {i}" for i in range(n)]
    pushes = [m.text for m in client_got if m.status == "OK"]
    answers = [m.text for m in client_got if m.status == "KO"]
    assert pushes == [f"push {i}" for i in range(n)]
    assert answers == [f"answer req {i}" for i in range(n)]


def test_server_stop_ends_live_sessions():
    entered = threading.Event()

    def handler(link):
        entered.set()
        while link.recv(timeout=10) is None:
            pass

    server = echo_server(handler)
    link = Link.connect(*server.address, config=FAST)
    assert entered.wait(3)
    assert server.session_count() == 1
    server.stop()
    with pytest.raises(LinkClosed):
        link.recv(timeout=3)
    assert server.session_count() == 0


def test_session_limit_holds_when_clients_arrive_together():
    """max_sessions=1: of several clients opening at the same instant, exactly one gets in."""
    release = threading.Event()

    def handler(link):
        release.wait(5)

    server = LinkServer("127.0.0.1", 0, handler, max_sessions=1, busy_reason="another Monitor is connected",
                        config=FAST).start()
    outcomes = []
    barrier = threading.Barrier(6)

    def client():
        barrier.wait()
        try:
            outcomes.append(Link.connect(*server.address, config=FAST))
        except SessionRefused as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    try:
        links = [o for o in outcomes if isinstance(o, Link)]
        assert len(outcomes) == 6 and len(links) == 1
    finally:
        release.set()
        for link in links:
            link.close()
        server.stop()
