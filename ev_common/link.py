"""The link layer on blocking sockets: framed, acknowledged, full-duplex sessions over TCP.

The rules of docs/protocol.md (ENQ handshake, ACK/NACK, one frame in flight,
retransmission, EOT) are decided by ``LinkState`` (``ev_common/linkstate.py``), which
owns no socket; ``Link`` is its driver on one blocking socket, and every socket
operation has a timeout.

A ``Link`` starts no thread. Whichever thread is waiting (in ``recv`` for a
message, or in ``send`` for an ACK) reads the socket on behalf of all the
others: one reader at a time, the rest wait on a condition that the reader
signals after each chunk. Any waiting thread runs the state machine's timers
(retransmissions, the handshake deadline) when they are due. So a request handler
can answer from the thread that received the request, and a second thread can push
a command at the same time, without deadlock; their messages queue behind the frame
in flight.

``LinkServer`` accepts links on a port, one thread per session, and closes
them all on ``stop()``.

``Link.connect(..., tls=client)`` (a ``TLSClient``, ``ev_common.tls.client_context``) opens
TLS before the ENQ, within ``handshake_timeout``, and verifies the server (CA file or pinned
fingerprint); the session then runs as before, its bytes through a ``TLSChannel`` (TLS on
memory buffers, guarded by the write lock), so a reader never blocks on half a TLS record
nor misses decrypted bytes that ``poll`` cannot see.
"""

from __future__ import annotations

import collections
import itertools
import logging
import select
import socket
import socketserver
import ssl
import threading
import time
from typing import TYPE_CHECKING, Callable

from .linkstate import (
    Acked,
    Ended,
    LinkBroken,
    LinkClosed,
    LinkConfig,
    LinkError,
    LinkState,
    LinkTimeout,
    NeverOpened,
    Opened,
    Received,
    Role,
    SessionRefused,
)
from .protocol import MESSAGES, Message, MessageError, Registry
from .tls import TLSError

if TYPE_CHECKING:
    from .tls import TLSChannel, TLSClient

__all__ = ["Link", "LinkBroken", "LinkClosed", "LinkConfig", "LinkError", "LinkServer", "LinkTimeout",
           "SessionRefused", "TLSError"]

log = logging.getLogger(__name__)

_tokens = itertools.count(1)


class Link:
    """One session on a blocking socket. Build it with ``Link.connect`` or ``Link.accept``."""

    def __init__(self, sock: socket.socket, state: LinkState, tls: "TLSChannel | None" = None) -> None:
        self.peer = state.peer
        self.config = state.config
        self.registry = state.registry
        self._sock = sock
        sock.settimeout(self.config.write_timeout)  # reads wait in poll first; a write waits this long
        self._state = state
        self.stats = state.stats
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()  # taken before _cond: bytes go out in the order they were made
        self._inbound: collections.deque = collections.deque()
        self._acked: set[int] = set()
        self._pumping = False
        self._opened = state.is_open
        self._closed: LinkError | None = None
        self._tls = tls  # used under the write lock only
        self._plain = b""  # decrypted, not fed yet (the handshake's answer is fed one byte at a time)
        self._eof = False  # the peer closed its side of TLS (close_notify or end of stream)

    # -- opening -----------------------------------------------------------------

    @classmethod
    def connect(cls, host: str, port: int, config: LinkConfig = LinkConfig(),
                registry: Registry = MESSAGES, tls: "TLSClient | None" = None) -> "Link":
        """Connect, send ENQ, wait for ACK. Raises LinkTimeout, SessionRefused or LinkBroken.

        With ``tls`` (``ev_common.tls.client_context``) TLS comes first, within
        ``config.handshake_timeout``: ``TLSError`` (a ``LinkBroken``) when it fails,
        ``CertificateRejected`` when the server's certificate is not accepted (CA file, host
        name or pinned fingerprint), ``TLSTimeout`` (a ``LinkTimeout``) when it takes too long."""
        peer = f"{host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=config.connect_timeout)
        except socket.timeout:
            raise LinkTimeout(f"no answer from {peer} within {config.connect_timeout:g} s") from None
        except OSError as exc:
            raise LinkBroken(f"cannot connect to {peer}: {exc.strerror or exc}") from None
        channel = None
        if tls is not None:
            try:
                channel = tls.handshake(sock, host, timeout=config.handshake_timeout, peer=peer)
            except BaseException:
                sock.close()
                raise
        return cls._open(sock, LinkState(Role.CLIENT, config, registry, peer), channel)

    @classmethod
    def accept(cls, sock: socket.socket, peer: str, config: LinkConfig = LinkConfig(),
               registry: Registry = MESSAGES, refuse: str | None = None) -> "Link":
        """Server side: wait for ENQ; answer ACK, or NACK and close when ``refuse`` gives a reason."""
        return cls._open(sock, LinkState(Role.SERVER, config, registry, peer, refuse=refuse))

    @classmethod
    def _open(cls, sock: socket.socket, state: LinkState, tls: "TLSChannel | None" = None) -> "Link":
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        link = cls(sock, state, tls)
        with link._write_lock:
            link._write(state.start(time.monotonic()))
        link._wait_for(lambda: link._opened or link._closed is not None, None)
        if not link._opened:  # (opened and ended already: its messages are still read, then the end)
            link._shutdown_socket()
            raise _copy(link._closed)
        return link

    # -- public API ------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def send(self, message: Message) -> None:
        """Send one message and wait for its ACK (behind the frames already queued),
        retransmitting on NACK or timeout.

        Raises ``LinkBroken`` after ``max_retries`` retransmissions (the link is then
        closed) and ``LinkClosed`` if the session is or becomes closed.
        """
        token = next(_tokens)
        with self._write_lock:
            with self._cond:
                if self._closed is not None:
                    raise _copy(self._closed)
                out = self._state.send(message, time.monotonic(), token)
            self._write(out)
        self._wait_for(lambda: token in self._acked or self._closed is not None, None)
        with self._cond:
            if token in self._acked:
                self._acked.discard(token)
                return
            raise _copy(self._closed)

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
                item = self._inbound.popleft()
            elif self._closed is not None:
                raise _copy(self._closed)
            else:
                return None
        if isinstance(item, MessageError):
            raise item
        return item

    @property
    def socket(self) -> socket.socket:
        """The TCP socket (under TLS: the raw one, carrying encrypted bytes)."""
        return self._sock

    @property
    def tls_version(self) -> str | None:
        """"TLSv1.3" or "TLSv1.2" on a TLS link, else None."""
        return self._tls.version if self._tls is not None else None

    def close_cause(self) -> LinkError | None:
        """Why the session is over (None while it is open)."""
        return self._closed

    def close(self, reason: str = "closed locally", send_eot: bool = True) -> None:
        """End the session: send EOT (best effort) and close the socket. Idempotent."""
        with self._cond:
            if self._closed is not None:
                return
            out = self._state.close(reason, send_eot)
            self._take_events()
        if (out or self._tls is not None) and self._write_lock.acquire(timeout=0.2):
            try:
                if self._tls is not None:  # EOT, then close_notify
                    out = self._tls.encrypt(out) + self._tls.close()
                self._sock.settimeout(0.2)
                self._sock.sendall(out)
            except (OSError, ValueError):  # (ssl.SSLError is an OSError)
                pass
            finally:
                self._write_lock.release()
        self._shutdown_socket()

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the driver ---------------------------------------------------------------------

    def _take_events(self) -> None:
        """(Holding the condition.) What the state machine decided: messages, ACKs, the end."""
        for event in self._state.events():
            kind = type(event)
            if kind is Received:
                self._inbound.append(event.message)
            elif kind is Acked:
                self._acked.add(event.tag)
            elif kind is Opened:
                self._opened = True
            elif isinstance(event, Ended):
                self._closed = event.cause
        self._cond.notify_all()

    def _write(self, data: bytes) -> None:
        """(Holding the write lock.) Write bytes the state machine made; a failure ends the link."""
        if self._tls is not None:
            try:
                data = self._tls.encrypt(data)  # (with anything TLS made meanwhile)
            except (ssl.SSLError, ValueError) as exc:
                self._fail(LinkBroken(f"{self.peer}: TLS write failed: {exc}"))
                return
        if not data:
            return
        try:
            self._sock.sendall(data)
            return
        except socket.timeout:
            error = LinkBroken(f"{self.peer}: write blocked for {self.config.write_timeout:g} s")
        except OSError as exc:
            error = LinkBroken(f"{self.peer}: write failed: {exc.strerror or exc}")
        self._fail(error)

    def _fail(self, error: LinkError) -> None:
        with self._cond:
            self._state.fail(error)
            self._take_events()
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in poll
        except OSError:
            pass
        self._sock.close()

    def _tick(self) -> None:
        """Run the state machine's timers (retransmit, give up, handshake deadline)."""
        with self._write_lock:
            with self._cond:
                if self._closed is not None:
                    return
                out = self._state.on_timer(time.monotonic())
                self._take_events()
            self._write(out)
        if self._closed is not None:
            self._shutdown_socket()

    def _wait_for(self, predicate: Callable[[], bool], deadline: float | None) -> bool:
        """Wait until ``predicate()`` holds (under the condition) or the deadline passes.

        One waiting thread at a time reads the socket (``_pumping``); the others wait
        on the condition, which the reader notifies after every chunk. Whoever wakes
        with a timer due runs it.
        """
        while True:
            with self._cond:
                if predicate():
                    return True
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                timer = self._state.next_deadline()
                if timer is not None and now >= timer:
                    due = True
                else:
                    due = False
                    limit = deadline if timer is None else timer if deadline is None else min(deadline, timer)
                    remaining = None if limit is None else limit - now
                    if self._pumping:
                        self._cond.wait(remaining)
                        continue
                    self._pumping = True
            if due:
                self._tick()
                continue
            try:
                self._pump(remaining)
            finally:
                with self._cond:
                    self._pumping = False
                    self._cond.notify_all()

    def _pump(self, timeout: float | None) -> None:
        """Read what arrives within ``timeout`` and hand it to the state machine."""
        if self._closed is not None:
            return
        if self._tls is not None:
            self._pump_tls(timeout)
            return
        try:
            if not _readable(self._sock, timeout):
                return
            # the handshake's answer is one byte: what follows it waits in the socket for the next read
            chunk = self._sock.recv(self.config.recv_chunk if self._opened else 1)
        except (BlockingIOError, InterruptedError, socket.timeout):
            return
        except (OSError, ValueError) as exc:  # ValueError: socket closed under us
            if self._closed is None:
                self._fail(LinkBroken(f"{self.peer}: read failed: {getattr(exc, 'strerror', None) or exc}"))
            return
        with self._write_lock:
            with self._cond:
                if self._closed is not None:
                    return
                self._state.backlog = len(self._inbound)
                now = time.monotonic()
                out = self._state.feed(chunk, now)
                out += self._state.on_timer(now)
                self._take_events()
            self._write(out)
        if self._closed is not None:
            self._shutdown_socket()

    def _pump_tls(self, timeout: float | None) -> None:
        """``_pump`` under TLS: raw bytes -> the channel (under the write lock) -> the state machine.
        Decrypted bytes wait in ``_plain`` and are fed before the socket is read again."""
        tls = self._tls
        raw = None
        if not self._plain and not self._eof:
            try:
                if not _readable(self._sock, timeout):
                    return
                raw = self._sock.recv(self.config.recv_chunk)
            except (BlockingIOError, InterruptedError, socket.timeout):
                return
            except (OSError, ValueError) as exc:
                if self._closed is None:
                    self._fail(LinkBroken(f"{self.peer}: read failed: {getattr(exc, 'strerror', None) or exc}"))
                return
        with self._write_lock:
            with self._cond:
                if self._closed is not None:
                    return
                if raw is not None:
                    try:
                        self._plain += tls.receive(raw)
                    except ssl.SSLError as exc:
                        error = LinkBroken(f"{self.peer}: TLS failed: {exc.reason or exc}")
                        self._state.fail(error)
                        self._take_events()
                    self._eof = tls.eof
                if self._closed is None:
                    # the handshake's answer is one byte: what follows it waits for the next read
                    size = self.config.recv_chunk if self._opened else 1
                    chunk, self._plain = self._plain[:size], self._plain[size:]
                    now = time.monotonic()
                    self._state.backlog = len(self._inbound)
                    out = self._state.feed(chunk, now) if chunk else b""
                    if self._eof and not self._plain:
                        out += self._state.feed(b"", now)
                    out += self._state.on_timer(now)
                    self._take_events()
                else:
                    out = b""
            self._write(out)  # also what TLS made on its own (an alert, a key update)
        if self._closed is not None:
            self._shutdown_socket()


def _copy(cause: LinkError | None) -> LinkError:
    """A fresh exception like ``cause`` (raising one instance from several threads mixes tracebacks)."""
    if cause is None:
        return LinkClosed("the session is not open")
    return type(cause)(str(cause))


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
        except LinkError as exc:  # a port probe (nothing sent) is no failure worth a warning
            (log.debug if isinstance(exc, NeverOpened) else log.warning)("%s: %s", self.name, exc)
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
