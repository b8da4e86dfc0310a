"""Central's API over real HTTP(S) against a real Central in this process (no Kafka): its Monitor
port with fake Monitors on real sockets, its database (SQLite; MySQL where a test asks), and the
API served by uvicorn on a thread on 127.0.0.1.

Fixtures
    start_api     start_api(**options) -> Running: a started Central and its API (options: secure,
                  tls, operator_token, weather_token, db_url, api_store, silence_timeout, and
                  ApiServer's own); everything is stopped after the test
    running       start_api() with both tokens, plain HTTP, SQLite
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from ev_central.api import ApiServer
from ev_central.app import Central
from ev_central.store import open_store
from ev_central.view import CentralView, MessageLog
from ev_common.credentials import FailureLimiter, hash_credential, new_credential
from ev_common.link import LinkConfig
from ev_common.tls import ensure_certificate, server_context
from tests.central.test_central_integration import FakeMonitor
from tests.support.clock import FakeClock
from tests.support.waiting import wait_until

HOST = "127.0.0.1"
OPERATOR_TOKEN = "operator-token-0123456789abcdef"
WEATHER_TOKEN = "weather-token-0123456789abcdef"
MASTER = bytes(range(32))
FAST = LinkConfig(connect_timeout=2.0, handshake_timeout=2.0, ack_timeout=1.0, max_retries=3, write_timeout=2.0)


@dataclass
class Running:
    central: Central
    view: CentralView
    api: ApiServer
    messages: MessageLog
    tmp_path: Path
    certificate: object = None  # the API's (tls=True): ev_common.tls.Certificate
    monitor_certificate: object = None  # Central's Monitor port's (secure=True)
    clock: FakeClock = field(default_factory=lambda: FakeClock(1000.0))
    clients: list = field(default_factory=list)
    monitors: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.api.url

    def http(self, token: str | None = None, timeout: float = 10.0) -> httpx.Client:
        """A client of the API (verifying its certificate over HTTPS), with ``token`` if given."""
        verify: ssl.SSLContext | bool = False
        if self.certificate is not None:
            verify = ssl.create_default_context(cafile=str(self.certificate.cert_path))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.url, verify=verify, headers=headers, timeout=timeout, trust_env=False)
        self.clients.append(client)
        return client

    def operator(self) -> httpx.Client:
        return self.http(OPERATOR_TOKEN)

    def monitor(self, cp_id: str, location: str = "C/Mayor, 45", price: str = "0.48") -> FakeMonitor:
        """A fake Monitor (open mode) that registered ``cp_id``."""
        monitor = FakeMonitor(self.central.address)
        self.monitors.append(monitor)
        monitor.register(cp_id, location, price)
        wait_until(lambda: self.central.network.get(cp_id) is not None, 3, f"{cp_id} registered")
        return monitor

    def state(self, cp_id: str) -> str | None:
        row = self.central.network.get(cp_id)
        return row.state if row else None

    def audit(self, action: str | None = None) -> list:
        assert self.central.audit.wait_idle(5), "the audit writer did not catch up"
        return [row.entry for row in self.central.store.list_audit(action=action)]

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for monitor in self.monitors:
            try:
                monitor.close()
            except Exception:
                pass
        self.api.stop()
        self.central.stop()
        logging.getLogger().removeHandler(self.messages)


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # as Central runs: its INFO lines are messages

    def start(*, secure: bool = False, tls: bool = False, operator_token: str | None = OPERATOR_TOKEN,
              weather_token: str | None = WEATHER_TOKEN, db_url: str | None = None, api_store=None,
              silence_timeout: float = 3600.0, **options) -> Running:
        url = db_url or f"sqlite:///{tmp_path / 'central.db'}"
        store = open_store(url)
        monitor_certificate = None
        extra = {}
        if secure:
            monitor_certificate = ensure_certificate(tmp_path / "central-tls", "ev_central", [HOST])
            extra = {"secure": True, "master_key": MASTER,
                     "tls": server_context(monitor_certificate.cert_path, monitor_certificate.key_path)}
        central = Central(store, HOST, 0, silence_timeout=silence_timeout, link_config=FAST, **extra).start()
        messages = MessageLog()
        logging.getLogger().addHandler(messages)
        view = CentralView(central, messages)
        certificate = ensure_certificate(tmp_path / "api-tls", "ev_central_api", [HOST, "localhost"]) if tls else None
        clock = FakeClock(1000.0)
        options.setdefault("limiter", FailureLimiter(max_failures=5, window=60, lockout=30, max_lockout=240,
                                                     clock=clock))
        if api_store is not None:
            options["store"] = api_store
        try:
            api = ApiServer(central, view, HOST, 0, operator_token=operator_token, weather_token=weather_token,
                            cert=certificate.cert_path if certificate else None,
                            key=certificate.key_path if certificate else None, watch_interval=0.1,
                            **options).start()
        except BaseException:
            central.stop()
            logging.getLogger().removeHandler(messages)
            raise
        running = Running(central, view, api, messages, tmp_path, certificate, monitor_certificate, clock)
        started.append(running)
        wait_until(lambda: api.api.registrations.checked_at is not None or api.api.registrations.error, 5,
                   "the API to read the registrations")
        return running

    yield start
    for running in reversed(started):
        running.close()
    root.setLevel(level)


@pytest.fixture
def running(start_api) -> Running:
    return start_api()


def register_cp(store, cp_id: str, location: str = "C/Real, 1", price: str = "0.45") -> str:
    """Register ``cp_id`` as EV_Registry does; its credential."""
    credential = new_credential()
    store.register_cp(cp_id, location, Decimal(price), hash_credential(credential))
    return credential


# -- Server-Sent Events, read as a browser's EventSource does -----------------------------------------


@dataclass
class SSEEvent:
    id: str | None
    event: str
    data: object

    def __repr__(self) -> str:
        return f"SSEEvent({self.id}, {self.event}, {str(self.data)[:120]})"


class EventReader:
    """Reads ``GET /api/events`` on a raw socket (plain HTTP) so that a test controls every byte:
    ``next(timeout)``, ``until(predicate, timeout)``. ``comments`` counts the heartbeat lines."""

    def __init__(self, url: str, last_event_id: str | None = None, *, rcvbuf: int | None = None,
                 read: bool = True) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, int(port)))
        self.sock.settimeout(5)
        extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id is not None else ""
        self.sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{extra}\r\n"
                          .encode())
        self.buffer = b""
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.comments = 0
        self.closed = False
        self.events: list[SSEEvent] = []
        if read:
            self._read_head(5)

    def _fill(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buffer += chunk
        return True

    def _read_head(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill(deadline) and (self.closed or time.monotonic() >= deadline):
                raise AssertionError(f"no answer's head within {timeout} s: {self.buffer[:200]!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        self._raw, self.buffer = self.buffer, b""

    def _decoded(self) -> None:
        """Move what arrived into ``buffer``, without the chunked framing."""
        if not self.chunked:
            self.buffer, self._raw = self.buffer + self._raw, b""
            return
        while True:
            size_end = self._raw.find(b"\r\n")
            if size_end < 0:
                return
            size = int(self._raw[:size_end].split(b";")[0], 16)
            if len(self._raw) < size_end + 2 + size + 2:
                return
            self.buffer += self._raw[size_end + 2:size_end + 2 + size]
            self._raw = self._raw[size_end + 2 + size + 2:]
            if size == 0:
                self.closed = True
                return

    def next(self, timeout: float = 5.0) -> SSEEvent | None:
        """The next event (comments counted and skipped), or None when the stream ended."""
        deadline = time.monotonic() + timeout
        while True:
            self._decoded()
            while b"\n\n" in self.buffer:
                block, self.buffer = self.buffer.split(b"\n\n", 1)
                event = self._parse(block.decode("utf-8"))
                if event is not None:
                    self.events.append(event)
                    return event
            if self.closed:
                return None
            if time.monotonic() >= deadline:
                raise AssertionError(f"no event within {timeout} s")
            self._raw_fill(deadline)

    def _raw_fill(self, deadline: float) -> None:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
        self._raw += chunk

    def _parse(self, block: str) -> SSEEvent | None:
        event_id, kind, data = None, "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments += 1
            elif line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if not data:
            return None
        return SSEEvent(event_id, kind, json.loads("\n".join(data)))

    def until(self, predicate: Callable[[SSEEvent], bool], timeout: float, what: str) -> SSEEvent:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; saw "
                                     f"{[(e.event, e.id) for e in self.events[-10:]]}")
            event = self.next(left)
            if event is None:
                raise AssertionError(f"the stream ended while waiting for {what}")
            if predicate(event):
                return event

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture
def events(running) -> Iterator[Callable[..., EventReader]]:
    readers: list[EventReader] = []

    def open_reader(last_event_id: str | None = None, **kwargs) -> EventReader:
        reader = EventReader(running.url, last_event_id, **kwargs)
        readers.append(reader)
        return reader

    yield open_reader
    for reader in readers:
        reader.close()
