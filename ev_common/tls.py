"""TLS for the Central <-> Monitor link (secure mode): certificates, contexts, the pin check.

The frames inside are unchanged (docs/protocol.md, "TLS (secure mode)"): TLS only carries
the same bytes. The pieces:

* ``ensure_certificate(directory, name, hosts)`` loads ``<name>.crt``/``<name>.key`` from
  ``directory`` or makes a self-signed pair there once (EC P-256, 10 years); its
  ``fingerprint`` is what a Monitor pins.
* ``server_context(cert_path, key_path)``: Central's ``ssl.SSLContext`` (TLS 1.2 or newer),
  given to ``LinkReactor(..., tls=ctx)`` (or ``MonitorServer(..., tls=ctx)``).
* ``client_context(ca_file=... | fingerprint=...)``: a Monitor's ``TLSClient``, given to
  ``Link.connect(..., tls=client)``. It verifies Central either by a CA file (the chain and
  the host name or IP) or by a pinned SHA-256 fingerprint of Central's certificate (no chain
  check: the pin is the trust). The pin is checked inside ``TLSClient.handshake`` and
  ``TLSClient.wrap``, the only ways it opens a connection, so it cannot be skipped.
* ``TLSChannel``: TLS on memory buffers (``ssl.MemoryBIO`` + ``SSLObject``), no I/O: its
  driver moves the encrypted bytes between it and the socket. The reactor (nonblocking, one
  thread for every session) and ``Link`` (blocking, several threads) both use it, so neither
  ever blocks in OpenSSL nor finds decrypted bytes hidden from ``select``.

Errors: ``TLSError`` is a ``LinkBroken`` (so a ``LinkError``, what a Monitor already catches
around ``Link.connect``): the handshake failed, the peer does not speak TLS, or it closed
during the handshake. ``CertificateRejected`` (a ``TLSError``): the peer's certificate was
not accepted (chain, host name, or pin). ``TLSTimeout`` (a ``TLSError`` and a ``LinkTimeout``):
the handshake did not finish in time. Bad arguments (no or two verification modes, a
malformed fingerprint, a missing file) raise ``ValueError`` (``FileNotFoundError``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import select
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from .files import write_atomically
from .linkstate import LinkBroken, LinkTimeout

__all__ = ["Certificate", "CertificateRejected", "TLSChannel", "TLSClient", "TLSError", "TLSTimeout",
           "client_context", "ensure_certificate", "fingerprint_of", "format_fingerprint", "harden",
           "parse_fingerprint", "server_context"]

log = logging.getLogger(__name__)

VALIDITY_DAYS = 3650  # a self-signed certificate lasts 10 years
_READ = 65536
_TLS_HANDSHAKE_RECORD = 0x16  # the first byte of every TLS ClientHello
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class TLSError(LinkBroken):
    """TLS could not be set up or went wrong: the link is broken (a ``LinkError``)."""


class CertificateRejected(TLSError):
    """The peer's certificate was not accepted: chain, host name, or pinned fingerprint."""


class TLSTimeout(TLSError, LinkTimeout):
    """The TLS handshake did not finish within its timeout."""


# -- fingerprints -------------------------------------------------------------------------------


def format_fingerprint(digest: bytes) -> str:
    """``SHA256:AB:CD:...`` (upper-case hex pairs) of a 32-byte SHA-256 digest."""
    if len(digest) != 32:
        raise ValueError(f"a SHA-256 digest has 32 bytes, not {len(digest)}")
    return "SHA256:" + ":".join(f"{b:02X}" for b in digest)


def _der(data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode("ascii")
    text = data.lstrip()
    if text.startswith(b"-----BEGIN"):
        match = re.search(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)
        if match is None:
            raise ValueError("no PEM CERTIFICATE block found")
        return ssl.PEM_cert_to_DER_cert(match.group(0).decode("ascii"))
    return bytes(data)


def fingerprint_of(der_or_pem: bytes | str) -> str:
    """The SHA-256 fingerprint (``SHA256:AB:CD:...``) of a certificate, DER or PEM (the first
    certificate of a PEM file)."""
    return format_fingerprint(hashlib.sha256(_der(der_or_pem)).digest())


def parse_fingerprint(text: str) -> bytes:
    """The 32-byte digest of ``SHA256:AB:CD:...`` or of 64 hex digits (with or without colons,
    any case); raises ``ValueError`` saying what was expected."""
    if not isinstance(text, str):
        raise ValueError(f"a fingerprint is text, not {type(text).__name__}")
    body = text.strip()
    if body[:7].upper() in ("SHA256:", "SHA256="):
        body = body[7:]
    body = body.replace(":", "")
    if not re.fullmatch(r"[0-9A-Fa-f]{64}", body):
        shown = text if len(text) <= 120 else text[:117] + "..."
        raise ValueError(f"not a SHA-256 certificate fingerprint: {shown!r}; expected SHA256: and 32 hex pairs "
                         f"separated by colons (SHA256:AB:CD:...), or 64 hex digits")
    return bytes.fromhex(body)


# -- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    """A certificate and its key on disk; ``fingerprint`` is ``SHA256:AB:CD:...`` of its DER
    form; ``created`` tells whether ``ensure_certificate`` made it now."""

    cert_path: Path
    key_path: Path
    fingerprint: str
    created: bool = False


def ensure_certificate(directory: str | os.PathLike, name: str, hosts: "list[str] | tuple[str, ...]") -> Certificate:
    """Load ``<directory>/<name>.crt`` and ``<name>.key``, or, when neither exists, make a
    self-signed certificate for ``hosts`` (each a DNS name or an IP address, in its
    SubjectAlternativeName; CN ``name``; EC P-256; valid 10 years) and write both (the key
    mode 0600, each file written whole under a temporary name, then renamed). Raises
    ``ValueError`` when only one of the two exists, the key does not match the certificate,
    or no usable host is given."""
    if not _NAME.fullmatch(name or ""):
        raise ValueError(f"certificate name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
    folder = Path(directory)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    have_cert, have_key = cert_path.exists(), key_path.exists()
    if have_cert and have_key:
        return _load(cert_path, key_path, name, hosts)
    if have_cert or have_key:
        there, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise ValueError(f"found {there} but not {missing}: supply both, or remove {there} to make a new pair")
    return _create(folder, cert_path, key_path, name, hosts)


def _alt_names(hosts) -> list:
    from cryptography import x509

    names: list = []
    seen: set = set()
    for host in hosts:
        host = (host or "").strip().strip("[]")
        if not host or host in seen:
            continue
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            names.append(x509.DNSName(host))
        else:
            if address.is_unspecified:  # 0.0.0.0 / :: (a bind address) names no host
                continue
            names.append(x509.IPAddress(address))
        seen.add(host)
    if not names:
        raise ValueError(f"no host to name in the certificate (given {list(hosts)!r}): give the DNS names or "
                         f"IP addresses Monitors connect to")
    return names


def _create(folder: Path, cert_path: Path, key_path: Path, name: str, hosts) -> Certificate:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    alt_names = _alt_names(hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a little clock skew
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    write_atomically(key_path, key_pem, 0o600)  # the key first: a certificate on disk has its key
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    fingerprint = format_fingerprint(cert.fingerprint(hashes.SHA256()))
    log.info("made a self-signed certificate %s (CN=%s, for %s, valid %d days), key in %s: %s", cert_path, name,
             ", ".join(str(n.value) for n in alt_names), VALIDITY_DAYS, key_path, fingerprint)
    return Certificate(cert_path, key_path, fingerprint, created=True)


def _load(cert_path: Path, key_path: Path, name: str, hosts) -> Certificate:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{cert_path} is not a PEM certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (TypeError, ValueError) as exc:  # TypeError: it has a password
        raise ValueError(f"{key_path} is not an unencrypted PEM private key ({type(exc).__name__})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, public)
            != cert.public_key().public_bytes(serialization.Encoding.DER, public)):
        raise ValueError(f"the key in {key_path} does not belong to the certificate {cert_path}")
    if os.name == "posix" and key_path.stat().st_mode & 0o077:
        log.warning("the key %s can be read by other users (mode %o): chmod 600 it", key_path,
                    key_path.stat().st_mode & 0o777)
    fingerprint = format_fingerprint(cert.fingerprint(hashes.SHA256()))
    now = datetime.datetime.now(datetime.timezone.utc)
    expires = cert.not_valid_after_utc
    if expires <= now:
        log.warning("the certificate %s expired on %s: peers that check its dates refuse it", cert_path, expires)
    try:
        named = {str(n) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                 .get_values_for_type(x509.DNSName)}
        named |= {str(n) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                  .get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        named = set()
    try:
        wanted = {str(n.value) for n in _alt_names(hosts)} if hosts else set()
    except ValueError:
        wanted = set()
    missing = sorted(wanted - named)
    if missing:
        log.warning("the certificate %s does not name %s (it names %s): a Monitor that checks host names refuses "
                    "it there; pinned fingerprints are not affected", cert_path, ", ".join(missing),
                    ", ".join(sorted(named)) or "no host")
    log.info("loaded the certificate %s (CN=%s, until %s): %s", cert_path, name, expires.date(), fingerprint)
    return Certificate(cert_path, key_path, fingerprint, created=False)


# -- contexts -----------------------------------------------------------------------------------


def harden(context: ssl.SSLContext) -> ssl.SSLContext:
    """``context`` (a server's or a client's) made to speak TLS 1.2 or newer, without compression
    nor renegotiation; returned for chaining."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0) | ssl.OP_NO_COMPRESSION
    return context


def server_context(cert_path: str | os.PathLike, key_path: str | os.PathLike) -> ssl.SSLContext:
    """Central's side: TLS 1.2 or newer with this certificate and key; no client certificate asked."""
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    context.load_cert_chain(os.fspath(cert_path), os.fspath(key_path))
    try:
        context.num_tickets = 0  # Monitors do not resume sessions: no tickets to make for each
    except (AttributeError, ValueError):
        pass
    return context


def client_context(*, ca_file: str | os.PathLike | None = None, fingerprint: str | None = None,
                   server_hostname: str | None = None) -> "TLSClient":
    """A Monitor's TLS settings: exactly one of ``ca_file`` (verify the chain up to these CA
    certificates, and the host name or IP: ``server_hostname``, else the host connected to)
    or ``fingerprint`` (``SHA256:AB:...`` or 64 hex digits: the chain is not checked, Central's
    certificate must have exactly this SHA-256). Raises ``ValueError``."""
    if (ca_file is None) == (fingerprint is None):
        raise ValueError("give exactly one of ca_file (verify Central's certificate chain) or fingerprint "
                         "(pin Central's certificate)")
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    pin = None
    if ca_file is not None:
        path = os.fspath(ca_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"CA file {path} not found")
        try:
            context.load_verify_locations(cafile=path)
        except ssl.SSLError as exc:
            raise ValueError(f"CA file {path} holds no usable PEM certificate ({exc.reason or exc})") from None
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        pin = parse_fingerprint(fingerprint)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the pin, checked after the handshake, is the trust
    return TLSClient(context, pin=pin, server_hostname=server_hostname)


# -- TLS on memory buffers ------------------------------------------------------------------------


class TLSChannel:
    """One TLS connection on memory buffers (no I/O, not thread-safe: its driver serialises it).

    ``receive(raw)`` takes bytes read from the socket (``b""``: end of stream) and returns the
    decrypted bytes (the handshake runs inside it until ``handshaken``); ``encrypt(plain)``
    returns the bytes to write for ``plain``; ``outgoing()`` what else waits to be written
    (handshake messages, alerts); ``close()`` the close_notify to write. ``eof`` is set once the
    peer closed (close_notify or end of stream). Raises ``ssl.SSLError``."""

    __slots__ = ("_in", "_out", "_obj", "handshaken", "eof", "heard")

    def __init__(self, context: ssl.SSLContext, server_side: bool, server_hostname: str | None = None) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=server_side,
                                     server_hostname=None if server_side else server_hostname)
        self.handshaken = False
        self.eof = False
        self.heard = False  # any byte received yet

    def start(self) -> bytes:
        """A client's first flight (ClientHello)."""
        self._step()
        return self.outgoing()

    def receive(self, data: bytes) -> bytes:
        if data:
            self.heard = True
            self._in.write(data)
        else:
            self._in.write_eof()
            self.eof = True
        if not self.handshaken and not self._step():
            return b""
        pieces = []
        read = self._obj.read
        incoming = self._in
        pending = self._obj.pending
        while True:
            try:
                piece = read(_READ)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # close_notify, or the stream ended
                self.eof = True
                break
            if not piece:
                self.eof = True
                break
            pieces.append(piece)
            if not incoming.pending and not pending():  # all taken (a record is read whole): no
                break  # second read, and no exception raised, for each record
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _step(self) -> bool:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.handshaken = True
        return True

    def encrypt(self, data: bytes) -> bytes:
        if data:
            self._obj.write(data)
        return self._out.read() if self._out.pending else b""

    def outgoing(self) -> bytes:
        return self._out.read() if self._out.pending else b""

    def close(self) -> bytes:
        """close_notify (once handshaken; best effort)."""
        if not self.handshaken:
            return b""
        try:
            self._obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError, ValueError):  # (it does not wait for the peer's)
            pass
        return self.outgoing()

    def peer_certificate(self) -> bytes | None:
        """The peer's certificate, DER (None when it sent none)."""
        return self._obj.getpeercert(binary_form=True)

    @property
    def version(self) -> str | None:
        return self._obj.version()


# -- a Monitor's side -------------------------------------------------------------------------------


class TLSClient:
    """How a Monitor opens TLS to Central (build it with ``client_context``): ``handshake``
    (memory buffers, what ``Link.connect(..., tls=client)`` uses) or ``wrap`` (an
    ``ssl.SSLSocket``). Both verify Central per the context (CA file) and then the pinned
    fingerprint, raising ``CertificateRejected``; ``TLSError``/``TLSTimeout`` otherwise."""

    def __init__(self, context: ssl.SSLContext, *, pin: bytes | None = None, server_hostname: str | None = None) -> None:
        if pin is not None and len(pin) != 32:
            raise ValueError("a pin is a 32-byte SHA-256 digest")
        if pin is None and context.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError("a TLSClient without a pin needs a context that verifies the certificate "
                             "(CERT_REQUIRED): it would trust any server")
        self.context = context
        self.pin = pin
        self.server_hostname = server_hostname

    @property
    def pinned(self) -> str | None:
        return None if self.pin is None else format_fingerprint(self.pin)

    def __repr__(self) -> str:
        how = f"pin {self.pinned}" if self.pin is not None else "CA file"
        return f"TLSClient({how}, server_hostname={self.server_hostname!r})"

    def check(self, der: bytes | None, peer: str) -> str:
        """The pin check (a no-op without a pin); returns the peer certificate's fingerprint."""
        if not der:
            raise CertificateRejected(f"{peer} sent no certificate")
        digest = hashlib.sha256(der).digest()
        if self.pin is not None and not hmac.compare_digest(digest, self.pin):
            raise CertificateRejected(f"{peer}'s certificate {format_fingerprint(digest)} does not match the "
                                      f"pinned fingerprint {format_fingerprint(self.pin)}")
        return format_fingerprint(digest)

    def handshake(self, sock: socket.socket, server_hostname: str | None = None, *, timeout: float = 3.0,
                  peer: str | None = None) -> TLSChannel:
        """TLS over the connected blocking ``sock`` within ``timeout`` s; returns the channel once
        the peer is verified. The socket is left open (its owner closes it on failure)."""
        hostname = self.server_hostname or server_hostname
        peer = peer or _peer_of(sock)
        deadline = time.monotonic() + timeout
        _no_delay(sock)
        channel = TLSChannel(self.context, server_side=False, server_hostname=hostname)
        try:
            out = channel.start()
            while True:
                if out:
                    _send_by(sock, out, deadline, peer, timeout)
                if channel.handshaken:
                    break
                raw = _recv_by(sock, deadline, peer, timeout)
                if not raw:
                    raise TLSError(f"{peer} closed the connection during the TLS handshake (is it a TLS port? "
                                   f"does it accept this client?)")
                if not channel.heard and not _looks_like_tls(raw):
                    raise TLSError(f"{peer} does not speak TLS: it answered the TLS handshake with {raw[:16]!r} "
                                   f"(a plaintext port?)")
                channel.receive(raw)
                out = channel.outgoing()
        except ssl.SSLCertVerificationError as exc:
            _send_quietly(sock, channel.outgoing())  # the alert: the server learns why
            raise CertificateRejected(f"{peer}'s certificate was not accepted: "
                                      f"{exc.verify_message or exc.reason or exc}") from None
        except ssl.SSLError as exc:
            _send_quietly(sock, channel.outgoing())
            raise TLSError(_handshake_failure(peer, exc)) from None
        fingerprint = self.check(channel.peer_certificate(), peer)
        log.debug("TLS with %s: %s, certificate %s", peer, channel.version, fingerprint)
        return channel

    def wrap(self, sock: socket.socket, server_hostname: str | None = None, *,
             timeout: float = 3.0) -> ssl.SSLSocket:
        """``sock`` as an ``ssl.SSLSocket``, handshaken within ``timeout`` s and verified. On
        failure it is closed. The socket keeps ``timeout`` for later operations."""
        hostname = self.server_hostname or server_hostname
        peer = _peer_of(sock)
        _no_delay(sock)
        sock.settimeout(timeout)
        tls = self.context.wrap_socket(sock, server_hostname=hostname, do_handshake_on_connect=False)
        try:
            try:
                tls.do_handshake()
            except socket.timeout:
                raise TLSTimeout(f"{peer} did not complete the TLS handshake within {timeout:g} s") from None
            except ssl.SSLCertVerificationError as exc:
                raise CertificateRejected(f"{peer}'s certificate was not accepted: "
                                          f"{exc.verify_message or exc.reason or exc}") from None
            except ssl.SSLError as exc:
                raise TLSError(_handshake_failure(peer, exc)) from None
            except OSError as exc:
                raise TLSError(f"TLS handshake with {peer} failed: {exc.strerror or exc}") from None
            self.check(tls.getpeercert(binary_form=True), peer)
        except BaseException:
            tls.close()
            raise
        return tls


_NOT_TLS = ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
            "HTTP_REQUEST", "UNEXPECTED_EOF_WHILE_READING", "EOF", "RECORD_LENGTH_MISMATCH",
            "UNEXPECTED_MESSAGE")


def _looks_like_tls(data: bytes) -> bool:
    """A TLS record begins with its type (20 to 23) and the major version 3."""
    return 20 <= data[0] <= 23 and (len(data) < 2 or data[1] == 3)


def _handshake_failure(peer: str, exc: ssl.SSLError) -> str:
    reason = exc.reason or str(exc)
    hint = " (does it speak TLS?)" if any(key in str(reason).upper() for key in _NOT_TLS) else ""
    return f"TLS handshake with {peer} failed: {reason}{hint}"


def _no_delay(sock: socket.socket) -> None:
    """Small records go out at once: without it the Finished and the first record after it
    (the ENQ) wait for a delayed ACK (about 40 ms)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def _peer_of(sock: socket.socket) -> str:
    try:
        address = sock.getpeername()
        return f"{address[0]}:{address[1]}"
    except (OSError, IndexError, TypeError):
        return "the server"


def _left(deadline: float, peer: str, timeout: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TLSTimeout(f"{peer} did not complete the TLS handshake within {timeout:g} s")
    return left


def _send_by(sock: socket.socket, data: bytes, deadline: float, peer: str, timeout: float) -> None:
    sock.settimeout(_left(deadline, peer, timeout))
    try:
        sock.sendall(data)
    except socket.timeout:
        raise TLSTimeout(f"{peer} did not take the TLS handshake within {timeout:g} s") from None
    except OSError as exc:
        raise TLSError(f"TLS handshake with {peer} failed: {exc.strerror or exc}") from None


def _recv_by(sock: socket.socket, deadline: float, peer: str, timeout: float) -> bytes:
    try:
        if not _readable(sock, _left(deadline, peer, timeout)):
            raise TLSTimeout(f"{peer} did not complete the TLS handshake within {timeout:g} s")
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        return sock.recv(_READ)
    except socket.timeout:
        raise TLSTimeout(f"{peer} did not complete the TLS handshake within {timeout:g} s") from None
    except TLSError:
        raise
    except OSError as exc:
        raise TLSError(f"TLS handshake with {peer} failed: {exc.strerror or exc}") from None


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """Best effort, never waits long: an alert or close_notify before the socket closes."""
    if not data:
        return
    try:
        sock.settimeout(0.2)
        sock.sendall(data)
    except OSError:
        pass


def _readable(sock: socket.socket, timeout: float) -> bool:
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(max(0.0, timeout) * 1000))
    readable, _, _ = select.select([sock], [], [], max(0.0, timeout))
    return bool(readable)
