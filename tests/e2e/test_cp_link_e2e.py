"""End to end: Central, Engine and Monitor as real processes, started with the README's
three-terminal commands from their folders, against real MySQL and the test broker (an Engine
that cannot reach Kafka is reported faulty: it could not report its supplies); killed with
SIGKILL, frozen with SIGSTOP."""

from __future__ import annotations

import signal
import time

import pytest

from ev_central.store import open_store
from tests.support.processes import ProgramRunner
from tests.support.services import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

CP = "CP001"


@pytest.fixture
def store(fresh_mysql_url):
    store = open_store(fresh_mysql_url)
    yield store
    store.close()


class CPSystem:
    """One Central, one Engine, one Monitor, started as the README says."""

    def __init__(self, runner: ProgramRunner, db_url: str, store, kafka: str) -> None:
        self.runner = runner
        self.kafka = kafka
        self.db_url = db_url
        self.store = store
        self.central_port = free_port()
        self.engine_port = free_port()

    def start_central(self):
        self.central = self.runner.start("central", ["--port", str(self.central_port), "--kafka", self.kafka,
                                                     "--db", self.db_url], script="ev_central/EV_Central.py")
        self.central.wait_for_output("Central listening for Monitors")
        return self.central

    def start_engine(self):
        self.engine = self.runner.start("engine", ["--port", str(self.engine_port), "--host", "127.0.0.1",
                                                   "--kafka", self.kafka],
                                        script="ev_cp_engine/EV_CP_E.py")
        self.engine.wait_for_output("Engine listening")
        return self.engine

    def start_monitor(self):
        self.monitor = self.runner.start("monitor", [
            "--cp_id", CP, "--central_ip", "127.0.0.1", "--central_port", str(self.central_port),
            "--engine_ip", "127.0.0.1", "--engine_port", str(self.engine_port),
            "--location", "C/Mayor, 45", "--price", "0.48"], script="ev_cp_monitor/EV_CP_M.py")
        return self.monitor

    def start_all(self):
        self.start_central()
        self.start_engine()
        self.start_monitor()
        self.wait_state("ACTIVADO", 10)
        return self

    def state(self) -> str | None:
        rows = {row.cp_id: row for row in self.store.load_charging_points()}
        return rows[CP].state if CP in rows else None

    def wait_state(self, state: str, timeout: float) -> float:
        """Wait until the DB shows ``state``; returns the seconds it took."""
        started = time.monotonic()
        wait_until(lambda: self.state() == state, timeout, f"{CP} to be {state} in the DB (now {self.state()})",
                   interval=0.05)
        return time.monotonic() - started


@pytest.fixture
def cps(runner, fresh_mysql_url, store, kafka_bootstrap):
    return CPSystem(runner, fresh_mysql_url, store, kafka_bootstrap)


def test_seed_three_terminals_register_and_stop_cleanly(cps):
    cps.start_all()
    cps.central.wait_for_output(r"REG received from .*: REG#CP001#C/Mayor, 45#0\.48")
    cps.central.wait_for_output(r"AUTH#OK sent to CP001")
    cps.monitor.wait_for_output(r"Registered at Central as CP001: Autenticacion exitosa")
    cps.engine.wait_for_output(r"this Engine is CP CP001")
    row = {r.cp_id: r for r in cps.store.load_charging_points()}[CP]
    assert (row.location, str(row.price_eur_kwh)) == ("C/Mayor, 45", "0.4800")
    assert cps.monitor.stop(signal.SIGINT) == 0  # Ctrl+C
    assert cps.wait_state("DESCONECTADO", 2) < 1.0
    assert cps.engine.stop(signal.SIGINT) == 0
    assert cps.central.stop(signal.SIGINT) == 0
    assert "Traceback" not in cps.central.output() + cps.monitor.output() + cps.engine.output()


def test_fault_key_at_the_engine_and_recovery(cps):
    cps.start_all()
    cps.engine.proc.stdin.write(b"f")  # the KO key (its stdin is a pipe here: keys act per read)
    cps.engine.proc.stdin.flush()
    assert cps.wait_state("AVERIADO", 3) <= 2.0
    cps.monitor.wait_for_output(r"Engine FAULT: Engine answers KO")
    cps.central.wait_for_output(r"CP001: ACTIVADO -> AVERIADO")
    cps.engine.send_signal(signal.SIGUSR1)  # the same toggle, by signal
    cps.wait_state("ACTIVADO", 3)
    cps.central.wait_for_output(r"CP001: AVERIADO -> ACTIVADO \(Engine recovered\)")


def test_engine_killed_then_restarted(cps):
    cps.start_all()
    cps.engine.kill()
    assert cps.wait_state("AVERIADO", 3) <= 2.0
    mark = cps.monitor.mark()
    cps.start_engine()
    cps.wait_state("ACTIVADO", 5)
    cps.monitor.wait_for_output(r"Engine OK", after=mark)


def test_monitor_killed_then_restarted(cps):
    cps.start_all()
    cps.monitor.kill()
    assert cps.wait_state("DESCONECTADO", 3) <= 1.0
    cps.start_monitor()
    cps.wait_state("ACTIVADO", 5)


def test_monitor_frozen_then_thawed(cps):
    cps.start_all()
    cps.monitor.send_signal(signal.SIGSTOP)
    assert cps.wait_state("DESCONECTADO", 5) <= 3.5
    cps.central.wait_for_output(r"no sign of life from the Monitor")
    mark = cps.monitor.mark()
    cps.monitor.send_signal(signal.SIGCONT)
    cps.wait_state("ACTIVADO", 8)
    cps.monitor.wait_for_output(r"Registered at Central as CP001", after=mark)


def test_central_killed_then_restarted_monitor_reregisters(cps):
    cps.start_all()
    cps.central.kill()
    cps.monitor.wait_for_output(r"Cannot connect to CENTRAL")
    mark = cps.monitor.mark()
    cps.start_central()
    cps.monitor.wait_for_output(r"Registered at Central as CP001", after=mark, timeout=10)
    cps.wait_state("ACTIVADO", 5)


def test_central_exits_non_zero_when_the_database_is_unreachable(runner):
    central = runner.start("central", ["--port", "0", "--kafka", "localhost:9092",
                                       "--db", "mysql://root@127.0.0.1:1/nowhere"], script="ev_central/EV_Central.py")
    assert central.wait_exit(30) == 1
    assert "cannot open the database" in central.output()
    assert "Traceback" not in central.output()


def test_central_defaults_to_embedded_sqlite_in_data_dir(runner, tmp_path):
    data = tmp_path / "data"
    central = runner.start("central", ["--port", "0", "--kafka", "localhost:9092"], package="ev_central",
                           env={"EV_DATA_DIR": str(data)})
    central.wait_for_output(r"loaded 0 CP\(s\) from SQLite .*ev_central\.db")
    assert (data / "ev_central.db").exists()
    assert central.stop(signal.SIGTERM) == 0
