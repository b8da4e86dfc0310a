"""A link server for thousands of sessions: one selector thread and a few workers.

``LinkServer`` gives every session a thread of its own, which is simple and right for a
few sessions (an Engine serves one Monitor). Central holds thousands of Monitors, and
thousands of Python threads waking every second fight over the interpreter lock: the
threads that matter (Kafka, the database writer) wait behind them. ``LinkReactor``
keeps every session in one selector instead, and runs each one's ``LinkState`` (the
same state machine as ``Link``: one handshake, one ACK wait):

* the reactor thread accepts connections, answers ENQ (ACK, or NACK past
  ``max_sessions``), reads every session's socket whenever it is readable, ACKs its
  frames, runs its timers (ACK timeouts, retransmissions, the handshake deadline) and is
  the only thread that writes to the sockets. A session's frames are read and ACKed
  also while a worker serves one of its messages: signs of life are never late because
  of other work;
* each message is offered to ``handler.inline`` on the reactor thread (quick ones that
  never wait: signs of life). From the first one it declines, the session's messages go,
  in order, to a worker that calls ``handler.message`` for each; messages read meanwhile
  queue behind them (at most ``max_inbound``, then NACK) for the same worker, so a session's
  messages are served one at a time, in order. The optional ``handler.lane`` sends a
  session's turn to a lane of one thread ("register"), so that a storm of registrations
  never takes the interpreter from the reactor; that lane serves every session queued to it
  at once (``handler.batch``, when the handler has one: the first message of each), and
  pauses between batches while more wait (``_BatchLane``);
* ``handler.message`` returns what to answer (see ``Reply``); the reactor sends it.
  Any thread may also call ``send(link, message, on_done)``: it never blocks, the message
  queues behind the frame in flight and the reactor writes it;
* ``handler.opened(link)`` runs when a session opens, ``handler.closed(state, cause)``
  exactly once when it ends (closed by the peer, broken, closed by anyone with
  ``link.close``, or at ``stop``), after the messages read before the end were served.

With ``tls`` (an ``ssl.SSLContext``, ``ev_common.tls.server_context``) every session is TLS on
memory buffers (``TLSChannel``): the reactor thread reads the raw bytes, decrypts them for the
session's ``LinkState`` and encrypts what it writes, never blocking. The TLS handshake and the
ENQ must both come within ``config.handshake_timeout`` of the connection; a peer whose first
byte is not a TLS record (a plaintext Monitor's ENQ or frame) is closed at once, logged once.
Sessions without ``tls`` take the same path as before (TLS sessions are a subclass of
``ReactorLink`` and are dispatched apart).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import selectors
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

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
    Refused,
    Role,
)
from .protocol import ETX, MESSAGES, STX, ControlByte, Message, Registry
from .tls import TLSChannel

log = logging.getLogger(__name__)

SCAN_INTERVAL = 0.2  # the longest the selector waits (timers due sooner wake it sooner)

OnDone = Callable[[bool], None]


@dataclass(frozen=True)
class Reply:
    """What ``handler.message`` may return to answer: ``messages`` sent in order; with
    ``keep_open`` False the session ends once they are acknowledged (at once when there are
    none). A handler may also return True (go on), False (end the session), one ``Message``
    or a sequence of them (sent in order, the session goes on)."""

    messages: tuple[Message, ...] = ()
    keep_open: bool = True


_TLS_RECORD = 0x16  # a TLS handshake record: how every ClientHello begins


_BYTE_NAMES = {STX: "STX", ETX: "ETX", **{byte.value: byte.name for byte in ControlByte}}


def _first_byte(chunk: bytes) -> str:
    """A plaintext peer's first byte, for the log: "ENQ (0x05)", "STX (0x02)", "0x47"."""
    byte = chunk[0]
    name = _BYTE_NAMES.get(byte)
    return f"{name} (0x{byte:02x})" if name else f"0x{byte:02x}"


class SessionHandler(Protocol):
    def opened(self, link: "ReactorLink") -> Any: ...

    def inline(self, state: Any, message: Any) -> bool | None:
        """Serve a message on the reactor thread if that is quick and never blocks nor sends
        (True, or False to end the session); None sends it, and the session's next ones, to a worker."""

    def message(self, state: Any, message: Any) -> "bool | Message | Iterable[Message] | Reply":
        """One message (or a ``MessageError``) of a session, on a worker; returns its answer
        (see ``Reply``), False to end the session."""

    def lane(self, state: Any, message: Any) -> str:
        """Optional: which workers serve this message, "main" (the default) or "register" (one
        thread, so that a storm of registrations never takes the interpreter from the reactor)."""

    def batch(self, items: "list[tuple[Any, Any]]") -> list:
        """Optional: the first messages of many sessions queued on the "register" lane, (state,
        message) each, served together; their answers in order, each as ``message`` returns it."""

    def acked(self, state: Any) -> None:
        """Optional: the peer acknowledged a frame of this session (it is alive and reads); on the
        reactor thread, so quick and never waiting."""

    def closed(self, state: Any, cause: str) -> None: ...


class ReactorLink:
    """One session of a ``LinkReactor`` (what ``handler.opened`` receives). Any thread may call
    ``close`` and ``send`` (or ``LinkReactor.send``); the reactor thread does the I/O."""

    __slots__ = ("peer", "config", "state", "_reactor", "_sock", "_fd", "_link", "_lock", "_inbox", "_busy",
                 "_stop_serving", "_outgoing", "_outstanding", "_callbacks", "_close_request", "_cause",
                 "_reason", "_opened", "_finished", "_timer_at", "_tls", "__weakref__")

    def __init__(self, reactor: "LinkReactor", sock: socket.socket, peer: str, link: LinkState) -> None:
        self.peer = peer
        self.config = link.config
        self.state: Any = None  # the handler's, from opened()
        self._reactor = reactor
        self._sock = sock
        self._fd = sock.fileno()
        self._link = link  # touched by the reactor thread only
        self._lock = threading.Lock()
        self._inbox: collections.deque = collections.deque()  # messages waiting for the worker
        self._busy = False  # a worker serves this session
        self._stop_serving = False  # the handler ended the session: drop what is left
        self._outgoing: list[tuple[Message, OnDone | None]] = []  # sends for the reactor to hand to the link
        self._outstanding = 0  # sends accepted, not done yet
        self._callbacks: dict[int, OnDone | None] = {}  # tag -> on_done (reactor thread)
        self._close_request: tuple[str, bool] | None = None
        self._cause: LinkError | None = None  # set once ended
        self._reason = ""  # the cause given to handler.closed
        self._opened = False
        self._finished = False  # handler.closed called
        self._timer_at: float | None = None
        self._tls: TLSChannel | None = None  # touched by the reactor thread only

    @property
    def closed(self) -> bool:
        return self._close_request is not None or self._cause is not None

    @property
    def stats(self):
        return self._link.stats

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def close_cause(self) -> LinkError | None:
        return self._cause

    def close(self, reason: str = "closed locally", send_eot: bool = True) -> None:
        """End the session (EOT, then the socket closes); from any thread, never blocks. Idempotent."""
        self._reactor._request_close(self, reason, send_eot)

    def send(self, message: Message, timeout: float | None = None) -> None:
        """Send and wait for the ACK, for threads that may wait (never the reactor thread):
        raises ``LinkClosed``/``LinkBroken`` when it could not be delivered."""
        if threading.get_ident() == self._reactor._ident:
            raise RuntimeError("the reactor thread must not wait for an ACK: return the reply instead")
        done = threading.Event()
        outcome: list[bool] = []

        def finished(ok: bool) -> None:
            outcome.append(ok)
            done.set()

        if not self._reactor.send(self, message, finished):
            raise self._error("the session is closed" if self.closed else "too many messages queued")
        # every frame ends ACKed or given up within (1 + max_retries) ACK timeouts, each queued one too
        cfg = self.config
        bound = timeout if timeout is not None else (cfg.max_outbound + 1) * (cfg.max_retries + 1) * cfg.ack_timeout
        if not done.wait(bound) or not outcome[0]:
            raise self._error("not acknowledged")

    def _error(self, why: str) -> LinkError:
        cause = self._cause
        if cause is not None:
            return type(cause)(str(cause))
        if self._close_request is not None:
            return LinkClosed(f"{self.peer}: {self._close_request[0]}")
        return LinkBroken(f"{self.peer}: {why}")

    def __repr__(self) -> str:
        return f"ReactorLink({self.peer})"


class TLSReactorLink(ReactorLink):
    """A session of a ``LinkReactor`` with ``tls``: the same, its bytes through ``_tls``."""

    __slots__ = ()

    def __init__(self, reactor: "LinkReactor", sock: socket.socket, peer: str, link: LinkState,
                 tls: TLSChannel) -> None:
        super().__init__(reactor, sock, peer, link)
        self._tls = tls

    @property
    def tls_version(self) -> str | None:
        return self._tls.version if self._tls.handshaken else None

    def __repr__(self) -> str:
        return f"TLSReactorLink({self.peer})"


class _BatchLane:
    """A lane of one thread that serves the sessions queued to it in batches: each turn takes
    every session queued so far (at most ``limit``) and hands them to ``serve`` together, so
    that the more arrive at once, the less each costs.

    Between two batches it pauses ``rest`` times as long as the batch took (at most
    ``MAX_REST`` s) while more wait. A lane that keeps the interpreter busy makes every
    ``recv`` and ``send`` of the reactor thread wait for the interpreter again (up to the
    switch interval, 5 ms, each: the "convoy"), and the reactor then serves a few hundred
    frames a second instead of tens of thousands: signs of life go unanswered, ACKs come
    late. The pause leaves the reactor the interpreter to itself for a while."""

    MAX_REST = 0.02

    def __init__(self, serve: Callable[[list], None], name: str, limit: int = 256, rest: float = 0.5,
                 clock: Callable[[], float] = time.perf_counter, sleep: Callable[[float], None] = time.sleep) -> None:
        self._serve = serve
        self._limit = limit
        self._rest = rest
        self._clock = clock
        self._sleep = sleep
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, link: "ReactorLink") -> None:
        with self._cond:
            self._queue.append(link)
            self._cond.notify()

    def shutdown(self) -> None:
        """Serve what is queued, then end the lane's thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:  # closed, and nothing left
                    return
                count = min(len(self._queue), self._limit)
                batch = [self._queue.popleft() for _ in range(count)]
            started = self._clock()
            try:
                self._serve(batch)
            except Exception:
                log.exception("a batch of %d sessions failed", len(batch))
            if self._queue and self._rest > 0:  # more wait: the reactor's turn first (see the class doc)
                self._sleep(min(self.MAX_REST, (self._clock() - started) * self._rest))


class LinkReactor:
    def __init__(self, host: str, port: int, handler: SessionHandler, *, name: str = "link",
                 max_sessions: int = 10_000, busy_reason: str | None = None, config: LinkConfig = LinkConfig(),
                 registry: Registry = MESSAGES, workers: int = 8, backlog: int = 4096,
                 tls: ssl.SSLContext | None = None, reuse_port: bool = False) -> None:
        """``reuse_port``: bind with ``SO_REUSEPORT``, so that several processes (gateways) share
        ``port`` and the kernel spreads new connections over them (Linux)."""
        self.handler = handler
        self.tls = tls
        self.name = name
        self.max_sessions = max_sessions
        self.busy_reason = busy_reason or f"{max_sessions} sessions open, the most allowed"
        self.config = config
        self.registry = registry
        self._listener = socket.create_server((host, port), backlog=backlog, reuse_port=reuse_port)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()
        self._sessions: dict[ReactorLink, None] = {}  # open sessions (insertion-ordered set)
        self._links: set[ReactorLink] = set()  # every link with a socket: opening or open (reactor thread)
        self._pending: list[ReactorLink] = []  # links with sends or a close request for the reactor
        self._timers: list[tuple[float, int, ReactorLink]] = []  # heap (reactor thread)
        self._seq = itertools.count()
        self._tags = itertools.count(1)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-worker")
        self._register = _BatchLane(self._serve_batch, f"{name}-register")
        self._lanes: dict[str, Callable[[ReactorLink], Any]] = {  # lane name -> how a session's turn is queued
            "main": lambda link: self._pool.submit(self._serve, link), "register": self._register.submit}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._ident: int | None = None
        self._lane_of = getattr(handler, "lane", None)
        self._acked = getattr(handler, "acked", None)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def start(self) -> "LinkReactor":
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-reactor", daemon=True)
        self._thread.start()
        return self

    def stop(self, reason: str = "server shutting down", grace: float = 5.0) -> None:
        """Stop accepting, end every session (EOT) and wait up to ``grace`` s for the workers."""
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(grace)
            if self._thread.is_alive():
                log.warning("%s: the reactor thread did not stop within %g s", self.name, grace)
        self._ident = None  # from here on this thread does the I/O
        for link in list(self._links):
            self._request_close(link, reason, True)
        self._apply_pending(time.monotonic())
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._register.shutdown()
        if self._listener.fileno() >= 0:
            self._listener.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def send(self, link: ReactorLink, message: Message, on_done: OnDone | None = None) -> bool:
        """Queue ``message`` on ``link`` behind the frame in flight; never blocks, any thread.
        ``on_done(ok)`` is called once (on the reactor thread: keep it quick) when the message
        was acknowledged (True) or the session ended first (False). Returns False, and never
        calls ``on_done``, when the session is closed or ``max_outbound`` messages are queued."""
        with link._lock:
            if link._close_request is not None or link._cause is not None:
                return False
            if link._outstanding >= self.config.max_outbound:
                log.warning("%s: %d messages queued for %s; %s not sent", self.name, link._outstanding, link.peer,
                            message.OPCODE)
                return False
            link._outstanding += 1
            link._outgoing.append((message, on_done))
        self._schedule(link)
        return True

    # -- any thread -------------------------------------------------------------------------

    def _schedule(self, link: ReactorLink) -> None:
        with self._lock:
            self._pending.append(link)
        if threading.get_ident() != self._ident:
            self._wake()

    def _request_close(self, link: ReactorLink, reason: str, send_eot: bool) -> None:
        with link._lock:
            if link._close_request is not None or link._cause is not None:
                return
            link._close_request = (reason, send_eot)
        if self._ident is None and self._thread is not None and not self._thread.is_alive():
            self._apply(link, time.monotonic())  # stopped: nobody else does the I/O
            return
        self._schedule(link)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the pipe is full: the reactor is awake anyway

    # -- reactor thread -------------------------------------------------------------------

    def _run(self) -> None:
        self._ident = threading.get_ident()
        select = self._selector.select
        timers = self._timers
        while not self._stopping.is_set():
            now = time.monotonic()
            wait = SCAN_INTERVAL if not timers else min(SCAN_INTERVAL, max(0.0, timers[0][0] - now))
            try:
                events = select(wait)
            except OSError as exc:
                log.error("%s: selector failed (%s); going on", self.name, exc)
                self._stopping.wait(0.05)
                events = []
            for key, _mask in events:
                what = key.data
                if what.__class__ is ReactorLink:
                    self._read(what)
                elif what.__class__ is TLSReactorLink:
                    self._read_tls(what)
                elif what == "accept":
                    self._accept()
                else:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass
            now = time.monotonic()
            if timers and timers[0][0] <= now:
                self._run_timers(now)
            if self._pending:  # (last: callbacks run above may have queued more)
                self._apply_pending(now)

    def _accept(self) -> None:
        now = time.monotonic()
        for _ in range(256):  # a burst at a time; the rest on the next round
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # for example out of file descriptors: say so, keep serving
                log.error("%s: cannot accept a connection: %s", self.name, exc)
                return
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            peer = f"{address[0]}:{address[1]}"
            state = LinkState(Role.SERVER, self.config, self.registry, peer)
            if self.tls is None:
                link = ReactorLink(self, sock, peer, state)
            else:
                try:
                    link = TLSReactorLink(self, sock, peer, state, TLSChannel(self.tls, server_side=True))
                except ssl.SSLError as exc:  # (the context cannot make a session: say so, keep serving)
                    log.error("%s: cannot start TLS with %s: %s", self.name, peer, exc)
                    sock.close()
                    continue
            state.start(now)
            stale = self._selector.get_map().get(link._fd)
            if stale is not None:  # a socket closed without unregistering left its number behind
                self._selector.unregister(link._fd)
            self._selector.register(sock, selectors.EVENT_READ, link)
            self._links.add(link)
            self._arm(link)

    def _read(self, link: ReactorLink) -> None:
        try:
            chunk = link._sock.recv(self.config.recv_chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            link._link.fail(LinkBroken(f"{link.peer}: read failed: {exc.strerror or exc}"))
            self._process(link, time.monotonic())
            return
        state = link._link
        if not state.is_open and state.refuse is None:
            with self._lock:
                if len(self._sessions) >= self.max_sessions:
                    state.refuse = self.busy_reason
        state.backlog = len(link._inbox)
        now = time.monotonic()
        out = state.feed(chunk, now)
        if out:
            self._write(link, out)
        self._process(link, now)

    def _read_tls(self, link: ReactorLink) -> None:
        """``_read`` for a TLS session: raw bytes -> TLS (the handshake, then decryption) -> the link."""
        try:
            chunk = link._sock.recv(self.config.recv_chunk)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            link._link.fail(LinkBroken(f"{link.peer}: read failed: {exc.strerror or exc}"))
            self._process(link, time.monotonic())
            return
        tls = link._tls
        state = link._link
        now = time.monotonic()
        handshaken = tls.handshaken
        if not handshaken:
            if not chunk:
                if tls.heard:
                    state.fail(LinkBroken(f"{link.peer} closed the connection during the TLS handshake"))
                else:
                    state.feed(b"", now)  # nothing sent: a port probe (NeverOpened)
                self._process(link, now)
                return
            if not tls.heard and chunk[0] != _TLS_RECORD:  # a plaintext peer at a TLS port
                state.fail(LinkBroken(f"{link.peer} is not a TLS client: it sent {_first_byte(chunk)} to this "
                                      f"TLS port; closed"))
                self._process(link, now)
                return
        try:
            plain = tls.receive(chunk)
        except ssl.SSLError as exc:
            self._send_raw(link, tls.outgoing())  # an alert, if OpenSSL made one
            what = "session" if handshaken else "handshake"
            state.fail(LinkBroken(f"{link.peer}: TLS {what} failed: {exc.reason or exc}"))
            self._process(link, now)
            return
        raw = tls.outgoing()  # handshake messages
        if raw:
            self._send_raw(link, raw)
        if plain or tls.eof:
            if not state.is_open and state.refuse is None:
                with self._lock:
                    if len(self._sessions) >= self.max_sessions:
                        state.refuse = self.busy_reason
            state.backlog = len(link._inbox)
            out = state.feed(plain, now) if plain else b""
            if tls.eof:  # close_notify or the end of the stream
                out += state.feed(b"", now)
            if out:
                self._write(link, out)
        self._process(link, now)

    def _send_raw(self, link: ReactorLink, data: bytes) -> None:
        """Bytes TLS made on its own (handshake, alerts): as ``_write`` does, without encrypting."""
        if not data or link._cause is not None:
            return
        try:
            sent = link._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            link._link.fail(LinkBroken(f"{link.peer}: write failed: {exc.strerror or exc}"))
            return
        if sent < len(data):
            link._link.fail(LinkBroken(f"{link.peer}: does not read what it is sent (send buffer full)"))

    def _write(self, link: ReactorLink, data: bytes) -> None:
        if link._tls is not None:
            try:
                data = link._tls.encrypt(data)
            except (ssl.SSLError, ValueError) as exc:  # ValueError: no session (never handshaken)
                link._link.fail(LinkBroken(f"{link.peer}: TLS write failed: {exc}"))
                return
        try:
            sent = link._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            link._link.fail(LinkBroken(f"{link.peer}: write failed: {exc.strerror or exc}"))
            return
        if sent < len(data):  # the peer's window and our buffer are full: it does not read
            link._link.fail(LinkBroken(f"{link.peer}: does not read what it is sent (send buffer full)"))

    def _process(self, link: ReactorLink, now: float) -> None:
        """What the link's state machine decided: serve messages, report ACKs, the end."""
        state = link._link
        while events := state.events():  # (a handler's failure may add more)
            for event in events:
                kind = event.__class__
                if kind is Received:
                    self._deliver(link, event.message)
                elif kind is Acked:
                    self._done(link, event.tag, True)
                    if self._acked is not None and link._opened:
                        self._acked(link.state)
                elif kind is Opened:
                    self._open(link)
                else:  # Ended: the last event
                    self._ended(link, event)
                    return
        if state.next_deadline() is not None:
            self._arm(link)

    def _open(self, link: ReactorLink) -> None:
        try:
            link.state = self.handler.opened(link)
        except Exception:
            log.exception("%s: opening the session with %s failed", self.name, link.peer)
            link._stop_serving = True
            link._link.fail(LinkClosed(f"{link.peer}: internal error"))
            return
        link._opened = True
        with self._lock:
            self._sessions[link] = None

    def _deliver(self, link: ReactorLink, item: Any) -> None:
        if link._stop_serving:
            return
        if link._busy:  # (only this thread sets it; a worker may be clearing it: look again under the lock)
            with link._lock:
                if link._busy:  # a worker serves this session: behind what it has
                    link._inbox.append(item)
                    return
        try:
            keep = self.handler.inline(link.state, item)
        except Exception:
            log.exception("%s: serving %s failed", self.name, link.peer)
            keep = False
        if keep is None:  # this one and the next ones go to a worker, in order
            queue_turn = self._lanes.get(self._lane_of(link.state, item) if self._lane_of else "main",
                                         self._lanes["main"])
            with link._lock:
                link._inbox.append(item)
                link._busy = True
            queue_turn(link)
        elif not keep:
            link._stop_serving = True
            self._request_close(link, "session ended by the server", True)

    def _done(self, link: ReactorLink, tag: int, ok: bool) -> None:
        on_done = link._callbacks.pop(tag, None)
        with link._lock:
            link._outstanding -= 1
        if on_done is not None:
            try:
                on_done(ok)
            except Exception:
                log.exception("%s: a send's callback failed (%s)", self.name, link.peer)

    def _apply_pending(self, now: float) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for link in pending:
            self._apply(link, now)

    def _apply(self, link: ReactorLink, now: float) -> None:
        """Hand the link's queued sends and close request to its state machine, write, process."""
        with link._lock:
            outgoing, link._outgoing = link._outgoing, []
            close = link._close_request
        state = link._link
        out = b""
        for message, on_done in outgoing:
            tag = next(self._tags)
            link._callbacks[tag] = on_done
            if state.closed:
                self._done(link, tag, False)
                continue
            try:
                out += state.send(message, now, tag)
            except Exception as exc:  # LocalProtocolError, OutboundFull: this message only
                log.error("%s: cannot send %s to %s: %s", self.name, message.OPCODE, link.peer, exc)
                self._done(link, tag, False)
        if close is not None and not state.closed:
            reason, send_eot = close
            out += state.close(reason, send_eot)
            link._reason = reason
        if out and link._cause is None:
            self._write(link, out)
        self._process(link, now)

    def _arm(self, link: ReactorLink) -> None:
        deadline = link._link.next_deadline()
        if deadline is not None and (link._timer_at is None or deadline < link._timer_at):
            link._timer_at = deadline
            heapq.heappush(self._timers, (deadline, next(self._seq), link))

    def _run_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, link = heapq.heappop(timers)
            if deadline != link._timer_at or link._cause is not None:
                continue  # moved earlier (another entry), or over
            link._timer_at = None
            out = link._link.on_timer(now)
            if out:
                self._write(link, out)
            self._process(link, now)
            self._arm(link)

    def _ended(self, link: ReactorLink, event: Ended) -> None:
        """The session is over: close the socket, fail what was not delivered, tell the handler."""
        cause = event.cause
        keys = self._selector.get_map()  # (None once the selector is closed)
        key = keys.get(link._fd) if keys is not None else None
        if key is not None and key.data is link:
            self._selector.unregister(link._fd)
        tls = link._tls
        if tls is not None and not tls.handshaken and isinstance(cause, LinkTimeout):
            cause = LinkTimeout(f"{link.peer} did not {'complete' if tls.heard else 'start'} the TLS handshake "
                                f"within {self.config.handshake_timeout:g} s")
        if tls is not None and tls.handshaken:
            try:
                link._sock.send(tls.close())  # close_notify, best effort (never waits)
            except (OSError, ssl.SSLError, ValueError):
                pass
        try:
            link._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        link._sock.close()
        self._links.discard(link)
        reason = link._reason or str(cause)
        with link._lock:
            link._cause = cause
            link._reason = reason
            outgoing, link._outgoing = link._outgoing, []
            tell = link._opened and not link._busy and not link._finished
            if tell:
                link._finished = True
        for tag in list(link._callbacks):
            self._done(link, tag, False)
        for _message, on_done in outgoing:
            with link._lock:
                link._outstanding -= 1
            if on_done is not None:
                on_done(False)
        if not link._opened:
            if isinstance(event, Refused):
                log.warning("%s: refused session from %s: %s", self.name, link.peer, self.busy_reason)
            elif isinstance(cause, NeverOpened):  # a port probe, a health check
                log.debug("%s: %s", self.name, cause)
            elif not isinstance(cause, LinkClosed):
                log.warning("%s: %s", self.name, cause)
            return
        with self._lock:
            self._sessions.pop(link, None)
        if tell:
            self._tell_closed(link)

    def _tell_closed(self, link: ReactorLink) -> None:
        try:
            self.handler.closed(link.state, link._reason)
        except Exception:
            log.exception("%s: closing the session with %s failed", self.name, link.peer)

    # -- workers --------------------------------------------------------------------------

    def _serve_batch(self, links: list[ReactorLink]) -> None:
        """The register lane's turn: the first message of every session queued there, served
        together by ``handler.batch`` when the handler has one (a storm of registrations is one
        lock, one round of effects and one log line per batch, not per CP); then each session's
        next messages, in order, as ``_serve`` does."""
        batch = getattr(self.handler, "batch", None)
        items: list[tuple[ReactorLink, Any]] = []
        for link in links:
            with link._lock:
                item = link._inbox.popleft() if link._inbox and not link._stop_serving else None
            if item is not None:
                items.append((link, item))
        answers: list[Any] | None = None
        if batch is not None and len(items) > 1:
            try:
                answers = batch([(link.state, item) for link, item in items])
            except Exception:
                log.exception("%s: serving a batch of %d sessions failed", self.name, len(items))
                answers = [False] * len(items)
        for index, (link, item) in enumerate(items):
            answer = answers[index] if answers is not None else self._message(link, item)
            if not self._answer(link, answer):
                link._stop_serving = True
        for link in links:
            self._serve(link)  # what else it has queued, and the end of its turn

    def _serve(self, link: ReactorLink) -> None:
        """A worker's turn with one session: its queued messages, in order, one at a time."""
        while True:
            with link._lock:
                if not link._inbox or link._stop_serving:
                    link._inbox.clear()
                    link._busy = False
                    tell = link._cause is not None and not link._finished
                    if tell:
                        link._finished = True
                    break
                item = link._inbox.popleft()
            if not self._answer(link, self._message(link, item)):
                link._stop_serving = True
        if tell:
            self._tell_closed(link)

    def _message(self, link: ReactorLink, item: Any) -> Any:
        """``handler.message`` for one message; False (the session ends) when it fails."""
        try:
            return self.handler.message(link.state, item)
        except LinkError as exc:
            log.info("%s: session with %s: %s", self.name, link.peer, exc)
        except Exception:
            log.exception("%s: serving %s failed", self.name, link.peer)
        return False

    def _answer(self, link: ReactorLink, answer: Any) -> bool:
        """Send a handler's answer; False when the session ends."""
        if answer is True or answer is None:
            return True
        if answer is False:
            self._request_close(link, "session ended by the server", True)
            return False
        if isinstance(answer, Reply):
            messages, keep = answer.messages, answer.keep_open
        elif isinstance(answer, Message):
            messages, keep = (answer,), True
        else:
            messages, keep = tuple(answer), True
        for i, message in enumerate(messages):
            last = i == len(messages) - 1
            closing = last and not keep
            on_done = (lambda _ok: self._request_close(link, "session ended by the server", True)) if closing else None
            if not self.send(link, message, on_done) and closing:
                self._request_close(link, "session ended by the server", True)
        if not messages and not keep:
            self._request_close(link, "session ended by the server", True)
        return keep
