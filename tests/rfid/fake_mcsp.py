"""A scripted MCSP server on a real loopback socket, read with the codec's ``RequestReceiver``:
a fake Central's MCSP port for station clients.

``FakeMCSP(respond)``: for each request read, ``respond(request, connection, index)`` says
what to do: bytes (or an answer message) to send, ``CLOSE`` (close without answering),
``SILENT`` (never answer), or ``Later(seconds, answer)`` (answer from another thread after
a delay, while the connection goes on being read). ``connection`` counts the connections
from 1; ``index`` counts every request from 1. Everything received is recorded; tests wait
on it with deadlines (``wait``).
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Callable

from ev_common.mcsp import CLOSED, NEED_DATA, ReceiveError, RequestReceiver
from tests.support.waiting import wait_on

HOST = "127.0.0.1"
CLOSE = object()
SILENT = object()


@dataclass(frozen=True)
class Later:
    seconds: float
    answer: object


class FakeMCSP:
    def __init__(self, respond: Callable[..., object]) -> None:
        self.respond = respond
        self.requests: list[tuple[int, object]] = []  # (connection, request)
        self.connections = 0
        self.closed_connections = 0
        self._open: list[socket.socket] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, name="fake-mcsp", daemon=True)]
        self._threads[0].start()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def __enter__(self) -> "FakeMCSP":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def close_connections(self) -> None:
        """Close every open connection from the server's side, as an idle timeout does."""
        with self._cond:
            open_now, self._open = self._open, []
        for conn in open_now:
            _close(conn)
        self.wait(lambda: self.closed_connections >= self.connections, 5, "the connections to close")

    def wait(self, predicate: Callable[[], object], timeout: float, what: str):
        return wait_on(self._cond, predicate, timeout, what,
                       lambda: f"requests {self.requests}, connections {self.connections}", interval=0.05)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._cond:
                self.connections += 1
                number = self.connections
                self._open.append(conn)
                self._cond.notify_all()
            thread = threading.Thread(target=self._serve, args=(conn, number), name=f"fake-mcsp-{number}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        conn.settimeout(0.05)
        receiver = RequestReceiver()
        try:
            while not self._stop.is_set():
                event = receiver.next_event()
                if event is CLOSED:
                    return
                if isinstance(event, ReceiveError):
                    conn.sendall(event.answer().to_bytes())
                    return
                if event is NEED_DATA:
                    try:
                        data = conn.recv(4096)
                    except socket.timeout:
                        continue
                    receiver.feed(data)
                    continue
                with self._cond:
                    self.requests.append((number, event))
                    index = len(self.requests)
                    self._cond.notify_all()
                action = self.respond(event, number, index)
                if action is CLOSE:
                    return
                if action is SILENT:
                    continue
                if isinstance(action, Later):
                    threading.Thread(target=self._later, args=(conn, action), daemon=True).start()
                    continue
                conn.sendall(action if isinstance(action, bytes) else action.to_bytes())
        except OSError:
            pass
        finally:
            with self._cond:
                if conn in self._open:
                    self._open.remove(conn)
                self.closed_connections += 1
                self._cond.notify_all()
            _close(conn)

    def _later(self, conn: socket.socket, later: Later) -> None:
        if self._stop.wait(later.seconds):
            return
        try:
            answer = later.answer
            conn.sendall(answer if isinstance(answer, bytes) else answer.to_bytes())
        except OSError:
            pass  # the client gave up and closed


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
