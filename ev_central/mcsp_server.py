"""Central's MCSP/1.0 port: charging stations START and END supplies with an RFID tag.

One thread per station connection (stations are few and each waits on its CP for
seconds; the Monitors' thousands of sessions are served elsewhere, by a selector).
A connection carries any number of exchanges, one at a time: each request gets exactly
one answer, in order. The codec (``ev_common.mcsp``) reads the bytes; the decisions
are ``SupplyService.start_by_tag`` and ``end_by_tag``; this module only moves bytes
and turns outcomes into answers (docs/mcsp.md, "At Central").

Bounds: at most ``max_connections`` at once (one more is answered 503 and closed); a
connection idle for ``idle_timeout`` is closed; a request must be complete within
``request_timeout`` of its first byte (else 400 and closed); lines, headers and
messages are bounded by the codec; every send has a timeout.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from typing import Callable

from ev_common.mcsp import (
    CLOSED,
    EndOk,
    EndRequest,
    ErrorAnswer,
    ErrorCode,
    ReceiveError,
    RequestReceiver,
    StartOk,
    StartRequest,
)
from ev_common.mcsp.errors import MESSAGE_MAX

from . import audit as audited
from .audit import NO_AUDIT, Recorder, source_host
from .store.base import SessionRow
from .supply_service import Refusal, SupplyService, Why

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
IDLE_TIMEOUT = 60.0  # s without a request: the connection is closed
REQUEST_TIMEOUT = 10.0  # s from a request's first byte to its last
SEND_TIMEOUT = 5.0
RECV_SIZE = 4096
POLL = 0.5  # s: how often a connection's thread looks at the clock and at stop()

CODES = {
    Why.NOT_REGISTERED: ErrorCode.KEY_NOT_REGISTERED,
    Why.DISABLED: ErrorCode.KEY_DISABLED,
    Why.NOT_YOURS: ErrorCode.KEY_DISABLED,
    Why.UNKNOWN: ErrorCode.NOT_FOUND,
    Why.NOT_AVAILABLE: ErrorCode.CONFLICT,
    Why.EXPIRED: ErrorCode.CONFLICT,
    Why.UNREACHABLE: ErrorCode.CP_UNREACHABLE,
    Why.CANNOT_CHECK: ErrorCode.CP_UNREACHABLE,
}
"""The code each refusal is answered with (docs/mcsp.md, "Error codes")."""


def answer_for(outcome: SessionRow | Refusal, request: StartRequest | EndRequest) -> StartOk | EndOk | ErrorAnswer:
    if isinstance(outcome, Refusal):
        return ErrorAnswer(int(CODES[outcome.why]), message_text(outcome.reason))
    if isinstance(request, StartRequest):
        return StartOk(outcome.session_id)
    return EndOk.rounded(outcome.kwh, outcome.amount_eur)


def message_text(reason: str) -> str:
    """A refusal's reason as an ERROR's ``Message``: printable ASCII, 1-200 characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in reason).strip(" ")
    if len(text) > MESSAGE_MAX:
        text = text[: MESSAGE_MAX - 3].rstrip(" ") + "..."
    return text or "Refused"


class MCSPServer:
    """Serves MCSP stations on ``host:port`` (port 0: a free one, see ``address``)."""

    def __init__(self, supplies: SupplyService, host: str, port: int, *, max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT, request_timeout: float = REQUEST_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic, audit: Recorder = NO_AUDIT) -> None:
        """``audit``: every ERROR answered is audited (``mcsp.error``, ev_central/audit.py)."""
        self.supplies = supplies
        self.audit = audit
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self._clock = clock
        self._listener = socket.create_server((host, port), reuse_port=False)
        self._listener.settimeout(POLL)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._acceptor = threading.Thread(target=self._accept, name="mcsp-accept", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def start(self) -> "MCSPServer":
        self._acceptor.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, close every connection (an exchange in course gets no answer: the
        station sends it again), and wait a little for the threads."""
        self._stop.set()
        self._listener.close()
        self._acceptor.join(timeout)
        with self._lock:
            connections = list(self._connections.items())
        for conn, _ in connections:
            _shut(conn)
        for _, thread in connections:
            thread.join(timeout)

    # -- internals ----------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if not self._stop.is_set():
                    log.error("MCSP port stopped accepting: %s", exc)
                return
            where = _peer(peer)
            with self._lock:
                full = len(self._connections) >= self.max_connections
                if not full:
                    thread = threading.Thread(target=self._serve, args=(conn, where), name=f"mcsp-{where}",
                                              daemon=True)
                    self._connections[conn] = thread
            if full:
                log.warning("MCSP station %s refused: %d connections already open", where, self.max_connections)
                answer = ErrorAnswer(int(ErrorCode.CP_UNREACHABLE),
                                     "Central serves too many stations now; try again later")
                self._audit(None, "connection", answer, where)
                self._send(conn, answer, where)
                _shut(conn)
                continue
            thread.start()

    def _serve(self, conn: socket.socket, where: str) -> None:
        log.info("MCSP station connected from %s", where)
        receiver = RequestReceiver()
        why = "closed by the station"
        try:
            idle_since = self._clock()
            request_began: float | None = None
            eof = False
            while not self._stop.is_set():
                event = receiver.next_event()
                if isinstance(event, (StartRequest, EndRequest)):
                    if not self._send(conn, self._handle(event, where), where):
                        why = "the answer could not be sent"
                        return
                    idle_since, request_began = self._clock(), None
                    continue
                if isinstance(event, ReceiveError):
                    log.warning("MCSP from %s: %d %s (answered, connection closed)", where, event.code, event.message)
                    self._audit(None, "malformed request", event.answer(), where)
                    self._send(conn, event.answer(), where)
                    why = f"malformed request ({event.code})"
                    return
                if event is CLOSED or eof:  # (the codec ends a stream with CLOSED or an error)
                    return
                now = self._clock()
                if receiver.in_message or receiver.pending:
                    request_began = request_began if request_began is not None else now
                    if now - request_began >= self.request_timeout:
                        message = f"request not complete within {self.request_timeout:g} s"
                        log.warning("MCSP from %s: 400 %s (answered, connection closed)", where, message)
                        answer = ErrorAnswer(int(ErrorCode.BAD_REQUEST), message)
                        self._audit(None, "slow request", answer, where)
                        self._send(conn, answer, where)
                        why = "request too slow"
                        return
                    deadline = request_began + self.request_timeout
                elif now - idle_since >= self.idle_timeout:
                    why = f"idle for {self.idle_timeout:g} s"
                    return
                else:
                    deadline = idle_since + self.idle_timeout
                conn.settimeout(max(0.01, min(POLL, deadline - now)))
                try:
                    data = conn.recv(RECV_SIZE)
                except socket.timeout:
                    continue
                receiver.feed(data)  # b"": the station closed its side
                eof = not data
        except OSError as exc:
            why = str(exc) or type(exc).__name__
        except Exception:
            log.exception("MCSP connection from %s failed", where)
            why = "internal error"
        finally:
            with self._lock:
                self._connections.pop(conn, None)
            _shut(conn)
            log.info("MCSP station %s disconnected: %s", where, why)

    def _handle(self, request: StartRequest | EndRequest, where: str) -> StartOk | EndOk | ErrorAnswer:
        try:
            if isinstance(request, StartRequest):
                outcome = self.supplies.start_by_tag(request.name, request.key, source_ip=source_host(where))
            else:
                outcome = self.supplies.end_by_tag(request.name, request.session_id, request.key)
            answer = answer_for(outcome, request)
        except Exception:
            log.exception("MCSP %s from %s could not be served", type(request).__name__, where)
            answer = ErrorAnswer(int(ErrorCode.CP_UNREACHABLE), "Central could not serve the request")
        if isinstance(answer, ErrorAnswer):
            action = "START" if isinstance(request, StartRequest) else "END"
            log.warning("MCSP %s at %s from %s: ERROR %d %s", action, request.name, where, answer.code, answer.message)
            self._audit(request.name, action, answer, where)
        return answer

    def _audit(self, station: str | None, what: str, answer: ErrorAnswer, where: str) -> None:
        """``mcsp.error``: the station (None: not named yet), what was answered, from where. A
        message never shows a key: a malformed one is not quoted."""
        message = _KEY_QUOTED.sub(r"\1", answer.message)
        self.audit.record(audited.MCSP_ERROR, station or audited.MCSP_STATION,
                          f"station {station or '-'}, {what}: ERROR {answer.code} {message}, from {where}",
                          audited.REFUSED, source_host(where))

    def _send(self, conn: socket.socket, answer: StartOk | EndOk | ErrorAnswer, where: str) -> bool:
        try:
            conn.settimeout(SEND_TIMEOUT)
            conn.sendall(answer.to_bytes())
            return True
        except OSError as exc:
            log.warning("MCSP answer to %s not sent: %s", where, exc)
            return False


_KEY_QUOTED = re.compile(r"(Key must be .*?), not .*", re.DOTALL)  # check_key's message quotes the bad value


def _peer(address) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _shut(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


__all__ = ["MCSPServer", "answer_for", "message_text", "CODES", "MAX_CONNECTIONS", "IDLE_TIMEOUT", "REQUEST_TIMEOUT"]
