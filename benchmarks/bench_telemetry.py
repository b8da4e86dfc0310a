"""Telemetry latency: Engine publish -> Central applied -> a driver's consumer.

Starts a real system (Central, N CPs with Engines in --auto, a Kafka-protocol
broker unless --kafka is given) and N supplies at once, then for --seconds reads
the telemetry topic and the drivers' notifications topic side by side:

- to Central: ``supply.progress.ts`` (made by Central when it applied the
  telemetry) minus ``telemetry.ts`` (made by the Engine when it published);
- to the driver: the time the progress record reached a driver-side consumer
  minus ``telemetry.ts``.

Same machine, same clock. Run: ``python -m benchmarks.bench_telemetry [--cps N]
[--seconds S] [--kafka HOST:PORT] [--db URL]``. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from datetime import datetime, timezone

from benchmarks.programs import programs
from ev_common.bus import Publisher, RecordConsumer, Topics
from ev_common.records import SupplyProgress, SupplyRequest, Telemetry
from tests.support.system import EVSystem
from tests.support.waiting import wait_until


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Telemetry latency through Central to a driver.")
    parser.add_argument("--cps", type=int, default=5, help="CPs supplying at once (default 5)")
    parser.add_argument("--seconds", type=float, default=20, help="how long to measure (default 20)")
    parser.add_argument("--kafka", help="bootstrap of a running broker (default: start a Tansu broker)")
    parser.add_argument("--db", help="Central's database URL (default: a fresh SQLite file)")
    args = parser.parse_args(argv)
    with programs(args.kafka) as (directory, runner, kafka):
        system = EVSystem(runner, kafka, args.db or f"sqlite:///{directory / 'central.db'}",
                          f"bench-{uuid.uuid4().hex[:8]}-")
        try:
            central_lat, driver_lat = measure(system, args.cps, args.seconds)
        finally:
            runner.stop_all()
            system.close()
    print(f"EVCharging telemetry benchmark  cps={args.cps}  seconds={args.seconds:g}  "
          f"samples={len(driver_lat)}  broker={'given' if args.kafka else 'Tansu (loopback)'}")
    print(f"{'Engine publish ->':28} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}   goal: p99 <= 100 ms")
    for name, values in (("Central applied", central_lat), ("driver's consumer", driver_lat)):
        if values:
            print(f"{name:28} {statistics.median(values):8.1f} {percentile(values, 0.99):8.1f} {max(values):8.1f}")
        else:
            print(f"{name:28} no samples")
    return 0


def measure(system: EVSystem, cps: int, seconds: float) -> tuple[list[float], list[float]]:
    drivers = [f"BD{i}" for i in range(cps)]
    system.register_drivers(*drivers)
    system.start_central("--log-level", "WARNING")
    for i in range(cps):
        system.start_cp(f"BCP{i}", "--auto", "--auto-seconds", str(seconds + 30), "--log-level", "WARNING")
    topics = Topics(system.prefix)
    sent: dict[tuple[str, int], datetime] = {}
    central_lat: list[float] = []
    driver_lat: list[float] = []
    lock = threading.Lock()
    measuring = threading.Event()

    def on_record(_key, record):
        arrived = datetime.now(timezone.utc)
        with lock:
            if isinstance(record, Telemetry):
                sent[(record.session_id, record.seq)] = record.ts
            elif isinstance(record, SupplyProgress) and measuring.is_set():
                published = sent.get((record.session_id, record.seq))
                if published is not None:
                    central_lat.append((record.ts - published).total_seconds() * 1000)
                    driver_lat.append((arrived - published).total_seconds() * 1000)

    stop = threading.Event()
    consumer = RecordConsumer(system.kafka, f"bench-{uuid.uuid4().hex}", [topics.cp_telemetry,
                                                                          topics.driver_notifications],
                              on_record, commit=False)
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    publisher = Publisher(system.kafka, "bench")
    for i, driver in enumerate(drivers):
        publisher.publish(topics.driver_requests, driver, SupplyRequest(uuid.uuid4().hex, driver, f"BCP{i}"))
    publisher.flush(10)
    wait_until(lambda: len(sent) >= cps, 60, "telemetry from every CP")
    measuring.set()
    time.sleep(seconds)  # the measuring window itself
    stop.set()
    thread.join(10)
    return central_lat, driver_lat


if __name__ == "__main__":
    raise SystemExit(main())
