"""The Monitor in secure mode, in-process against a scripted Central over TLS and fake Engines
on real loopback sockets: REG carries the credential; Central's KEY reaches the Engine before
anything else, and again first on every new Engine link; RVK reaches the Engine and the Monitor
waits for [a]; AUTH#KO stops the retries; a wrong pin is a transient failure; the status [s]
shows never the key."""

from __future__ import annotations

from datetime import datetime

import pytest

from ev_common.protocol import Chk, Hb, Key, Reg, Rvk, Sq, Sst
from ev_common.tls import client_context
from ev_cp_monitor.central_client import AGAIN, REFUSED, REVOKED
from ev_cp_monitor.screen import status_report
from tests.cp.fakes import PRICE, MonitorThread
from tests.cp.secure_fakes import CREDENTIAL, SecureCentral, SessionEngine

pytestmark = pytest.mark.timeout(60)

CP = "CP001"


@pytest.fixture
def rig(tmp_path):
    started = []

    def make(*, interactive: bool = True, credential: str = CREDENTIAL, pin: str | None = None,
             central: SecureCentral | None = None):
        central = central or SecureCentral(tmp_path / "tls").start()
        engine = SessionEngine().start()
        tls = client_context(fingerprint=pin or central.fingerprint)
        monitor = MonitorThread(central.port, engine.port, CP, tls=tls, interactive=interactive)
        monitor.client.registration = Reg(CP, "C/Mayor, 45", PRICE, credential)
        started.extend([monitor, engine, central])
        return central, engine, monitor.start()

    yield make
    for thing in started:
        thing.stop()


def engine_checks(engine: SessionEngine) -> int:
    return len(engine.of(Chk))


def quiet_for_checks(central: SecureCentral, engine: SessionEngine, checks: int, registrations: int) -> None:
    """While the Monitor checks its Engine ``checks`` more times (0.2 s apart), Central hears no
    new REG: the Monitor does not register again by itself."""
    seen = engine_checks(engine)
    engine.wait(lambda: engine_checks(engine) >= seen + checks, 5.0, f"{checks} more health checks")
    assert len(central.of(Reg)) == registrations


def test_reg_carries_the_credential_and_the_key_reaches_the_engine_first_on_every_link(rig):
    central, engine, monitor = rig()
    reg = central.wait_for(Reg, 10.0)
    assert reg.credential == CREDENTIAL and reg.cp_id == CP
    key = central.keys[0]
    assert engine.wait_for(Key, 5.0) == key  # the same version and key
    central.wait_for(Sst, 5.0)  # the registration's SQ came after it
    with engine._cond:
        order = [m.OPCODE for _, m in engine.by_session if isinstance(m, (Key, Sq))]
    assert order[0] == "KEY"
    assert monitor.client.status().key_version == 1 and monitor.client.status().tls_version.startswith("TLSv1")
    # the Engine restarts: on its new link the Monitor says KEY before anything else
    engine = engine.restart()
    engine.wait(lambda: engine.first_of_session(1) is not None, 10.0, "the Monitor's new link")
    assert engine.first_of_session(1) == key
    assert any(line == "key version 1 from Central, passed to the Engine" for line in monitor.lines)
    assert not [line for line in monitor.lines if key.key in line or CREDENTIAL in line]


def test_the_next_reg_carries_the_ticket_of_the_last_auth_and_a_new_credential_drops_it(rig):
    central, engine, monitor = rig()
    first = central.wait_for(Reg, 10.0)
    assert first.ticket == ""  # none yet
    central.wait_for(Sst, 5.0)
    central.drop()  # Central stops: the Monitor comes back with the ticket of its AUTH#OK
    second = central.wait_for(Reg, 10.0, count=2)
    assert (second.credential, second.ticket) == (CREDENTIAL, "ticket1")
    central.wait_for(Sst, 5.0, count=2)
    central.drop()
    assert central.wait_for(Reg, 10.0, count=3).ticket == "ticket2"  # the newest one
    central.wait_for(Sst, 5.0, count=3)
    monitor.client.reauthenticate(Reg(CP, "C/Mayor, 45", PRICE, CREDENTIAL))  # the credential read again
    assert central.wait_for(Reg, 10.0, count=4).ticket == ""
    assert not [line for line in monitor.lines if "ticket" in line]  # never shown


def test_revoked_keys_reach_the_engine_and_the_monitor_waits_for_a(rig):
    central, engine, monitor = rig()
    central.wait_for(Sst, 10.0)
    engine.wait_for(Key, 5.0)
    central.revoke("suspected breach")
    rvk = engine.wait_for(Rvk, 5.0)
    assert (rvk.cp_id, rvk.reason) == (CP, "suspected breach")
    central.wait(lambda: central.endings, 5.0, "the session to end")
    assert f"keys revoked by Central: suspected breach; {AGAIN}" in monitor.lines
    quiet_for_checks(central, engine, 4, registrations=1)
    status = monitor.client.status()
    assert status.halted.kind == REVOKED and status.key_version is None and status.registered_since is None
    # the menu's [a]: registered again now, a new key for the Engine
    monitor.client.reauthenticate()
    central.wait_for(Reg, 5.0, count=2)
    second = engine.wait_for(Key, 5.0, count=2)
    assert second.version == 2 and second == central.keys[1]
    assert monitor.client.status().key_version == 2 and monitor.client.halted is None


def test_an_engine_restarted_while_revoked_is_told_again(rig):
    central, engine, monitor = rig()
    central.wait_for(Sst, 10.0)
    central.revoke("operator")
    engine.wait_for(Rvk, 5.0)
    engine = engine.restart()
    engine.wait(lambda: engine.first_of_session(1) is not None, 10.0, "the Monitor's new link")
    assert engine.first_of_session(1) == Rvk(CP, "operator")


def test_auth_ko_stops_the_retries_until_a(rig):
    central, engine, monitor = rig(credential="evc1_" + "W" * 43)
    central.wait_for(Reg, 10.0)
    central.wait(lambda: central.endings, 5.0, "the session to end")
    quiet_for_checks(central, engine, 5, registrations=1)
    assert monitor.client.halted.kind == REFUSED and monitor.thread.is_alive()
    assert f"Central refused the registration: wrong credential for this CP; {AGAIN}" in monitor.lines
    assert not engine.of(Key)
    monitor.client.reauthenticate()
    central.wait_for(Reg, 5.0, count=2)
    quiet_for_checks(central, engine, 5, registrations=2)


def test_without_a_person_auth_ko_ends_the_monitor(rig):
    central, engine, monitor = rig(interactive=False, credential="evc1_" + "W" * 43)
    monitor.thread.join(10.0)
    assert monitor.exit_code == 1 and len(central.of(Reg)) == 1


def test_a_wrong_pin_is_retried_with_backoff_and_said_once(rig):
    central, engine, monitor = rig(pin="SHA256:" + ":".join(["AB"] * 32))
    engine.wait(lambda: engine_checks(engine) >= 5, 5.0, "health checks")
    assert not central.of(Reg)
    said = [line for line in monitor.lines if "does not match the pinned fingerprint" in line]
    assert len(said) == 1 and said[0].startswith("Cannot connect to CENTRAL")


def test_the_status_report_names_tls_the_certificate_and_the_key_version_never_the_key(rig):
    central, engine, monitor = rig()
    central.wait_for(Sst, 10.0)
    status = monitor.client.status()
    lines = status_report(CP, status, "127.0.0.1:5001", None, None, False, datetime.now())
    text = "\n".join(lines)
    assert f"Central 127.0.0.1:{central.port}: TLS on (TLSv1.3), certificate {central.fingerprint} " \
           f"(verified by pinned fingerprint)" in text
    assert "registered since " in text and "with its credential" in text
    assert "key: version 1, held in memory" in text
    assert central.keys[0].key not in text and CREDENTIAL not in text
    assert central.wait_for(Hb, 5.0)
