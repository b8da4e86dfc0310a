"""EV_Registry's HTTPS server: uvicorn, run programmatically on a socket this module binds.

``RegistryServer(app, host, port, cert_path, key_path)``: ``start()`` binds (``OSError`` if
the port is taken), serves on a thread and returns once uvicorn listens; ``port`` and ``url``
are then known (``port=0`` asks the system for one); ``stop()`` ends it within its timeout.

TLS only: there is no plain-HTTP listener, and a plain-HTTP request on the port fails in the
handshake. TLS 1.2 or newer (``ev_common.tls``'s settings). Timeouts on every stage of a
connection: the TLS handshake (asyncio's, ``HANDSHAKE_TIMEOUT``), a request's headers
(``header_timeout``, counted from the first byte, or from the handshake for a new
connection), its body (the API's ``body_timeout``), an idle kept-alive connection
(``timeout_keep_alive``); at most ``limit_concurrency`` connections and tasks at once (503
past that). Client addresses are the peers' own: ``X-Forwarded-For`` is not trusted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import threading
import time
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("ev_registry")

HANDSHAKE_TIMEOUT = 60.0  # asyncio's TLS handshake timeout (create_server's default)
HEADER_TIMEOUT = 10.0
KEEP_ALIVE_TIMEOUT = 5
LIMIT_CONCURRENCY = 64
GRACEFUL_SHUTDOWN = 5


class _TimedH11Protocol(H11Protocol):
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


def _protocol(header_timeout: float) -> type[H11Protocol]:
    return type("RegistryH11Protocol", (_TimedH11Protocol,), {"header_timeout": header_timeout})


def harden(context: ssl.SSLContext) -> ssl.SSLContext:
    """TLS 1.2 or newer, no compression, no renegotiation (as ``ev_common.tls``)."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0) | ssl.OP_NO_COMPRESSION
    return context


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


class RegistryServer:
    """The API ``app`` over HTTPS on ``host``:``port`` with this certificate and key."""

    def __init__(self, app, host: str, port: int, cert_path: str | Path, key_path: str | Path, *,
                 limit_concurrency: int = LIMIT_CONCURRENCY, timeout_keep_alive: int = KEEP_ALIVE_TIMEOUT,
                 header_timeout: float = HEADER_TIMEOUT, graceful_shutdown: int = GRACEFUL_SHUTDOWN) -> None:
        self.host = host
        self.requested_port = port
        self.config = uvicorn.Config(
            app, ssl_certfile=str(cert_path), ssl_keyfile=str(key_path), log_config=None, access_log=False,
            lifespan="off", ws="none", proxy_headers=False, server_header=False, http=_protocol(header_timeout),
            timeout_keep_alive=timeout_keep_alive, limit_concurrency=limit_concurrency,
            timeout_graceful_shutdown=graceful_shutdown)
        self.config.load()  # builds the SSLContext from the files (ssl.SSLError / OSError if they are bad)
        harden(self.config.ssl)
        self.server = uvicorn.Server(self.config)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the server is not bound yet")
        return self._socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1" if host != "::" else "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 15.0) -> "RegistryServer":
        """Bind, serve on a thread, return once listening (``RuntimeError`` if it did not
        start within ``timeout`` s, ``OSError`` if the port cannot be bound)."""
        self._socket = bind(self.host, self.requested_port)
        self._thread = threading.Thread(target=self._run, name="registry-https", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the HTTPS server stopped while starting: {self.error!r}")
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"the HTTPS server did not start within {timeout:g} s")
            self._thread.join(0.02)
        return self

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._socket])
        except BaseException as exc:  # noqa: BLE001 - reported by start() / alive
            self.error = exc
            log.error("the HTTPS server failed: %s", exc)

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
