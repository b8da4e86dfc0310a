"""httpx transports that verify a server's certificate, for EVCharging's HTTPS clients
(EV_Registry's client, Central's probe of EV_Registry, EV_W's client of Central's API).

A server is trusted in one of three ways (``transport(ca_file=..., fingerprint=...)``):

* ``ca_file``: its certificate chain must lead to a certificate in this PEM file, and name the
  host in the URL (for a certificate issued by an organisation's CA);
* ``fingerprint``: its certificate's SHA-256 must be exactly this (``SHA256:AB:CD:...`` or 64
  hex digits: ``ev_common.tls.parse_fingerprint``). The chain, names and dates are not checked:
  the pin is the trust. ``PinnedTransport`` checks it right after each TLS handshake,
  **before** a byte of the request (and so any token it carries) is sent: a connection to
  another certificate is closed at once with ``CertificatePinMismatch``, which says whose
  certificate was found;
* neither: the system's CA certificates (a server with a publicly issued certificate).

Every transport here speaks TLS 1.2 or newer, reads no proxy settings from the environment
(``trust_env=False``) and never retries. ``transport_message(url, exc, peer)`` turns an
``httpx.TransportError`` into a sentence for people ("the Registry's certificate at ... was not
accepted", "cannot reach Central at ...").
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from typing import Any

import httpcore
import httpx

from .tls import format_fingerprint, harden, parse_fingerprint

__all__ = ["CertificatePinMismatch", "PinnedTransport", "pinned_context", "tls_context", "transport",
           "transport_message"]

#: How a server is named in messages when its client does not say: "the server's certificate".
SERVER = "the server"


class CertificatePinMismatch(httpcore.ConnectError):
    """The server's certificate is not the pinned one (raised inside ``PinnedTransport``; httpx
    hands it on as the cause of an ``httpx.ConnectError``)."""


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client's context verifying the server's chain and host name: by the CA certificates in
    the PEM file ``ca_file``, or by the system's when None. ``ValueError`` when the file is
    missing or holds no usable certificate."""
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if ca_file is None:
        context.load_default_certs()
    else:
        try:
            context.load_verify_locations(cafile=ca_file)
        except FileNotFoundError:
            raise ValueError(f"CA file {ca_file} not found") from None
        except ssl.SSLError as exc:
            raise ValueError(f"CA file {ca_file} holds no usable PEM certificate ({exc.reason or exc})") from None
    return context


def pinned_context() -> ssl.SSLContext:
    """A client's context for ``PinnedTransport``: no chain nor name check (the pin, checked
    after the handshake, is the trust)."""
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- the pinned transport -------------------------------------------------------------------------


class _PinCheckingStream(httpcore.NetworkStream):
    """A TCP stream whose ``start_tls`` checks the peer's certificate against the pin before
    returning the TLS stream, so nothing is written to an unverified peer."""

    def __init__(self, inner: httpcore.NetworkStream, pin: bytes, peer: str) -> None:
        self._inner = inner
        self._pin = pin
        self._peer = peer

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        tls = self._inner.start_tls(ssl_context, server_hostname, timeout)
        der = _peer_certificate(tls)
        digest = hashlib.sha256(der).digest() if der else b""
        if not der or not hmac.compare_digest(digest, self._pin):
            tls.close()
            found = format_fingerprint(digest) if der else "no certificate"
            raise CertificatePinMismatch(f"{self._peer}'s certificate {found} does not match the pinned fingerprint "
                                         f"{format_fingerprint(self._pin)}")
        return tls


def _peer_certificate(stream: httpcore.NetworkStream) -> bytes | None:
    sock = stream.get_extra_info("socket")
    if isinstance(sock, ssl.SSLSocket):
        return sock.getpeercert(binary_form=True)
    ssl_object = stream.get_extra_info("ssl_object")
    if ssl_object is not None:
        return ssl_object.getpeercert(True)
    return None


class _PinCheckingBackend(httpcore.NetworkBackend):
    def __init__(self, pin: bytes, peer: str) -> None:
        self._inner = httpcore.SyncBackend()
        self._pin = pin
        self._peer = peer

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                         socket_options=socket_options)
        return _PinCheckingStream(stream, self._pin, self._peer)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise httpcore.ConnectError(f"{self._peer} is reached over TCP only")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class PinnedTransport(httpx.HTTPTransport):
    """httpx's transport whose connections check the server's certificate against ``pin`` (its
    SHA-256, 32 bytes) right after the handshake, before the request is sent. ``peer`` names
    the server in ``CertificatePinMismatch`` ("the Registry", "Central"); ``fingerprint`` is the
    pin as text (``SHA256:AB:CD:...``). (``httpx.HTTPTransport`` takes no network backend: its
    connection pool is replaced.)"""

    def __init__(self, pin: bytes, context: ssl.SSLContext | None = None, *, peer: str = SERVER) -> None:
        context = context if context is not None else pinned_context()
        super().__init__(verify=context, trust_env=False, retries=0)
        if not hasattr(self, "_pool"):  # pragma: no cover - an httpx that changed its insides
            raise RuntimeError("this httpx version cannot pin certificates (no _pool in HTTPTransport)")
        self.fingerprint = format_fingerprint(pin)
        self._pool = httpcore.ConnectionPool(ssl_context=context, network_backend=_PinCheckingBackend(pin, peer),
                                             max_connections=4, max_keepalive_connections=2, keepalive_expiry=5.0,
                                             retries=0)


def transport(*, ca_file: str | None = None, fingerprint: str | None = None, peer: str = SERVER,
              tls: bool = True) -> httpx.HTTPTransport:
    """The transport for a server trusted by ``ca_file`` or ``fingerprint`` (at most one; neither:
    the system's CAs): a ``PinnedTransport`` for a fingerprint. ``tls=False``: plain HTTP (then
    neither may be given). ``ValueError`` for both, a malformed fingerprint or a bad CA file."""
    if ca_file is not None and fingerprint is not None:
        raise ValueError("give a CA file or a fingerprint, not both")
    if not tls:
        if ca_file is not None or fingerprint is not None:
            raise ValueError("a CA file or a fingerprint verifies an https:// server")
        return httpx.HTTPTransport(trust_env=False, retries=0)
    if fingerprint is not None:
        return PinnedTransport(parse_fingerprint(fingerprint), peer=peer)
    return httpx.HTTPTransport(verify=tls_context(ca_file), trust_env=False, retries=0)


def transport_message(url: str, exc: Exception, peer: str = SERVER) -> str:
    """What an ``httpx.TransportError`` (or ``httpx.HTTPError``) reaching ``peer`` at ``url``
    means, for people: a certificate not pinned or not accepted, a port that does not speak
    TLS, or the server unreachable (with httpx's own words)."""
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, CertificatePinMismatch) or "pinned fingerprint" in text:
        return str(cause or text)
    if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(cause, ssl.SSLCertVerificationError):
        return f"{peer}'s certificate at {url} was not accepted: {text}"
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text.lower():
        return f"{url} does not speak TLS: {text}"
    return f"cannot reach {peer} at {url}: {text}"
