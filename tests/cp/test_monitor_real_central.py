"""The issue's "restore keys" story with the real parts: Central in secure mode (in this process,
SQLite, its TLS certificate pinned), the real Engine behind its socket, and EV_CP_M as a process
on a terminal (a pty) with its credential file. The CP registers with its credential and the
Engine gets its key; ``keys revoke CP001`` puts it out of service at once; the Monitor says why,
does not come back by itself, and [a] brings the CP back with a new key."""

from __future__ import annotations

import threading

import pytest

from ev_central.app import Central
from ev_central.store import open_store
from ev_common.credentials import hash_credential, new_credential
from ev_common.tls import ensure_certificate, server_context
from ev_common.words import ACTIVADO, DESCONECTADO, KEYS_REVOKED
from ev_cp_engine.engine import Engine
from ev_cp_engine.health_server import HealthServer
from tests.cp.fakes import FAST, HOST
from tests.cp.terminal import OnTerminal
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(90)

CP = "CP001"
MASTER = bytes(range(32))


class CountedEngine(Engine):
    """The real Engine; counts its Monitor's health checks (a clock for "nothing happened")."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.checks = 0
        self._counted = threading.Lock()

    def health(self, cp_id: str):
        with self._counted:
            self.checks += 1
        return super().health(cp_id)


def test_keys_revoked_at_central_put_the_cp_out_of_service_until_the_monitor_authenticates_again(tmp_path):
    db = f"sqlite:///{tmp_path / 'central.db'}"
    credential = new_credential()
    store = open_store(db)
    store.register_cp(CP, "C/Mayor, 45", "0.48", hash_credential(credential))  # EV_Registry's part
    store.close()
    certificate = ensure_certificate(tmp_path / "tls", "ev_central", [HOST])
    central = Central(open_store(db), HOST, 0, link_config=FAST, secure=True,
                      tls=server_context(certificate.cert_path, certificate.key_path), master_key=MASTER).start()
    engine = CountedEngine(say=lambda text: None)
    server = HealthServer(engine, HOST, 0, config=FAST).start()
    path = tmp_path / "cp001.credential"
    path.write_text(credential + "\n")
    path.chmod(0o600)
    monitor = OnTerminal("ev_cp_monitor/EV_CP_M.py", [
        "--cp_id", CP, "--central_ip", HOST, "--central_port", str(central.address[1]), "--engine_ip", HOST,
        "--engine_port", str(server.address[1]), "--credentials", str(path),
        "--central-fingerprint", certificate.fingerprint], tmp_path)

    def state() -> str | None:
        row = central.network.get(CP)
        return row.state if row is not None else None

    try:
        wait_until(lambda: state() == ACTIVADO and engine.key_version == 1, 20, "CP001 registered, its key given")
        mark = monitor.wait_for("key version 1 from Central, passed to the Engine")
        # the operator's "keys revoke CP001"
        assert central.revoke_keys(CP).startswith(f"{CP}: keys revoked")
        wait_until(lambda: engine.revoked == KEYS_REVOKED and engine.key_version is None, 10, "the Engine told")
        mark = monitor.wait_for(f"keys revoked by Central: {KEYS_REVOKED}; press [a] to authenticate again",
                                after=mark)
        assert state() == DESCONECTADO
        seen = engine.checks
        wait_until(lambda: engine.checks >= seen + 4, 10, "4 more health checks")
        assert state() == DESCONECTADO and central.keys.revoked(CP)  # the Monitor did not come back by itself
        monitor.press("a")
        wait_until(lambda: state() == ACTIVADO and engine.key_version == 2, 20, "CP001 back with a new key")
        assert engine.revoked is None
        mark = monitor.wait_for("key version 2 from Central", after=mark)
        monitor.press("q")
        assert monitor.proc.wait(15) == 0
        assert credential not in monitor.output()
    finally:
        monitor.close()
        server.stop()
        central.stop()
