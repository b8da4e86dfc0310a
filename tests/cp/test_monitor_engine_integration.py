"""Monitor + Engine + Central in one process, over real loopback sockets (SQLite store).

A real ``HealthServer(Engine())``, a real ``Central`` and a real ``Monitor`` running in a
thread. Intervals and timeouts are shortened through the constructors; every wait is on a
condition with a deadline.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest

from ev_central.app import Central
from ev_central.store import open_store
from ev_common.link import Link, LinkConfig, LinkError
from ev_common.protocol import Reg
from ev_common.retry import Backoff
from ev_cp_engine.engine import Engine
from ev_cp_engine.health_server import HealthServer
from ev_cp_monitor.central_client import CANNOT_CONNECT, CentralClient
from ev_cp_monitor.engine_probe import EngineProbe
from ev_cp_monitor.monitor import Monitor
from tests.support.waiting import wait_until

HOST = "127.0.0.1"
CP_ID = "CP001"
FAST = LinkConfig(connect_timeout=1.0, handshake_timeout=1.0, ack_timeout=0.3, max_retries=3,
                  write_timeout=1.0)
CENTRAL_SILENCE = 1.0  # the Monitor beats every 0.2 s in these tests
MONITOR_INTERVAL = 0.1  # a health check every 0.1 s


class RunningMonitor:
    """A Monitor in its own thread, with what it and its CentralClient said."""

    def __init__(self, engine_port: int, central_port: int, cp_id: str = CP_ID) -> None:
        self.lines: list[str] = []  # list.append is atomic: safe from the Monitor's threads
        self.central_backoff = Backoff(initial=0.05, cap=0.2)
        self.client = CentralClient(
            HOST, central_port, Reg(cp_id, "C/Mayor, 45", Decimal("0.48")), config=FAST,
            heartbeat=0.2, poll=0.05, auth_timeout=2.0, backoff=self.central_backoff,
            say=self.lines.append)
        self.probe = EngineProbe(HOST, engine_port, cp_id, answer_timeout=0.5,
                                 backoff=Backoff(initial=0.05, cap=0.2))
        self.monitor = Monitor(self.probe, self.client, interval=MONITOR_INTERVAL, say=self.lines.append)
        self.stop_event = threading.Event()
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, name=f"monitor-{cp_id}", daemon=True)

    def _run(self) -> None:
        self.exit_code = self.monitor.run(self.stop_event)

    def start(self) -> "RunningMonitor":
        self.thread.start()
        return self

    def stop(self, timeout: float = 6.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the Monitor did not stop"

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))


class Rig:
    """Everything a test starts; ``close()`` stops it all (Monitors, Engines, Centrals)."""

    def __init__(self, tmp_path: Path) -> None:
        self.db_url = f"sqlite:///{tmp_path / 'central.db'}"
        self.engine = Engine(say=lambda text: None)
        self.monitors: list[RunningMonitor] = []
        self.health_servers: list[HealthServer] = []
        self.centrals: list[Central] = []
        self.health = self.start_health()
        self.central = self.start_central()

    def start_health(self, port: int = 0, engine: Engine | None = None, **kwargs) -> HealthServer:
        server = HealthServer(engine or self.engine, HOST, port, config=FAST, **kwargs)
        self.health_servers.append(server)
        return server.start()

    def start_central(self, port: int = 0) -> Central:
        store = open_store(self.db_url)
        try:
            central = Central(store, HOST, port, silence_timeout=CENTRAL_SILENCE, link_config=FAST)
        except BaseException:
            store.close()
            raise
        self.centrals.append(central)
        return central.start()

    def start_monitor(self) -> RunningMonitor:
        monitor = RunningMonitor(self.health.address[1], self.central.address[1])
        self.monitors.append(monitor)
        return monitor.start()

    def state(self, central: Central | None = None) -> str | None:
        row = (central or self.central).network.get(CP_ID)
        return row.state if row else None

    def wait_state(self, expected: str, timeout: float = 3.0, central: Central | None = None) -> None:
        wait_until(lambda: self.state(central) == expected, timeout,
                   f"{CP_ID} {expected} at Central (is {self.state(central)})")

    def close(self) -> None:
        for monitor in self.monitors:
            monitor.stop_event.set()
        for monitor in self.monitors:
            monitor.thread.join(6)
        for server in self.health_servers:
            server.stop()
        for central in self.centrals:
            central.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def running(rig: Rig) -> RunningMonitor:
    """A started Monitor, registered at Central with a healthy Engine."""
    monitor = rig.start_monitor()
    rig.wait_state("ACTIVADO")
    wait_until(lambda: monitor.monitor.last is not None and monitor.monitor.last.ok, 3.0,
               "the Monitor's first healthy check")
    return monitor


# -- 1. registration ------------------------------------------------------------------------------


def test_monitor_registers_and_engine_learns_its_cp_id(rig: Rig) -> None:
    assert rig.engine.cp_id is None
    monitor = rig.start_monitor()
    rig.wait_state("ACTIVADO")
    wait_until(lambda: rig.engine.cp_id == CP_ID, 2.0, "the Engine to learn its cp_id from CHK")
    assert rig.engine.monitor is not None
    assert monitor.client.registered.is_set()
    assert monitor.said(f"Registered at Central as {CP_ID}")

    row = rig.central.network.get(CP_ID)
    assert (row.location, row.price_eur_kwh) == ("C/Mayor, 45", Decimal("0.48"))
    wait_until(lambda: rig.central.writer.wait_idle(5)
               and [r.state for r in rig.central.store.load_charging_points()] == ["ACTIVADO"],
               5.0, "CP001 ACTIVADO in the database")

    # Heartbeats keep it ACTIVADO past Central's silence timeout.
    until = time.monotonic() + 1.5 * CENTRAL_SILENCE
    while time.monotonic() < until:
        assert rig.state() == "ACTIVADO"
        time.sleep(0.05)  # sampling the state, not waiting for an event


# -- 2. simulated fault ------------------------------------------------------------------------------


def test_engine_fault_and_recovery_reach_central(rig: Rig, running: RunningMonitor) -> None:
    assert rig.engine.toggle_fault() is True
    rig.wait_state("AVERIADO", timeout=1.5)
    assert "simulated fault" in (rig.central.network.fault_of(CP_ID) or "")

    assert rig.engine.toggle_fault() is False
    rig.wait_state("ACTIVADO", timeout=1.5)
    assert rig.central.network.fault_of(CP_ID) is None


# -- 3. Engine unreachable -----------------------------------------------------------------------------


def test_engine_down_is_a_fault_and_its_return_a_recovery(rig: Rig, running: RunningMonitor) -> None:
    port = rig.health.address[1]
    rig.health.stop()
    rig.wait_state("AVERIADO", timeout=1.5)
    wait_until(lambda: running.monitor.last is not None and "unreachable" in running.monitor.last.reason,
               2.0, "the Monitor to find the Engine unreachable")
    assert rig.state() == "AVERIADO"

    rig.health = rig.start_health(port=port)  # the Engine is back on the same port
    rig.wait_state("ACTIVADO", timeout=2.0)
    wait_until(lambda: rig.engine.monitor is not None, 2.0, "the Monitor reconnected to the Engine")


# -- 4. Central down ---------------------------------------------------------------------------------------


def test_monitor_survives_central_restart_and_registers_again(rig: Rig, running: RunningMonitor) -> None:
    port = rig.central.address[1]
    rig.central.stop()
    wait_until(lambda: running.said(CANNOT_CONNECT), 3.0,
               f"the Monitor to say {CANNOT_CONNECT!r} while Central is down")
    # The client keeps trying (each failed attempt draws a delay from its backoff).
    attempts = running.central_backoff.attempts
    wait_until(lambda: running.central_backoff.attempts >= attempts + 3, 3.0,
               "the client to keep retrying to connect to Central")
    assert running.thread.is_alive() and not running.client.registered.is_set()
    assert running.client.refused is None

    restarted = rig.start_central(port=port)  # same port, same database file
    rig.wait_state("ACTIVADO", timeout=3.0, central=restarted)
    wait_until(lambda: running.client.registered.is_set(), 2.0, "the client to be registered again")
    assert rig.engine.monitor is not None  # the Engine side was never interrupted


# -- 5. one Monitor per Engine ----------------------------------------------------------------------------------


def test_second_monitor_is_refused_by_the_engine(rig: Rig, running: RunningMonitor) -> None:
    first_peer = rig.engine.monitor
    intruder = EngineProbe(HOST, rig.health.address[1], "CP999", backoff=Backoff(initial=0.05, cap=0.2))
    try:
        verdict = intruder.check()
    finally:
        intruder.close()
    assert not verdict.ok
    assert "refused" in verdict.reason, verdict.reason
    assert rig.engine.monitor == first_peer
    assert rig.engine.cp_id == CP_ID  # the intruder's CHK never reached the Engine

    # The first Monitor keeps working: a fault still travels to Central and back.
    assert rig.state() == "ACTIVADO"
    rig.engine.toggle_fault()
    rig.wait_state("AVERIADO", timeout=1.5)
    rig.engine.toggle_fault()
    rig.wait_state("ACTIVADO", timeout=1.5)


# -- 6. the Engine drops a silent Monitor ----------------------------------------------------------------------


def test_engine_closes_a_silent_monitor_session(rig: Rig) -> None:
    engine = Engine(say=lambda text: None)
    server = rig.start_health(engine=engine, silence_timeout=0.3)
    link = Link.connect(HOST, server.address[1], FAST)
    opened = time.monotonic()
    try:
        wait_until(lambda: engine.monitor is not None, 1.0, "the Engine to see the Monitor")
        with pytest.raises(LinkError):
            link.recv(timeout=2.0)  # nothing is sent: the Engine ends the session
        elapsed = time.monotonic() - opened
        assert 0.25 <= elapsed < 1.5, f"closed after {elapsed:.2f} s (silence_timeout 0.3)"
    finally:
        link.close()
    wait_until(lambda: engine.monitor is None, 1.0, "engine.monitor to be None after the session")
    assert engine.cp_id is None


# -- 7. the Monitor stops ---------------------------------------------------------------------------------------------


def test_stopping_the_monitor_disconnects_the_cp(rig: Rig, running: RunningMonitor) -> None:
    stopped_at = time.monotonic()
    running.stop_event.set()
    rig.wait_state("DESCONECTADO", timeout=1.0)
    assert time.monotonic() - stopped_at < 1.0
    running.stop()
    assert running.exit_code == 0
    wait_until(lambda: rig.engine.monitor is None, 2.0, "the Engine to see its Monitor leave")
    wait_until(lambda: rig.central.writer.wait_idle(5)
               and [r.state for r in rig.central.store.load_charging_points()] == ["DESCONECTADO"],
               5.0, "CP001 DESCONECTADO in the database")
