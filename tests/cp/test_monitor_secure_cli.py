"""EV_CP_M in secure mode as a real process (started as users do, ``python EV_CP_M.py`` from its
folder) against a scripted Central over TLS and a fake Engine: the credential read from its
file travels in REG and never appears in the output nor the log; a file others can read, or a
credential without TLS, is refused at start; without a terminal an AUTH#KO ends the Monitor
after one REG and an RVK leaves it waiting; on a terminal (a pty) the menu's keys [s], [a]
and [q] work."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from ev_common.protocol import Chk, Key, Reg, Rvk, Sst
from tests.cp.secure_fakes import CREDENTIAL, SecureCentral, SessionEngine
from tests.cp.terminal import OnTerminal

pytestmark = pytest.mark.timeout(90)

CP = "CP001"
SCRIPT = "ev_cp_monitor/EV_CP_M.py"


@pytest.fixture
def peers(tmp_path):
    central = SecureCentral(tmp_path / "tls").start()
    engine = SessionEngine().start()
    yield central, engine
    engine.stop()
    central.stop()


def credentials_file(tmp_path: Path, text: str = CREDENTIAL, mode: int = 0o600) -> Path:
    path = tmp_path / "cp001.credential"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def monitor_args(central: SecureCentral, engine: SessionEngine, *extra: str) -> list[str]:
    return ["--cp_id", CP, "--central_ip", "127.0.0.1", "--central_port", str(central.port),
            "--engine_ip", "127.0.0.1", "--engine_port", str(engine.port), "--location", "C/Mayor, 45",
            "--price", "0.48", *extra]


def more_checks(engine: SessionEngine, count: int) -> None:
    seen = len(engine.of(Chk))
    engine.wait(lambda: len(engine.of(Chk)) >= seen + count, 10.0, f"{count} more health checks")


@pytest.mark.parametrize("verify", ["fingerprint", "ca"])
def test_the_credential_travels_in_reg_over_tls_and_never_in_the_output(runner, tmp_path, peers, verify):
    central, engine = peers
    trust = (["--central-fingerprint", central.fingerprint] if verify == "fingerprint"
             else ["--central-ca", str(central.certificate.cert_path)])  # self-signed: its own CA
    monitor = runner.start("monitor", monitor_args(central, engine, "--credentials",
                                                   str(credentials_file(tmp_path)), *trust, "--log-level", "DEBUG"),
                           script=SCRIPT)
    reg = central.wait_for(Reg, 15.0)
    assert reg.credential == CREDENTIAL
    key = engine.wait_for(Key, 5.0)
    assert key == central.keys[0]
    central.wait_for(Sst, 5.0)
    monitor.wait_for_output(r"key version 1 from Central, passed to the Engine")
    assert monitor.stop(signal.SIGINT) == 0
    output = monitor.output()
    assert "over TLS (certificate " in output
    assert CREDENTIAL not in output and key.key not in output
    assert "REG#" not in output or "#***" in output


def test_a_credentials_file_others_can_read_is_refused(runner, tmp_path, peers):
    central, engine = peers
    path = credentials_file(tmp_path, mode=0o644)
    monitor = runner.start("monitor", monitor_args(central, engine, "--credentials", str(path),
                                                   "--central-fingerprint", central.fingerprint), script=SCRIPT)
    assert monitor.wait_exit(15) == 1
    assert f"chmod 600 {path}" in monitor.output() and CREDENTIAL not in monitor.output()
    assert not central.links


def test_a_credential_travels_only_over_tls(runner, tmp_path, peers):
    central, engine = peers
    monitor = runner.start("monitor", monitor_args(central, engine, "--credentials", str(credentials_file(tmp_path))),
                           script=SCRIPT)
    assert monitor.wait_exit(15) == 2
    assert "a credential travels only over TLS: give --central-ca or --central-fingerprint" in monitor.output()


def test_without_a_terminal_auth_ko_ends_the_monitor_after_one_reg(runner, tmp_path, peers):
    central, engine = peers
    path = credentials_file(tmp_path, "evc1_" + "W" * 43)
    monitor = runner.start("monitor", monitor_args(central, engine, "--credentials", str(path),
                                                   "--central-fingerprint", central.fingerprint), script=SCRIPT)
    assert monitor.wait_exit(15) == 1
    assert "Central refused the registration: wrong credential for this CP" in monitor.output()
    assert len(central.of(Reg)) == 1


def test_without_a_terminal_revoked_keys_leave_the_cp_out_of_service(runner, tmp_path, peers):
    central, engine = peers
    monitor = runner.start("monitor", monitor_args(central, engine, "--credentials", str(credentials_file(tmp_path)),
                                                   "--central-fingerprint", central.fingerprint), script=SCRIPT)
    central.wait_for(Sst, 15.0)
    central.revoke("suspected breach")
    assert engine.wait_for(Rvk, 5.0).reason == "suspected breach"
    monitor.wait_for_output(r"keys revoked by Central: suspected breach; restart the Monitor to authenticate again")
    more_checks(engine, 4)
    assert len(central.of(Reg)) == 1
    assert monitor.stop(signal.SIGTERM) == 0


# -- the menu, on a terminal -------------------------------------------------------------------------------


def test_the_menu_shows_the_status_authenticates_again_and_quits(tmp_path, peers):
    central, engine = peers
    monitor = OnTerminal(SCRIPT, monitor_args(central, engine, "--credentials", str(credentials_file(tmp_path)),
                                      "--central-fingerprint", central.fingerprint), tmp_path)
    try:
        mark = monitor.wait_for("keys: [a] authenticate again, [s] status, [q] quit")
        central.wait_for(Sst, 15.0)
        mark = monitor.wait_for("[a] auth again [s] status [q] quit", after=mark)  # the status line's keys
        assert monitor.cbreak()
        monitor.press("s")
        mark = monitor.wait_for("key: version 1, held in memory and given to the Engine", after=mark)
        assert central.fingerprint in monitor.output()
        central.revoke("suspected breach")
        mark = monitor.wait_for("keys revoked by Central: suspected breach; press [a] to authenticate again",
                                after=mark)
        more_checks(engine, 4)
        assert len(central.of(Reg)) == 1  # out of service until [a]
        monitor.press("s")
        mark = monitor.wait_for("not registered: keys revoked (suspected breach)", after=mark)
        monitor.wait_for("key: none held", after=mark)
        monitor.press("a")
        central.wait_for(Reg, 10.0, count=2)
        assert engine.wait_for(Key, 10.0, count=2) == central.keys[1]
        mark = monitor.wait_for("key version 2 from Central", after=mark)
        monitor.press("q")
        assert monitor.proc.wait(15) == 0
        monitor.wait_for("Monitor stopped", after=mark)
        assert not monitor.cbreak()  # the terminal as it was
        assert CREDENTIAL not in monitor.output()
        assert not [k for k in central.keys if k.key in monitor.output()]
    finally:
        monitor.close()
