"""A charging station's MCSP/1.0 client: START and END over one TCP connection to Central.

``StationClient(host, port)`` keeps one connection open and sends its requests over it one
at a time, each waiting for its answer (docs/mcsp.md, "Stations"). The answers are read by
the codec's ``AnswerReceiver``; nothing here parses bytes by hand::

    with StationClient("127.0.0.1", 5050, timeout=20.0) as client:
        answer = client.start("CP001", "16AC936B1692E73A")     # StartOk or ErrorAnswer
        if isinstance(answer, StartOk):
            answer = client.end("CP001", answer.session_id, "16AC936B1692E73A")  # EndOk or ErrorAnswer

Failures:

* a malformed station, session id or key raises the codec's ``LocalProtocolError``
  before anything is sent;
* ``CentralUnreachable`` (a ``ConnectionError``) when Central cannot be connected to
  within ``connect_timeout``, closes the connection without answering, answers something
  that is not an MCSP answer, or does not answer within ``timeout``. The connection is
  then dropped, so a late answer can never be taken for the answer to the next request.

**When a request is sent twice.** START and END change Central's state (a session opens,
a session closes), so a request whose fate is unknown is never sent again by this client.
There is one exception: a connection kept open from an earlier exchange may have been
closed by Central meanwhile (its idle timeout). Before reusing a connection the client
looks whether Central closed it, and opens a new one if so. If the close races the
request (the send fails, or the connection ends or is reset before *any byte* of the
answer came), the request is sent once more on a fresh connection: Central answers every
request it reads before it closes a connection, so a connection it closed without a byte
of answer is one it had given up as idle. On a fresh connection, or after any byte of an
answer, there is no second attempt: the caller gets ``CentralUnreachable``.

Every socket operation has a timeout. One exchange at a time: calls from several threads
wait for each other. ``close()`` (also from another thread) ends the client for good: an
exchange in flight fails with ``CentralUnreachable`` and later calls too.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from ev_common.mcsp import (
    CLOSED,
    NEED_DATA,
    AnswerReceiver,
    EndOk,
    EndRequest,
    ErrorAnswer,
    ErrorCode,
    ReceiveError,
    StartOk,
    StartRequest,
    masked,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 20.0  # s for Central's answer: START takes up to ~4 s, END up to ~10 s
DEFAULT_CONNECT_TIMEOUT = 5.0
RECV_SIZE = 4096
CLOSING_CODES = (ErrorCode.BAD_REQUEST, ErrorCode.VERSION_NOT_SUPPORTED)  # Central closes after these


class CentralUnreachable(ConnectionError):
    """Central's MCSP port could not be reached, or gave no valid answer in time."""


class _ClosedBeforeAnswer(Exception):
    """The connection ended (or could not be written) before any byte of the answer came."""


class StationClient:
    """A blocking MCSP client over one TCP connection, reused and reopened (see the module doc)."""

    def __init__(self, host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> None:
        if not timeout > 0 or not connect_timeout > 0:
            raise ValueError("timeout and connect_timeout must be above 0")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.last_answer_bytes = b""  # the last answer exactly as received (empty lines before it left out)
        self._lock = threading.Lock()  # one exchange at a time
        self._sock: socket.socket | None = None
        self._receiver: AnswerReceiver | None = None
        self._closed = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """Whether a connection is open now (it may still turn out closed by Central)."""
        return self._sock is not None

    # -- the two requests -----------------------------------------------------------------------

    def start(self, station: str, key: str) -> StartOk | ErrorAnswer:
        """``START``: open a session for tag ``key`` at ``station``; Central's answer."""
        request = StartRequest(station, key)  # LocalProtocolError before anything is sent
        answer = self._exchange(request)
        if not isinstance(answer, (StartOk, ErrorAnswer)):
            self._drop()
            raise CentralUnreachable(f"Central answered START with the answer to an END: {answer}")
        return answer

    def end(self, station: str, session_id: str, key: str) -> EndOk | ErrorAnswer:
        """``END``: close ``session_id`` that tag ``key`` opened at ``station``; Central's answer."""
        request = EndRequest(station, session_id, key)
        answer = self._exchange(request)
        if not isinstance(answer, (EndOk, ErrorAnswer)):
            self._drop()
            raise CentralUnreachable(f"Central answered END with the answer to a START: {answer}")
        return answer

    def close(self) -> None:
        """Close the connection and the client, for good. Safe from any thread, idempotent."""
        self._closed = True
        self._drop()

    def __enter__(self) -> "StationClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- one exchange ---------------------------------------------------------------------------

    def _exchange(self, request: StartRequest | EndRequest):
        data = request.to_bytes()
        what = f"{request.ACTION} for station {request.name}, tag {masked(request.key)}"
        with self._lock:
            for attempt in (1, 2):
                sock, receiver, fresh = self._connection()
                try:
                    answer = self._send_and_read(sock, receiver, data)
                except _ClosedBeforeAnswer as exc:
                    self._drop(sock)
                    if self._closed:
                        raise CentralUnreachable("the station client was closed") from None
                    if fresh or attempt == 2:
                        raise CentralUnreachable(f"Central at {self.address} closed the connection without "
                                                 f"answering {request.ACTION} ({exc})") from None
                    log.info("the connection to Central at %s was closed before an answer to %s (%s); "
                             "sending it once more on a new connection", self.address, what, exc)
                    continue
                except CentralUnreachable:
                    self._drop(sock)
                    raise
                log.info("%s: %s", what, _describe(answer))
                return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self) -> tuple[socket.socket, AnswerReceiver, bool]:
        """The open connection if Central has not closed it, else a new one; (socket, receiver, fresh)."""
        if self._closed:
            raise CentralUnreachable("the station client was closed")
        sock, receiver = self._sock, self._receiver
        if sock is not None and receiver is not None:
            why = _closed_by_peer(sock)
            if why is None:
                return sock, receiver, False
            log.info("the connection to Central at %s %s; opening a new one", self.address, why)
            self._drop(sock)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except socket.timeout:
            raise CentralUnreachable(f"cannot connect to Central's MCSP port at {self.address}: "
                                     f"no answer within {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise CentralUnreachable(f"cannot connect to Central's MCSP port at {self.address}: "
                                     f"{exc.strerror or exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not every socket type has it
            pass
        receiver = AnswerReceiver()
        self._sock, self._receiver = sock, receiver
        if self._closed:  # close() ran while connecting
            self._drop(sock)
            raise CentralUnreachable("the station client was closed")
        log.info("connected to Central's MCSP port at %s", self.address)
        return sock, receiver, True

    def _send_and_read(self, sock: socket.socket, receiver: AnswerReceiver, data: bytes):
        """Send ``data`` and read one answer within ``timeout``."""
        deadline = time.monotonic() + self.timeout
        try:
            sock.settimeout(self.timeout)
            sock.sendall(data)
        except socket.timeout:
            raise CentralUnreachable(f"Central at {self.address} did not take the request within "
                                     f"{self.timeout:g} s") from None
        except OSError as exc:  # reset, broken pipe: the connection was closed before it
            raise _ClosedBeforeAnswer(f"sending failed: {exc.strerror or exc}") from None
        received = bytearray()  # this answer's bytes, to give it back exactly as it came
        ended = False
        while True:
            event = receiver.next_event()
            if isinstance(event, ReceiveError):
                raise CentralUnreachable(f"Central at {self.address} answered something that is not an "
                                         f"MCSP answer: {event.message}")
            if event is CLOSED:
                if received:
                    raise CentralUnreachable(f"Central at {self.address} closed the connection without answering")
                raise _ClosedBeforeAnswer("the connection ended")
            if event is not NEED_DATA:
                self._answered(sock, receiver, event, received, ended)
                return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise CentralUnreachable(f"Central at {self.address} did not answer within {self.timeout:g} s")
            try:
                sock.settimeout(left)
                chunk = sock.recv(RECV_SIZE)
            except socket.timeout:
                raise CentralUnreachable(
                    f"Central at {self.address} did not answer within {self.timeout:g} s") from None
            except OSError as exc:
                if received:
                    raise CentralUnreachable(f"the connection to Central at {self.address} broke during "
                                             f"the answer: {exc.strerror or exc}") from None
                raise _ClosedBeforeAnswer(f"the connection was reset: {exc.strerror or exc}") from None
            if self._closed:
                raise CentralUnreachable("the station client was closed")
            received += chunk
            ended = not chunk
            receiver.feed(chunk)  # b"": the stream ended

    def _answered(self, sock: socket.socket, receiver: AnswerReceiver, answer, received: bytearray,
                  ended: bool) -> None:
        """Keep the answer's bytes; drop the connection if Central closes it or sent more than asked."""
        used = len(received) - receiver.pending
        self.last_answer_bytes = bytes(received[:used]).lstrip(b"\r\n")
        if isinstance(answer, ErrorAnswer) and answer.code in CLOSING_CODES:
            log.info("Central refused a request as malformed (%d %s); it closes the connection",
                     answer.code, answer.message)
            self._drop(sock)
        elif receiver.pending:
            log.warning("Central at %s sent %d bytes more than its answer; dropping the connection",
                        self.address, receiver.pending)
            self._drop(sock)
        elif ended:
            self._drop(sock)  # the answer ended with the stream

    def _drop(self, sock: socket.socket | None = None) -> None:
        """Close ``sock`` (the current connection if None); the next exchange opens a new one."""
        current = self._sock
        if sock is None:
            sock = current
        if sock is current:
            self._sock = self._receiver = None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


def _closed_by_peer(sock: socket.socket) -> str | None:
    """Why a kept connection can no longer be used (closed by Central, bytes nobody asked
    for, an error), or None if it looks open. Never blocks."""
    try:
        sock.settimeout(0.0)  # non-blocking: every exchange sets its own timeout again
        data = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return None  # nothing to read: open
    except OSError as exc:
        return f"is broken ({exc.strerror or exc})"
    return "was closed by Central" if not data else "holds bytes Central sent unasked"


def _describe(answer) -> str:
    if isinstance(answer, StartOk):
        return f"OK, session {answer.session_id}"
    if isinstance(answer, EndOk):
        if answer.energy_kwh is None:
            return "OK (no figures)"
        return f"OK, {answer.energy_kwh} kWh, {answer.amount_eur} EUR"
    return f"ERROR {answer.code} {answer.message}"
