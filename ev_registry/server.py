"""EV_Registry's HTTPS server: uvicorn, run programmatically on a thread, on a socket it binds
(``ev_common.web_server``).

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

from pathlib import Path

from ev_common.web_server import (GRACEFUL_SHUTDOWN, HANDSHAKE_TIMEOUT, HEADER_TIMEOUT, KEEP_ALIVE_TIMEOUT,
                                  LIMIT_CONCURRENCY, WebServer)

__all__ = ["GRACEFUL_SHUTDOWN", "HANDSHAKE_TIMEOUT", "HEADER_TIMEOUT", "KEEP_ALIVE_TIMEOUT", "LIMIT_CONCURRENCY",
           "RegistryServer"]


class RegistryServer(WebServer):
    """The API ``app`` over HTTPS on ``host``:``port`` with this certificate and key."""

    def __init__(self, app, host: str, port: int, cert_path: str | Path, key_path: str | Path, *,
                 limit_concurrency: int = LIMIT_CONCURRENCY, timeout_keep_alive: int = KEEP_ALIVE_TIMEOUT,
                 header_timeout: float = HEADER_TIMEOUT, graceful_shutdown: int = GRACEFUL_SHUTDOWN) -> None:
        super().__init__(app, host, port, cert=cert_path, key=key_path, header_timeout=header_timeout,
                         limit_concurrency=limit_concurrency, timeout_keep_alive=timeout_keep_alive,
                         graceful_shutdown=graceful_shutdown, name="registry-https", what="the HTTPS server")
