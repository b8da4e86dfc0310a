"""CP link benchmark: how fast Central's database reflects what happens to a CP.

Starts a real Central, Engine and Monitor as processes and measures, N times each:

- Engine fault (SIGUSR1, the KO key) -> AVERIADO in the DB      (goal <= 2 s)
- Monitor killed (SIGKILL)          -> DESCONECTADO in the DB  (goal <= 1 s)
- Monitor frozen (SIGSTOP)          -> DESCONECTADO in the DB  (goal <= 3.5 s)

Run from the project root: ``python -m benchmarks.bench_cp_link [--db URL] [--runs N]``.
Without --db it uses a fresh SQLite file. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import time

from benchmarks.programs import programs
from ev_central.store import open_store
from tests.support.processes import ProgramRunner
from tests.support.waiting import wait_until
from tests.support.services import free_port

CP = "BENCH1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time from a CP event to Central's database.")
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--runs", type=int, default=5, help="measurements of each event (default 5)")
    parser.add_argument("--kafka", help="bootstrap of a running broker (default: start a Tansu broker; an "
                                        "Engine that cannot reach Kafka is reported faulty)")
    args = parser.parse_args(argv)
    with programs(args.kafka, tail=1500) as (directory, runner, kafka):
        db = args.db or f"sqlite:///{directory / 'bench.db'}"
        results = run(runner, db, args.runs, kafka)
    goals = {"Engine fault -> AVERIADO": 2.0, "Monitor SIGKILL -> DESCONECTADO": 1.0,
             "Monitor SIGSTOP -> DESCONECTADO": 3.5}
    print(f"EVCharging CP link benchmark  db={'SQLite' if not args.db else args.db.split(':')[0]}  runs={args.runs}")
    print(f"{'event -> state in the DB':34} {'p50 s':>7} {'max s':>7} {'goal s':>7}")
    for name, values in results.items():
        print(f"{name:34} {statistics.median(values):7.3f} {max(values):7.3f} {goals[name]:7.1f}")
    return 0


def run(runner: ProgramRunner, db: str, runs: int, kafka: str) -> dict[str, list[float]]:
    central_port, engine_port = free_port(), free_port()
    runner.start("central", ["--port", str(central_port), "--kafka", kafka, "--db", db,
                             "--log-level", "WARNING"], package="ev_central")
    engine = runner.start("engine", ["--port", str(engine_port), "--host", "127.0.0.1", "--kafka", kafka],
                          package="ev_cp_engine")
    monitor_args = ["--cp_id", CP, "--central_ip", "127.0.0.1", "--central_port", str(central_port),
                    "--engine_ip", "127.0.0.1", "--engine_port", str(engine_port), "--log-level", "WARNING"]
    monitor = runner.start("monitor", monitor_args, package="ev_cp_monitor")
    store = wait_until(lambda: _try_open(db), 10, "the database")

    def state():
        rows = {row.cp_id: row.state for row in store.load_charging_points()}
        return rows.get(CP)

    def timed(action, target, timeout=10.0):
        started = time.monotonic()
        action()
        wait_until(lambda: state() == target, timeout, f"{target}", interval=0.005)
        return time.monotonic() - started

    def back(action, why):  # not measured: the CP back in service before the next measurement
        action()
        wait_until(lambda: state() == "ACTIVADO", 30, why, interval=0.05)

    def toggle_fault(said):
        """The Engine's fault key (SIGUSR1), waiting until the Engine says it took it: two signals sent
        close together may reach it as one, and the next toggle would then undo nothing."""
        mark = engine.mark()
        engine.send_signal(signal.SIGUSR1)
        engine.wait_for_output(said, 10, after=mark)

    results: dict[str, list[float]] = {"Engine fault -> AVERIADO": [], "Monitor SIGKILL -> DESCONECTADO": [],
                                       "Monitor SIGSTOP -> DESCONECTADO": []}
    try:
        # ACTIVADO alone may be the registration's, before the Monitor reports that it cannot reach an
        # Engine still starting: wait for the Monitor's first healthy check too.
        monitor.wait_for_output(r"Engine OK", 15)
        wait_until(lambda: state() == "ACTIVADO", 15, "the CP to register")
        for _ in range(runs):
            time.sleep(random.uniform(0, 1))  # a random phase of the 1 s check cycle
            results["Engine fault -> AVERIADO"].append(
                timed(lambda: toggle_fault("simulated FAULT on"), "AVERIADO"))
            back(lambda: toggle_fault("simulated fault off"), "the Engine to recover (ACTIVADO)")
        for _ in range(runs):
            time.sleep(random.uniform(0, 1))
            results["Monitor SIGKILL -> DESCONECTADO"].append(timed(monitor.kill, "DESCONECTADO"))
            monitor = runner.start("monitor", monitor_args, package="ev_cp_monitor")
            wait_until(lambda: state() == "ACTIVADO", 15, "the Monitor to register again")
        for _ in range(runs):
            time.sleep(random.uniform(0, 1))
            results["Monitor SIGSTOP -> DESCONECTADO"].append(
                timed(lambda: monitor.send_signal(signal.SIGSTOP), "DESCONECTADO"))
            monitor.send_signal(signal.SIGCONT)
            wait_until(lambda: state() == "ACTIVADO", 15, "the Monitor to come back")
    finally:
        store.close()
    return results


def _try_open(db):
    try:
        return open_store(db)
    except Exception:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
