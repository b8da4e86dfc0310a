"""What a sign of life costs Central: CPU per ``HB`` served, and per registration in a storm.

Central's Monitor side alone (``MonitorServer`` on a ``ChargingNetwork``, no Kafka, no
database: what each message costs the reactor and the core, not the writers) runs in a
child process; N simulated Monitors (``benchmarks.monitor_fleet``, the load generator's)
connect at once, register, and send a sign of life every second. Measured from outside:
the server process's CPU during the storm (per registration) and over a steady window
(per sign of life), and the ACKs that came too late (retransmissions).

Run: ``python -m benchmarks.bench_signs_of_life --monitors 5000 --seconds 10``.
Prints a table, then one JSON line; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import time

from benchmarks.loadgen import cpu_seconds, peak_rss_mb
from benchmarks.monitor_fleet import MonitorFleet
from ev_common.lifecycle import raise_file_limit


def _serve(conn, monitors: int) -> None:
    from ev_central.core.network import ChargingNetwork
    from ev_central.server import MonitorServer

    logging.basicConfig(level=logging.WARNING)
    raise_file_limit(monitors + 1024)
    changes = []
    server = MonitorServer(ChargingNetwork(), changes.append, "127.0.0.1", 0, max_sessions=monitors + 100).start()
    conn.send(server.address[1])
    conn.recv()  # until told to stop
    server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_signs_of_life",
                                     description="CPU per sign of life and per registration on Central's "
                                                 "Monitor side (no Kafka, no database).")
    parser.add_argument("--monitors", type=int, default=2000, metavar="N", help="simulated Monitors (default 2000)")
    parser.add_argument("--seconds", type=float, default=10, metavar="S", help="steady window (default 10)")
    args = parser.parse_args(argv)
    raise_file_limit(args.monitors + 1024)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=_serve, args=(child, args.monitors), daemon=True)
    server.start()
    port = parent.recv()
    cp_ids = [f"SL{i:05d}" for i in range(args.monitors)]
    fleet = MonitorFleet("127.0.0.1", port, cp_ids, set(), storm=True, connect_rate=0, faults_per_second=0,
                         fault_seconds=0)
    cpu_start = cpu_seconds(server.pid)
    fleet.start()
    if not fleet.all_registered.wait(120):
        print("not every Monitor registered in 120 s", file=sys.stderr)
        return 1
    storm_cpu = cpu_seconds(server.pid) - cpu_start
    storm = fleet.figures.last_registered - fleet.figures.first_connect
    time.sleep(2)  # the first signs of life go out
    fleet.figures.hb_late_max = 0.0
    beats0, retrans0, cpu0, t0 = fleet.figures.heartbeats, fleet.figures.retransmits, cpu_seconds(server.pid), \
        time.monotonic()
    time.sleep(args.seconds)
    beats1, retrans1, cpu1, t1 = fleet.figures.heartbeats, fleet.figures.retransmits, cpu_seconds(server.pid), \
        time.monotonic()
    fleet.stop()
    rss = peak_rss_mb(server.pid)
    parent.send("stop")
    server.join(10)
    beats = beats1 - beats0
    result = {
        "monitors": args.monitors,
        "storm_seconds": round(storm, 3),
        "cpu_per_registration_us": round(storm_cpu / args.monitors * 1e6, 1),
        "signs_of_life": beats,
        "signs_of_life_per_second": round(beats / (t1 - t0), 1),
        "cpu_per_sign_of_life_us": round((cpu1 - cpu0) / beats * 1e6, 1) if beats else None,
        "server_cpu_pct": round((cpu1 - cpu0) / (t1 - t0) * 100, 1),
        "retransmits": retrans1 - retrans0,
        "false_disconnects": len(fleet.figures.false_disconnects),
        "fleet_lag_max_ms": round(fleet.figures.hb_late_max * 1000, 1),
        "server_rss_mb": rss,
    }
    print(f"EVCharging: Central's Monitor side, {args.monitors} Monitors ({os.cpu_count()} cores)")
    for key, value in result.items():
        print(f"  {key:28} {value}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
