"""Is EV_Registry reachable? ``RegistryProbe.check()`` asks for its ``/openapi.json`` (the one
path without a token) over HTTPS, verifying its certificate as the Monitor does (a CA file,
a pinned fingerprint, or the system's CAs), within ``timeout`` seconds. The API's watcher
calls it every 15 s; ``state()`` is what ``/api/health`` shows.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import urlsplit

import httpx

from ev_common.https_client import transport, transport_message

log = logging.getLogger("ev_central.api")
# httpx says each request at INFO: a line every 15 s among Central's messages. Warnings only.
logging.getLogger("httpx").setLevel(logging.WARNING)

PEER = "the Registry"  # how messages name it: "cannot reach the Registry at ..."
INTERVAL = 15.0
TIMEOUT = 5.0


class RegistryProbe:
    def __init__(self, url: str, *, ca_file: str | None = None, fingerprint: str | None = None,
                 timeout: float = TIMEOUT, utcnow: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"EV_Registry's URL is https://host:port, not {url!r}")
        if ca_file is not None and fingerprint is not None:
            raise ValueError("give EV_Registry's CA file or its fingerprint, not both")
        self.url = url.rstrip("/")
        verified = transport(ca_file=ca_file, fingerprint=fingerprint, peer=PEER)
        self._http = httpx.Client(base_url=self.url, transport=verified, timeout=httpx.Timeout(timeout),
                                  trust_env=False, follow_redirects=False)
        self._utcnow = utcnow
        self._lock = threading.Lock()
        self._ok: bool | None = None
        self._since: datetime | None = None  # since when it is as it is
        self._checked: datetime | None = None
        self._error: str | None = None

    def check(self) -> bool:
        try:
            # a new connection each time (every 15 s): none is held open at EV_Registry meanwhile
            response = self._http.get("/openapi.json", headers={"Accept": "application/json", "Connection": "close"})
            error = None if response.status_code == 200 else f"HTTP {response.status_code} for /openapi.json"
        except httpx.TimeoutException as exc:
            error = f"no answer in time ({type(exc).__name__})"
        except httpx.TransportError as exc:
            error = transport_message(self.url, exc, PEER)
        except Exception as exc:  # the watcher goes on, whatever happened
            error = f"{type(exc).__name__}: {exc}"
        now = self._utcnow()
        ok = error is None
        with self._lock:
            before = self._ok
            if before is not ok:
                self._since = now
            self._ok, self._checked, self._error = ok, now, error
        if not ok and before is not False:  # said once per outage
            log.warning("EV_Registry unreachable at %s: %s", self.url, error)
        elif ok and before is False:
            log.info("EV_Registry reachable again at %s", self.url)
        return ok

    def state(self) -> dict:
        with self._lock:
            return {"configured": True, "url": self.url, "ok": self._ok, "since": self._since,
                    "checked_at": self._checked, "error": self._error}

    def close(self) -> None:
        self._http.close()


NOT_CONFIGURED = {"configured": False, "url": None, "ok": None, "since": None, "checked_at": None,
                  "error": "not configured (EV_Central --registry-url)"}
