"""A client of EV_Registry's API, for installers (``EV_Registry register ...``) and the Monitor.

    client = RegistryClient("https://registry:8443", token, fingerprint="SHA256:AB:CD:...")
    credential = client.register("CP001", "C/Mayor, 45", "0.48")   # shown once: keep it
    client.get("CP001")          # {"cp_id": ..., "registered": True, ...}
    client.list()                # [{...}, ...]
    client.deregister("CP001")

The Registry is trusted in one of three ways (``ev_common.https_client``):

* ``ca_file``: its certificate chain must lead to a certificate in this PEM file, and name the
  host in the URL (for a certificate issued by an organisation's CA);
* ``fingerprint``: its certificate's SHA-256 must be exactly this (``SHA256:AB:CD:...`` as
  EV_Registry prints at start, or 64 hex digits). The chain, names and dates are not checked:
  the pin is the trust. The pin is checked right after each TLS handshake, **before** a byte of
  the request (and so the operator token) is sent: a connection to another certificate is
  closed at once and ``RegistryError`` says whose certificate was found;
* neither: the system's CA certificates (a Registry with a publicly issued certificate).

Only ``https://`` URLs are accepted. Every request has a timeout (``timeout`` s, for the
connection, the handshake and each read and write). Errors raise ``RegistryError`` with the
HTTP ``status`` (None when no answer came) and the Registry's ``message``. The operator
token and credentials are never put in messages or logs.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from ev_common.https_client import PinnedTransport, transport, transport_message

PEER = "the Registry"  # how messages name it: "the Registry's certificate ... was not accepted"

__all__ = ["RegistryClient", "RegistryError"]


class RegistryError(Exception):
    """A request to EV_Registry failed: ``status`` is the HTTP status (None: no answer, such as
    a refused connection, a timeout or a certificate that was not accepted), ``message`` what
    the Registry (or the connection) said, ``error`` the Registry's error code if any."""

    def __init__(self, status: int | None, message: str, error: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status is not None else message)
        self.status = status
        self.message = message
        self.error = error


# -- the client -----------------------------------------------------------------------------------


class RegistryClient:
    """EV_Registry's API at ``url`` (``https://host:port``) with the operator ``token``."""

    def __init__(self, url: str, token: str, *, ca_file: str | None = None, fingerprint: str | None = None,
                 timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"the Registry's URL must be https://host:port, not {url!r} (the API is HTTPS only)")
        if ca_file is not None and fingerprint is not None:
            raise ValueError("give a CA file or a fingerprint, not both")
        if not isinstance(token, str) or not token.strip():
            raise ValueError("no operator token")
        if timeout <= 0:
            raise ValueError("the timeout must be positive")
        self.url = url.rstrip("/")
        self._token = token.strip()
        verified = transport(ca_file=ca_file, fingerprint=fingerprint, peer=PEER)
        self.pinned: str | None = verified.fingerprint if isinstance(verified, PinnedTransport) else None
        self._http = httpx.Client(base_url=self.url, transport=verified, timeout=httpx.Timeout(timeout),
                                  trust_env=False, follow_redirects=False,
                                  headers={"Accept": "application/json", "User-Agent": "EV_Registry-client"})

    def __repr__(self) -> str:  # never the token
        how = f"pin {self.pinned}" if self.pinned else "CA verification"
        return f"RegistryClient({self.url!r}, {how})"

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the API

    def register(self, cp_id: str, location: str, price: Decimal | str | float | int) -> str:
        """Register ``cp_id`` (or register it again: its old credential stops working) and
        return its new credential, shown this once."""
        return self.register_full(cp_id, location, price)["credential"]

    def register_full(self, cp_id: str, location: str, price: Decimal | str | float | int) -> dict:
        """``register``, returning the whole answer: the registration state, ``credential``,
        and ``created`` (True: first registration; False: registered again)."""
        if isinstance(price, float):
            price = repr(price)
        elif isinstance(price, Decimal):
            price = format(price, "f")  # never "1E+2": the API takes plain decimals
        response = self._request("PUT", f"/cps/{self._id(cp_id)}",
                                 json={"location": location, "price_eur_kwh": str(price)})
        answer = self._json(response)
        if not isinstance(answer, dict) or not isinstance(answer.get("credential"), str):
            raise RegistryError(response.status_code, "the Registry's answer holds no credential")
        answer["created"] = response.status_code == 201
        return answer

    def deregister(self, cp_id: str) -> None:
        """Deregister ``cp_id``: it can no longer authenticate (404 if never registered, 409 if
        deregistered already: ``RegistryError``)."""
        self._request("DELETE", f"/cps/{self._id(cp_id)}")

    def get(self, cp_id: str) -> dict:
        """One CP's registration state (``RegistryError`` 404 if never registered)."""
        return self._json(self._request("GET", f"/cps/{self._id(cp_id)}"))

    def list(self) -> list[dict]:
        """Every CP ever registered, by cp_id."""
        answer = self._json(self._request("GET", "/cps"))
        if not isinstance(answer, dict) or not isinstance(answer.get("cps"), list):
            raise RegistryError(200, "the Registry's answer holds no list of CPs")
        return answer["cps"]

    # -- plumbing

    @staticmethod
    def _id(cp_id: str) -> str:
        if not isinstance(cp_id, str) or not cp_id:
            raise ValueError("a CP id is 1-64 characters from A-Z a-z 0-9 _ -")
        return quote(cp_id, safe="")

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise RegistryError(None, f"no answer from the Registry at {self.url} in time "
                                      f"({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise RegistryError(None, transport_message(self.url, exc, PEER)) from None
        if response.status_code >= 400:
            raise _error_of(response)
        return response

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise RegistryError(response.status_code, "the Registry's answer is not JSON") from None


def _error_of(response: httpx.Response) -> RegistryError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return RegistryError(response.status_code, body["message"][:500],
                             body.get("error") if isinstance(body.get("error"), str) else None)
    return RegistryError(response.status_code, response.reason_phrase or "error")
