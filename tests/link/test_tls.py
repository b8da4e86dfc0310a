"""TLS on the Central <-> Monitor link, over real loopback sockets (port 0): a Monitor-like
``Link`` with a ``TLSClient`` against a ``LinkReactor`` with a TLS context. Verification by CA
file (a test CA and a leaf it signed: accepted; another CA, a wrong host: refused) and by a
pinned fingerprint (``ensure_certificate``'s self-signed certificate: accepted; a wrong pin:
refused, naming both); peers that do not speak TLS on either side; handshake deadlines on
both sides; 200 TLS sessions at once; ``ensure_certificate`` and the fingerprint helpers."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ev_common.link import Link, LinkBroken, LinkClosed, LinkConfig, LinkError, LinkTimeout, SessionRefused
from ev_common.protocol import ACK, ENQ, Auth, Hb, Message, MessageError, Reg, encode_frame
from ev_common.reactor import LinkReactor, TLSReactorLink
from ev_common.tls import (
    CertificateRejected,
    TLSChannel,
    TLSClient,
    TLSError,
    TLSTimeout,
    client_context,
    ensure_certificate,
    fingerprint_of,
    format_fingerprint,
    parse_fingerprint,
    server_context,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

FAST = LinkConfig(connect_timeout=1.0, handshake_timeout=1.0, ack_timeout=1.0, max_retries=3, write_timeout=1.0)
SLACK = 1.5  # what a loaded machine may add to a deadline


# -- certificates made for the tests ------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _key_and_name(common_name: str):
    return ec.generate_private_key(ec.SECP256R1()), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, key, cert: x509.Certificate) -> Pair:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Pair(cert_path, key_path)


def make_ca(directory: Path, stem: str):
    key, name = _key_and_name(f"{stem} test CA")
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert, _write(directory, stem, key, cert)


def make_leaf(directory: Path, stem: str, ca_key, ca_cert: x509.Certificate, hosts: list[str]) -> Pair:
    key, name = _key_and_name(stem)
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return _write(directory, stem, key, cert)


@dataclass(frozen=True)
class PKI:
    ca: Path  # the CA that signed ``central`` and ``elsewhere``
    other_ca: Path  # a CA that signed nothing of Central's
    central: Pair  # for localhost and 127.0.0.1
    elsewhere: Pair  # for central.example only
    self_signed_dir: Path  # where ensure_certificate made "central"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert, ca = make_ca(directory, "ca")
    _, _, other = make_ca(directory, "other-ca")
    central = make_leaf(directory, "central", ca_key, ca_cert, ["localhost", "127.0.0.1"])
    elsewhere = make_leaf(directory, "elsewhere", ca_key, ca_cert, ["central.example"])
    self_signed = directory / "self-signed"
    ensure_certificate(self_signed, "central", ["localhost", "127.0.0.1"])
    return PKI(ca.cert, other.cert, central, elsewhere, self_signed)


def self_signed(pki: PKI):
    return ensure_certificate(pki.self_signed_dir, "central", ["localhost", "127.0.0.1"])


# -- a tiny handler -------------------------------------------------------------------------------


class Handler:
    """REG is answered AUTH#OK on a worker; HB is served inline; everything is recorded."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.links: list = []
        self.messages: list[tuple[int, Message | MessageError]] = []
        self.closes: list[tuple[int, str]] = []

    def opened(self, link) -> int:
        with self.lock:
            self.links.append(link)
            return len(self.links) - 1

    def inline(self, state: int, message) -> bool | None:
        if not isinstance(message, Hb):
            return None
        with self.lock:
            self.messages.append((state, message))
        return True

    def message(self, state: int, message):
        with self.lock:
            self.messages.append((state, message))
        if isinstance(message, Reg):
            return Auth.accepted(f"hello {message.cp_id}")
        return True

    def closed(self, state: int, cause: str) -> None:
        with self.lock:
            self.closes.append((state, cause))

    def served(self) -> list[Message | MessageError]:
        with self.lock:
            return [m for _, m in self.messages]


class Net:
    """Reactors, links and sockets of one test, all closed at its end."""

    def __init__(self) -> None:
        self.reactors: list[LinkReactor] = []
        self.links: list[Link] = []
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()

    def serve(self, handler: Handler, pair: Pair | None, **kwargs) -> LinkReactor:
        kwargs.setdefault("config", FAST)
        kwargs.setdefault("name", "tls-test")
        tls = server_context(pair.cert, pair.key) if pair is not None else None
        reactor = LinkReactor("127.0.0.1", 0, handler, tls=tls, **kwargs).start()
        self.reactors.append(reactor)
        return reactor

    def connect(self, address, tls: TLSClient | None, config: LinkConfig = FAST, host: str = "127.0.0.1") -> Link:
        link = Link.connect(host, address[1], config=config, tls=tls)
        with self.lock:
            self.links.append(link)
        return link

    def raw(self, address) -> socket.socket:
        sock = socket.create_connection(address, timeout=5)
        self.socks.append(sock)
        return sock

    def close(self) -> None:
        for link in self.links:
            link.close()
        for sock in self.socks:
            sock.close()
        for reactor in self.reactors:
            reactor.stop(grace=2.0)


@pytest.fixture
def net() -> Iterator[Net]:
    net = Net()
    try:
        yield net
    finally:
        net.close()


def register(link: Link, cp_id: str = "CP001") -> None:
    link.send(Reg(cp_id, "C/Mayor, 45", Decimal("0.48")))
    assert link.recv(timeout=5) == Auth.accepted(f"hello {cp_id}")


def timed(action: Callable[[], object]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        action()
    except BaseException as exc:  # the test looks at it
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def read_to_end(sock: socket.socket) -> bytes:
    """What arrives until the peer closes (each recv bounded by the socket's timeout)."""
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def still_serves(net: Net, reactor: LinkReactor, client: TLSClient, handler: Handler, cp_id: str) -> None:
    link = net.connect(reactor.address, client)
    register(link, cp_id)
    link.send(Hb(cp_id))
    wait_until(lambda: Hb(cp_id) in handler.served(), 3, f"{cp_id}'s HB served")


# -- sessions over TLS ----------------------------------------------------------------------------


def test_a_monitor_registers_and_beats_over_tls_verified_by_a_ca_file(net: Net, pki: PKI) -> None:
    handler = Handler()
    reactor = net.serve(handler, pki.central)
    client = client_context(ca_file=pki.ca)

    link = net.connect(reactor.address, client)
    register(link)
    for _ in range(3):
        link.send(Hb("CP001"))

    wait_until(lambda: len(handler.served()) == 4, 3, "REG and 3 HB served")
    assert handler.served() == [Reg("CP001", "C/Mayor, 45", Decimal("0.48"))] + [Hb("CP001")] * 3
    assert link.tls_version in ("TLSv1.2", "TLSv1.3")
    (server_link,) = handler.links
    assert isinstance(server_link, TLSReactorLink) and server_link.tls_version == link.tls_version
    assert link.stats["retransmitted"] == 0 and reactor.session_count() == 1

    link.close()
    wait_until(lambda: handler.closes, 3, "the session to end")
    assert "EOT" in handler.closes[0][1]


def test_the_host_name_checked_may_be_named_apart_from_the_address(net: Net, pki: PKI) -> None:
    reactor = net.serve(Handler(), pki.elsewhere)
    link = net.connect(reactor.address, client_context(ca_file=pki.ca, server_hostname="central.example"))
    register(link)


def test_tls_1_2_is_enough(net: Net, pki: PKI) -> None:
    reactor = net.serve(Handler(), pki.central)
    client = client_context(ca_file=pki.ca)
    client.context.maximum_version = ssl.TLSVersion.TLSv1_2

    link = net.connect(reactor.address, client)
    register(link)
    assert link.tls_version == "TLSv1.2"


def test_server_pushes_and_closes_over_tls(net: Net, pki: PKI) -> None:
    handler = Handler()
    reactor = net.serve(handler, pki.central)
    link = net.connect(reactor.address, client_context(ca_file=pki.ca))
    register(link)
    (server_link,) = handler.links

    acked = threading.Event()
    assert reactor.send(server_link, Auth.accepted("pushed"), lambda ok: ok and acked.set())
    assert link.recv(timeout=3) == Auth.accepted("pushed")  # (reading, the client ACKs it)
    assert acked.wait(3)
    server_link.close("kicked out by the test")
    with pytest.raises(LinkClosed, match="EOT"):
        link.recv(timeout=3)
    wait_until(lambda: handler.closes, 3, "closed to run")
    assert handler.closes == [(0, "kicked out by the test")]


def test_stop_ends_tls_sessions(net: Net, pki: PKI) -> None:
    handler = Handler()
    reactor = net.serve(handler, pki.central)
    links = [net.connect(reactor.address, client_context(ca_file=pki.ca)) for _ in range(3)]
    wait_until(lambda: reactor.session_count() == 3, 3, "3 open sessions")

    reactor.stop()

    for link in links:
        with pytest.raises(LinkClosed, match="EOT"):
            link.recv(timeout=3)
    assert sorted(handler.closes) == [(n, "server shutting down") for n in range(3)]


def test_wrap_gives_a_verified_ssl_socket(net: Net, pki: PKI) -> None:
    reactor = net.serve(Handler(), pki.central)
    sock = net.raw(reactor.address)

    tls = client_context(ca_file=pki.ca).wrap(sock, "127.0.0.1", timeout=3)
    net.socks.append(tls)
    tls.sendall(bytes((ENQ,)))

    assert tls.recv(1) == bytes((ACK,))
    assert fingerprint_of(tls.getpeercert(binary_form=True)) == fingerprint_of(pki.central.cert.read_bytes())


def test_sessions_past_the_limit_are_refused_over_tls(net: Net, pki: PKI) -> None:
    reactor = net.serve(Handler(), pki.central, max_sessions=1)
    client = client_context(ca_file=pki.ca)
    register(net.connect(reactor.address, client))

    with pytest.raises(SessionRefused, match="NACK"):
        net.connect(reactor.address, client)
    assert reactor.session_count() == 1


def test_a_corrupt_record_breaks_only_its_session(net: Net, pki: PKI) -> None:
    handler = Handler()
    reactor = net.serve(handler, pki.central)
    client = client_context(ca_file=pki.ca)
    other = net.connect(reactor.address, client)
    register(other, "CP002")
    sock = net.raw(reactor.address)
    channel = client.handshake(sock, "127.0.0.1", timeout=3)
    sock.sendall(channel.encrypt(bytes((ENQ,))))
    assert channel.receive(sock.recv(4096)) == bytes((ACK,))
    wait_until(lambda: reactor.session_count() == 2, 3, "the session to open")

    sock.sendall(b"\x17\x03\x03\x00\x20" + bytes(range(32)))  # application data that does not decrypt

    assert len(read_to_end(sock)) < 64  # an alert at most, then closed
    wait_until(lambda: handler.closes, 3, "the broken session to end")
    assert len(handler.closes) == 1 and "TLS session failed" in handler.closes[0][1]
    other.send(Hb("CP002"))
    wait_until(lambda: Hb("CP002") in handler.served(), 3, "the other session's HB")


# -- verification refused ---------------------------------------------------------------------------


def test_a_certificate_from_another_ca_is_refused(net: Net, pki: PKI) -> None:
    handler = Handler()
    reactor = net.serve(handler, pki.central)

    with pytest.raises(CertificateRejected, match="not accepted: .*(issuer|verify)"):
        net.connect(reactor.address, client_context(ca_file=pki.other_ca))
    assert handler.links == []
    still_serves(net, reactor, client_context(ca_file=pki.ca), handler, "CP002")


def test_a_certificate_for_another_host_is_refused(net: Net, pki: PKI) -> None:
    reactor = net.serve(Handler(), pki.elsewhere)  # names central.example only

    with pytest.raises(CertificateRejected, match="mismatch"):
        net.connect(reactor.address, client_context(ca_file=pki.ca))  # as 127.0.0.1
    with pytest.raises(CertificateRejected, match="mismatch"):
        net.connect(reactor.address, client_context(ca_file=pki.ca), host="localhost")


@pytest.mark.parametrize("form", ["colons", "plain hex"])
def test_a_pinned_fingerprint_is_accepted(net: Net, pki: PKI, form: str) -> None:
    cert = self_signed(pki)
    pin = cert.fingerprint if form == "colons" else cert.fingerprint[7:].replace(":", "").lower()
    handler = Handler()
    reactor = net.serve(handler, Pair(cert.cert_path, cert.key_path))

    link = net.connect(reactor.address, client_context(fingerprint=pin))
    register(link)


def test_a_wrong_pin_is_refused_naming_both_fingerprints(net: Net, pki: PKI) -> None:
    cert = self_signed(pki)
    handler = Handler()
    reactor = net.serve(handler, Pair(cert.cert_path, cert.key_path))
    wrong = format_fingerprint(bytes(range(32)))

    error, elapsed = timed(lambda: net.connect(reactor.address, client_context(fingerprint=wrong)))

    assert isinstance(error, CertificateRejected) and isinstance(error, LinkBroken), error
    assert cert.fingerprint in str(error) and wrong in str(error) and "does not match the pinned" in str(error)
    assert elapsed < FAST.handshake_timeout
    assert handler.links == []
    still_serves(net, reactor, client_context(fingerprint=cert.fingerprint), handler, "CP002")


def test_the_ca_file_does_not_stand_in_for_the_pin(net: Net, pki: PKI) -> None:
    """A pinned client checks the pin even for a certificate a CA would vouch for."""
    reactor = net.serve(Handler(), pki.central)
    with pytest.raises(CertificateRejected, match="does not match the pinned"):
        net.connect(reactor.address, client_context(fingerprint=self_signed(pki).fingerprint))


# -- peers that do not speak TLS --------------------------------------------------------------------


def test_a_plaintext_monitor_is_closed_logged_once_and_tls_sessions_go_on(net: Net, pki: PKI, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="ev_common")
    handler = Handler()
    reactor = net.serve(handler, pki.central)
    client = client_context(ca_file=pki.ca)
    link = net.connect(reactor.address, client)
    register(link)

    error, elapsed = timed(lambda: net.connect(reactor.address, None))  # ENQ in plaintext
    assert isinstance(error, LinkBroken) and "instead of answering ENQ" in str(error), error
    assert elapsed < FAST.handshake_timeout

    sock = net.raw(reactor.address)  # a frame in plaintext (a peer without ENQ)
    where = "%s:%d" % sock.getsockname()[:2]
    sock.sendall(encode_frame(Hb("CP009").to_data()))
    assert sock.recv(64) == b""  # closed, nothing answered

    wait_until(lambda: [r for r in caplog.records if where in r.getMessage()], 3, "the log line")
    lines = [r for r in caplog.records if where in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno in (logging.INFO, logging.WARNING), lines
    assert "not a TLS client" in lines[0].getMessage() and "STX" in lines[0].getMessage()
    link.send(Hb("CP001"))
    wait_until(lambda: Hb("CP001") in handler.served(), 3, "the TLS session's HB")
    assert len(handler.links) == 1 and handler.closes == [] and reactor.session_count() == 1
    still_serves(net, reactor, client, handler, "CP002")


def test_a_tls_monitor_at_a_plaintext_port_fails_clearly_within_the_timeout(net: Net, pki: PKI) -> None:
    handler = Handler()
    reactor = net.serve(handler, None)

    error, elapsed = timed(lambda: net.connect(reactor.address, client_context(ca_file=pki.ca)))

    assert isinstance(error, TLSError), error
    assert "TLS" in str(error) and "127.0.0.1" in str(error)
    assert elapsed < FAST.handshake_timeout + SLACK
    assert handler.closes == []  # (the server may have taken a byte of the ClientHello for ENQ)


def test_a_tls_monitor_whose_server_never_answers_gives_up_at_the_handshake_timeout(net: Net, pki: PKI) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel completes TCP; nobody reads
    net.socks.append(silent)
    config = replace(FAST, handshake_timeout=0.3)

    error, elapsed = timed(lambda: net.connect(silent.getsockname(), client_context(ca_file=pki.ca), config))

    assert isinstance(error, TLSTimeout) and isinstance(error, LinkTimeout), error
    assert "did not complete the TLS handshake within 0.3 s" in str(error)
    assert 0.29 <= elapsed < 0.3 + SLACK


@pytest.mark.parametrize("sends", ["nothing", "half a ClientHello"])
def test_a_client_that_does_not_finish_the_handshake_is_closed_at_the_deadline(net: Net, pki: PKI, caplog,
                                                                               sends: str) -> None:
    caplog.set_level(logging.DEBUG, logger="ev_common")
    handler = Handler()
    reactor = net.serve(handler, pki.central, config=replace(FAST, handshake_timeout=0.3))
    sock = net.raw(reactor.address)
    where = "%s:%d" % sock.getsockname()[:2]
    if sends != "nothing":
        hello = TLSChannel(client_context(ca_file=pki.ca).context, server_side=False, server_hostname="localhost")
        sock.sendall(hello.start()[:20])
    started = time.monotonic()

    assert sock.recv(64) == b""  # closed, nothing answered (the socket itself gives up after 5 s)

    assert 0.25 <= time.monotonic() - started < 0.3 + SLACK
    verb = "start" if sends == "nothing" else "complete"
    wait_until(lambda: any(f"did not {verb} the TLS handshake" in r.getMessage() and where in r.getMessage()
                           for r in caplog.records), 3, "the log line")
    assert handler.links == [] and reactor.session_count() == 0
    still_serves(net, reactor, client_context(ca_file=pki.ca), handler, "CP002")


# -- many sessions ------------------------------------------------------------------------------------


def test_200_tls_sessions_at_once_with_heartbeats(net: Net, pki: PKI) -> None:
    clients, beats = 200, 3
    config = replace(FAST, connect_timeout=10.0, handshake_timeout=10.0, ack_timeout=3.0, write_timeout=5.0)
    handler = Handler()
    reactor = net.serve(handler, pki.central, config=config)
    client = client_context(ca_file=pki.ca)
    go = threading.Event()
    errors: list[BaseException] = []

    def monitor(i: int) -> None:
        try:
            link = net.connect(reactor.address, client, config)
            register(link, f"CP{i:03d}")
            assert go.wait(30)
            for _ in range(beats):
                link.send(Hb(f"CP{i:03d}"))
            link.close()
        except BaseException as exc:  # the test looks at them
            errors.append(exc)

    threads = [threading.Thread(target=monitor, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    wait_until(lambda: reactor.session_count() == clients or errors, 30, f"{clients} open sessions")
    go.set()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads) and errors == []

    wait_until(lambda: len(handler.closes) == clients, 10, "every session to end")
    counts = Counter(m.cp_id for m in handler.served() if isinstance(m, Hb))
    assert counts == {f"CP{i:03d}": beats for i in range(clients)}
    assert sum(isinstance(m, Reg) for m in handler.served()) == clients
    assert all(isinstance(link, TLSReactorLink) for link in handler.links)


# -- certificates and fingerprints ------------------------------------------------------------------------


def test_ensure_certificate_makes_the_pair_once_then_loads_it(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="ev_common.tls")
    directory = tmp_path / "certs"

    made = ensure_certificate(directory, "central", ["central.local", "127.0.0.1", "::1"])

    assert made.created and made.cert_path == directory / "central.crt" and made.key_path == directory / "central.key"
    assert stat.S_IMODE(os.stat(made.key_path).st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["central.crt", "central.key"]  # no temporary left
    pem = made.cert_path.read_bytes()
    assert made.fingerprint == fingerprint_of(pem)
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "central"
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.DNSName) == ["central.local"]
    assert alt.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    lasts = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3649) < lasts < datetime.timedelta(days=3651)
    mtimes = (made.cert_path.stat().st_mtime_ns, made.key_path.stat().st_mtime_ns)

    loaded = ensure_certificate(directory, "central", ["central.local", "127.0.0.1", "::1"])

    assert not loaded.created and loaded.fingerprint == made.fingerprint
    assert (loaded.cert_path.stat().st_mtime_ns, loaded.key_path.stat().st_mtime_ns) == mtimes
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "made a self-signed certificate" in text and "loaded the certificate" in text
    assert text.count(made.fingerprint) == 2
    assert "PRIVATE KEY" not in text and made.key_path.read_text().split("\n")[1] not in text


def test_ensure_certificate_refuses_half_a_pair_and_a_foreign_key(tmp_path: Path) -> None:
    one = ensure_certificate(tmp_path / "one", "central", ["localhost"])
    two = ensure_certificate(tmp_path / "two", "central", ["localhost"])
    two.key_path.write_bytes(one.key_path.read_bytes())
    with pytest.raises(ValueError, match="does not belong"):
        ensure_certificate(tmp_path / "two", "central", ["localhost"])

    one.key_path.unlink()
    with pytest.raises(ValueError, match="found .*central.crt but not .*central.key"):
        ensure_certificate(tmp_path / "one", "central", ["localhost"])
    with pytest.raises(ValueError, match="no host"):
        ensure_certificate(tmp_path / "three", "central", ["0.0.0.0", ""])
    with pytest.raises(ValueError, match="certificate name"):
        ensure_certificate(tmp_path / "three", "../central", ["localhost"])


def test_fingerprints_are_formatted_and_parsed(pki: PKI) -> None:
    pem = pki.central.cert.read_bytes()
    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    fingerprint = fingerprint_of(pem)

    assert fingerprint == fingerprint_of(der) and fingerprint.startswith("SHA256:")
    assert len(fingerprint) == 7 + 32 * 3 - 1 and fingerprint == fingerprint.upper()
    digest = parse_fingerprint(fingerprint)
    assert len(digest) == 32 and format_fingerprint(digest) == fingerprint
    assert parse_fingerprint(digest.hex()) == digest == parse_fingerprint(fingerprint.lower())
    for bad in ["", "SHA256:AB:CD", "zz" * 32, "SHA1:" + "00" * 20, digest.hex() + "00"]:
        with pytest.raises(ValueError, match="not a SHA-256 certificate fingerprint"):
            parse_fingerprint(bad)


def test_client_context_takes_exactly_one_way_to_verify(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        client_context()
    with pytest.raises(ValueError, match="exactly one"):
        client_context(ca_file=pki.ca, fingerprint=fingerprint_of(pki.central.cert.read_bytes()))
    with pytest.raises(FileNotFoundError, match="not found"):
        client_context(ca_file=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="not a SHA-256"):
        client_context(fingerprint="SHA256:00")
    pinned = client_context(fingerprint=fingerprint_of(pki.central.cert.read_bytes()))
    assert pinned.context.verify_mode == ssl.CERT_NONE and pinned.pin is not None
    checked = client_context(ca_file=pki.ca)
    assert checked.context.verify_mode == ssl.CERT_REQUIRED and checked.context.check_hostname
    for context in (pinned.context, checked.context, server_context(pki.central.cert, pki.central.key)):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(ValueError, match="would trust any server"):
        TLSClient(pinned.context)  # no pin, no verification: refused


def test_tls_errors_are_link_errors() -> None:
    """What a Monitor already catches around Link.connect also catches TLS failures."""
    assert issubclass(CertificateRejected, TLSError) and issubclass(TLSError, LinkBroken)
    assert issubclass(TLSTimeout, LinkTimeout) and issubclass(TLSTimeout, LinkError)
