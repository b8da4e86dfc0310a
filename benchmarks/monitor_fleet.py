"""Thousands of simulated Monitors on one selector, in a process of their own.

The load generator's Monitors speak the real wire protocol to Central: each runs
``LinkState`` (the link state machine every program runs) on a non-blocking socket; one
thread drives them all with one selector and one heap of timers, as Central's reactor
does. What a sign of life costs here: one ``send``, later one ``recv`` of its ACK, one
heap entry for its ACK deadline; nothing else runs on that thread, so the fleet's own lag
(how late a sign of life goes out) stays small.

``FleetProcess`` runs a ``MonitorFleet`` in a child process (``spawn``), with the
``DBWatcher`` that reads Central's database back for fault detection and false
disconnects, and talks to the parent over a pipe: the parent says when faults start, when
the measured window starts, and when to stop; the child answers with its figures.
"""

from __future__ import annotations

import collections
import errno
import gc
import heapq
import itertools
import logging
import multiprocessing
import random
import selectors
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from ev_common.linkstate import Broken, Ended, LinkConfig, LinkError, LinkState, Opened, OutboundFull, Received
from ev_common.linkstate import Refused, Role
from ev_common.protocol import MESSAGES, Auth, Avr, Hb, Message, MessageError, Rec, Reg, Sup, Supr

log = logging.getLogger("loadgen.fleet")

HB_INTERVAL = 1.0
LINK = LinkConfig(ack_timeout=1.0, max_retries=3)  # a Monitor's defaults
RECONNECT_DELAY = 1.0
CONNECT_TIMEOUT = 10.0
DB_POLL = 0.05  # faults read back this often (the figures carry up to this much of polling)
FAULTS_PER_POLL = 500
DISCONNECT_EVERY = 10  # polls: DESCONECTADO rows are looked for every half second
PRICE = "0.35"
CONNECTS_PER_ROUND = 1000  # a storm opens its connections this many at a time, between rounds of I/O


def late_percentile(histogram: dict[int, int], p: float) -> int | None:
    """The ``p`` quantile (0..1) of a lateness histogram (whole ms -> count), in ms."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = p * total, 0
    for ms in sorted(histogram):
        seen += histogram[ms]
        if seen >= rank:
            return ms
    return max(histogram)


@dataclass
class FleetFigures:
    """What the Monitors' side measured (sent to the parent at the end)."""

    registration_ms: list[float] = field(default_factory=list)
    first_connect: float | None = None
    last_registered: float | None = None
    fault_ms: list[float] = field(default_factory=list)
    faults_sent: int = 0
    false_disconnects: list[str] = field(default_factory=list)
    closed_by_central: int = 0
    refused: int = 0
    retransmits: int = 0
    links_broken: int = 0
    heartbeats: int = 0
    hb_late_max: float = 0.0  # the fleet's own lag: a sign of life sent late
    hb_late_max_before: float = 0.0  # the same, before the measured window (the storm)
    hb_late_ms: dict[int, int] = field(default_factory=dict)  # lateness (whole ms) -> signs of life
    cpu_seconds: float = 0.0  # the fleet process's CPU over the measured window


class SimMonitor:
    """One Monitor: its socket, its ``LinkState`` and what it is doing."""

    __slots__ = ("cp_id", "hb", "reg", "sock", "fd", "link", "state", "connect_started", "faulty", "supplying",
                 "timer_at", "retransmits", "beat_at")

    def __init__(self, cp_id: str, supplying: bool) -> None:
        self.cp_id = cp_id
        self.hb = Hb(cp_id)  # the same every second
        self.reg = Reg(cp_id, f"Load test street {cp_id[-4:]}", PRICE)
        self.sock: socket.socket | None = None
        self.fd = -1
        self.link: LinkState | None = None
        self.state = "idle"  # idle | connecting | enq | open | registered | closed
        self.connect_started = 0.0
        self.faulty = False
        self.supplying = supplying  # its CP takes one of the supplies: never given a fault
        self.timer_at: float | None = None
        self.retransmits = 0
        self.beat_at = 0.0  # when its next sign of life is due


class MonitorFleet:
    """N Monitors on one selector thread (see the module doc)."""

    def __init__(self, host: str, port: int, cp_ids: list[str], supplying: set[str], *, storm: bool,
                 connect_rate: float, faults_per_second: float, fault_seconds: float) -> None:
        self.address = (host, port)
        self.figures = FleetFigures()
        self.storm = storm
        self.connect_rate = connect_rate
        self.faults_per_second = faults_per_second
        self.fault_seconds = fault_seconds
        self.cp_ids = cp_ids
        self.sims = {cp_id: SimMonitor(cp_id, cp_id in supplying) for cp_id in cp_ids}
        self.fault_sent: dict[str, float] = {}  # cp_id -> when its AVR was sent, until seen in the DB
        self.lock = threading.Lock()
        self.selector = selectors.DefaultSelector()
        self.timers: list = []  # heap of (when, seq, function, argument)
        self.seq = itertools.count()
        self.stopping = threading.Event()
        self.faults_on = threading.Event()
        self.all_registered = threading.Event()
        self._registered: set[str] = set()
        self.registrations: collections.Counter[str] = collections.Counter()  # AUTH#OK per CP, reconnections too
        self._thread: threading.Thread | None = None
        self._healthy = [sim for sim in self.sims.values() if not sim.supplying]
        self._next_fault = 0.0

    # -- the loop --

    def start(self) -> "MonitorFleet":
        """``run`` on a thread of its own (``stop`` ends it)."""
        self._thread = threading.Thread(target=self.run, name="monitors", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def registered_count(self) -> int:
        """Monitors registered now (any thread may ask)."""
        return sum(1 for sim in list(self.sims.values()) if sim.state == "registered")

    def run(self) -> None:
        now = time.monotonic()
        pending = list(self.sims.values())
        if self.storm:
            self.figures.first_connect = now
        else:
            for i, sim in enumerate(pending):
                self.at(now + i / self.connect_rate, self.connect, sim)
            pending = []
        select = self.selector.select
        timers = self.timers
        while not self.stopping.is_set():
            if pending:  # a storm: every connection opened at once, a thousand per round
                batch, pending = pending[:CONNECTS_PER_ROUND], pending[CONNECTS_PER_ROUND:]
                for sim in batch:
                    self.connect(sim)
            now = time.monotonic()
            wait = 0.0 if pending else (0.05 if not timers else min(0.05, max(0.0, timers[0][0] - now)))
            for key, mask in select(wait):
                sim = key.data
                if sim.state == "connecting":
                    self._connected(sim)
                else:
                    self._read(sim)
            now = time.monotonic()
            while timers and timers[0][0] <= now:
                _when, _seq, function, argument = heapq.heappop(timers)
                function(argument)
            if self.faults_on.is_set() and self.faults_per_second > 0 and now >= self._next_fault:
                self._fault()
                self._next_fault = now + random.expovariate(self.faults_per_second)
        for sim in self.sims.values():
            self._close(sim, "load test over")
        self.selector.close()

    def at(self, when: float, function, argument) -> None:
        heapq.heappush(self.timers, (when, next(self.seq), function, argument))

    # -- one Monitor's connection --

    def connect(self, sim: SimMonitor) -> None:
        if self.stopping.is_set():
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sim.sock, sim.fd, sim.state = sock, sock.fileno(), "connecting"
        sim.connect_started = time.monotonic()
        if self.figures.first_connect is None:
            self.figures.first_connect = sim.connect_started
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            self._lost(sim, refused=True)
            return
        self.selector.register(sock, selectors.EVENT_WRITE, sim)
        self.at(sim.connect_started + CONNECT_TIMEOUT, self._connect_timeout, sim)

    def _connect_timeout(self, sim: SimMonitor) -> None:
        if sim.state == "connecting" and time.monotonic() - sim.connect_started >= CONNECT_TIMEOUT:
            self._lost(sim, refused=True)

    def _connected(self, sim: SimMonitor) -> None:
        if sim.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            self._lost(sim, refused=True)
            return
        self.selector.modify(sim.sock, selectors.EVENT_READ, sim)
        sim.state = "enq"
        sim.link = LinkState(Role.CLIENT, LINK, MESSAGES, peer=sim.cp_id)
        now = time.monotonic()
        self._write(sim, sim.link.start(now))
        self._events(sim, now)

    def _read(self, sim: SimMonitor) -> None:
        try:
            chunk = sim.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        now = time.monotonic()
        link = sim.link
        if chunk:
            out = link.feed(chunk, now)
        else:
            link.fail(LinkError("connection closed by Central"))
            out = b""
        if out:
            self._write(sim, out)
        self._events(sim, now)

    def _write(self, sim: SimMonitor, data: bytes) -> None:
        if not data or sim.sock is None:
            return
        try:
            sim.sock.send(data)  # a few bytes: the socket's buffer takes them
        except OSError:
            sim.link.fail(LinkError("write failed"))

    def _events(self, sim: SimMonitor, now: float) -> None:
        link = sim.link
        for event in link.events():
            kind = event.__class__
            if kind is Received:
                self._message(sim, event.message, now)
            elif kind is Opened:
                sim.state = "open"
                self.send(sim, sim.reg, now)
            elif isinstance(event, Ended):
                if kind is Refused:
                    self.figures.refused += 1
                elif kind is Broken and "not acknowledged" in str(event.cause):
                    self.figures.links_broken += 1
                self._lost(sim)
                return
        retransmitted = link.stats["retransmitted"]
        if retransmitted != sim.retransmits:
            self.figures.retransmits += retransmitted - sim.retransmits
            sim.retransmits = retransmitted
        deadline = link.next_deadline()
        if deadline is not None and deadline != sim.timer_at:
            sim.timer_at = deadline
            self.at(deadline, self._link_timer, sim)

    def _link_timer(self, sim: SimMonitor) -> None:
        link = sim.link
        if link is None or link.closed or sim.timer_at is None:
            return
        now = time.monotonic()
        if now < sim.timer_at:
            return  # an older entry
        sim.timer_at = None
        self._write(sim, link.on_timer(now))
        self._events(sim, now)

    def send(self, sim: SimMonitor, message: Message, now: float) -> None:
        link = sim.link
        if sim.state not in ("open", "registered") or link.closed:
            return
        try:
            out = link.send(message, now)
        except (LinkError, OutboundFull):
            return
        if out:
            self._write(sim, out)
        self._events(sim, now)

    def _lost(self, sim: SimMonitor, refused: bool = False) -> None:
        """The connection ended (or never opened): count it, reconnect later."""
        was = sim.state
        self._drop_socket(sim)
        if sim.link is not None and not sim.link.closed:
            sim.link.fail(LinkError("connection lost"))
            sim.link.events()
        sim.timer_at = None
        if refused:
            self.figures.refused += 1
        if self.stopping.is_set():
            return
        if was == "registered":
            self.figures.closed_by_central += 1
            self.figures.false_disconnects.append(sim.cp_id)
        self.at(time.monotonic() + RECONNECT_DELAY * (0.5 + random.random()), self.connect, sim)

    def _close(self, sim: SimMonitor, reason: str) -> None:
        if sim.sock is None:
            return
        if sim.link is not None:
            self._write(sim, sim.link.close(reason))
        self._drop_socket(sim)

    def _drop_socket(self, sim: SimMonitor) -> None:
        sim.state = "closed"
        if sim.sock is None:
            return
        try:
            self.selector.unregister(sim.sock)
        except (KeyError, ValueError):
            pass
        sim.sock.close()
        sim.sock = None

    # -- messages from Central --

    def _message(self, sim: SimMonitor, message, now: float) -> None:
        if isinstance(message, MessageError):
            return
        if isinstance(message, Auth):
            if message.ok and sim.state == "open":
                sim.state = "registered"
                self._registered_now(sim, now)
        elif isinstance(message, Sup):  # the Engine takes it
            self.send(sim, Supr(sim.cp_id, message.session_id, "OK", ""), now)

    def _registered_now(self, sim: SimMonitor, now: float) -> None:
        self.registrations[sim.cp_id] += 1
        if sim.cp_id not in self._registered:  # the first registration of this CP (not a reconnection)
            self._registered.add(sim.cp_id)
            self.figures.registration_ms.append((now - sim.connect_started) * 1000)
            if len(self._registered) == len(self.cp_ids):
                self.figures.last_registered = now
                self.all_registered.set()
        sim.beat_at = now + HB_INTERVAL  # signs of life every second from now, at its own phase
        self.at(sim.beat_at, self._beat, sim)

    def _beat(self, sim: SimMonitor) -> None:
        """One sign of life; how late it goes out measures the fleet's own lag."""
        if sim.state != "registered":
            return
        now = time.monotonic()
        late = now - sim.beat_at
        figures = self.figures
        if late > figures.hb_late_max:
            figures.hb_late_max = late
        bucket = int(late * 1000)
        figures.hb_late_ms[bucket] = figures.hb_late_ms.get(bucket, 0) + 1
        if sim.link.queued < 2:
            self.figures.heartbeats += 1
            self.send(sim, sim.hb, now)
        sim.beat_at += HB_INTERVAL
        self.at(sim.beat_at, self._beat, sim)

    # -- faults --

    def _fault(self) -> None:
        sim = self._healthy_one()
        if sim is None:
            return
        sim.faulty = True
        now = time.monotonic()
        with self.lock:  # until read back as AVERIADO (a fault never seen there stays, as missed)
            self.fault_sent[sim.cp_id] = now
        self.figures.faults_sent += 1
        self.send(sim, Avr(sim.cp_id, "load test fault"), now)
        self.at(now + self.fault_seconds, self._recover, sim)

    def _healthy_one(self, tries: int = 20) -> SimMonitor | None:
        """A random registered Monitor that is neither faulty nor supplying."""
        for _ in range(tries):
            sim = random.choice(self._healthy)
            if sim.state == "registered" and not sim.faulty:
                return sim
        return None

    def _recover(self, sim: SimMonitor) -> None:
        self.send(sim, Rec(sim.cp_id), time.monotonic())
        self.at(time.monotonic() + 1.0, self._healed, sim)

    @staticmethod
    def _healed(sim: SimMonitor) -> None:
        sim.faulty = False

    def alive(self, cp_id: str) -> bool:
        sim = self.sims.get(cp_id)
        return sim is not None and sim.state == "registered"


class DBWatcher:
    """Reads Central's charging_points back: every ``DB_POLL`` s the rows of the CPs whose fault
    was sent and not seen yet (a handful: a small query, so that the watcher costs the Monitors'
    process little), and every ``DISCONNECT_POLL`` s the rows that turned ``DESCONECTADO``."""

    def __init__(self, db_url: str, fleet: MonitorFleet) -> None:
        self.db_url = db_url
        self.fleet = fleet
        self.figures = fleet.figures
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-watch", daemon=True)

    def start(self) -> "DBWatcher":
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join(10)

    def _run(self) -> None:
        from tests.support.services import mysql_connect

        conn = mysql_connect(self.db_url, autocommit=True)
        cur = conn.cursor()
        disconnected: set[str] = set()
        seen: dict[str, datetime] = {}  # cp_id -> the DESCONECTADO row's time already looked at
        watermark = datetime(1970, 1, 1)
        polls = 0
        try:
            while not self.stop.wait(DB_POLL):
                polls += 1
                with self.fleet.lock:
                    pending = list(self.fleet.fault_sent)[:FAULTS_PER_POLL]
                if pending:
                    cur.execute("SELECT cp_id FROM charging_points WHERE state = 'AVERIADO' AND cp_id IN (%s)"
                                % ", ".join(["%s"] * len(pending)), pending)
                    now = time.monotonic()
                    for (cp_id,) in cur.fetchall():
                        with self.fleet.lock:
                            sent = self.fleet.fault_sent.pop(cp_id, None)
                        if sent is not None:
                            self.figures.fault_ms.append((now - sent) * 1000)
                if polls % DISCONNECT_EVERY == 0:  # less 2 s for rows committed late
                    cur.execute("SELECT cp_id, updated_at FROM charging_points WHERE state = 'DESCONECTADO' "
                                "AND updated_at >= %s", (watermark - timedelta(seconds=2),))
                    for cp_id, updated in cur.fetchall():
                        watermark = max(watermark, updated)
                        if seen.get(cp_id) != updated:
                            seen[cp_id] = updated
                            if self.fleet.alive(cp_id):
                                disconnected.add(cp_id)
        finally:
            conn.close()
            self.figures.false_disconnects.extend(disconnected)


# -- the child process --------------------------------------------------------------------------


def _child(conn, host: str, port: int, cp_ids: list[str], supplying: list[str], options: dict, db_url: str,
           file_limit: int) -> None:
    from ev_common.lifecycle import raise_file_limit

    logging.basicConfig(level=logging.INFO, format="%(asctime)s loadgen-fleet[%(threadName)s] %(levelname)s "
                                                   "%(message)s")
    raise_file_limit(file_limit)
    fleet = MonitorFleet(host, port, cp_ids, set(supplying), **options)
    watcher = DBWatcher(db_url, fleet).start()
    fleet.start()
    told_registered = False
    cpu0 = None
    while True:
        if not told_registered and fleet.all_registered.is_set():
            # the Monitors live until the end: out of the collector's way, so that a full
            # collection over them never holds the loop up (the fleet's lag is measured)
            gc.freeze()
            conn.send(("registered", None))
            told_registered = True
        if not conn.poll(0.05):
            continue
        what, argument = conn.recv()
        if what == "faults":
            fleet.faults_on.set() if argument else fleet.faults_on.clear()
        elif what == "measure":  # the measured window starts (or ends)
            if argument:
                fleet.figures.hb_late_max_before = fleet.figures.hb_late_max
                fleet.figures.hb_late_max = 0.0
                fleet.figures.hb_late_ms = {}
                cpu0 = time.process_time()
            else:
                fleet.figures.cpu_seconds = time.process_time() - (cpu0 or 0.0)
        elif what == "pending_faults":
            with fleet.lock:
                conn.send(("pending_faults", len(fleet.fault_sent)))
        elif what == "stop":
            fleet.stop()
            watcher.stop.set()
            watcher.join()
            conn.send(("figures", asdict(fleet.figures)))
            conn.close()
            return


class FleetProcess:
    """The Monitors and the database watcher in a child process (``spawn``: no thread of the
    parent is copied), driven over a pipe."""

    def __init__(self, host: str, port: int, cp_ids: list[str], supplying: list[str], db_url: str, *,
                 storm: bool, connect_rate: float, faults_per_second: float, fault_seconds: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        options = dict(storm=storm, connect_rate=connect_rate, faults_per_second=faults_per_second,
                       fault_seconds=fault_seconds)
        self._process = context.Process(target=_child, name="loadgen-fleet", daemon=True,
                                        args=(child, host, port, cp_ids, supplying, options, db_url,
                                              len(cp_ids) + 1024))
        self._registered = False
        self.pid: int | None = None

    def start(self) -> "FleetProcess":
        self._process.start()
        self.pid = self._process.pid
        return self

    def wait_registered(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._registered:
            left = deadline - time.monotonic()
            if left <= 0 or not self._process.is_alive() and not self._conn.poll(0):
                return False
            if self._conn.poll(min(left, 0.2)):
                what, _ = self._conn.recv()
                if what == "registered":
                    self._registered = True
        return True

    def _ask(self, what: str, argument=None):
        self._conn.send((what, argument))

    def faults(self, on: bool) -> None:
        self._ask("faults", on)

    def measure(self, on: bool) -> None:
        self._ask("measure", on)

    def pending_faults(self, timeout: float = 5.0) -> int:
        self._ask("pending_faults")
        while self._conn.poll(timeout):
            what, argument = self._conn.recv()
            if what == "pending_faults":
                return argument
        return 0

    def stop(self, timeout: float = 30.0) -> FleetFigures:
        self._ask("stop")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._conn.poll(max(0.0, deadline - time.monotonic())):
            what, argument = self._conn.recv()
            if what == "figures":
                self._process.join(10)
                return FleetFigures(**argument)
        self._process.kill()
        raise RuntimeError("the Monitor fleet did not report its figures")
