"""A link server for thousands of sessions: one selector thread and a few workers.

``LinkServer`` gives every session a thread of its own, which is simple and right for a
few sessions (an Engine serves one Monitor). Central holds thousands of Monitors, and
thousands of Python threads waking every second fight over the interpreter lock: the
threads that matter (Kafka, the database writer) wait behind them. ``LinkReactor``
keeps every idle session in one selector instead:

* the reactor thread accepts connections, answers the ENQ handshake (ACK, or NACK past
  ``max_sessions``) and watches every idle session's socket;
* when a session's socket is readable, the reactor reads what arrived
  (``Link.take_ready``: frames ACKed, messages decoded) and offers each message to
  ``handler.inline``, which serves the quick ones that never wait (signs of life) on the
  reactor thread. From the first one it declines, the session leaves the selector and a
  worker hands the rest to ``handler.message``; then the session comes back. A session
  is served by one thread at a time, so its messages are handled in order. The optional
  ``handler.lane`` puts some messages on a lane of one thread (registrations), so that a
  storm of them never takes the interpreter from the reactor;
* ``handler.opened(link)`` runs when a session opens, ``handler.closed(state, cause)``
  exactly once when it ends (closed by the peer, broken, closed by anyone with
  ``Link.close``, or at ``stop``), after the messages read before the end were served.

A thread that sends on a link (``Link.send`` waits for the ACK) reads the socket itself
while it waits, exactly as with ``LinkServer``; messages it read meanwhile are served
after it calls ``kick(link)``. ``send_nowait`` writes without waiting: the reactor reads
the ACK and retransmits a late frame.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .link import Link, LinkConfig, LinkError
from .protocol import ACK, ENQ, MESSAGES, NACK, Registry

log = logging.getLogger(__name__)

SCAN_INTERVAL = 0.2  # how often late handshakes, late ACKs and links closed elsewhere are looked for


class SessionHandler(Protocol):
    def opened(self, link: Link) -> Any: ...

    def inline(self, state: Any, message: Any) -> bool | None:
        """Serve a message on the reactor thread if that is quick and never blocks (True, or
        False to end the session); None sends it, and the session's next ones, to a worker."""

    def message(self, state: Any, message: Any) -> bool:
        """One message (or a ``MessageError``) of a session, on a worker; False ends the session."""

    def lane(self, state: Any, message: Any) -> str:
        """Optional: which workers serve this message, "main" (the default) or "register" (one
        thread, so that a storm of registrations never takes the interpreter from the reactor)."""

    def closed(self, state: Any, cause: str) -> None: ...


class _Session:
    __slots__ = ("link", "fd", "state", "busy", "parked", "ended")

    def __init__(self, link: Link, state: Any) -> None:
        self.link = link
        self.fd = link.socket.fileno()  # kept: a closed socket no longer tells its number
        self.state = state
        self.busy = False  # a worker serves it (out of the selector)
        self.parked = False  # out of the selector while another thread reads its socket
        self.ended = False


class LinkReactor:
    def __init__(self, host: str, port: int, handler: SessionHandler, *, name: str = "link",
                 max_sessions: int = 10_000, busy_reason: str | None = None, config: LinkConfig = LinkConfig(),
                 registry: Registry = MESSAGES, workers: int = 8, backlog: int = 4096) -> None:
        self.handler = handler
        self.name = name
        self.max_sessions = max_sessions
        self.busy_reason = busy_reason or f"{max_sessions} sessions open, the most allowed"
        self.config = config
        self.registry = registry
        self._listener = socket.create_server((host, port), backlog=backlog, reuse_port=False)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()
        self._sessions: dict[Link, _Session] = {}
        self._handshakes: dict[socket.socket, float] = {}  # accepted, no ENQ yet -> deadline
        self._rearm: list[_Session] = []
        self._unacked: set[Link] = set()  # links with a frame of send_nowait not yet ACKed (reactor thread)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-worker")
        self._lanes = {"main": self._pool,
                       "register": ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-register")}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

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
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.link.close(reason)
        for pool in self._lanes.values():
            pool.shutdown(wait=True, cancel_futures=False)
        for session in sessions:
            self._end(session, reason)
        for sock in list(self._handshakes):
            sock.close()
        self._listener.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def send_nowait(self, link: Link, message) -> bool:
        """Write ``message`` without waiting for its ACK (the reactor reads the ACK and
        retransmits when it is late). False when it must be sent with ``Link.send`` instead
        (another frame is in flight)."""
        if not link.send_nowait(message):
            return False
        with self._lock:
            self._unacked.add(link)
        return True

    def kick(self, link: Link) -> None:
        """Serve what a sending thread read from this link meanwhile (call after ``Link.send``)."""
        with self._lock:
            session = self._sessions.get(link)
            if session is None or session.busy or session.ended:
                return
            self._rearm.append(session)
        self._wake()

    # -- reactor thread -------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the pipe is full: the reactor is awake anyway

    def _run(self) -> None:
        next_scan = time.monotonic() + SCAN_INTERVAL
        while not self._stopping.is_set():
            try:
                events = self._selector.select(max(0.0, next_scan - time.monotonic()))
            except OSError as exc:
                log.error("%s: selector failed (%s); going on", self.name, exc)
                time.sleep(0.05)
                events = []
            for key, _mask in events:
                what = key.data
                if what == "accept":
                    self._accept()
                elif what == "wake":
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass
                elif what == "handshake":
                    self._handshake(key.fileobj)
                else:
                    self._dispatch(what)
            self._apply_rearms()
            if time.monotonic() >= next_scan:
                self._scan()
                next_scan = time.monotonic() + SCAN_INTERVAL

    def _accept(self) -> None:
        for _ in range(256):  # a burst at a time; the rest on the next round
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # for example out of file descriptors: say so, keep serving
                log.error("%s: cannot accept a connection: %s", self.name, exc)
                return
            sock.setblocking(False)
            self._register(sock, "handshake")
            self._handshakes[sock] = time.monotonic() + self.config.handshake_timeout

    def _register(self, sock: socket.socket, data: Any) -> None:
        stale = self._selector.get_map().get(sock.fileno())
        if stale is not None:  # a link closed elsewhere left its number behind
            self._forget_key(stale)
        self._selector.register(sock, selectors.EVENT_READ, data)

    def _forget_key(self, key: selectors.SelectorKey) -> None:
        self._selector.unregister(key.fd)
        if isinstance(key.data, _Session):
            self._finish(key.data)
        else:
            self._handshakes.pop(key.fileobj, None)

    def _handshake(self, sock: socket.socket) -> None:
        peer = _peer(sock)
        try:
            first = sock.recv(1)
        except (BlockingIOError, InterruptedError):
            return  # nothing after all: still waiting
        except OSError as exc:
            log.warning("%s: session with %s failed to open: %s", self.name, peer, exc)
            first = None
        self._selector.unregister(sock)
        self._handshakes.pop(sock, None)
        if first is None:
            sock.close()
            return
        if first != bytes((ENQ,)):
            what = "closed the connection" if not first else f"sent {first!r}"
            log.warning("%s: %s %s instead of ENQ", self.name, peer, what)
            sock.close()
            return
        with self._lock:
            admitted = len(self._sessions) < self.max_sessions
        try:
            sock.send(bytes((ACK if admitted else NACK,)))  # one byte into an empty buffer: never blocks
        except OSError as exc:
            log.warning("%s: session with %s failed to open: %s", self.name, peer, exc)
            sock.close()
            return
        if not admitted:
            log.warning("%s: refused session from %s: %s", self.name, peer, self.busy_reason)
            sock.close()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = Link(sock, peer, self.config, self.registry, nonblocking=True)
        try:
            state = self.handler.opened(link)
        except Exception:
            log.exception("%s: opening the session with %s failed", self.name, peer)
            link.close("internal error")
            return
        session = _Session(link, state)
        with self._lock:
            self._sessions[link] = session
        self._register(sock, session)

    def _dispatch(self, session: _Session) -> None:
        """The session's socket is readable (or messages wait): read, ACK, serve what is quick."""
        link = session.link
        if link.pumping:  # a thread waiting for its ACK reads this socket: it kicks us when done
            self._unregister(session)
            session.parked = True
            return
        try:
            items = link.take_ready()
        except LinkError as exc:
            self._drop(session, str(exc))
            return
        if link.unacked:
            link.check_unacked()
        for i, item in enumerate(items):
            try:
                keep = self.handler.inline(session.state, item)
            except LinkError as exc:
                self._drop(session, str(exc))
                return
            except Exception:
                log.exception("%s: serving %s failed", self.name, link.peer)
                keep = False
            if keep is None:  # this one and the rest go to a worker, in order
                self._unregister(session)
                with self._lock:
                    session.busy = True
                lane = getattr(self.handler, "lane", None)
                pool = self._lanes.get(lane(session.state, item) if lane else "main", self._pool)
                pool.submit(self._serve, session, items[i:])
                return
            if not keep:
                link.close("session ended by the server")
                self._drop(session, "session ended by the server")
                return

    def _drop(self, session: _Session, cause: str) -> None:
        self._unregister(session)
        self._end(session, cause)

    def _unregister(self, session: _Session) -> None:
        key = self._selector.get_map().get(session.fd)
        if key is not None and key.data is session:
            self._selector.unregister(session.fd)

    def _apply_rearms(self) -> None:
        with self._lock:
            rearm, self._rearm = self._rearm, []
        seen: set[int] = set()
        for session in rearm:
            if session.ended or session.busy or id(session) in seen:  # a worker serves it: it comes back
                continue
            seen.add(id(session))
            session.parked = False
            if not session.link.closed and self._selector.get_map().get(session.fd) is None:
                try:
                    self._register(session.link.socket, session)
                except (ValueError, OSError):  # closed by another thread just now
                    pass
            if session.link.closed:
                self._unregister(session)
                if session.link.has_inbound():  # read by a sending thread before the end: serve it
                    self._dispatch(session)
                if not session.busy and not session.ended:
                    self._finish(session)
                continue
            if session.link.has_inbound():  # read by another thread meanwhile
                self._dispatch(session)

    def _scan(self) -> None:
        with self._lock:
            unacked = list(self._unacked)
        for link in unacked:  # ACKed by now, or retransmitted, or given up
            link.check_unacked()
            if not link.unacked or link.closed:
                with self._lock:
                    self._unacked.discard(link)
        now = time.monotonic()
        for sock, deadline in list(self._handshakes.items()):
            if now >= deadline:
                log.warning("%s: %s sent no ENQ within %g s", self.name, _peer(sock), self.config.handshake_timeout)
                self._selector.unregister(sock)
                self._handshakes.pop(sock, None)
                sock.close()
        with self._lock:  # parked sessions nobody kicked, and sessions closed by another thread
            self._rearm.extend(s for s in self._sessions.values()  # (their messages served first)
                               if not s.busy and ((s.parked and not s.link.pumping) or s.link.closed))

    def _finish(self, session: _Session) -> None:
        cause = str(session.link.close_cause() or "session over")
        self._end(session, cause)

    # -- workers --------------------------------------------------------------------------

    def _serve(self, session: _Session, items: list) -> None:
        cause = None
        try:
            for item in items:
                if not self.handler.message(session.state, item):
                    cause = "session ended by the server"
                    break
        except LinkError as exc:
            cause = str(exc)
        except Exception:
            log.exception("%s: serving %s failed", self.name, session.link.peer)
            cause = "internal error"
        if cause is not None:
            session.link.close(cause)
            self._end(session, cause)
            return
        with self._lock:
            session.busy = False
            self._rearm.append(session)
        self._wake()

    def _end(self, session: _Session, cause: str) -> None:
        with self._lock:
            if session.ended:
                return
            session.ended = True
            self._sessions.pop(session.link, None)
        session.link.close("session over")
        try:
            self.handler.closed(session.state, cause)
        except Exception:
            log.exception("%s: closing the session with %s failed", self.name, session.link.peer)


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "a closed connection"
