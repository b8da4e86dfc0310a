"""Load generator: N Monitors and M charging Engines against one real Central on real MySQL.

Run: ``python -m benchmarks.loadgen --monitors 2000 --supplies 500 --seconds 60 --storm``.

* **Monitors** are simulated in one asyncio loop, speaking the real wire protocol to
  Central: ENQ, ``REG`` (answered ``AUTH``), ``HB`` every second, ``AVR``/``REC`` for
  faults at ``--faults-per-second``, ``SUPR#OK`` to every ``SUP``, each frame ACKed
  and retransmitted as the link layer says (docs/protocol.md): each runs ``LinkState``,
  the link state machine every program uses, on one asyncio loop.
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
import asyncio
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
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from benchmarks.bench_telemetry import percentile
from ev_common.bus import Publisher, RecordConsumer, Topics
from ev_common.lifecycle import raise_file_limit
from ev_common.linkstate import (Broken, Ended, LinkConfig, LinkError, LinkState, Opened, OutboundFull, Received,
                                 Refused, Role)
from ev_common.protocol import MESSAGES, Auth, Avr, Hb, Message, MessageError, Rec, Reg, Sup, Supr
from ev_common.records import RequestAuthorised, RequestDenied, SupplyEnd, SupplyProgress, SupplyRequest, Telemetry
from ev_common.records import Ticket
from tests.support.processes import ProgramRunner
from tests.support.services import TansuBroker, ThrowawayDatabase, mysql_connect
from tests.support.system import EVSystem

log = logging.getLogger("loadgen")

HB_INTERVAL = 1.0
LINK = LinkConfig(ack_timeout=1.0, max_retries=3)  # a Monitor's defaults
RECONNECT_DELAY = 1.0
DB_POLL = 0.05
POWER_KW = Decimal("11")
PRICE = Decimal("0.35")


@dataclass
class Figures:
    """What the run measured; filled from the loop, the DB poller and the Kafka threads."""

    registration_ms: list[float] = field(default_factory=list)
    first_connect: float | None = None
    last_registered: float | None = None
    fault_ms: list[float] = field(default_factory=list)
    faults_sent: int = 0
    telemetry_ms: list[float] = field(default_factory=list)
    telemetry_sent: int = 0
    false_disconnects: set[str] = field(default_factory=set)
    closed_by_central: int = 0
    refused: int = 0
    retransmits: int = 0
    links_broken: int = 0
    heartbeats: int = 0
    hb_late_max: float = 0.0  # the load generator's own lag: a sign of life sent late
    authorised: int = 0
    denied: int = 0
    tickets: int = 0
    interrupted: int = 0  # tickets of supplies Central interrupted


# -- simulated Monitors -------------------------------------------------------------------------


class SimMonitor(asyncio.Protocol):
    """One Monitor: the link layer (``LinkState``, as every program runs it) on the fleet's
    asyncio loop, its timers as loop callbacks, and its messages."""

    def __init__(self, sim: "MonitorFleet", cp_id: str) -> None:
        self.sim = sim
        self.cp_id = cp_id
        self.hb = Hb(cp_id)  # the same every second
        self.transport: asyncio.Transport | None = None
        self.link: LinkState | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None
        self.retransmits = 0  # counted into the figures as they happen
        self.state = "idle"  # idle | enq | open | registered | closed
        self.connect_started = 0.0
        self.faulty = False
        self.supplying = False
        self.closing = False  # closed on purpose by the load generator

    # -- asyncio.Protocol: bytes in and out, time from the loop --

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.state = "enq"
        self.link = LinkState(Role.CLIENT, LINK, MESSAGES, peer=self.cp_id)
        self._write(self.link.start(self.sim.loop.time()))
        self._events()

    def data_received(self, data: bytes) -> None:
        self._write(self.link.feed(data, self.sim.loop.time()))
        self._events()

    def connection_lost(self, exc) -> None:
        was = self.state
        self.state = "closed"
        self._cancel_timer()
        if self.link is not None:
            self.link.fail(LinkError("connection lost"))
            self.link.events()
        if self.closing or self.sim.stopping:
            return
        if was == "registered":
            self.sim.figures.closed_by_central += 1
            self.sim.figures.false_disconnects.add(self.cp_id)
        self.sim.reconnect_later(self)

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _events(self) -> None:
        link = self.link
        for event in link.events():
            kind = type(event)
            if kind is Received:
                self._message(event.message)
            elif kind is Opened:
                self.state = "open"
                self.send(Reg(self.cp_id, f"Load test street {self.cp_id[-4:]}", PRICE))
            elif isinstance(event, Ended):
                if isinstance(event, Refused):
                    self.sim.figures.refused += 1
                elif isinstance(event, Broken) and "not acknowledged" in str(event.cause):
                    self.sim.figures.links_broken += 1
                self.transport.close()
        retransmitted = link.stats["retransmitted"]
        if retransmitted != self.retransmits:
            self.sim.figures.retransmits += retransmitted - self.retransmits
            self.retransmits = retransmitted
        deadline = link.next_deadline()
        if deadline != self.timer_at:
            self._cancel_timer()
            if deadline is not None:
                self.timer = self.sim.loop.call_at(deadline, self._on_timer)
                self.timer_at = deadline

    def _on_timer(self) -> None:
        self.timer = self.timer_at = None
        self._write(self.link.on_timer(self.sim.loop.time()))
        self._events()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.timer_at = None

    def send(self, message: Message) -> None:
        if self.state not in ("open", "registered") or self.link.closed:
            return
        try:
            self._write(self.link.send(message, self.sim.loop.time()))
        except (LinkError, OutboundFull):
            return
        self._events()

    def close(self) -> None:
        self.closing = True
        if self.link is not None:
            self._write(self.link.close("load test over"))
        if self.transport is not None:
            self.transport.close()

    # -- messages from Central --

    def _message(self, message) -> None:
        if isinstance(message, MessageError):
            return
        if isinstance(message, Auth):
            if message.ok and self.state == "open":
                self.state = "registered"
                self.sim.registered(self)
        elif isinstance(message, Sup):  # the Engine takes it
            self.send(Supr(self.cp_id, message.session_id, "OK", ""))

    def heartbeat(self) -> None:
        if self.state == "registered" and self.link.queued < 2:
            self.sim.figures.heartbeats += 1
            self.send(self.hb)


class MonitorFleet:
    """N simulated Monitors in one asyncio loop, on a thread of its own."""

    def __init__(self, host: str, port: int, cp_ids: list[str], figures: Figures, *, storm: bool,
                 connect_rate: float, faults_per_second: float, fault_seconds: float) -> None:
        self.host, self.port = host, port
        self.figures = figures
        self.storm = storm
        self.connect_rate = connect_rate
        self.faults_per_second = faults_per_second
        self.fault_seconds = fault_seconds
        self.cp_ids = cp_ids
        self.sims: dict[str, SimMonitor] = {}
        self.fault_sent: dict[str, float] = {}  # cp_id -> when its AVR was queued, until seen in the DB
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.stopping = False
        self.all_registered = threading.Event()
        self.faults_on = threading.Event()
        self._registered: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="monitors", daemon=True)

    def start(self) -> "MonitorFleet":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping = True
        self.loop.call_soon_threadsafe(self._close_all)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        if self.storm:
            await asyncio.gather(*(self._connect(cp_id) for cp_id in self.cp_ids))
        else:
            for i, cp_id in enumerate(self.cp_ids):
                self.loop.create_task(self._connect(cp_id))
                if (i + 1) % 50 == 0:
                    await asyncio.sleep(50 / self.connect_rate)
        faults = self.loop.create_task(self._faults())
        while not self.stopping:
            await asyncio.sleep(0.2)
        await faults  # it ends once stopping is set
        await asyncio.sleep(0.2)

    async def _connect(self, cp_id: str) -> None:
        sim = SimMonitor(self, cp_id)
        self.sims[cp_id] = sim
        sim.connect_started = time.monotonic()
        if self.figures.first_connect is None:
            self.figures.first_connect = sim.connect_started
        try:
            await self.loop.create_connection(lambda: sim, self.host, self.port)
        except OSError:
            self.figures.refused += 1
            self.reconnect_later(sim)

    def reconnect_later(self, sim: SimMonitor) -> None:
        if not self.stopping:
            self.loop.call_later(RECONNECT_DELAY * (0.5 + random.random()),
                                 lambda: self.loop.create_task(self._connect(sim.cp_id)))

    def registered(self, sim: SimMonitor) -> None:
        now = time.monotonic()
        if sim.cp_id not in self._registered:  # the first registration of this CP (not a reconnection)
            self._registered.add(sim.cp_id)
            self.figures.registration_ms.append((now - sim.connect_started) * 1000)
            if len(self._registered) == len(self.cp_ids):
                self.figures.last_registered = now
                self.all_registered.set()
        # signs of life every second from now, at this Monitor's own phase
        self.loop.call_at(now + HB_INTERVAL, self._beat, sim, now + HB_INTERVAL)

    def _beat(self, sim: SimMonitor, due: float) -> None:
        """One sign of life; how late it is measures the load generator's own lag."""
        if sim.state == "registered" and self.sims.get(sim.cp_id) is sim:
            late = time.monotonic() - due
            if late > self.figures.hb_late_max:
                self.figures.hb_late_max = late
            sim.heartbeat()
            self.loop.call_at(due + HB_INTERVAL, self._beat, sim, due + HB_INTERVAL)

    async def _faults(self) -> None:
        while not self.stopping:
            if not self.faults_on.is_set() or self.faults_per_second <= 0:
                await asyncio.sleep(0.1)
                continue
            await asyncio.sleep(random.expovariate(self.faults_per_second))
            sim = self._healthy_one()
            if sim is None:
                continue
            sim.faulty = True
            with self.lock:  # until read back as AVERIADO (a fault never seen there stays, as missed)
                self.fault_sent[sim.cp_id] = time.monotonic()
            self.figures.faults_sent += 1
            sim.send(Avr(sim.cp_id, "load test fault"))
            self.loop.call_later(self.fault_seconds, self._recover, sim)

    def _healthy_one(self, tries: int = 20) -> SimMonitor | None:
        """A random registered Monitor that is neither faulty nor supplying (a few random picks:
        scanning every Monitor for each fault would cost the generator more than the fault)."""
        for _ in range(tries):
            sim = self.sims.get(random.choice(self.cp_ids))
            if sim is not None and sim.state == "registered" and not sim.faulty and not sim.supplying:
                return sim
        return None

    def _recover(self, sim: SimMonitor) -> None:
        sim.send(Rec(sim.cp_id))
        self.loop.call_later(1.0, setattr, sim, "faulty", False)

    def mark_supplying(self, cp_id: str, on: bool) -> None:
        sim = self.sims.get(cp_id)
        if sim is not None:
            sim.supplying = on

    def alive(self, cp_id: str) -> bool:
        sim = self.sims.get(cp_id)
        return sim is not None and sim.state == "registered"

    def _close_all(self) -> None:
        for sim in self.sims.values():
            sim.close()


# -- Central's database, read back ---------------------------------------------------------------


class DBWatcher:
    """Polls Central's charging_points for rows changed since the last poll."""

    def __init__(self, db_url: str, fleet: MonitorFleet, figures: Figures) -> None:
        self.db_url = db_url
        self.fleet = fleet
        self.figures = figures
        self.stop = threading.Event()
        self.states: dict[str, str] = {}
        self._thread = threading.Thread(target=self._run, name="db-watch", daemon=True)

    def start(self) -> "DBWatcher":
        self._thread.start()
        return self

    def _run(self) -> None:
        conn = mysql_connect(self.db_url, autocommit=True)
        cur = conn.cursor()
        watermark = datetime(1970, 1, 1)
        try:  # rows changed since the newest change seen, less 2 s for rows committed late
            while not self.stop.wait(DB_POLL):
                cur.execute("SELECT cp_id, state, updated_at FROM charging_points WHERE updated_at >= %s",
                            (watermark - timedelta(seconds=2),))
                now = time.monotonic()
                for cp_id, state, updated in cur.fetchall():
                    watermark = max(watermark, updated)
                    before = self.states.get(cp_id)
                    self.states[cp_id] = state
                    if state == before:
                        continue
                    if state == "AVERIADO":
                        with self.fleet.lock:
                            sent = self.fleet.fault_sent.pop(cp_id, None)
                        if sent is not None:
                            self.figures.fault_ms.append((now - sent) * 1000)
                    elif state == "DESCONECTADO" and before is not None and self.fleet.alive(cp_id):
                        self.figures.false_disconnects.add(cp_id)
        finally:
            conn.close()


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

    def __init__(self, kafka: str, topics: Topics, fleet: MonitorFleet, figures: Figures, cps: list[str]) -> None:
        self.topics = topics
        self.fleet = fleet
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
            self.fleet.mark_supplying(s.cp_id, True)
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
                self.fleet.mark_supplying(s.cp_id, False)
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


def threads_of(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


# -- the run ------------------------------------------------------------------------------------


def run(args, kafka: str, db_url: str, central_addr: tuple[str, int], central_pid: int | None,
        prefix: str) -> dict:
    figures = Figures()
    topics = Topics(prefix)
    cp_ids = [f"LG{i:05d}" for i in range(args.monitors)]
    fleet = MonitorFleet(*central_addr, cp_ids, figures, storm=args.storm, connect_rate=args.connect_rate,
                         faults_per_second=args.faults_per_second, fault_seconds=args.fault_seconds)
    watcher = DBWatcher(db_url, fleet, figures)
    supplies = SupplyFleet(kafka, topics, fleet, figures, random.sample(cp_ids, min(args.supplies, len(cp_ids))))
    supplies.start()
    if not supplies.assigned.wait(30):
        raise SystemExit("loadgen: the notifications consumer got no partitions in 30 s")
    watcher.start()
    fleet.start()
    log.info("connecting %d Monitors%s", args.monitors, " at once (storm)" if args.storm else "")
    if not fleet.all_registered.wait(args.register_timeout):
        log.warning("only %d of %d Monitors registered in %g s", len(figures.registration_ms), args.monitors,
                    args.register_timeout)
    log.info("%d registered; %d supplies requested; measuring for %g s", len(figures.registration_ms),
             len(supplies.supplies), args.seconds)
    time.sleep(args.settle)  # the storm's own writes and log lines drain before the steady state is measured
    figures.hb_late_max = 0.0  # the load generator's own lag, counted in the measured window only
    supplies.request_all()
    fleet.faults_on.set()
    cpu0, own0, t0 = (cpu_seconds(central_pid) if central_pid else None), time.process_time(), time.monotonic()
    time.sleep(args.seconds)
    cpu1, own1, t1 = (cpu_seconds(central_pid) if central_pid else None), time.process_time(), time.monotonic()
    fleet.faults_on.clear()
    supplies.end_all()
    deadline = time.monotonic() + 30
    while figures.tickets < figures.authorised and time.monotonic() < deadline:
        time.sleep(0.1)
    deadline = time.monotonic() + args.fault_seconds + 1
    while fleet.fault_sent and time.monotonic() < deadline:  # the last faults read back
        time.sleep(DB_POLL)
    watcher.stop.set()
    fleet.stop()
    supplies.close()
    cpu_pct = round((cpu1 - cpu0) / (t1 - t0) * 100, 1) if cpu0 is not None and cpu1 is not None else None
    storm = None
    if figures.last_registered is not None and figures.first_connect is not None:
        storm = round(figures.last_registered - figures.first_connect, 3)

    def ms(values, p):
        return round(percentile(values, p), 1) if values else None

    return {
        "monitors": args.monitors,
        "supplies": len(supplies.supplies),
        "seconds": args.seconds,
        "storm": args.storm,
        "registered": len(figures.registration_ms),
        "refused": figures.refused,
        "registration_p50_ms": ms(figures.registration_ms, 0.50),
        "registration_p99_ms": ms(figures.registration_ms, 0.99),
        "storm_seconds": storm,
        "faults": figures.faults_sent,
        "faults_seen": len(figures.fault_ms),
        "fault_detect_p50_ms": ms(figures.fault_ms, 0.50),
        "fault_detect_p99_ms": ms(figures.fault_ms, 0.99),
        "authorised": figures.authorised,
        "denied": figures.denied,
        "telemetry_sent": figures.telemetry_sent,
        "telemetry_seen": len(figures.telemetry_ms),
        "telemetry_p50_ms": ms(figures.telemetry_ms, 0.50),
        "telemetry_p99_ms": ms(figures.telemetry_ms, 0.99),
        "tickets": figures.tickets,
        "tickets_interrupted": figures.interrupted,
        "heartbeats": figures.heartbeats,
        "loadgen_hb_late_max_ms": round(figures.hb_late_max * 1000, 1),
        "retransmits": figures.retransmits,
        "links_broken": figures.links_broken,
        "closed_by_central": figures.closed_by_central,
        "false_disconnects": len(figures.false_disconnects),
        "central_cpu_pct": cpu_pct,
        "central_rss_mb": None if central_pid is None else round(peak_rss_mb(central_pid) or 0, 1),
        "central_threads": None if central_pid is None else threads_of(central_pid),
        "loadgen_cpu_pct": round((own1 - own0) / (t1 - t0) * 100, 1),
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
        ("Load generator's own lag (latest sign of life)", f"{result['loadgen_hb_late_max_ms']} ms"),
        ("False DESCONECTADO", f"{result['false_disconnects']} (sessions closed by Central: "
                               f"{result['closed_by_central']})"),
        ("Central CPU (% of one core)", f"{result['central_cpu_pct']}"),
        ("Central peak RSS", f"{result['central_rss_mb']} MB ({result['central_threads']} threads)"),
        ("Load generator CPU (% of one core)", f"{result['loadgen_cpu_pct']}"),
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
            else:  # the seed's command, its log in work/central.log
                system.start_central("--host", "127.0.0.1", "--ui", "log", *args.central_arg)
                central_addr, central_pid = ("127.0.0.1", system.central_port), system.central.pid
            try:
                result = run(args, kafka, db_url, central_addr, central_pid, prefix)
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
