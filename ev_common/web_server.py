"""An ASGI app served by uvicorn on a thread of the program, on a socket bound here: what
EV_Registry's HTTPS server and Central's API share.

``WebServer(app, host, port, cert=..., key=...)``: ``start()`` binds (``OSError`` if the port
is taken), serves on a thread and returns once uvicorn listens; ``address``, ``port`` and
``url`` are then known (``port=0`` asks the system for one); ``stop()`` ends it within its
timeout. HTTPS with ``cert`` and ``key`` (TLS 1.2 or newer, no compression nor renegotiation:
``harden``), plain HTTP without; a plain-HTTP request on an HTTPS port fails in the handshake.

Timeouts on every stage of a connection: the TLS handshake (asyncio's, ``HANDSHAKE_TIMEOUT``),
a request's headers (``header_timeout``, counted from the first byte, or from the handshake for
a new connection: ``TimedH11Protocol``), its body (the app's: ``ev_common.web.Guard``), an idle
kept-alive connection (``timeout_keep_alive``); at most ``limit_concurrency`` connections and
tasks at once (503 past that). Client addresses are the peers' own: ``X-Forwarded-For`` is not
trusted. uvicorn logs nothing of its own (no access log, no lifespan, no Server header).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
import time
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .tls import harden

__all__ = ["GRACEFUL_SHUTDOWN", "HANDSHAKE_TIMEOUT", "HEADER_TIMEOUT", "KEEP_ALIVE_TIMEOUT", "LIMIT_CONCURRENCY",
           "TimedH11Protocol", "WebServer", "bind", "harden", "timed_protocol"]

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 60.0  # asyncio's TLS handshake timeout (create_server's default)
HEADER_TIMEOUT = 10.0
KEEP_ALIVE_TIMEOUT = 5
LIMIT_CONCURRENCY = 64
GRACEFUL_SHUTDOWN = 5


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers: a client that opens
    a connection (or starts a request) and then sends its headers too slowly is disconnected
    after ``header_timeout`` s. (uvicorn bounds only idle kept-alive connections.)"""

    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            log.debug("closed a connection from %s: no complete request within %g s", self.client,
                      self.header_timeout)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._waiting_for_headers():
            self._arm()
        super().data_received(data)
        if not self._waiting_for_headers():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # the keep-alive timeout takes over until the next request's first byte

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def timed_protocol(header_timeout: float, base: type[TimedH11Protocol] = TimedH11Protocol) -> type[H11Protocol]:
    """``base`` (a ``TimedH11Protocol``) with this deadline on each request's headers: uvicorn's
    ``http`` setting."""
    return type(f"{base.__name__}{header_timeout:g}s", (base,), {"header_timeout": header_timeout})


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (IPv6 when ``host`` is an IPv6 address)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host.strip("[]")).version == 6 else socket.AF_INET
    except ValueError:  # a name: what it resolves to first
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


class WebServer:
    """The ASGI ``app`` on ``host``:``port`` (see the module's doc). ``protocol``: the h11
    protocol class (a ``TimedH11Protocol``), given ``header_timeout``; ``name``: the serving
    thread's name; ``what``: how errors name the server ("the HTTPS server")."""

    def __init__(self, app, host: str, port: int, *, cert: str | Path | None = None, key: str | Path | None = None,
                 protocol: type[TimedH11Protocol] = TimedH11Protocol, header_timeout: float = HEADER_TIMEOUT,
                 limit_concurrency: int = LIMIT_CONCURRENCY, timeout_keep_alive: int = KEEP_ALIVE_TIMEOUT,
                 graceful_shutdown: int = GRACEFUL_SHUTDOWN, name: str = "web-server",
                 what: str = "the web server") -> None:
        if (cert is None) != (key is None):
            raise ValueError("give both the certificate and its key, or neither (plain HTTP)")
        self.app = app
        self.host = host
        self.requested_port = port
        self.name = name
        self.what = what
        self.tls = cert is not None
        options = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)} if self.tls else {}
        self.config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", ws="none", proxy_headers=False,
            server_header=False, http=timed_protocol(header_timeout, protocol), timeout_keep_alive=timeout_keep_alive,
            limit_concurrency=limit_concurrency, timeout_graceful_shutdown=graceful_shutdown, **options)
        self.config.load()  # builds the SSLContext from the files (ssl.SSLError / OSError if they are bad)
        if self.tls:
            harden(self.config.ssl)
        self.server = uvicorn.Server(self.config)
        self._socket: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The host and port it listens on (``RuntimeError`` before ``start()``)."""
        if self._address is None:
            raise RuntimeError(f"{self.what} is not listening yet")
        return self._address

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def url(self) -> str:
        """``https://host:port`` (or ``http://``): 127.0.0.1 or ::1 for a wildcard address."""
        host, port = self.address
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1" if host != "::" else "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def serving(self) -> None:
        """Called once the socket is bound, right before the serving thread starts (a hook)."""

    def start(self, timeout: float = 15.0) -> "WebServer":
        """Bind, serve on a thread, return once listening (``RuntimeError`` if it did not start
        within ``timeout`` s, ``OSError`` if the port cannot be bound)."""
        self._socket = bind(self.host, self.requested_port)
        self._address = self._socket.getsockname()[:2]
        self.serving()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"{self.what} stopped while starting: {self.error!r}")
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"{self.what} did not start within {timeout:g} s")
            self._thread.join(0.02)
        return self

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._socket])
        except BaseException as exc:  # noqa: BLE001 - reported by start() / alive
            self.error = exc
            log.error("%s failed: %s", self.what, exc)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (open requests get ``graceful_shutdown`` s), then close the socket."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.server.force_exit = True
                self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
