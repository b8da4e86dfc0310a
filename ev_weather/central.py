"""EV_W's client of Central's API (ev_central/api, docs/weather.md): its three calls, each with
EV_W's own bearer token and a timeout.

    POST   /api/weather/reports          {"reports": [{"city", "temperature", "cp_ids", "error", "simulated"}]} -> 204
    PUT    /api/weather/alerts/{city}    {"temperature": -2.5, "cp_ids": [...]}  -> 200, what Central did
    DELETE /api/weather/alerts/{city}    -> 200, what Central did; 404: no alert for that city

Central is reached over ``http://`` or ``https://``; over HTTPS its certificate is verified by a
CA file (and its host name) or by a pinned SHA-256 fingerprint, checked right after the TLS
handshake and before a byte of the request (and so the token) is sent; without either, the
system's CAs. Any failure raises ``CentralError``: ``status`` None when no answer came (Central
unreachable, a timeout, a certificate not accepted), else the HTTP status and what Central said.
The token is never put in a message.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from ev_common.https_client import PinnedTransport, transport, transport_message

from .source import hundredths

TOKEN_MIN, TOKEN_MAX = 16, 512
PEER = "Central"  # how messages name it: "Central's certificate ... was not accepted"


class CentralError(Exception):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status is not None else message)
        self.status = status
        self.message = message

    @property
    def unreachable(self) -> bool:
        return self.status is None


def check_token(text: str, where: str) -> str:
    """EV_W's token read from ``where``: surrounding white space dropped; ``ValueError`` unless it
    is 16-512 printable ASCII characters without spaces (as Central requires)."""
    token = text.strip()
    if not token:
        raise ValueError(f"EV_W's token in {where} is empty")
    if not TOKEN_MIN <= len(token) <= TOKEN_MAX or not all("!" <= c <= "~" for c in token):
        raise ValueError(f"EV_W's token in {where} must be {TOKEN_MIN} to {TOKEN_MAX} printable ASCII characters "
                         f"without spaces (it has {len(token)} characters)")
    return token


def _number(value: Decimal | None) -> int | float | None:
    """A temperature as a JSON number with at most 2 decimal places, as Central takes it (rounded
    half up: ``ev_weather.source.hundredths``): ``-3`` (not ``-3.0``), ``-2.5``, ``-2.56``."""
    if value is None:
        return None
    value = hundredths(value)
    return int(value) if value == value.to_integral_value() else float(value)


class CentralAPI:
    """Central's API at ``url`` (``http[s]://host:port``, with or without a trailing ``/api``)."""

    def __init__(self, url: str, token: str, *, ca_file: str | None = None, fingerprint: str | None = None,
                 timeout: float = 3.0) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Central's API is http://HOST:PORT or https://HOST:PORT, not {url!r}")
        if (ca_file is not None or fingerprint is not None) and parts.scheme != "https":
            raise ValueError("a CA file or a fingerprint verifies an https:// API: give https://")
        if ca_file is not None and fingerprint is not None:
            raise ValueError("give a CA file or a fingerprint, not both")
        if not timeout > 0:
            raise ValueError("the timeout must be positive")
        base = url.strip().rstrip("/")
        self.url = base[: -len("/api")] if base.endswith("/api") else base
        self._token = check_token(token, "the token given")
        self.timeout = timeout
        verified = transport(ca_file=ca_file, fingerprint=fingerprint, peer=PEER, tls=parts.scheme == "https")
        self.pinned: str | None = verified.fingerprint if isinstance(verified, PinnedTransport) else None
        self._http = httpx.Client(base_url=self.url, transport=verified, timeout=httpx.Timeout(timeout),
                                  trust_env=False, follow_redirects=False,
                                  headers={"Accept": "application/json", "User-Agent": "EV_W"})

    def __repr__(self) -> str:  # never the token
        return f"CentralAPI({self.url!r}{', pin ' + self.pinned if self.pinned else ''})"

    def close(self) -> None:
        self._http.close()

    # -- the calls

    def report(self, reports: list[dict[str, Any]]) -> None:
        """Every city of one cycle: ``{"city", "temperature" (Decimal or None), "cp_ids", "error",
        "simulated"}`` each."""
        body = {"reports": [{**r, "temperature": _number(r.get("temperature"))} for r in reports]}
        self._request("POST", "/api/weather/reports", body)

    def alert(self, city: str, temperature: Decimal, cp_ids: list[str]) -> dict[str, Any]:
        answer = self._request("PUT", f"/api/weather/alerts/{quote(city, safe='')}",
                               {"temperature": _number(temperature), "cp_ids": list(cp_ids)})
        return self._json(answer)

    def clear(self, city: str) -> dict[str, Any] | None:
        """What Central did, or None when it had no alert for ``city`` (404)."""
        try:
            answer = self._request("DELETE", f"/api/weather/alerts/{quote(city, safe='')}")
        except CentralError as exc:
            if exc.status == 404:
                return None
            raise
        return self._json(answer)

    # -- plumbing

    def _request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._token}"}
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            answer = self._http.request(method, path, headers=headers, content=content)
        except httpx.TimeoutException as exc:
            raise CentralError(None, f"no answer from Central at {self.url} within {self.timeout:g} s "
                                     f"({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise CentralError(None, transport_message(self.url, exc, PEER)) from None
        if answer.status_code >= 400:
            raise CentralError(answer.status_code, _said(answer))
        return answer

    @staticmethod
    def _json(answer: httpx.Response) -> dict[str, Any]:
        try:
            data = answer.json()
        except ValueError:
            raise CentralError(answer.status_code, "Central's answer is not JSON") from None
        if not isinstance(data, dict):
            raise CentralError(answer.status_code, "Central's answer is not a JSON object")
        return data


def _said(answer: httpx.Response) -> str:
    """What Central said with an error status: its ``message`` (or FastAPI's ``detail``)."""
    try:
        data = answer.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        for name in ("message", "detail"):
            if isinstance(data.get(name), str):
                return " ".join(data[name].split())[:300]
    return answer.reason_phrase or "error"
