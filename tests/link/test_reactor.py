"""LinkReactor over real loopback sockets (port 0): sessions opening and ending (closed by
the client, by another server thread, by the handler, at stop), the session limit, the ENQ
deadline, NACK for malformed frames, bad content handed to the handler, messages served in
order (inline on the reactor thread or on a worker), replies returned by the handler,
frames read and ACKed while a worker serves the session, ``send`` from any thread (its
callback, its order, its bound, retransmission by the reactor), and many clients at once."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Callable, Iterator

import pytest

from ev_common.link import Link, LinkBroken, LinkClosed, LinkConfig, SessionRefused
from ev_common.protocol import (
    ACK,
    ENQ,
    ETX,
    NACK,
    STX,
    Auth,
    Avr,
    Hb,
    Message,
    MessageError,
    Reg,
    UnknownOpcode,
    encode_frame,
    lrc,
)
from ev_common.reactor import SCAN_INTERVAL, LinkReactor, Reply
from tests.link.test_link import read_exactly, read_frame
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

# ack_timeout is generous on purpose: a retransmission would deliver a message twice and
# spoil the exact order and count checks on a loaded machine.
FAST = LinkConfig(connect_timeout=1.0, handshake_timeout=1.0, ack_timeout=1.0, max_retries=3, write_timeout=1.0)
SETTLE = SCAN_INTERVAL + 2.0  # deadline for what the reactor notices on its next scan


# -- a recording handler ------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    session: int  # sessions are numbered in opening order (the handler's state)
    message: Message | MessageError
    where: str  # "inline" or "worker"
    thread: str


class Recorder:
    """A ``SessionHandler`` that records everything, safe to call from any thread.

    ``inline`` serves HB (False, ending the session, for cp_id "BYE") and sends the rest to
    ``message``, which answers REG with AUTH#OK (returned), ends the session on AVR "bye",
    answers AVR "two" with two messages, AVR "last" with a reply that ends the session, and
    waits for ``slow`` on AVR "slow". ``overlaps`` lists messages served while the same session was
    still inside ``message`` (a session is served by one thread at a time)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.links: list[Link] = []
        self.served: list[Served] = []
        self.closes: list[tuple[int, str]] = []
        self.overlaps: list[Served] = []
        self.slow = threading.Event()
        self.serving_slow = threading.Event()
        self.holding = threading.Event()
        self._gate: threading.Event | None = None
        self._active: set[int] = set()

    # SessionHandler

    def opened(self, link: Link) -> int:
        with self.lock:
            self.links.append(link)
            number = len(self.links) - 1
            gate, self._gate = self._gate, None
        if gate is not None:  # keeps the reactor thread here (see hold_next_open)
            self.holding.set()
            gate.wait(10)
        return number

    def inline(self, state: int, message: Message | MessageError) -> bool | None:
        if not isinstance(message, Hb):
            return None
        self._record(state, message, "inline")
        return message.cp_id != "BYE"

    def message(self, state: int, message: Message | MessageError):
        self._record(state, message, "worker", enter=True)
        try:
            if isinstance(message, Avr) and message.reason == "slow":
                self.serving_slow.set()
                self.slow.wait(10)
            if isinstance(message, Reg):
                return Auth.accepted(f"hello {message.cp_id}")
            if isinstance(message, Avr) and message.reason == "two":
                return [Auth.accepted("one"), Auth.accepted("two")]
            if isinstance(message, Avr) and message.reason == "last":
                return Reply((Auth.refused("last words"),), keep_open=False)
            return not (isinstance(message, Hb) and message.cp_id == "BYE"
                        or isinstance(message, Avr) and message.reason == "bye")
        finally:
            with self.lock:
                self._active.discard(state)

    def closed(self, state: int, cause: str) -> None:
        with self.lock:
            self.closes.append((state, cause))

    # for the tests

    def hold_next_open(self) -> threading.Event:
        """The next session's ``opened`` keeps the reactor thread until the returned event is set."""
        gate = threading.Event()
        with self.lock:
            self._gate = gate
        return gate

    def messages(self, session: int | None = None) -> list[Message | MessageError]:
        with self.lock:
            return [s.message for s in self.served if session is None or s.session == session]

    def wait_served(self, count: int, timeout: float = 3.0) -> list[Served]:
        wait_until(lambda: len(self.snapshot()) >= count, timeout, f"{count} message(s) served")
        return self.snapshot()

    def snapshot(self) -> list[Served]:
        with self.lock:
            return list(self.served)

    def closes_of(self, session: int) -> list[str]:
        with self.lock:
            return [cause for number, cause in self.closes if number == session]

    def _record(self, state: int, message: Message | MessageError, where: str, enter: bool = False) -> None:
        item = Served(state, message, where, threading.current_thread().name)
        with self.lock:
            if state in self._active:
                self.overlaps.append(item)
            self.served.append(item)
            if enter:
                self._active.add(state)


# -- reactors, clients, raw sockets -----------------------------------------------------------


class Net:
    """Reactors, client links and raw sockets of one test, all closed at its end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reactors: list[LinkReactor] = []
        self._links: list[Link] = []
        self._socks: list[socket.socket] = []

    def serve(self, handler: Recorder, **kwargs) -> LinkReactor:
        kwargs.setdefault("config", FAST)
        kwargs.setdefault("name", "test")
        reactor = LinkReactor("127.0.0.1", 0, handler, **kwargs).start()
        self._reactors.append(reactor)
        return reactor

    def connect(self, reactor: LinkReactor, config: LinkConfig = FAST) -> Link:
        link = Link.connect(*reactor.address, config=config)
        with self._lock:
            self._links.append(link)
        return link

    def raw(self, reactor: LinkReactor, enq: bool = True) -> socket.socket:
        """A plain socket; with ``enq`` the session is opened (ENQ answered ACK)."""
        sock = socket.create_connection(reactor.address, timeout=3)
        self._socks.append(sock)
        if enq:
            sock.sendall(bytes((ENQ,)))
            assert read_exactly(sock, 1) == bytes((ACK,))
        return sock

    def close(self) -> None:
        for link in self._links:
            link.close()
        for sock in self._socks:
            sock.close()
        for reactor in self._reactors:
            reactor.stop(grace=2.0)  # idempotent


@pytest.fixture
def net() -> Iterator[Net]:
    net = Net()
    try:
        yield net
    finally:
        net.close()


def frame(message: Message) -> bytes:
    return encode_frame(message.to_data())


def opened_session(reactor: LinkReactor, handler: Recorder, count: int = 1) -> Link:
    """Wait until ``count`` sessions are open; the server side of the last one."""
    wait_until(lambda: reactor.session_count() == count, 3, f"{count} open session(s)")
    with handler.lock:
        return handler.links[-1]


def in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``target`` in a started thread; exceptions land in the returned list."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # checked by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def joined(thread: threading.Thread, timeout: float = 10.0) -> None:
    thread.join(timeout)
    assert not thread.is_alive(), f"{thread.name} did not finish within {timeout:g} s"


# -- opening a session, serving its messages ------------------------------------------------


def test_session_opens_and_messages_are_served_inline_or_on_a_worker(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler)
    link = net.connect(reactor)
    opened_session(reactor, handler)
    assert len(handler.links) == 1

    link.send(Hb("CP001"))
    link.send(Avr("CP001", "engine KO"))
    link.send(Hb("CP001"))
    hb, avr, hb2 = handler.wait_served(3)

    assert (hb.message, hb.where) == (Hb("CP001"), "inline")
    assert hb.thread.endswith("-reactor")
    assert (avr.message, avr.where) == (Avr("CP001", "engine KO"), "worker")
    assert "-worker" in avr.thread
    assert (hb2.where, hb2.thread) == ("inline", hb.thread)
    assert reactor.session_count() == 1 and len(handler.links) == 1 and not handler.closes


def test_many_messages_of_one_session_keep_their_order(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler)
    link = net.connect(reactor)
    opened_session(reactor, handler)
    sent: list[Message] = [Avr(f"CP{i:03d}", "fault") if i % 3 == 1 else Hb(f"CP{i:03d}") for i in range(50)]

    for message in sent:
        link.send(message)
    served = handler.wait_served(len(sent))

    assert [s.message for s in served] == sent
    assert all(s.thread.endswith("-reactor") for s in served if s.where == "inline")
    assert all("-worker" in s.thread for s in served if s.where == "worker")
    assert {s.where for s in served if isinstance(s.message, Avr)} == {"worker"}
    assert served[0].where == "inline"  # an HB is served inline unless it came while a worker served an AVR
    assert handler.overlaps == []
    assert link.stats["retransmitted"] == 0


def test_pipelined_frames_keep_their_order_between_reactor_and_worker(net: Net) -> None:
    """Frames that arrive together: HB before the first AVR inline, the rest on a worker, in order."""
    handler = Recorder()
    reactor = net.serve(handler)
    sock = net.raw(reactor)
    sent: list[Message] = [Avr(f"CP{i:03d}", "fault") if i % 4 == 2 else Hb(f"CP{i:03d}") for i in range(40)]

    sock.sendall(b"".join(frame(m) for m in sent))
    assert read_exactly(sock, len(sent)) == bytes((ACK,)) * len(sent)
    served = handler.wait_served(len(sent))

    assert [s.message for s in served] == sent
    assert served[0].where == "inline" and served[0].thread.endswith("-reactor")
    assert {s.where for s in served if isinstance(s.message, Avr)} == {"worker"}
    assert handler.overlaps == []


def test_worker_answers_on_the_link(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler)
    link = net.connect(reactor)

    link.send(Reg("CP001", "C/Mayor, 45", Decimal("0.48")))

    assert link.recv(timeout=3) == Auth("OK", "hello CP001")
    (served,) = handler.wait_served(1)
    assert served.where == "worker" and "-worker" in served.thread
    assert reactor.session_count() == 1


# -- ending a session -------------------------------------------------------------------------


def test_client_close_ends_the_session_once(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler)
    link = net.connect(reactor)
    opened_session(reactor, handler)

    link.close()

    wait_until(lambda: handler.closes_of(0) and reactor.session_count() == 0, SETTLE, "the session to end")
    reactor.stop()  # nothing may call closed again, not even stop
    (cause,) = handler.closes_of(0)
    assert "EOT" in cause


def test_server_side_close_from_another_thread_ends_the_session(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler)
    link = net.connect(reactor)
    server_link = opened_session(reactor, handler)

    closer, errors = in_thread(lambda: server_link.close("kicked out by the test"))
    joined(closer)

    with pytest.raises((LinkClosed, LinkBroken)):
        link.recv(timeout=3)
    wait_until(lambda: handler.closes_of(0) and reactor.session_count() == 0, SETTLE, "closed to run")
    reactor.stop()
    (cause,) = handler.closes_of(0)
    assert "kicked out by the test" in cause
    assert errors == []


@pytest.mark.parametrize("ender", [Avr("CP001", "bye"), Hb("BYE")], ids=["worker", "inline"])
def test_handler_returning_false_ends_the_session(net: Net, ender: Message) -> None:
    handler = Recorder()
    reactor = net.serve(handler)
    link = net.connect(reactor)
    opened_session(reactor, handler)

    link.send(Hb("CP001"))
    link.send(ender)

    with pytest.raises((LinkClosed, LinkBroken)):
        link.recv(timeout=3)
    wait_until(lambda: handler.closes_of(0) and reactor.session_count() == 0, SETTLE, "the session to end")
    reactor.stop()
    assert handler.closes_of(0) == ["session ended by the server"]
    assert handler.messages() == [Hb("CP001"), ender]


def test_stop_ends_every_session(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler)
    links = [net.connect(reactor) for _ in range(3)]
    opened_session(reactor, handler, 3)

    address = reactor.address
    reactor.stop()

    for link in links:
        with pytest.raises((LinkClosed, LinkBroken)):
            link.recv(timeout=3)
    assert sorted(handler.closes) == [(n, "server shutting down") for n in range(3)]
    assert reactor.session_count() == 0
    with pytest.raises(LinkBroken, match="cannot connect"):
        Link.connect(*address, config=FAST)


# -- opening rules ----------------------------------------------------------------------------


def test_sessions_past_the_limit_are_refused_until_one_ends(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler, max_sessions=2)
    first = net.connect(reactor)
    net.connect(reactor)
    opened_session(reactor, handler, 2)

    with pytest.raises(SessionRefused, match="NACK"):
        net.connect(reactor)
    assert reactor.session_count() == 2 and len(handler.links) == 2

    first.close()
    wait_until(lambda: reactor.session_count() == 1, SETTLE, "the first session to end")
    late = net.connect(reactor)
    opened_session(reactor, handler, 2)
    late.send(Hb("CP003"))
    assert handler.wait_served(1)[0].session == 2


def test_client_that_never_sends_enq_is_dropped(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler, config=replace(FAST, handshake_timeout=0.3))
    sock = net.raw(reactor, enq=False)
    started = time.monotonic()

    assert sock.recv(1) == b""  # closed, no ACK (the socket gives up after 3 s)

    elapsed = time.monotonic() - started
    assert 0.29 <= elapsed < 0.3 + SCAN_INTERVAL + 1.0
    assert handler.links == [] and reactor.session_count() == 0
    net.connect(reactor).send(Hb("CP001"))  # still serving
    assert handler.wait_served(1)[0].message == Hb("CP001")


# -- what a client sends ----------------------------------------------------------------------


def test_malformed_frame_gets_nack_and_session_goes_on(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler)
    sock = net.raw(reactor)
    data = Hb("CP001").to_data()

    sock.sendall(bytes((STX,)) + data + bytes((ETX, lrc(data) ^ 0xFF)))
    assert read_exactly(sock, 1) == bytes((NACK,))
    sock.sendall(frame(Hb("CP001")))
    assert read_exactly(sock, 1) == bytes((ACK,))

    (served,) = handler.wait_served(1)
    assert served.message == Hb("CP001")
    assert reactor.session_count() == 1 and not handler.closes


def test_bad_content_reaches_the_handler_as_message_error(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler)
    sock = net.raw(reactor)

    sock.sendall(encode_frame(b"NOPE#x"))
    assert read_exactly(sock, 1) == bytes((ACK,))  # well formed: acknowledged
    (bad,) = handler.wait_served(1)
    assert isinstance(bad.message, MessageError) and isinstance(bad.message, UnknownOpcode)
    assert bad.message.raw == b"NOPE#x" and bad.where == "worker"

    sock.sendall(frame(Hb("CP001")))
    assert read_exactly(sock, 1) == bytes((ACK,))
    assert handler.wait_served(2)[1].message == Hb("CP001")
    assert reactor.session_count() == 1 and not handler.closes


# -- a session's frames are read while a worker serves it ------------------------------------------


def test_frames_are_read_and_acked_while_a_worker_serves_the_session(net: Net) -> None:
    """A slow message holds the worker: the session's next frames are ACKed at once all the
    same, and served after it, in order, by the same worker."""
    handler = Recorder()
    reactor = net.serve(handler)
    link = net.connect(reactor)
    opened_session(reactor, handler)
    try:
        sender, errors = in_thread(lambda: link.send(Avr("CP001", "slow")))
        joined(sender)
        assert handler.serving_slow.wait(3)
        beats = [Hb(f"CP{i:03d}") for i in range(3)]
        for beat in beats:
            link.send(beat)  # returns once ACKed: while the worker still holds "slow"
        assert handler.messages(0) == [Avr("CP001", "slow")] and not handler.slow.is_set()
    finally:
        handler.slow.set()
    served = handler.wait_served(4)
    assert [s.message for s in served] == [Avr("CP001", "slow"), *beats]
    assert {s.where for s in served} == {"worker"} and handler.overlaps == [] and errors == []
    assert link.stats["retransmitted"] == 0


def test_a_session_closed_while_a_worker_serves_it_ends_once_after_what_was_read(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler)
    link = net.connect(reactor)
    server_link = opened_session(reactor, handler)
    try:
        link.send(Avr("CP001", "slow"))
        assert handler.serving_slow.wait(3)
        link.send(Hb("CP001"))  # read and ACKed, waits for the worker
        server_link.close("kicked out by the test")
        with pytest.raises(LinkClosed, match="EOT"):
            link.recv(timeout=3)
        assert handler.closes_of(0) == []  # not before the worker is done
    finally:
        handler.slow.set()
    wait_until(lambda: handler.closes_of(0), 3, "the session to end")
    assert handler.messages(0) == [Avr("CP001", "slow"), Hb("CP001")]
    reactor.stop()
    assert handler.closes_of(0) == ["kicked out by the test"]


# -- replies returned by the handler ---------------------------------------------------------------


def test_replies_returned_by_the_handler_are_sent_in_order(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler)
    link = net.connect(reactor)

    link.send(Avr("CP001", "two"))

    assert [link.recv(timeout=3), link.recv(timeout=3)] == [Auth.accepted("one"), Auth.accepted("two")]
    assert reactor.session_count() == 1


def test_a_reply_that_ends_the_session_is_delivered_first(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler)
    link = net.connect(reactor)

    link.send(Avr("CP001", "last"))

    assert link.recv(timeout=3) == Auth.refused("last words")
    with pytest.raises(LinkClosed, match="EOT"):
        link.recv(timeout=3)
    wait_until(lambda: handler.closes_of(0), SETTLE, "the session to end")
    assert handler.closes_of(0) == ["session ended by the server"]


# -- send from any thread ---------------------------------------------------------------------------


class Outcomes:
    """``on_done`` callbacks that record what they were told, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: list[tuple[str, bool]] = []

    def callback(self, name: str) -> Callable[[bool], None]:
        def done(ok: bool) -> None:
            with self.lock:
                self.got.append((name, ok))

        return done

    def __call__(self) -> list[tuple[str, bool]]:
        with self.lock:
            return list(self.got)


def test_send_never_waits_and_reports_each_ack_in_order(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler)
    sock = net.raw(reactor)
    server_link = opened_session(reactor, handler)
    outcomes = Outcomes()

    started = time.monotonic()
    assert reactor.send(server_link, Auth.accepted("first"), outcomes.callback("first"))
    assert reactor.send(server_link, Auth.accepted("second"), outcomes.callback("second"))
    assert time.monotonic() - started < FAST.ack_timeout

    assert read_frame(sock) == frame(Auth.accepted("first"))
    assert outcomes() == []  # nothing is ACKed before we say so
    sock.sendall(bytes((ACK,)))
    assert read_frame(sock) == frame(Auth.accepted("second"))  # only after the first's ACK
    sock.sendall(bytes((ACK,)))
    wait_until(lambda: len(outcomes()) == 2, 3, "both callbacks")
    assert outcomes() == [("first", True), ("second", True)]
    assert server_link.stats["sent"] == 2


def test_a_nacked_frame_is_retransmitted_by_the_reactor(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler)
    sock = net.raw(reactor)
    server_link = opened_session(reactor, handler)
    outcomes = Outcomes()

    assert reactor.send(server_link, Auth.accepted("again"), outcomes.callback("again"))
    assert read_frame(sock) == frame(Auth.accepted("again"))
    sock.sendall(bytes((NACK,)))
    assert read_frame(sock) == frame(Auth.accepted("again"))
    sock.sendall(bytes((ACK,)))

    wait_until(outcomes, 3, "the callback")
    assert outcomes() == [("again", True)] and server_link.stats["retransmitted"] == 1


def test_a_frame_never_acknowledged_fails_its_sends_and_ends_the_session(net: Net) -> None:
    config = replace(FAST, ack_timeout=0.2)
    handler = Recorder()
    reactor = net.serve(handler, config=config)
    sock = net.raw(reactor)
    server_link = opened_session(reactor, handler)
    outcomes = Outcomes()

    assert reactor.send(server_link, Auth.accepted("lost"), outcomes.callback("lost"))
    assert reactor.send(server_link, Auth.accepted("behind"), outcomes.callback("behind"))
    copies = [read_frame(sock) for _ in range(1 + config.max_retries)]

    wait_until(lambda: len(outcomes()) == 2, 3, "both callbacks")
    assert copies == [frame(Auth.accepted("lost"))] * 4
    assert outcomes() == [("lost", False), ("behind", False)]
    wait_until(lambda: handler.closes_of(0), SETTLE, "the session to end")
    assert "after 3 retransmissions" in handler.closes_of(0)[0]
    assert not reactor.send(server_link, Hb("CP001"))  # closed: refused at once
    with pytest.raises(LinkBroken, match="retransmissions"):
        server_link.send(Hb("CP001"))


def test_sends_are_bounded_per_session(net: Net) -> None:
    handler = Recorder()
    reactor = net.serve(handler, config=replace(FAST, max_outbound=2))
    sock = net.raw(reactor)
    server_link = opened_session(reactor, handler)

    assert reactor.send(server_link, Auth.accepted("1"))
    assert reactor.send(server_link, Auth.accepted("2"))
    assert not reactor.send(server_link, Auth.accepted("3"))  # two wait for their ACK already
    assert read_frame(sock) == frame(Auth.accepted("1"))
    sock.sendall(bytes((ACK,)))
    assert read_frame(sock) == frame(Auth.accepted("2"))
    wait_until(lambda: reactor.send(server_link, Auth.accepted("4")), 3, "room for another send")


def test_another_thread_may_wait_for_the_ack_with_link_send(net: Net) -> None:
    """Central's pattern for a request: send from another thread and wait, while the client
    keeps sending its own frames (read and served by the reactor meanwhile)."""
    handler = Recorder()
    reactor = net.serve(handler)
    link = net.connect(reactor)
    server_link = opened_session(reactor, handler)
    received: list = []

    reader, read_errors = in_thread(lambda: received.extend(link.recv(timeout=5) for _ in range(5)))
    pusher, push_errors = in_thread(lambda: [server_link.send(Auth.accepted(f"push {i}")) for i in range(5)])
    beats = [Hb(f"CP{i:03d}") for i in range(5)]
    for beat in beats:
        link.send(beat)
    joined(pusher)
    joined(reader)

    assert push_errors == [] and read_errors == []
    assert received == [Auth.accepted(f"push {i}") for i in range(5)]
    assert [s.message for s in handler.wait_served(5)] == beats


# -- many clients -------------------------------------------------------------------------------


def test_many_clients_at_once(net: Net) -> None:
    clients, beats = 50, 3
    handler = Recorder()
    reactor = net.serve(handler)
    go = threading.Event()

    def client(i: int) -> None:
        link = net.connect(reactor)
        assert go.wait(10)
        for _ in range(beats):
            link.send(Hb(f"CP{i:03d}"))
        link.close()

    runs = [in_thread(lambda i=i: client(i)) for i in range(clients)]
    errors = [errs for _, errs in runs]
    wait_until(lambda: reactor.session_count() == clients or any(errors), 10, f"{clients} open sessions")
    go.set()
    for thread, _ in runs:
        joined(thread)

    assert [e for errs in errors for e in errs] == []
    wait_until(lambda: len(handler.closes) == clients and reactor.session_count() == 0, 5, "every session to end")
    assert Counter(m.cp_id for m in handler.messages()) == {f"CP{i:03d}": beats for i in range(clients)}
    assert len(handler.links) == clients and sorted(n for n, _ in handler.closes) == list(range(clients))


# -- a lane served in batches ---------------------------------------------------------------------


class Batcher(Recorder):
    """A ``Recorder`` with a register lane served in batches: REG goes to the "register" lane;
    ``batch`` answers each REG with AUTH#OK naming the batch's size, and ends the session of
    a REG whose location is "boom" with False. ``message`` (a lone REG) waits for ``slow``
    when the REG's cp_id is "SLOW"."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    def lane(self, state: int, message) -> str:
        return "register" if isinstance(message, Reg) else "main"

    def message(self, state: int, message):
        if isinstance(message, Reg) and message.cp_id == "SLOW":
            self.serving_slow.set()
            self.slow.wait(10)
        return super().message(state, message)

    def batch(self, items):
        with self.lock:
            self.batches.append([message.cp_id for _, message in items])
        return [False if message.location == "boom" else Auth.accepted(f"batch of {len(items)}")
                for _, message in items]


def test_a_lane_serves_what_queued_meanwhile_in_one_batch(net: Net) -> None:
    handler = Batcher()
    reactor = net.serve(handler)
    slow = net.connect(reactor)
    slow.send(Reg("SLOW", "somewhere", Decimal("0.3")))
    assert handler.serving_slow.wait(3)  # the lane's one thread is busy
    links = [net.connect(reactor) for _ in range(5)]
    for number, link in enumerate(links):
        link.send(Reg(f"CP{number}", "boom" if number == 3 else "street", Decimal("0.3")))
    lane = reactor._register
    wait_until(lambda: len(lane._queue) == 5, 3, "five sessions queued on the register lane")
    handler.slow.set()

    assert slow.recv(timeout=3) == Auth("OK", "hello SLOW")  # alone: served by ``message``
    for number, link in enumerate(links):
        if number == 3:
            with pytest.raises((LinkClosed, LinkBroken)):
                link.recv(timeout=3)  # its session ended
        else:
            assert link.recv(timeout=3) == Auth("OK", "batch of 5")
    assert handler.batches == [[f"CP{number}" for number in range(5)]]
    wait_until(lambda: handler.closes_of(4), 3, "the end of CP3's session (session 4)")
    links[0].send(Hb("CP0"))  # after its registration, a session is served as before
    assert [s.where for s in handler.wait_served(2) if s.message == Hb("CP0")] == ["inline"]


def test_a_batch_that_fails_ends_its_sessions_and_the_lane_goes_on(net: Net) -> None:
    handler = Batcher()
    calls = []

    def failing(items):
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("broken handler")
        return Batcher.batch(handler, items)

    handler.batch = failing
    reactor = net.serve(handler)
    slow = net.connect(reactor)
    slow.send(Reg("SLOW", "somewhere", Decimal("0.3")))
    assert handler.serving_slow.wait(3)
    links = [net.connect(reactor) for _ in range(2)]
    for number, link in enumerate(links):
        link.send(Reg(f"CP{number}", "street", Decimal("0.3")))
    wait_until(lambda: len(reactor._register._queue) == 2, 3, "two sessions queued")
    handler.slow.set()
    for link in links:
        with pytest.raises((LinkClosed, LinkBroken)):
            link.recv(timeout=3)
    assert calls == [2]
    assert slow.recv(timeout=3) == Auth("OK", "hello SLOW")


def test_a_busy_lane_pauses_between_batches_while_more_wait() -> None:
    """The register lane leaves the interpreter to the reactor between two batches (half as
    long as the batch took, at most MAX_REST), and only while more sessions wait."""
    from ev_common.reactor import _BatchLane

    now = [0.0]
    slept: list[float] = []
    served: list[list[str]] = []
    gate = threading.Event()

    def serve(batch: list[str]) -> None:
        gate.wait(5)  # the first batch holds the lane until the test queued more
        now[0] += 0.03 * len(batch)  # a batch costs 30 ms per session
        served.append(batch)

    lane = _BatchLane(serve, "test-lane", limit=2, clock=lambda: now[0], sleep=slept.append)
    try:
        lane.submit("a")
        wait_until(lambda: not lane._queue, 3, "the lane to take the first session")
        for name in ("b", "c", "d"):
            lane.submit(name)
        gate.set()
        wait_until(lambda: sum(map(len, served)) == 4, 3, "every session served")
    finally:
        lane.shutdown()
    assert served == [["a"], ["b", "c"], ["d"]]
    # 30 ms -> 15 ms; 60 ms -> at most MAX_REST; none after the last batch
    assert slept == [pytest.approx(0.015), pytest.approx(_BatchLane.MAX_REST)]


def test_the_handler_hears_of_each_frame_its_peer_acknowledged(net: Net) -> None:
    class Acks(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.acks: list[int] = []

        def acked(self, state: int) -> None:
            with self.lock:
                self.acks.append(state)

    handler = Acks()
    reactor = net.serve(handler)
    link = net.connect(reactor)
    link.send(Avr("CP001", "two"))  # answered with two messages
    assert link.recv(timeout=3) == Auth.accepted("one")
    assert link.recv(timeout=3) == Auth.accepted("two")
    wait_until(lambda: len(handler.acks) == 2, 3, "both answers acknowledged")
    assert handler.acks == [0, 0]
