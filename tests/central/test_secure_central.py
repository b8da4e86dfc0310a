"""Central in secure mode on real sockets with TLS, on SQLite and MySQL (no Kafka): a CP's
credential checked in REG, its key issued and kept, every refusal (missing, wrong, unregistered,
deregistered, rate-limited), revocation and re-authentication, keys kept across a restart (and the
resumption ticket sparing the scrypt check), and open mode's KEY#<cp>#0."""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest

import ev_central.auth as auth_module
from ev_central.app import Central
from ev_central.store import open_store
from ev_common.credentials import hash_credential, new_credential
from ev_common.link import Link, LinkConfig, LinkError
from ev_common.protocol import Auth, Hb, Key, Message, Reg, Rvk
from ev_common.tls import client_context, ensure_certificate, server_context
from ev_common.words import DESCONECTADO, KEYS_REVOKED
from tests.support.waiting import wait_until

HOST = "127.0.0.1"
FAST = LinkConfig(connect_timeout=2.0, handshake_timeout=2.0, ack_timeout=1.0, max_retries=3, write_timeout=2.0)
QUIET = 3600.0
MASTER = bytes(range(32))


class Monitor:
    """A Monitor reduced to its TLS link; a thread queues what Central sends."""

    def __init__(self, central: Central, fingerprint: str) -> None:
        self.link = Link.connect(*central.address, FAST, tls=client_context(fingerprint=fingerprint))
        self.inbox: queue.Queue[Message] = queue.Queue()
        self.closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                message = self.link.recv(timeout=0.1)
                if message is not None:
                    self.inbox.put(message)
        except LinkError:
            self.closed.set()

    def next(self, timeout: float = 5.0) -> Message:
        return self.inbox.get(timeout=timeout)

    def register(self, cp_id: str, credential: str = "", ticket: str = "") -> tuple[Auth, Key | None]:
        self.link.send(Reg(cp_id, "what the Monitor says", Decimal("0.99"), credential, ticket))
        auth = self.next()
        assert isinstance(auth, Auth), auth
        return auth, (self.next() if auth.ok else None)

    def close(self) -> None:
        try:
            self.link.close("test over")
        except LinkError:
            pass


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def db_url(request, tmp_path) -> str:
    return request.getfixturevalue("fresh_mysql_url") if request.param == "mysql" else f"sqlite:///{tmp_path}/c.db"


@pytest.fixture
def certificate(tmp_path):
    return ensure_certificate(tmp_path / "tls", "ev_central", ["127.0.0.1"])


def start_central(db_url: str, certificate) -> Central:
    return Central(open_store(db_url), HOST, 0, silence_timeout=QUIET, link_config=FAST, secure=True,
                   tls=server_context(certificate.cert_path, certificate.key_path), master_key=MASTER).start()


@pytest.fixture
def registered(db_url) -> dict[str, str]:
    """CP001 and CP002 registered at EV_Registry (their credentials); CP003 deregistered."""
    store = open_store(db_url)
    credentials = {cp: new_credential() for cp in ("CP001", "CP002", "CP003")}
    for cp_id, credential in credentials.items():
        store.register_cp(cp_id, f"Registered {cp_id}", "0.45", hash_credential(credential))
    store.deregister_cp("CP003")
    store.close()
    return credentials


@pytest.fixture
def central(db_url, certificate, registered) -> Iterator[Central]:
    started = start_central(db_url, certificate)
    yield started
    started.stop()


@pytest.fixture
def connect(central, certificate) -> Iterator:
    opened: list[Monitor] = []

    def open_one() -> Monitor:
        opened.append(Monitor(central, certificate.fingerprint))
        return opened[-1]

    yield open_one
    for monitor in opened:
        monitor.close()


def test_a_registered_cp_gets_its_key_and_the_registrys_location(central, connect, registered):
    auth, key = connect().register("CP001", registered["CP001"])
    assert auth.ok and key.cp_id == "CP001" and key.version == 1 and len(key.key) == 43
    row = central.network.get("CP001")
    assert (row.location, row.price_eur_kwh) == ("Registered CP001", Decimal("0.45"))  # EV_Registry's, not REG's
    raw = base64.urlsafe_b64decode(key.key + "=")
    assert central.keys.key_for("CP001", 1) == raw
    stored = central.store.current_cp_key("CP001")
    assert stored.version == 1 and key.key not in stored.key_sealed and raw.hex() not in stored.key_sealed
    again, same = connect().register("CP001", registered["CP001"])  # a new session, the same key
    assert again.ok and same == key


@pytest.mark.parametrize("cp_id, credential, reason", [
    ("CP001", "", "REG must carry the CP's credential"),
    ("CP001", "evc1_" + "A" * 43, "wrong credential for CP001"),
    ("CP002", "CP001", "wrong credential for CP002"),
    ("CP009", "evc1_" + "A" * 43, "CP009 is not registered at EV_Registry"),
    ("CP003", "USE_CP003", "CP003 was deregistered at EV_Registry"),
])
def test_refusals_say_why_and_issue_nothing(central, connect, registered, cp_id, credential, reason):
    if credential == "CP001" or credential.startswith("USE_"):
        credential = registered[credential.removeprefix("USE_")]
    auth, _ = connect().register(cp_id, credential)
    assert not auth.ok and reason in auth.text, auth
    assert central.network.get(cp_id) is None and central.keys.version_of(cp_id) is None


def test_failed_attempts_are_rate_limited_even_with_the_right_credential_after(central, connect, registered):
    monitor = connect()
    for _ in range(5):
        auth, _ = monitor.register("CP002", "evc1_" + "B" * 43)
        assert not auth.ok
    auth, _ = monitor.register("CP002", registered["CP002"])
    assert not auth.ok and "too many failed attempts" in auth.text


def test_revoked_keys_put_the_cp_out_of_service_until_it_authenticates_again(central, connect, registered):
    monitor = connect()
    _, first = monitor.register("CP001", registered["CP001"])
    assert central.revoke_keys("CP001").startswith("CP001: keys revoked")
    rvk = monitor.next()
    assert isinstance(rvk, Rvk) and rvk.reason == KEYS_REVOKED
    assert monitor.closed.wait(5), "Central closes the session after RVK"
    assert central.network.get("CP001").state == DESCONECTADO and central.keys.revoked("CP001")
    assert central.keys.key_for("CP001", first.version) is None and central.store.current_cp_key("CP001") is None
    auth, second = connect().register("CP001", registered["CP001"])  # the Monitor's "authenticate again"
    assert auth.ok and second.version == first.version + 1 and second.key != first.key
    assert not central.keys.revoked("CP001")


def test_across_a_restart_the_key_is_kept_and_the_ticket_of_the_last_auth_spares_the_scrypt_check(
        db_url, certificate, registered, monkeypatch):
    checks: list[str] = []
    real = auth_module.verify_credential
    monkeypatch.setattr(auth_module, "verify_credential", lambda *args: checks.append(args[0]) or real(*args))
    first = start_central(db_url, certificate)
    try:
        monitor = Monitor(first, certificate.fingerprint)
        auth, key = monitor.register("CP001", registered["CP001"])
        monitor.close()
    finally:
        first.stop()
    assert auth.ok and auth.ticket and len(checks) == 1
    second = start_central(db_url, certificate)
    try:
        assert second.keys.key_for("CP001", key.version) == base64.urlsafe_b64decode(key.key + "=")
        monitor = Monitor(second, certificate.fingerprint)
        again, same = monitor.register("CP001", registered["CP001"], auth.ticket)
        monitor.close()
        assert again.ok and same == key and len(checks) == 1  # the same key, and no scrypt after the restart
        assert second.audit.wait_idle(5)
        entries = second.store.list_audit(action="auth")
        assert entries[-1].entry.details == f"authenticated with its resumption ticket; key v{key.version}"
    finally:
        second.stop()


def test_a_plaintext_monitor_cannot_talk_to_a_secure_central(central):
    with pytest.raises(LinkError):
        link = Link.connect(*central.address, FAST)
        link.send(Reg("CP001", "x", Decimal("0.4")))
        link.recv(timeout=2)


def test_open_mode_sends_key_zero_after_every_auth(tmp_path):
    central = Central(open_store(f"sqlite:///{tmp_path}/o.db"), HOST, 0, silence_timeout=QUIET,
                      link_config=FAST).start()
    try:
        link = Link.connect(*central.address, FAST)
        link.send(Reg("CP001", "C/Mayor, 45", Decimal("0.48")))
        answers = []
        deadline = time.monotonic() + 5
        while len(answers) < 2 and time.monotonic() < deadline:
            message = link.recv(timeout=0.2)
            if message is not None:
                answers.append(message)
        assert answers == [Auth.accepted(), Key("CP001", 0)]
        link.send(Hb("CP001"))
        with pytest.raises(ValueError, match="open mode"):
            central.revoke_keys("CP001")
        link.close("done")
    finally:
        central.stop()


def test_the_credential_is_never_logged(central, connect, registered, caplog):
    caplog.set_level(logging.DEBUG)
    connect().register("CP001", registered["CP001"])
    connect().register("CP002", "evc1_" + "C" * 43)
    wait_until(lambda: any("AUTH#KO" in r.getMessage() for r in caplog.records), 5, "the refusal logged")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert registered["CP001"] not in text and "C" * 43 not in text
    assert "REG#CP001#what the Monitor says#0.99#***" in text


def test_certificate_files_are_made_once(tmp_path):
    made = ensure_certificate(tmp_path, "ev_central", ["127.0.0.1"])
    assert oct(Path(made.key_path).stat().st_mode & 0o777) == "0o600"
    assert ensure_certificate(tmp_path, "ev_central", ["127.0.0.1"]).fingerprint == made.fingerprint


def test_the_certificate_command_makes_a_pair_once_and_prints_its_fingerprint(tmp_path, capsys):
    from ev_central.cli import main

    assert main(["certificate", "--dir", str(tmp_path / "tls"), "--host", "central", "--host", "localhost"]) == 0
    made = capsys.readouterr().out
    assert made.startswith(f"made {tmp_path / 'tls' / 'ev_central.crt'} (SHA256:")
    assert oct((tmp_path / "tls" / "ev_central.key").stat().st_mode & 0o777) == "0o600"
    assert main(["certificate", "--dir", str(tmp_path / "tls"), "--host", "central"]) == 0
    kept = capsys.readouterr().out
    assert kept.startswith("kept ") and kept.split("(")[1] == made.split("(")[1]  # the same fingerprint
    (tmp_path / "tls" / "ev_central.crt").unlink()  # a key without its certificate: refused, not replaced
    assert main(["certificate", "--dir", str(tmp_path / "tls"), "--host", "central"]) == 1
