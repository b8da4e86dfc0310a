"""EV_CP_M --registry against the real EV_Registry (a process, HTTPS, its certificate pinned) and
the real Central in secure mode on the same database: the Monitor registers its CP once, writes
the credential to a new 0600 file, authenticates with it and gets its key; started again it uses
the file and does not register again. Neither the credential nor the token is ever printed."""

from __future__ import annotations

import signal

import pytest

from ev_central.app import Central
from ev_central.store import open_store
from ev_common.protocol import Key
from ev_common.tls import ensure_certificate, server_context
from ev_common.words import ACTIVADO
from ev_registry.client import RegistryClient
from tests.cp.fakes import FAST, HOST
from tests.cp.secure_fakes import SessionEngine
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

CP = "CP007"
TOKEN = "monitor-test-operator-token-0123456789"
MASTER = bytes(range(32))


def private(path, text: str):
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_the_monitor_registers_its_cp_once_and_authenticates_with_the_credential_it_wrote(runner, tmp_path):
    db = f"sqlite:///{tmp_path / 'evcharging.db'}"
    token_file = private(tmp_path / "operator.token", TOKEN + "\n")
    registry = runner.start("registry", ["--port", "0", "--host", HOST, "--db", db, "--data-dir",
                                         str(tmp_path / "registry"), "--admin-token-file", str(token_file)],
                            package="ev_registry")
    url = registry.wait_for_output(r"EV_Registry listening on (https://127\.0\.0\.1:\d+)", timeout=30).group(1)
    pin = registry.wait_for_output(r"EV_Registry certificate fingerprint: (SHA256:[0-9A-F:]+)").group(1)
    certificate = ensure_certificate(tmp_path / "tls", "ev_central", [HOST])
    central = Central(open_store(db), HOST, 0, link_config=FAST, secure=True,
                      tls=server_context(certificate.cert_path, certificate.key_path), master_key=MASTER).start()
    engine = SessionEngine().start()
    credentials = tmp_path / "cp007.credential"
    args = ["--cp_id", CP, "--central_ip", HOST, "--central_port", str(central.address[1]), "--engine_ip", HOST,
            "--engine_port", str(engine.port), "--location", "Plaza Mayor 1", "--price", "0.52",
            "--credentials", str(credentials), "--registry", url, "--registry-token-file", str(token_file),
            "--registry-fingerprint", pin, "--central-fingerprint", certificate.fingerprint, "--log-level", "DEBUG"]
    try:
        monitor = runner.start("monitor", args, script="ev_cp_monitor/EV_CP_M.py")
        monitor.wait_for_output(rf"registered {CP} at EV_Registry; its credential is in {credentials} \(mode 0600\)",
                                timeout=30)
        assert engine.wait_for(Key, 20.0).version == 1
        wait_until(lambda: central.network.get(CP) is not None and central.network.get(CP).state == ACTIVADO, 10,
                   f"{CP} registered at Central")
        assert (credentials.stat().st_mode & 0o777) == 0o600
        credential = credentials.read_text().strip()
        with RegistryClient(url, TOKEN, fingerprint=pin) as client:
            first = client.get(CP)
        assert first["registered"] and first["location"] == "Plaza Mayor 1"
        assert monitor.stop(signal.SIGINT) == 0
        # started again: the file is there, the CP is not registered again
        again = runner.start("monitor-again", args, script="ev_cp_monitor/EV_CP_M.py")
        again.wait_for_output(rf"credentials file {credentials} exists: {CP} is not registered at EV_Registry again",
                              timeout=30)
        assert engine.wait_for(Key, 20.0, count=2).version == 1  # the same key: the same credential was accepted
        assert again.stop(signal.SIGINT) == 0
        assert credentials.read_text().strip() == credential
        with RegistryClient(url, TOKEN, fingerprint=pin) as client:
            assert client.get(CP) == first  # registered once
        for output in (monitor.output(), again.output()):
            assert credential not in output and TOKEN not in output
    finally:
        engine.stop()
        central.stop()
