"""Load generator: N Monitors and M charging Engines against one real Central on real MySQL.

Run: ``python -m benchmarks.loadgen --monitors 2000 --supplies 500 --seconds 60 --storm``.

* **Monitors** are simulated in a process of their own (``benchmarks/monitor_fleet.py``),
  speaking the real wire protocol to Central: ENQ, ``REG`` (answered ``AUTH``), ``HB``
  every second, ``AVR``/``REC`` for faults at ``--faults-per-second`` (never at a CP that
  takes a supply), ``SUPR#OK`` to every ``SUP``, each frame ACKed and retransmitted as the
  link layer says (docs/protocol.md): each runs ``LinkState``, the link state machine every
  program uses, on non-blocking sockets driven by one selector thread.
* **Engines**: for each of M supplies a driver request goes to Kafka; once Central
  authorises it, ``telemetry`` records are published every second, then ``supply.end``.
* **Central** is started as its own process, with the seed's command (``python
  EV_Central.py --port ... --kafka ... --db ...``, log level INFO, its log in
  ``central.log``), on a fresh MySQL database, unless ``--central`` names a running one.
  A Tansu broker is started unless ``--kafka`` is given.

Measured (same machine, same clock):

* registration: connect -> ``AUTH#OK``; ``storm_seconds``: first connect -> last ``AUTH#OK``;
* fault detection: ``AVR`` written -> ``AVERIADO`` read back from Central's database
  (polled every 50 ms, so figures carry up to 50 ms of polling);
* telemetry: ``telemetry.ts`` (made when published) -> ``supply.progress.ts`` (made by
  Central when it applied it to its state);
* false disconnects: sessions Central closed, or ``DESCONECTADO`` written, for a Monitor
  that kept sending its signs of life;
* Central's CPU (% of one core, over the measured window) and peak RSS (``VmHWM``).

Prints a table, then one JSON line (the last line of the output). Asserts nothing: a
benchmark, not a test (a small run is smoke-tested by tests/test_loadgen_smoke.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from benchmarks.bench_telemetry import percentile
from benchmarks.monitor_fleet import DB_POLL, FleetProcess, late_percentile
from ev_common.bus import Publisher, RecordConsumer, Topics
from ev_common.lifecycle import raise_file_limit
from ev_common.records import RequestAuthorised, RequestDenied, SupplyEnd, SupplyProgress, SupplyRequest, Telemetry
from ev_common.records import Ticket
from tests.support.processes import ProgramRunner
from tests.support.services import TansuBroker, ThrowawayDatabase, free_port
from tests.support.system import EVSystem

log = logging.getLogger("loadgen")

POWER_KW = Decimal("11")
PRICE = Decimal("0.35")


@dataclass
class Figures:
    """What the supplies' side measured (the Monitors' side is ``FleetFigures``)."""

    telemetry_ms: list[float] = field(default_factory=list)
    telemetry_sent: int = 0
    authorised: int = 0
    denied: int = 0
    tickets: int = 0
    interrupted: int = 0  # tickets of supplies Central interrupted


# -- supplies over Kafka ------------------------------------------------------------------------


@dataclass
class Supply:
    cp_id: str
    driver_id: str
    request_id: str
    session_id: str | None = None
    seq: int = 0
    next_at: float = 0.0
    ended: bool = False


class SupplyFleet:
    """M drivers' requests, then their CPs' telemetry every second, then supply.end; reads what Central sends."""

    def __init__(self, kafka: str, topics: Topics, figures: Figures, cps: list[str]) -> None:
        self.topics = topics
        self.figures = figures
        self.supplies = {f"LGD{i:05d}": Supply(cp_id, f"LGD{i:05d}", uuid.uuid4().hex) for i, cp_id in enumerate(cps)}
        self.by_session: dict[str, Supply] = {}
        self.ticketed: set[str] = set()
        self.sent_at: dict[tuple[str, int], datetime] = {}
        self.publisher = Publisher(kafka, "loadgen-engines")
        self.stop = threading.Event()
        self.ending = threading.Event()
        self.lock = threading.Lock()
        self.assigned = threading.Event()
        self.consumer = RecordConsumer(kafka, f"{topics.prefix}loadgen-{uuid.uuid4().hex[:8]}",
                                       [topics.driver_notifications], self._on_record, client_id="loadgen",
                                       commit=False, on_assign=self.assigned.set)
        self._threads = [threading.Thread(target=self.consumer.run, args=(self.stop,), name="kafka-read", daemon=True),
                         threading.Thread(target=self._engines, name="engines", daemon=True)]

    def start(self) -> "SupplyFleet":
        for thread in self._threads:
            thread.start()
        return self

    def request_all(self) -> None:
        for s in self.supplies.values():
            self.publisher.publish(self.topics.driver_requests, s.driver_id,
                                   SupplyRequest(s.request_id, s.driver_id, s.cp_id))
        self.publisher.flush(10)

    def end_all(self) -> None:
        self.ending.set()

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(10)
        self.publisher.flush(5)

    def _on_record(self, _key, record) -> None:
        if isinstance(record, RequestAuthorised):
            s = self.supplies.get(record.driver_id)
            if s is not None and s.session_id is None and record.request_id == s.request_id:
                with self.lock:
                    s.session_id = record.session_id
                    s.next_at = time.monotonic() + random.random()  # each Engine at its own phase
                    self.by_session[s.session_id] = s
                self.figures.authorised += 1
        elif isinstance(record, SupplyProgress):
            sent = self.sent_at.pop((record.session_id, record.seq), None)
            if sent is not None:
                self.figures.telemetry_ms.append((record.ts - sent).total_seconds() * 1000)
        elif isinstance(record, Ticket):
            s = self.by_session.get(record.session_id)
            if s is not None and record.session_id not in self.ticketed:  # a ticket may come twice
                self.ticketed.add(record.session_id)
                self.figures.tickets += 1
                if record.status != "COMPLETED":
                    self.figures.interrupted += 1
        elif isinstance(record, RequestDenied):
            self.figures.denied += 1

    def _engines(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            with self.lock:
                running = [s for s in self.by_session.values() if not s.ended]
            for s in running:
                if self.ending.is_set():
                    s.ended = True
                    self.publisher.publish(self.topics.cp_telemetry, s.cp_id, SupplyEnd(
                        s.cp_id, s.session_id, s.driver_id, s.seq + 1, self._kwh(s.seq), self._eur(s.seq),
                        "unplugged"))
                elif now >= s.next_at:
                    s.seq += 1
                    s.next_at += 1.0
                    record = Telemetry(s.cp_id, s.session_id, s.driver_id, s.seq, self._kwh(s.seq),
                                       self._eur(s.seq), POWER_KW)
                    self.sent_at[(s.session_id, s.seq)] = record.ts
                    self.figures.telemetry_sent += 1
                    self.publisher.publish(self.topics.cp_telemetry, s.cp_id, record)
            self.publisher.poll(0)
            self.stop.wait(0.01)

    @staticmethod
    def _kwh(seq: int) -> Decimal:
        return (POWER_KW * seq / 3600).quantize(Decimal("0.0001"))

    def _eur(self, seq: int) -> Decimal:
        return (self._kwh(seq) * PRICE).quantize(Decimal("0.0001"))


# -- Central's process, from outside ---------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of every core since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def pid_of(name: str) -> int | None:
    """The first process whose command name is ``name`` (the database server), if any."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    return int(entry.name)
            except OSError:
                continue
    return None


def threads_of(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


# -- the run ------------------------------------------------------------------------------------


def run(args, kafka: str, db_url: str, central_addr: tuple[str, int], central_pid: int | None,
        prefix: str, broker_pid: int | None = None, gateway_pids: dict[str, int] | None = None) -> dict:
    figures = Figures()
    topics = Topics(prefix)
    cp_ids = [f"LG{i:05d}" for i in range(args.monitors)]
    supplying = random.sample(cp_ids, min(args.supplies, len(cp_ids)))
    # the Monitors first, in a process of their own (spawned before this one starts Kafka threads)
    fleet = FleetProcess(*central_addr, cp_ids, supplying, db_url, storm=args.storm, connect_rate=args.connect_rate,
                         faults_per_second=args.faults_per_second, fault_seconds=args.fault_seconds)
    supplies = SupplyFleet(kafka, topics, figures, supplying)
    supplies.start()
    if not supplies.assigned.wait(30):
        raise SystemExit("loadgen: the notifications consumer got no partitions in 30 s")
    fleet.start()
    log.info("connecting %d Monitors%s", args.monitors, " at once (storm)" if args.storm else "")
    if not fleet.wait_registered(args.register_timeout):
        log.warning("not every Monitor registered in %g s", args.register_timeout)
    log.info("registered; %d supplies requested; measuring for %g s", len(supplies.supplies), args.seconds)
    time.sleep(args.settle)  # the storm's own writes and log lines drain before the steady state is measured
    fleet.measure(True)  # the fleet's own lag and CPU, counted in the measured window only
    supplies.request_all()
    fleet.faults(True)
    others = {"broker": broker_pid, "database": pid_of("mariadbd") or pid_of("mysqld"),
              **{f"gateway_{name}": pid for name, pid in (gateway_pids or {}).items()}}
    cpu0, own0, t0 = (cpu_seconds(central_pid) if central_pid else None), time.process_time(), time.monotonic()
    others0, machine0 = {k: cpu_seconds(v) if v else None for k, v in others.items()}, machine_busy_seconds()
    time.sleep(args.seconds)
    cpu1, own1, t1 = (cpu_seconds(central_pid) if central_pid else None), time.process_time(), time.monotonic()
    others1, machine1 = {k: cpu_seconds(v) if v else None for k, v in others.items()}, machine_busy_seconds()
    fleet.faults(False)
    fleet.measure(False)
    supplies.end_all()
    deadline = time.monotonic() + 30
    while figures.tickets < figures.authorised and time.monotonic() < deadline:
        time.sleep(0.1)
    deadline = time.monotonic() + args.fault_seconds + 1
    while fleet.pending_faults() and time.monotonic() < deadline:  # the last faults read back
        time.sleep(DB_POLL)
    monitors = fleet.stop()
    supplies.close()
    cpu_pct = round((cpu1 - cpu0) / (t1 - t0) * 100, 1) if cpu0 is not None and cpu1 is not None else None
    storm = None
    if monitors.last_registered is not None and monitors.first_connect is not None:
        storm = round(monitors.last_registered - monitors.first_connect, 3)

    def ms(values, p):
        return round(percentile(values, p), 1) if values else None

    return {
        "monitors": args.monitors,
        "supplies": len(supplies.supplies),
        "seconds": args.seconds,
        "storm": args.storm,
        "registered": len(monitors.registration_ms),
        "refused": monitors.refused,
        "registration_p50_ms": ms(monitors.registration_ms, 0.50),
        "registration_p99_ms": ms(monitors.registration_ms, 0.99),
        "storm_seconds": storm,
        "faults": monitors.faults_sent,
        "faults_seen": len(monitors.fault_ms),
        "fault_detect_p50_ms": ms(monitors.fault_ms, 0.50),
        "fault_detect_p99_ms": ms(monitors.fault_ms, 0.99),
        "authorised": figures.authorised,
        "denied": figures.denied,
        "telemetry_sent": figures.telemetry_sent,
        "telemetry_seen": len(figures.telemetry_ms),
        "telemetry_p50_ms": ms(figures.telemetry_ms, 0.50),
        "telemetry_p99_ms": ms(figures.telemetry_ms, 0.99),
        "tickets": figures.tickets,
        "tickets_interrupted": figures.interrupted,
        "heartbeats": monitors.heartbeats,
        "loadgen_hb_late_max_ms": round(monitors.hb_late_max * 1000, 1),
        "loadgen_hb_late_p99_ms": late_percentile({int(k): v for k, v in monitors.hb_late_ms.items()}, 0.99),
        "loadgen_hb_late_before_ms": round(monitors.hb_late_max_before * 1000, 1),  # the storm included
        "retransmits": monitors.retransmits,
        "links_broken": monitors.links_broken,
        "closed_by_central": monitors.closed_by_central,
        "false_disconnects": len(set(monitors.false_disconnects)),
        "central_cpu_pct": cpu_pct,
        "central_rss_mb": None if central_pid is None else round(peak_rss_mb(central_pid) or 0, 1),
        "central_threads": None if central_pid is None else threads_of(central_pid),
        "gateways": len(gateway_pids or {}),
        **{f"gateway_{name}_rss_mb": round(peak_rss_mb(pid) or 0, 1) for name, pid in (gateway_pids or {}).items()},
        "loadgen_cpu_pct": round((own1 - own0 + monitors.cpu_seconds) / (t1 - t0) * 100, 1),
        "loadgen_fleet_cpu_pct": round(monitors.cpu_seconds / (t1 - t0) * 100, 1),
        **{f"{name}_cpu_pct": (round((others1[name] - others0[name]) / (t1 - t0) * 100, 1)
                               if others0[name] is not None and others1[name] is not None else None)
           for name in others},
        # every core of the machine, whatever ran on it: 100 % is all of them busy
        "machine_busy_pct": round((machine1[0] - machine0[0]) / (machine1[1] - machine0[1]) * 100, 1),
    }


def table(result: dict) -> str:
    rows = [
        ("Monitors (registered; connections refused)", f"{result['monitors']} ({result['registered']}; "
                                                        f"{result['refused']})"),
        ("Supplies (authorised, tickets)", f"{result['supplies']} ({result['authorised']}, {result['tickets']}; "
                                           f"{result['tickets_interrupted']} interrupted)"),
        ("Measured for", f"{result['seconds']:g} s"),
        ("Registration p50 / p99", f"{result['registration_p50_ms']} / {result['registration_p99_ms']} ms"),
        ("All registered after" + (" (storm)" if result["storm"] else ""), f"{result['storm_seconds']} s"),
        ("Faults sent / read back", f"{result['faults']} / {result['faults_seen']}"),
        ("Fault -> AVERIADO p50 / p99", f"{result['fault_detect_p50_ms']} / {result['fault_detect_p99_ms']} ms"),
        ("Telemetry sent / applied", f"{result['telemetry_sent']} / {result['telemetry_seen']}"),
        ("Telemetry -> Central p50 / p99", f"{result['telemetry_p50_ms']} / {result['telemetry_p99_ms']} ms"),
        ("Heartbeats / retransmits", f"{result['heartbeats']} / {result['retransmits']}"),
        ("Load generator's own lag (signs of life sent late: max, p99)",
         f"{result['loadgen_hb_late_max_ms']} ms, {result['loadgen_hb_late_p99_ms']} ms (before the window, "
         f"storm included: max {result['loadgen_hb_late_before_ms']} ms)"),
        ("False DESCONECTADO", f"{result['false_disconnects']} (sessions closed by Central: "
                               f"{result['closed_by_central']})"),
        ("Central CPU (% of one core)", f"{result['central_cpu_pct']}"),
        ("Central peak RSS", f"{result['central_rss_mb']} MB ({result['central_threads']} threads)"),
        ("Load generator CPU (% of one core)", f"{result['loadgen_cpu_pct']} (its Monitors "
                                               f"{result['loadgen_fleet_cpu_pct']})"),
        *[(f"Gateway {key[8:-8]} CPU (% of one core), peak RSS",
           f"{result[key]}, {result[key[:-8] + '_rss_mb']} MB") for key in result
          if key.startswith("gateway_") and key.endswith("_cpu_pct")],
        ("Broker / database CPU (% of one core)", f"{result['broker_cpu_pct']} / {result['database_cpu_pct']}"),
        ("Machine busy (% of all cores)", f"{result['machine_busy_pct']}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name.ljust(width)}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen",
        description="N simulated Monitors and M charging Engines against one real Central on real MySQL; "
                    "prints a table, then one JSON line.")
    parser.add_argument("--monitors", type=int, default=100, metavar="N", help="simulated Monitors (default 100)")
    parser.add_argument("--supplies", type=int, default=25, metavar="M",
                        help="supplies at once, each on its own CP (default 25; at most N)")
    parser.add_argument("--seconds", type=float, default=30, metavar="S",
                        help="how long to measure once every Monitor registered (default 30)")
    parser.add_argument("--storm", action="store_true", help="all N Monitors connect at once "
                        "(default: --connect-rate per second)")
    parser.add_argument("--connect-rate", type=float, default=500, help="connections per second without --storm "
                        "(default 500)")
    parser.add_argument("--faults-per-second", type=float, default=None,
                        help="Engine faults reported per second across the fleet (default N/200, at least 1)")
    parser.add_argument("--fault-seconds", type=float, default=3.0, help="how long a fault lasts (default 3)")
    parser.add_argument("--central", metavar="HOST:PORT",
                        help="a running Central to load (default: start one; its CPU and memory are then measured)")
    parser.add_argument("--central-pid", type=int, help="with --central: its process id, to measure CPU and memory")
    parser.add_argument("--kafka", metavar="HOST:PORT", default=os.environ.get("EV_KAFKA"),
                        help="Kafka bootstrap (default: $EV_KAFKA, else start a Tansu broker)")
    parser.add_argument("--db", metavar="URL",
                        help="Central's MySQL database (default: a fresh database on $EV_TEST_MYSQL_URL's server, "
                             "else mysql://root@127.0.0.1:3306, dropped at the end); required with --central")
    parser.add_argument("--topic-prefix", help="topic prefix Central uses (default: a fresh one; "
                                               "required with --central if it uses one)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="pause between the last registration and the measured window (default 3)")
    parser.add_argument("--register-timeout", type=float, default=60,
                        help="how long to wait for every Monitor to register (default 60)")
    parser.add_argument("--central-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for the Central this starts (repeatable)")
    parser.add_argument("--gateways", type=int, default=0, metavar="G",
                        help="serve the Monitors through G gateway processes sharing one port (SO_REUSEPORT) "
                             "in front of a core, EV_Central --gateways (docs/scaling.md; default 0: one "
                             "all-in-one Central)")
    parser.add_argument("--keep-logs", metavar="DIR", help="keep Central's and the broker's logs in DIR")
    args = parser.parse_args(argv)
    if args.monitors < 1 or args.supplies < 0 or args.seconds <= 0:
        parser.error("--monitors must be >= 1, --supplies >= 0 and --seconds > 0")
    if args.central and not (args.db and args.kafka):
        parser.error("--central needs --db and --kafka (the database and broker that Central uses)")
    if args.faults_per_second is None:
        args.faults_per_second = max(1.0, args.monitors / 200)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s loadgen[%(threadName)s] %(levelname)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("ev_common").setLevel(logging.WARNING)
    raise_file_limit(args.monitors + 1024)
    prefix = args.topic_prefix if args.topic_prefix is not None else f"lg{uuid.uuid4().hex[:8]}-"
    with tempfile.TemporaryDirectory(prefix="evloadgen-") as tmp:
        work = Path(args.keep_logs) if args.keep_logs else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        broker = database = system = None
        runner = ProgramRunner(work)
        gateway_pids: dict[str, int] = {}
        try:
            if args.kafka:
                kafka = args.kafka
            else:
                broker = TansuBroker(log_path=work / "tansu.log").start()
                kafka = broker.bootstrap
            db_url = args.db
            if db_url is None:
                database = ThrowawayDatabase(os.environ.get("EV_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"))
                db_url = database.create().url
            system = EVSystem(runner, kafka, db_url, prefix)
            system.register_drivers(*(f"LGD{i:05d}" for i in range(args.supplies)))
            if args.central:
                host, _, port = args.central.rpartition(":")
                central_addr, central_pid = (host or "127.0.0.1", int(port)), args.central_pid
            elif args.gateways:  # a core serving N gateway processes that share one port (docs/scaling.md)
                system.start_central("--host", "127.0.0.1", "--ui", "log", "--gateways", *args.central_arg)
                gateway_port = free_port()
                for number in range(1, args.gateways + 1):
                    gateway = runner.start(f"gateway-G{number}", [
                        "gateway", "--port", str(gateway_port), "--host", "127.0.0.1", "--reuse-port",
                        "--kafka", kafka, "--id", f"G{number}", "--topic-prefix", prefix,
                        "--max-sessions", str(args.monitors + 1000)], script="ev_central/EV_Central.py")
                    gateway.wait_for_output(r"gateway \S+ running", timeout=30)
                    gateway_pids[f"G{number}"] = gateway.pid
                central_addr, central_pid = ("127.0.0.1", gateway_port), system.central.pid
            else:  # the seed's command, its log in work/central.log
                system.start_central("--host", "127.0.0.1", "--ui", "log", *args.central_arg)
                central_addr, central_pid = ("127.0.0.1", system.central_port), system.central.pid
            try:
                result = run(args, kafka, db_url, central_addr, central_pid, prefix,
                             broker.pid if broker is not None else None, gateway_pids)
            except KeyboardInterrupt:
                print("loadgen: interrupted; stopping what it started", file=sys.stderr)
                return 130
            if system.central is not None and system.central.proc.poll() is not None:
                raise SystemExit(f"loadgen: Central died during the run (status {system.central.proc.returncode});"
                                 f" see {system.central.log_path}")
        finally:
            runner.stop_all()
            if system is not None:
                system.close()
            if broker is not None:
                broker.kill()
            if database is not None:
                database.drop()
    print(f"EVCharging load generator ({os.cpu_count()} cores)")
    print(table(result))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
