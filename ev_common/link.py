"""The link layer: framed, acknowledged, full-duplex sessions over TCP.

This is the only module of ``ev_common`` that touches sockets. It implements
the link rules of docs/protocol.md:

* session opening: the client sends ENQ; the server answers ACK (open) or
  NACK (refused, then closes);
* every frame received is answered with one byte, ACK (well formed, LRC
  matches) or NACK (malformed); a sender retransmits a NACKed or
  unacknowledged frame at most ``max_retries`` times, then the link is broken;
* one unacknowledged frame per direction; both sides may send at any time;
* EOT ends the session, and the receiver closes;
* every socket operation has a timeout.

A ``Link`` starts no thread. Whichever thread is waiting (in ``recv`` for a
message, or in ``send`` for an ACK) reads the socket on behalf of all the
others: one reader at a time, the rest wait on a condition that the reader
signals after each chunk. So a request handler can answer from the thread
that received the request, and a second thread can push a command at the
same time, without deadlock.

``LinkServer`` accepts links on a port, one thread per session, and closes
them all on ``stop()``.
"""

from __future__ import annotations

import collections
import logging
import select
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .protocol import (
    MESSAGES,
    NEED_DATA,
    Control,
    ControlByte,
    FrameDecoder,
    FrameError,
    Message,
    MessageError,
    Registry,
    encode_frame,
)

log = logging.getLogger(__name__)

_ACK = bytes((ControlByte.ACK,))
_NACK = bytes((ControlByte.NACK,))
_ENQ = bytes((ControlByte.ENQ,))
_EOT = bytes((ControlByte.EOT,))


# --- errors -------------------------------------------------------------------


class LinkError(Exception):
    """The session cannot go on (or could not start)."""


class LinkClosed(LinkError):
    """The session ended: EOT received, the peer closed, or we closed it."""


class LinkBroken(LinkError):
    """The session failed: retransmissions exhausted, a socket error, a peer closed mid-frame."""


class LinkTimeout(LinkBroken):
    """A peer stayed silent past a timeout (connect, handshake)."""


class SessionRefused(LinkError):
    """The server answered ENQ with NACK."""


# --- configuration --------------------------------------------------------------


@dataclass(frozen=True)
class LinkConfig:
    """Timeouts (seconds) and bounds of a link. Every field has a safe default."""

    connect_timeout: float = 3.0
    handshake_timeout: float = 3.0  # ENQ -> ACK/NACK
    ack_timeout: float = 1.0  # a frame unacknowledged this long is retransmitted
    max_retries: int = 3  # retransmissions after the first send
    write_timeout: float = 5.0  # one sendall
    max_inbound: int = 256  # received messages not yet consumed; beyond that frames are NACKed
    recv_chunk: int = 65536


# --- the link -----------------------------------------------------------------------


class Link:
    """One open session. Build it with ``Link.connect`` or ``Link.accept``."""

    def __init__(self, sock: socket.socket, peer: str, config: LinkConfig = LinkConfig(),
                 registry: Registry = MESSAGES, nonblocking: bool = False) -> None:
        self.peer = peer
        self.config = config
        self.registry = registry
        self._sock = sock
        # Reads wait in poll first. Writes: with a timeout, sendall waits up to write_timeout for
        # room; nonblocking (a server's reactor, which must never wait on one peer) fails the link
        # at once instead when the peer has stopped reading, and saves the poll of every call.
        self._nonblocking = nonblocking
        sock.settimeout(0.0 if nonblocking else config.write_timeout)
        self._decoder = FrameDecoder()
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._inbound: collections.deque[str] = collections.deque()
        self._pumping = False
        self._awaiting_ack = False
        self._ack: ControlByte | None = None
        self._unacked: tuple[bytes, str, int, float] | None = None  # frame, opcode, attempt, deadline
        self._closed: LinkError | None = None
        self.stats = collections.Counter()

    # -- opening -----------------------------------------------------------------

    @classmethod
    def connect(cls, host: str, port: int, config: LinkConfig = LinkConfig(),
                registry: Registry = MESSAGES) -> "Link":
        """Connect, send ENQ, wait for ACK. Raises LinkTimeout, SessionRefused or LinkBroken."""
        peer = f"{host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=config.connect_timeout)
        except socket.timeout:
            raise LinkTimeout(f"no answer from {peer} within {config.connect_timeout:g} s") from None
        except OSError as exc:
            raise LinkBroken(f"cannot connect to {peer}: {exc.strerror or exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(config.handshake_timeout)
            sock.sendall(_ENQ)
            answer = sock.recv(1)
        except socket.timeout:
            sock.close()
            raise LinkTimeout(f"{peer} did not answer ENQ within {config.handshake_timeout:g} s") from None
        except OSError as exc:
            sock.close()
            raise LinkBroken(f"session with {peer} failed to open: {exc.strerror or exc}") from None
        if answer == _ACK:
            return cls(sock, peer, config, registry)
        sock.close()
        if answer == _NACK:
            raise SessionRefused(f"{peer} refused the session (NACK)")
        if not answer:
            raise LinkBroken(f"{peer} closed the connection instead of answering ENQ")
        raise LinkBroken(f"{peer} answered ENQ with {answer!r}, expected ACK or NACK")

    @classmethod
    def accept(cls, sock: socket.socket, peer: str, config: LinkConfig = LinkConfig(),
               registry: Registry = MESSAGES, refuse: str | None = None) -> "Link":
        """Server side: wait for ENQ; answer ACK, or NACK and close when ``refuse`` gives a reason."""
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(config.handshake_timeout)
            first = sock.recv(1)
            if first != _ENQ:
                what = "closed the connection" if not first else f"sent {first!r}"
                raise LinkBroken(f"{peer} {what} instead of ENQ")
            if refuse is not None:
                sock.sendall(_NACK)
                raise SessionRefused(f"refused session from {peer}: {refuse}")
            sock.sendall(_ACK)
        except socket.timeout:
            sock.close()
            raise LinkTimeout(f"{peer} sent no ENQ within {config.handshake_timeout:g} s") from None
        except LinkError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise LinkBroken(f"session with {peer} failed to open: {exc.strerror or exc}") from None
        return cls(sock, peer, config, registry)

    # -- public API ------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def send(self, message: Message) -> None:
        """Send one message and wait for its ACK, retransmitting on NACK or timeout.

        Raises ``LinkBroken`` after ``max_retries`` retransmissions (the link is then
        closed) and ``LinkClosed`` if the session is or becomes closed.
        """
        frame = encode_frame(message.to_data())
        with self._send_lock:
            self._settle_unacked()  # a frame sent with send_nowait is acknowledged first
            self._await_ack(frame, message.OPCODE, 0)

    def send_nowait(self, message: Message) -> bool:
        """Write one message without waiting for its ACK: for a reactor thread that must not
        block. False (nothing written) when another send is under way or an earlier frame
        still awaits its ACK; then send it with ``send``. The ACK is read by whoever reads
        the link next; ``check_unacked`` retransmits it when it is late, and the next
        ``send`` waits for it first, so there is still one frame in flight at a time."""
        frame = encode_frame(message.to_data())
        if not self._send_lock.acquire(blocking=False):
            return False
        try:
            if self._unacked is not None:
                return False
            with self._cond:
                self._raise_if_closed()
                self._ack = None
                self._awaiting_ack = True
            self._write(frame)
            self._unacked = (frame, message.OPCODE, 0, time.monotonic() + self.config.ack_timeout)
            return True
        finally:
            self._send_lock.release()

    @property
    def unacked(self) -> bool:
        """True while a frame written with ``send_nowait`` has not been acknowledged."""
        return self._unacked is not None

    def check_unacked(self) -> None:
        """Without waiting: forget the frame of ``send_nowait`` once ACKed, retransmit it if it was
        NACKed or is late (closing the link after ``max_retries``). Call it now and then."""
        if self._unacked is None or not self._send_lock.acquire(blocking=False):
            return
        try:
            if self._unacked is None:
                return
            frame, opcode, attempt, deadline = self._unacked
            with self._cond:
                ack = self._ack
            if ack == ControlByte.ACK:
                self._unacked = None
                self._acknowledged()
            elif ack == ControlByte.NACK or time.monotonic() >= deadline:
                if attempt >= self.config.max_retries:
                    self._unacked = None
                    self._give_up(opcode, "NACK" if ack == ControlByte.NACK else "no ACK")
                with self._cond:
                    self._ack = None
                self.stats["retransmitted"] += 1
                self._write(frame)
                self._unacked = (frame, opcode, attempt + 1, time.monotonic() + self.config.ack_timeout)
        except LinkError:
            pass  # the link is closed: its owner sees that on its next read
        finally:
            self._send_lock.release()

    def _settle_unacked(self) -> None:
        """(Holding the send lock.) Wait for the ACK of the ``send_nowait`` frame; retransmit it
        as ``send`` would if it does not come."""
        if self._unacked is None:
            return
        frame, opcode, attempt, deadline = self._unacked
        self._unacked = None
        self._wait_for(lambda: self._ack is not None or self._closed is not None, deadline)
        if self._ack == ControlByte.ACK:
            self._acknowledged()
        else:
            self._await_ack(frame, opcode, attempt + 1)

    def _acknowledged(self) -> None:
        with self._cond:
            self._awaiting_ack = False
        self.stats["sent"] += 1

    def _give_up(self, opcode: str, why: str) -> None:
        """The frame was not acknowledged after every retransmission: the link is broken."""
        error = LinkBroken(f"{self.peer}: {opcode} not acknowledged after "
                           f"{self.config.max_retries} retransmissions ({why})")
        self._fail(error)
        raise error

    def _await_ack(self, frame: bytes, opcode: str, first_attempt: int) -> None:
        """(Holding the send lock.) Write ``frame`` and wait for its ACK, retransmitting."""
        cfg = self.config
        why = "no ACK"
        for attempt in range(first_attempt, 1 + cfg.max_retries):
            with self._cond:
                self._raise_if_closed()
                self._ack = None
                self._awaiting_ack = True
            try:
                if attempt:
                    self.stats["retransmitted"] += 1
                self._write(frame)
                self._wait_for(lambda: self._ack is not None or self._closed is not None,
                               time.monotonic() + cfg.ack_timeout)
            finally:
                with self._cond:
                    self._awaiting_ack = False
                    ack = self._ack
            if ack == ControlByte.ACK:
                self.stats["sent"] += 1
                return
            with self._cond:
                self._raise_if_closed()
            why = "NACK" if ack == ControlByte.NACK else f"no ACK within {cfg.ack_timeout:g} s"
            log.debug("%s: %s for %s (attempt %d)", self.peer, why, opcode, attempt + 1)
        self._give_up(opcode, why)

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next message, or None when ``timeout`` passes first.

        Raises ``MessageError`` for a frame that was well formed (ACKed) but is not a
        valid message: the link is intact, answer it and go on. Raises ``LinkClosed``
        or ``LinkBroken`` once the session is over and every received message was read.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait_for(lambda: bool(self._inbound) or self._closed is not None, deadline)
        with self._cond:
            if self._inbound:
                text = self._inbound.popleft()
            elif self._closed is not None:
                self._raise_if_closed()
            else:
                return None
        return self.registry.decode(text)

    @property
    def socket(self) -> socket.socket:
        return self._sock

    @property
    def pumping(self) -> bool:
        """True while a thread reads this link's socket (waiting for an ACK or a message)."""
        return self._pumping

    def has_inbound(self) -> bool:
        """True when messages were received and not read yet."""
        with self._cond:
            return bool(self._inbound)

    def close_cause(self) -> LinkError | None:
        """Why the session is over (None while it is open)."""
        return self._closed

    def take_ready(self) -> list:
        """Read what the socket holds now, without waiting, and return every message
        received so far, in order (a frame that was not a valid message comes as its
        ``MessageError``). Raises ``LinkClosed``/``LinkBroken`` once the session is over
        and nothing is left to read. For servers that watch many links in one selector."""
        with self._cond:
            pump = not self._pumping and self._closed is None
            if pump:
                self._pumping = True
        if pump:
            try:
                self._pump(0)
            finally:
                with self._cond:
                    self._pumping = False
                    self._cond.notify_all()
        with self._cond:
            texts = list(self._inbound)
            self._inbound.clear()
            if not texts and self._closed is not None:
                self._raise_if_closed()
        out: list = []
        for text in texts:
            try:
                out.append(self.registry.decode(text))
            except MessageError as exc:
                out.append(exc)
        return out

    def close(self, reason: str = "closed locally", send_eot: bool = True) -> None:
        """End the session: send EOT (best effort) and close the socket. Idempotent."""
        with self._cond:
            if self._closed is not None:
                return
            self._closed = LinkClosed(f"{self.peer}: {reason}")
            self._cond.notify_all()
        if send_eot:
            try:
                with self._write_lock:
                    self._sock.settimeout(0.2)
                    self._sock.sendall(_EOT)
            except OSError:
                pass
        self._shutdown_socket()

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _raise_if_closed(self) -> None:
        if self._closed is not None:
            raise type(self._closed)(str(self._closed))

    def _fail(self, error: LinkError) -> None:
        with self._cond:
            if self._closed is None:
                self._closed = error
            self._cond.notify_all()
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in poll
        except OSError:
            pass
        self._sock.close()

    def _write(self, data: bytes) -> None:
        try:
            with self._write_lock:
                self._sock.sendall(data)
        except BlockingIOError:  # nonblocking: the peer's window and our buffer are full
            error = LinkBroken(f"{self.peer}: does not read what it is sent (send buffer full)")
            self._fail(error)
            raise error from None
        except socket.timeout:
            error = LinkBroken(f"{self.peer}: write blocked for {self.config.write_timeout:g} s")
            self._fail(error)
            raise error from None
        except OSError as exc:
            if self._closed is not None:
                self._raise_if_closed()
            error = LinkBroken(f"{self.peer}: write failed: {exc.strerror or exc}")
            self._fail(error)
            raise error from None

    def _wait_for(self, predicate: Callable[[], bool], deadline: float | None) -> bool:
        """Wait until ``predicate()`` holds (under the condition) or the deadline passes.

        One waiting thread at a time reads the socket (``_pumping``); the others wait
        on the condition, which the reader notifies after every chunk.
        """
        while True:
            with self._cond:
                if predicate():
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if self._pumping:
                    self._cond.wait(remaining)
                    continue
                self._pumping = True
            try:
                self._pump(remaining)
            finally:
                with self._cond:
                    self._pumping = False
                    self._cond.notify_all()

    def _pump(self, timeout: float | None) -> None:
        """Read what arrives within ``timeout`` and turn it into queued messages and acks."""
        if self._closed is not None:
            return
        try:
            # nonblocking and not waiting: one system call, no poll first
            if not (timeout == 0 and self._nonblocking) and not _readable(self._sock, timeout):
                return
            chunk = self._sock.recv(self.config.recv_chunk)
        except (BlockingIOError, InterruptedError):  # nothing there after all
            return
        except (OSError, ValueError) as exc:  # ValueError: socket closed under us
            if self._closed is None:
                self._fail(LinkBroken(f"{self.peer}: read failed: {getattr(exc, 'strerror', None) or exc}"))
            return
        if not chunk:
            try:
                self._decoder.close()
            except FrameError as exc:
                self._fail(LinkBroken(f"{self.peer} closed the connection mid-frame ({exc})"))
                return
            self._fail(LinkClosed(f"{self.peer} closed the connection"))
            return
        self._decoder.feed(chunk)
        replies = bytearray()
        ended = False
        while True:
            try:
                event = self._decoder.next_event()
            except FrameError as exc:
                self.stats["nacked"] += 1
                log.warning("%s: malformed frame, answered NACK: %s", self.peer, exc)
                replies += _NACK
                continue
            if event is NEED_DATA:
                break
            if isinstance(event, Control):
                ended = self._on_control(event.byte) or ended
                continue
            with self._cond:
                if len(self._inbound) >= self.config.max_inbound:
                    self.stats["refused_full"] += 1
                    log.warning("%s: %d messages unread, answered NACK", self.peer, len(self._inbound))
                    replies += _NACK
                    continue
                self._inbound.append(event.text)
            self.stats["received"] += 1
            replies += _ACK
        if replies and self._closed is None:
            try:
                self._write(bytes(replies))
            except LinkError:
                return
        if ended:
            self._fail(LinkClosed(f"{self.peer} ended the session (EOT)"))

    def _on_control(self, byte: ControlByte) -> bool:
        """Handle one control byte; True when it ends the session."""
        if byte == ControlByte.EOT:
            return True
        if byte in (ControlByte.ACK, ControlByte.NACK):
            with self._cond:
                if self._awaiting_ack and self._ack is None:
                    self._ack = byte
                    return False
            self.stats["stray_" + byte.name.lower()] += 1
            log.debug("%s: %s with no frame awaiting it, ignored", self.peer, byte.name)
            return False
        self.stats["stray_enq"] += 1  # ENQ inside an open session: nothing to do
        return False


def _readable(sock: socket.socket, timeout: float | None) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(None if timeout is None else max(0, timeout) * 1000))
    readable, _, _ = select.select([sock], [], [], timeout)
    return bool(readable)


# --- server ---------------------------------------------------------------------------


SessionHandler = Callable[[Link], None]


class LinkServer:
    """A threaded TCP server of links: one thread per session, bounded, stoppable.

    ``handler(link)`` runs in the session's thread and owns the link until it
    returns; the server closes the link afterwards. Past ``max_sessions`` live
    sessions, a new client's ENQ is answered NACK.
    """

    def __init__(self, host: str, port: int, handler: SessionHandler, *, name: str = "link",
                 max_sessions: int = 1024, busy_reason: str | None = None,
                 config: LinkConfig = LinkConfig(), registry: Registry = MESSAGES) -> None:
        self.handler = handler
        self.busy_reason = busy_reason or f"{max_sessions} sessions open, the most allowed"
        self.name = name
        self.max_sessions = max_sessions
        self.config = config
        self.registry = registry
        self._links: set[Link] = set()
        self._opening = 0  # sessions admitted and still in their handshake
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        outer = self

        class _Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve(self.request, self.client_address)

        class _Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            block_on_close = False
            request_queue_size = 1024

            def handle_error(self, request, client_address) -> None:
                log.exception("%s: unexpected error serving %s", outer.name, client_address)

        self._server = _Server((host, port), _Handler)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return host, port

    def start(self) -> "LinkServer":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"{self.name}-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self, reason: str = "server shutting down", grace: float = 5.0) -> None:
        """Stop accepting, end every live session (EOT), and wait up to ``grace`` s for their handlers."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(grace)
        self._server.server_close()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close(reason)
        with self._lock:
            if not self._lock.wait_for(lambda: not self._links, grace):
                log.warning("%s: %d session handler(s) still running after %g s", self.name, len(self._links), grace)

    def session_count(self) -> int:
        with self._lock:
            return len(self._links)

    def _serve(self, sock: socket.socket, address) -> None:
        peer = f"{address[0]}:{address[1]}"
        threading.current_thread().name = f"{self.name}-{peer}"
        with self._lock:  # reserve a slot before the handshake, so that two clients cannot both take the last
            admitted = self._opening + len(self._links) < self.max_sessions
            self._opening += admitted
        try:
            link = Link.accept(sock, peer, self.config, self.registry,
                               refuse=None if admitted else self.busy_reason)
        except LinkError as exc:
            log.warning("%s: %s", self.name, exc)
            return
        finally:
            with self._lock:
                self._opening -= admitted
        with self._lock:
            self._links.add(link)
        try:
            self.handler(link)
        except LinkError as exc:
            log.info("%s: session with %s over: %s", self.name, peer, exc)
        finally:
            link.close("session over")
            with self._lock:
                self._links.discard(link)
                self._lock.notify_all()
