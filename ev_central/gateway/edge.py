"""One gateway: Monitor sessions on a port, CP events out and commands in over Kafka.

``MonitorServer`` (ev_central/server.py) serves the sessions exactly as in Central; here it
reaches a ``GatewayNetwork`` instead of the core's ``ChargingNetwork``: the same calls
(``register``, ``heartbeat``, ``engine_fault``, ``engine_ok``, ``session_ended``,
``expire_silent``, ``owner``), but the gateway keeps only who holds each CP and when it last
spoke, and every change becomes a ``CPEvent`` for the core. Events are queued in the order
they were decided, under the table's lock (so one CP's events reach Kafka in order), and one
thread hands them to the producer.

Commands come on the gateway's own topic: a protocol message to pass to a CP's Monitor
(``SUP`` is asked as Central asks, and answered with a ``cp.answer`` or ``cp.undelivered``
event), ``cp.drop`` (a newer session elsewhere replaced this one), ``roster.request``.
A command meant for another run of this gateway, for a session it no longer holds, or read
after its deadline, is dropped (a ``SUP`` then answered as undelivered).

Every ``beacon_interval`` seconds a beacon says the gateway is alive, and every
``roster_interval`` seconds (and at once when the core asks) it carries the roster: each CP
held, with its session, since when, location, price and fault. The core uses it to rebuild
where each CP is after its own restart, and the beacons' silence to mark a dead gateway's
CPs DESCONECTADO.
"""

from __future__ import annotations

import collections
import logging
import math
import ssl
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, Hashable

from ev_common.bus import Publisher, RecordConsumer, Topics, ensure_topics
from ev_common.link import LinkConfig
from ev_common.protocol import Rvk, Sst, Sup
from ev_common.retry import Backoff

from ..auth import OpenDoor, Refused
from ..core.network import DEFAULT_SILENCE_TIMEOUT
from ..server import CPUnreachable, MonitorServer
from . import wire
from .wire import Beacon, Command, CPEvent, RosterEntry, now_ms

log = logging.getLogger(__name__)

DEFAULT_BEACON_INTERVAL = 1.0
DEFAULT_ROSTER_INTERVAL = 10.0
EVENTS_KEPT = 100_000  # events waiting for the producer (a long Kafka outage): the oldest dropped beyond
ASKS_IN_FLIGHT = 256
ASK_WORKERS = 16
TOPIC_WAIT = 5.0


@dataclass(frozen=True)
class GatewayChange:
    """What MonitorServer reads of a change (the core decides the state): the CP, why, and
    never "stopped": the core sends STOP itself after a registration when the CP is."""

    cp_id: str
    cause: str
    stopped: bool = False
    weather: bool = False


class EventQueue:
    """Bounded and ordered: events go in under the table's lock, one thread takes them out."""

    def __init__(self, limit: int = EVENTS_KEPT) -> None:
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self.limit = limit
        self.dropped = 0

    def put(self, item) -> None:
        with self._cond:
            if len(self._items) >= self.limit:
                self._items.popleft()
                self.dropped += 1
                if self.dropped % 1000 == 1:
                    log.error("%d CP event(s) dropped: Kafka takes none (the core rebuilds from the rosters)",
                              self.dropped)
            self._items.append(item)
            self._cond.notify()

    def get(self, timeout: float):
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class _Held:
    __slots__ = ("session", "number", "last_seen", "since_ms", "location", "price", "fault", "peer")

    def __init__(self, session, number: int, last_seen: float, since_ms: int, location: str, price: Decimal,
                 peer: str) -> None:
        self.session = session
        self.number = number
        self.last_seen = last_seen
        self.since_ms = since_ms
        self.location = location
        self.price = price
        self.fault = ""
        self.peer = peer


class GatewayNetwork:
    """Who holds each CP here and when it last spoke; each change an event (see the module doc).
    Thread-safe. ``key_versions`` (cp_id -> version) is what the authenticator issued last."""

    def __init__(self, emit: Callable[[CPEvent], None], gateway_id: str, incarnation: str, *,
                 clock: Callable[[], float] = time.monotonic, silence_timeout: float = DEFAULT_SILENCE_TIMEOUT,
                 key_versions: dict[str, int] | None = None) -> None:
        self._emit = emit
        self.gateway_id = gateway_id
        self.incarnation = incarnation
        self._clock = clock
        self.silence_timeout = silence_timeout
        self.key_versions = key_versions if key_versions is not None else {}
        self._lock = threading.Lock()
        self._cps: dict[str, _Held] = {}

    # -- what MonitorServer calls ---------------------------------------------------------------

    def owner(self, cp_id: str) -> Hashable | None:
        with self._lock:
            held = self._cps.get(cp_id)
            return held.session if held else None

    def register(self, cp_id: str, location: str, price: Decimal, session) -> tuple[GatewayChange, Hashable | None]:
        return self.register_many([(cp_id, location, price, session)])[0]

    def register_many(self, registrations) -> list[tuple[GatewayChange, Hashable | None]]:
        """``register`` for many (cp_id, location, price, session), in order, under one lock."""
        results = []
        with self._lock:
            for cp_id, location, price, session in registrations:
                peer = str(getattr(getattr(session, "link", None), "peer", ""))[:wire.PEER_MAX]
                held = self._cps.get(cp_id)
                replaced = held.session if held is not None and held.session is not session else None
                number = getattr(session, "number", None) or id(session)
                held = self._cps[cp_id] = _Held(session, number, self._clock(), now_ms(), location, price, peer)
                self._event("cp.registered", cp_id, held, location=location, price_eur_kwh=price,
                            key_version=self.key_versions.get(cp_id, 0), peer=peer, since_ms=held.since_ms)
                results.append((GatewayChange(cp_id, "registered"), replaced))
        return results

    def heartbeat(self, cp_id: str, session) -> bool:
        """Without the lock, as ChargingNetwork.heartbeat (the most frequent call): one read, one
        comparison, one timestamp; a registration or an expiry at the same moment decides alone."""
        held = self._cps.get(cp_id)
        if held is None or held.session is not session:
            return False
        held.last_seen = self._clock()
        return True

    def engine_fault(self, cp_id: str, session, reason: str) -> GatewayChange | None:
        with self._lock:
            held = self._owned(cp_id, session)
            if held is None:
                return None
            held.last_seen, held.fault = self._clock(), reason or "fault"
            self._event("cp.fault", cp_id, held, reason=reason)
        return GatewayChange(cp_id, f"Engine fault: {reason}")

    def engine_ok(self, cp_id: str, session) -> GatewayChange | None:
        with self._lock:
            held = self._owned(cp_id, session)
            if held is None:
                return None
            held.last_seen, held.fault = self._clock(), ""
            self._event("cp.recovered", cp_id, held)
        return GatewayChange(cp_id, "Engine recovered")

    def session_ended(self, cp_id: str, session, cause: str) -> GatewayChange | None:
        with self._lock:
            held = self._owned(cp_id, session)
            if held is None:
                return None
            del self._cps[cp_id]
            self._event("cp.lost", cp_id, held, reason=cause[:wire.TEXT_MAX])
        return GatewayChange(cp_id, cause)

    def expire_silent(self) -> list[tuple[Hashable, GatewayChange]]:
        now = self._clock()
        cutoff = now - self.silence_timeout
        expired = []
        with self._lock:
            silent = [(cp_id, held) for cp_id, held in self._cps.items() if held.last_seen < cutoff]
            for cp_id, held in silent:
                cause = f"no sign of life from the Monitor for {now - held.last_seen:.1f} s"
                del self._cps[cp_id]
                self._event("cp.lost", cp_id, held, reason=cause)
                expired.append((held.session, GatewayChange(cp_id, cause)))
        return expired

    # -- what the gateway adds -----------------------------------------------------------------

    def report(self, kind: str, cp_id: str, session, **fields) -> bool:
        """An event of ``session`` at ``cp_id`` (answer, undelivered, supply), in order with the
        rest; False when ``session`` no longer holds the CP (nothing is said then)."""
        with self._lock:
            held = self._owned(cp_id, session)
            if held is None:
                return False
            self._event(kind, cp_id, held, **fields)
            return True

    def number_of(self, cp_id: str) -> int | None:
        with self._lock:
            held = self._cps.get(cp_id)
            return held.number if held else None

    def roster(self) -> list[RosterEntry]:
        with self._lock:
            held = [(cp_id, h.number, h.since_ms, h.location, h.price, h.fault, h.peer) for cp_id, h in self._cps.items()]
        return [RosterEntry(*entry) for entry in held]

    def __len__(self) -> int:
        with self._lock:
            return len(self._cps)

    def _owned(self, cp_id: str, session) -> _Held | None:
        held = self._cps.get(cp_id)
        return held if held is not None and held.session is session else None

    def _event(self, kind: str, cp_id: str, held: _Held, **fields) -> None:
        try:
            event = CPEvent(kind, cp_id, self.gateway_id, self.incarnation, held.number, **fields)
        except ValueError as exc:  # a bug: never a bad record on the topic
            log.error("%s: %s event not sent: %s", cp_id, kind, exc)
            return
        self._emit(event)


class _NotingAuthenticator:
    """The real authenticator, noting the key version each admitted CP got (for its event)."""

    def __init__(self, inner, versions: dict[str, int]) -> None:
        self.inner = inner
        self.versions = versions
        self.secure = getattr(inner, "secure", False)

    def authenticate_many(self, requests):
        outcomes = self.inner.authenticate_many(requests)
        for (reg, _), admitted in zip(requests, outcomes):
            if admitted is not None and not isinstance(admitted, Refused):
                self.versions[reg.cp_id] = admitted.key.version
        return outcomes


class Gateway:
    """One gateway process's parts (see the module doc). ``start`` raises OSError when the port
    cannot be opened; ``stop`` is a clean stop: a last beacon says the gateway leaves, sessions
    close with EOT (their Monitors go to another gateway), what is queued reaches Kafka."""

    def __init__(self, gateway_id: str, host: str, port: int, kafka: str, *, topics: Topics = Topics(),
                 reuse_port: bool = False, silence_timeout: float = DEFAULT_SILENCE_TIMEOUT,
                 beacon_interval: float = DEFAULT_BEACON_INTERVAL, roster_interval: float = DEFAULT_ROSTER_INTERVAL,
                 link_config: LinkConfig = LinkConfig(), max_sessions: int = 10_000, workers: int = 4,
                 tls: ssl.SSLContext | None = None, authenticator=None, keys=None, partitions: int = 1,
                 replication: int = 1, events_kept: int = EVENTS_KEPT) -> None:
        if not wire.GATEWAY_ID.fullmatch(gateway_id):
            raise ValueError(f"{gateway_id!r} is not a gateway id: 1-32 of A-Z a-z 0-9 _ -")
        self.id = gateway_id
        self.incarnation = uuid.uuid4().hex[:16]
        self.started_ms = now_ms()
        self.kafka = kafka
        self.topics = topics
        self.beacon_interval = beacon_interval
        self.roster_interval = roster_interval
        self.partitions = partitions
        self.replication = replication
        self.keys = keys  # secure mode: the KeyRing (a revoked CP's key is forgotten here too)
        self.events = EventQueue(events_kept)
        self._versions: dict[str, int] = {}
        self.network = GatewayNetwork(self.events.put, gateway_id, self.incarnation, silence_timeout=silence_timeout,
                                      key_versions=self._versions)
        self.server = MonitorServer(self.network, lambda change: None, host, port, config=link_config,
                                    max_sessions=max_sessions, workers=workers, tls=tls,
                                    authenticator=_NotingAuthenticator(authenticator or OpenDoor(), self._versions),
                                    reuse_port=reuse_port)
        self.server.on_supply_state = self._supply_state
        self.publisher = Publisher(kafka, f"ev-gateway-{gateway_id}")
        self._asks = ThreadPoolExecutor(max_workers=ASK_WORKERS, thread_name_prefix="ask")
        self._asking = threading.BoundedSemaphore(ASKS_IN_FLIGHT)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._roster_wanted = threading.Event()
        self._roster_wanted.set()  # the first beacon carries the roster (empty)
        self._threads: list[threading.Thread] = []
        self.consumer: RecordConsumer | None = None
        self.seq = 0
        self.commands_handled = 0

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    def start(self) -> "Gateway":
        self.server.start()
        host, port = self.address
        log.info("gateway %s (run %s) listening for Monitors on %s:%d", self.id, self.incarnation, host, port)
        ready = self._ensure_topics(TOPIC_WAIT)
        self.consumer = RecordConsumer(self.kafka, f"{self.topics.prefix}ev-gateway-{self.id}",
                                       [self.topics.gateway_commands(self.id)], self._on_command,
                                       client_id=f"ev-gateway-{self.id}", decoder=wire.decoder)
        for name, target in (("kafka-events", self._publish_events), ("kafka-delivery", self._deliver),
                             ("beacon", self._beacons), ("kafka-commands", self._consume)):
            self._spawn(name, target)
        if not ready:
            self._spawn("kafka-topics", self._keep_topics)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            if thread.name == "beacon":
                thread.join(3)
        self._send_beacon(leaving=True)
        self.server.stop()
        for thread in self._threads:
            thread.join(0.5 if thread.name == "kafka-topics" else 5)
        self._asks.shutdown(wait=False, cancel_futures=True)
        self._drain()
        self.publisher.flush(3)  # bounded: during a broker outage shutdown must not hang

    # -- threads -----------------------------------------------------------------------------------

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _ensure_topics(self, timeout: float) -> bool:
        names = [self.topics.cp_events, self.topics.gateway_beacons, self.topics.gateway_commands(self.id)]
        try:
            ensure_topics(self.kafka, names, self.partitions, self.replication, timeout=timeout)
            return True
        except Exception as exc:  # the broker not answering, or refusing
            log.warning("cannot create the gateway's Kafka topics yet (%s); retrying", str(exc) or type(exc).__name__)
            return False

    def _keep_topics(self) -> None:
        backoff = Backoff(initial=0.5, cap=10)
        while not self._stop.wait(backoff.next()):
            if self._ensure_topics(TOPIC_WAIT):
                log.info("the gateway's Kafka topics are ready")
                return

    def _consume(self) -> None:
        self.consumer.run(self._stop)

    def _deliver(self) -> None:
        while not self._stop.is_set():
            try:
                self.publisher.poll(0.1)
            except Exception:  # this thread must outlive any error of the client
                log.exception("Kafka delivery poll failed; going on")
                self._stop.wait(0.5)

    def _publish_events(self) -> None:
        while not self._stop.is_set():
            event = self.events.get(0.2)
            if event is not None:
                self.publisher.publish(self.topics.cp_events, event.cp_id, event, encode=wire.encode)

    def _drain(self) -> None:
        while True:
            event = self.events.get(0)
            if event is None:
                return
            self.publisher.publish(self.topics.cp_events, event.cp_id, event, encode=wire.encode)

    def _beacons(self) -> None:
        next_roster = time.monotonic()
        while not self._stop.is_set():
            if self._roster_wanted.is_set() or time.monotonic() >= next_roster:
                self._roster_wanted.clear()
                self._send_roster()
                next_roster = time.monotonic() + self.roster_interval
            else:
                self._send_beacon()
            self._wake.wait(self.beacon_interval)
            self._wake.clear()

    def _beacon(self, **fields) -> Beacon:
        self.seq += 1
        return Beacon(self.id, self.incarnation, self.started_ms, self.seq, self.server.session_count(),
                      int(self.beacon_interval * 1000), address="%s:%d" % self.address, **fields)

    def _send_beacon(self, leaving: bool = False) -> None:
        try:
            self.publisher.publish(self.topics.gateway_beacons, self.id, self._beacon(leaving=leaving),
                                   encode=wire.encode)
        except Exception:  # never the end of the beacons
            log.exception("beacon not sent")

    def _send_roster(self) -> None:
        entries = self.network.roster()
        parts = max(1, math.ceil(len(entries) / wire.ROSTER_PART_MAX))
        roster_id = now_ms()
        for part in range(parts):
            chunk = tuple(entries[part * wire.ROSTER_PART_MAX:(part + 1) * wire.ROSTER_PART_MAX])
            try:
                beacon = self._beacon(roster_id=roster_id, part=part + 1, parts=parts, roster=chunk)
                self.publisher.publish(self.topics.gateway_beacons, self.id, beacon, encode=wire.encode)
            except Exception:
                log.exception("roster part %d/%d not sent", part + 1, parts)
        log.debug("roster sent: %d CP(s) in %d part(s)", len(entries), parts)

    # -- commands (the consumer's thread) ----------------------------------------------------------

    def _on_command(self, key: str | None, command) -> None:
        if not isinstance(command, Command) or command.gateway != self.id:
            log.warning("ignored %s on %s: not a command for gateway %s", getattr(command, "TYPE", "?"),
                        self.topics.gateway_commands(self.id), self.id)
            return
        self.commands_handled += 1
        if command.kind == "roster.request":
            log.info("the core asks for the roster")
            self._roster_wanted.set()
            self._wake.set()
            return
        cp_id, message = command.cp_id, command.message
        session = self.network.owner(cp_id)
        number = self.network.number_of(cp_id)
        why = None
        if command.incarnation != self.incarnation:
            why = "meant for an earlier run of this gateway"
        elif now_ms() > command.deadline_ms:
            why = "read after its deadline"
        elif session is None or (command.session and number != command.session):
            why = f"{cp_id} has no such session here (now {number or 'none'})"
        if why is not None:
            log.info("%s for %s dropped: %s", message.OPCODE if message else command.kind, cp_id, why)
            if isinstance(message, Sup):  # the core waits for an answer: tell it at once
                self._undelivered(command, why)
            return
        if command.kind == "cp.drop":
            log.warning("%s: a newer session elsewhere replaces %r; closing it", cp_id, session)
            session.link.close(command.reason or "replaced by a newer session for the same CP")
        elif isinstance(message, Sup):
            if not self._asking.acquire(blocking=False):
                self._undelivered(command, "the gateway has too many questions in flight")
                return
            try:
                self._asks.submit(self._ask, command, session)
            except RuntimeError:  # stopping
                self._asking.release()
        elif isinstance(message, Rvk):
            if self.keys is not None:
                self.keys.forget(cp_id)
            self.server.revoke(cp_id, message.reason)
        elif not self.server.command(cp_id, message):
            log.warning("%s: %s not passed to its Monitor", cp_id, message.OPCODE)

    def _ask(self, command: Command, session) -> None:
        """(an ask worker) Ask the CP as Central does; the answer, or why not, as an event."""
        try:
            timeout = max(0.1, (command.deadline_ms - now_ms()) / 1000 - 0.05)
            try:
                answer = self.server.ask(command.cp_id, command.message, timeout)
            except CPUnreachable as exc:
                self._undelivered(command, str(exc), session)
            else:
                if not self.network.report("cp.answer", command.cp_id, session, ask_id=command.ask_id,
                                           message=answer):
                    log.info("%s: answer to %s not sent: its session ended meanwhile", command.cp_id,
                             command.message.session_id[:8])
        except Exception:
            log.exception("asking %s failed", command.cp_id)
        finally:
            self._asking.release()

    def _undelivered(self, command: Command, why: str, session=None) -> None:
        fields = dict(ask_id=command.ask_id, reason=why[:wire.TEXT_MAX])
        if session is not None and self.network.report("cp.undelivered", command.cp_id, session, **fields):
            return
        try:  # no session here to speak for: said in the name of the one the core meant
            self.events.put(CPEvent("cp.undelivered", command.cp_id, self.id, command.incarnation,
                                    max(1, command.session), **fields))
        except ValueError as exc:
            log.error("%s: undelivered event not sent: %s", command.cp_id, exc)

    # -- what MonitorServer reports besides the table ------------------------------------------

    def _supply_state(self, cp_id: str, report: Sst) -> list:
        """An SST after a registration goes to the core, which answers with commands (CAN)."""
        session = self.network.owner(cp_id)
        if session is not None:
            self.network.report("cp.supply", cp_id, session, message=report)
        return []
