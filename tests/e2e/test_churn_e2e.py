"""Churn: 30 CPs joining, failing and leaving at random for 60 s while drivers request
supplies. At the end Central's view equals reality, every authorised supply has exactly
one ticket, and no process died that the test did not kill."""

from __future__ import annotations

import random
import signal
import time

import pytest

from tests.support.services import free_port, port_open
from tests.support.system import EVSystem
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

N_CPS = 30
N_DRIVERS = 5
CHURN_SECONDS = 60


class ChurnCP:
    """One CP whose processes the test breaks and mends, knowing at each moment what is real."""

    def __init__(self, system: EVSystem, cp_id: str) -> None:
        self.system, self.cp_id = system, cp_id
        self.port = free_port()
        self.engine = self.monitor = None
        self.frozen = self.faulty = False

    def start_engine(self):
        self.engine = self.system.runner.start(f"engine-{self.cp_id}", [
            "--port", str(self.port), "--host", "127.0.0.1", "--kafka", self.system.kafka,
            "--topic-prefix", self.system.prefix, "--auto", "--auto-seconds", "2", "--log-level", "WARNING"],
            package="ev_cp_engine")
        self.faulty = False

    def start_monitor(self):
        self.monitor = self.system.runner.start(f"monitor-{self.cp_id}", [
            "--cp_id", self.cp_id, "--central_ip", "127.0.0.1", "--central_port", str(self.system.central_port),
            "--engine_ip", "127.0.0.1", "--engine_port", str(self.port), "--log-level", "WARNING"],
            package="ev_cp_monitor")
        self.frozen = False

    def break_something(self, rng: random.Random) -> None:
        action = rng.choice(["kill_monitor", "kill_engine", "fault", "freeze"])
        if action == "kill_monitor" and self.monitor.proc.poll() is None:
            self.monitor.kill()
        elif action == "kill_engine" and self.engine.proc.poll() is None:
            self.engine.kill()
        elif action == "fault" and not self.faulty and self.engine.proc.poll() is None:
            self.engine.send_signal(signal.SIGUSR1)
            self.faulty = True
        elif action == "freeze" and not self.frozen and self.monitor.proc.poll() is None:
            self.monitor.send_signal(signal.SIGSTOP)
            self.frozen = True

    def mend(self) -> None:
        if self.engine.proc.poll() is not None:
            self.start_engine()
        elif self.faulty:
            self.engine.send_signal(signal.SIGUSR1)
            self.faulty = False
        if self.monitor.proc.poll() is not None:
            self.start_monitor()
        elif self.frozen:
            self.monitor.send_signal(signal.SIGCONT)
            self.frozen = False


@pytest.mark.timeout(420)
def test_churn(runner, kafka_bootstrap, kafka_topic_prefix, fresh_mysql_url, tmp_path):
    rng = random.Random(20261121)
    system = EVSystem(runner, kafka_bootstrap, fresh_mysql_url, kafka_topic_prefix)
    try:
        drivers = [f"D{i:03d}" for i in range(N_DRIVERS)]
        system.register_drivers(*drivers)
        system.start_central()
        cps = [ChurnCP(system, f"CP{i:03d}") for i in range(N_CPS)]
        for cp in cps:
            cp.start_engine()
        wait_until(lambda: all(port_open("127.0.0.1", cp.port) for cp in cps), 60, "every Engine to listen")
        for cp in cps:
            cp.start_monitor()
        wait_until(lambda: {r.state for r in system.store.load_charging_points()} == {"ACTIVADO"}
                   and len(system.store.load_charging_points()) == N_CPS, 60, "every CP ACTIVADO")

        driver_programs = []
        for driver in drivers:
            services = tmp_path / f"{driver}.txt"
            services.write_text("\n".join(rng.choice(cps).cp_id for _ in range(40)) + "\n")
            driver_programs.append(system.start_driver(driver, "--file", str(services), "--pause", "0.5",
                                                       "--timeout", "8", "--log-level", "WARNING"))

        started = time.monotonic()
        broken: list[tuple[float, ChurnCP]] = []
        while time.monotonic() - started < CHURN_SECONDS:
            cp = rng.choice(cps)
            cp.break_something(rng)
            broken.append((time.monotonic() + rng.uniform(2, 6), cp))
            for when, victim in [b for b in broken if b[0] <= time.monotonic()]:
                victim.mend()
                broken.remove((when, victim))
            time.sleep(rng.uniform(0.3, 1.2))  # the pace of the churn, not a wait for an outcome
            assert system.central.proc.poll() is None, "Central died"
        for cp in cps:
            cp.mend()

        for program in driver_programs:
            program.send_signal(signal.SIGINT)  # enough requests: stop the drivers
            assert program.wait_exit(30) in (0, 1)
        wait_until(lambda: system.store.load_open_sessions() == [], 120, "every supply to end")

        # reality: every CP healthy, connected and idle, so Central must show each ACTIVADO
        def not_activado():
            return {r.cp_id: r.state for r in system.store.load_charging_points() if r.state != "ACTIVADO"}

        try:
            wait_until(lambda: not not_activado(), 60, "Central's view to match reality (all ACTIVADO)")
        except AssertionError:
            raise AssertionError(f"Central's view differs from reality: {not_activado()}") from None
        sessions = system.sessions()
        assert len(sessions) >= 10, f"too few supplies to judge: {len(sessions)}"
        wait_until(lambda: all(s.ticket_sent for s in system.sessions()), 30, "every ticket to be delivered")
        for session in system.sessions():
            shown = sum(p.output().count(f"Session    {session.session_id}") for p in driver_programs)
            assert shown <= 1, f"ticket of {session.session_id} shown {shown} times"
        for cp in cps:  # processes the test did not kill are alive
            assert cp.engine.proc.poll() is None and cp.monitor.proc.poll() is None, cp.cp_id
        assert system.central.proc.poll() is None
        assert "Traceback" not in system.central.output(), system.central.output()[-3000:]
    finally:
        runner.stop_all()
        system.close()
