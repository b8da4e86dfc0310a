"""The core's side of the gateways (docs/scaling.md, "Gateways"): CPs whose Monitors are
served by gateway processes, reached over Kafka.

``RemoteGateways`` reads the gateways' CP events (``ev.cp.events``) and beacons
(``ev.gateway.beacons``) on one consumer thread and feeds them into the same calls
``MonitorServer`` makes: ``ChargingNetwork.register / engine_fault / engine_ok /
session_ended`` and ``SupplyService.changed / on_supply_state``. A remote CP's owner token is
a ``RemoteSession`` (gateway id, the gateway's run, the session's number there), so the
network's rules hold as they are: only the newest registration speaks for a CP, wherever it
was made, and the end of an older one changes nothing.

``CPRouter`` is the core's ``CPGateway``: ``ask`` and ``command`` go to the local
``MonitorServer`` or, for a remote owner, to its gateway's command topic; a remote ``ask``
waits for the ``cp.answer`` event (or ``cp.undelivered``) within its timeout and raises
``CPUnreachable`` otherwise; a ``SUPR#OK`` that comes after the core gave up is cancelled at
the CP (``CAN``), as ``MonitorServer`` does.

Gateways and the core restart independently:

* a gateway whose beacons stop for ``timeout`` seconds is dead: each CP it held (and no newer
  session took) goes DESCONECTADO. A new run of a gateway (another ``incarnation``) ends the
  CPs of its earlier run at once. A gateway that leaves cleanly says so in its last beacon;
  its CPs that no other gateway took within ``LEAVE_GRACE`` seconds go DESCONECTADO;
* the core, restarted, skips events made before it started (``STARTED_MARGIN``) and asks
  each gateway it hears from for its roster: every CP it holds comes back to its state
  (AVERIADO with its fault) without its Monitor registering again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable

from ev_common.bounded import keep_newest
from ev_common.bus import Publisher, RecordConsumer, Topics, ensure_topics
from ev_common.protocol import Can, Message, Stop, Sup, Supr

from .core.network import ChargingNetwork
from .gateway import wire
from .gateway.wire import Beacon, Command, CPEvent, now_ms
from .server import GAVE_UP, CPUnreachable, MonitorServer

log = logging.getLogger(__name__)

DEFAULT_GATEWAY_TIMEOUT = 6.0  # s without a beacon: the gateway is dead, its CPs DESCONECTADO
LEAVE_GRACE = 3.0  # s a cleanly stopped gateway's Monitors have to register elsewhere
STARTED_MARGIN_MS = 2000  # events made this long before the core started are still taken (clocks differ)
COMMAND_TTL = 30.0  # s: a command (other than SUP) read later than this by its gateway is dropped
SWEEP_INTERVAL = 0.5
# ms: an earlier run's beacon sent this long after a newer run started is no late word of a
# dead process but a second live gateway with the same id (room for the clocks of two machines)
DUPLICATE_MARGIN_MS = 10_000
ENDED_KEPT = 100_000  # sessions known ended: a roster made before their end does not bring them back
ASKS_MAX = 10_000
GAVE_UP_KEPT = 4096
GATEWAYS_GROUP = "ev-central-gateways"


class RemoteLink:
    """What the core's code reads of a session's link: its Monitor's address, and ``close``
    (for a remote session: tell its gateway to close it)."""

    __slots__ = ("peer", "_close")

    def __init__(self, peer: str, close: Callable[[str], None]) -> None:
        self.peer = peer
        self._close = close

    def close(self, reason: str = "closed by the core") -> None:
        self._close(reason)


class RemoteSession:
    """The owner token of a CP served by a gateway: equal when gateway, run and number are."""

    remote = True  # ChargingNetwork leaves its silence to the gateway
    __slots__ = ("cp_id", "gateway", "incarnation", "number", "since_ms", "link")

    def __init__(self, cp_id: str, gateway: str, incarnation: str, number: int, since_ms: int = 0, peer: str = "",
                 close: Callable[["RemoteSession", str], None] | None = None) -> None:
        self.cp_id = cp_id  # (not part of its identity: one token is one CP's anyway)
        self.gateway = gateway
        self.incarnation = incarnation
        self.number = number
        self.since_ms = since_ms
        self.link = RemoteLink(peer, lambda reason: close(self, reason) if close else None)

    @property
    def key(self) -> tuple[str, str, int]:
        return self.gateway, self.incarnation, self.number

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteSession) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"session#{self.number} at gateway {self.gateway}"


@dataclass
class _Gateway:
    gateway_id: str
    incarnation: str
    started_ms: int
    last_seen: float
    address: str = ""
    sessions: int = 0
    alive: bool = True
    leaving_at: float | None = None  # set by a leaving beacon: the CPs still here end then
    roster_asked: bool = False  # the core asked this run for its roster (or got one)
    cps: set[str] = field(default_factory=set)  # CPs registered through this run (some may have moved on)


class RemoteGateways:
    """The gateways as the core sees them (see the module doc). Thread-safe."""

    def __init__(self, network: ChargingNetwork, publisher: Publisher, bootstrap: str, topics: Topics = Topics(), *,
                 timeout: float = DEFAULT_GATEWAY_TIMEOUT, partitions: int = 1, replication: int = 1,
                 keys=None, clock: Callable[[], float] = time.monotonic) -> None:
        self.network = network
        self.publisher = publisher
        self.bootstrap = bootstrap
        self.topics = topics
        self.timeout = timeout
        self.partitions = partitions
        self.replication = replication
        self.keys = keys  # secure mode: a key a gateway issued is read from the store
        self.supplies = None  # the SupplyService, given at start
        self._clock = clock
        self.started_ms = now_ms()
        self._lock = threading.RLock()
        self._gateways: dict[str, _Gateway] = {}
        self._superseded: OrderedDict[tuple[str, str], None] = OrderedDict()  # earlier runs of a gateway
        self._duplicates: OrderedDict[tuple[str, str, str], None] = OrderedDict()  # (id, older, newer) said
        self._ended: OrderedDict[tuple[str, str, int], None] = OrderedDict()
        self._asks: dict[str, tuple[Future, RemoteSession]] = {}
        self._gave_up: OrderedDict[str, RemoteSession] = OrderedDict()  # supply session id -> where asked
        self._where: dict[str, RemoteSession] = {}  # cp_id -> its latest remote registration (may be replaced)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.consumer: RecordConsumer | None = None
        self.skipped_old = 0

    # -- life -------------------------------------------------------------------------------------

    def start(self, supplies) -> "RemoteGateways":
        self.supplies = supplies
        self.started_ms = now_ms()  # what came before is known from the rosters asked for now
        try:
            ensure_topics(self.bootstrap, [self.topics.cp_events, self.topics.gateway_beacons], self.partitions,
                          self.replication, timeout=5)
        except Exception as exc:  # the gateways make them too; the consumer finds them when they exist
            log.warning("cannot create the gateways' topics now (%s)", str(exc) or type(exc).__name__)
        self.consumer = RecordConsumer(self.bootstrap, self.topics.prefix + GATEWAYS_GROUP,
                                       [self.topics.cp_events, self.topics.gateway_beacons], self.on_record,
                                       client_id="ev-central", decoder=wire.decoder)
        for name, target in (("kafka-gateways", lambda: self.consumer.run(self._stop)), ("gateway-sweeper", self._sweep)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("serving remote gateways: their events on %s, beacons on %s (a gateway silent for %g s is dead)",
                 self.topics.cp_events, self.topics.gateway_beacons, self.timeout)
        return self

    def stop(self) -> None:
        """A clean stop: no CP is marked for it (the gateways keep their sessions)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        with self._lock:
            asks = list(self._asks.values())
        for future, _ in asks:
            try:
                future.set_exception(CPUnreachable("Central is stopping"))
            except InvalidStateError:
                pass

    def gateways(self) -> list[_Gateway]:
        with self._lock:
            return list(self._gateways.values())

    # -- the CPGateway side, for a remote owner ---------------------------------------------------------

    def ask(self, session: RemoteSession, question: Sup, timeout: float) -> Supr:
        cp_id = question.cp_id
        ask_id = uuid.uuid4().hex
        answer: Future = Future()
        with self._lock:
            if len(self._asks) >= ASKS_MAX:
                raise CPUnreachable(f"{cp_id}: too many questions in flight to the gateways")
            self._asks[ask_id] = (answer, session)

        def delivered(ok: bool) -> None:  # (the producer's poll thread)
            if not ok:
                try:
                    answer.set_exception(CPUnreachable(f"{cp_id}: the question did not reach Kafka"))
                except InvalidStateError:
                    pass

        try:
            self._send(Command("cp.command", session.gateway, session.incarnation, now_ms() + int(timeout * 1000),
                               cp_id, session.number, question, ask_id), cp_id, delivered)
            return answer.result(timeout)
        except FutureTimeout:
            raise CPUnreachable(f"{cp_id} did not answer within {timeout:g} s (through gateway "
                                f"{session.gateway})") from None
        finally:
            with self._lock:
                self._asks.pop(ask_id, None)
                if not answer.done():
                    answer.cancel()
                    keep_newest(self._gave_up, question.session_id, session, GAVE_UP_KEPT)

    def command(self, session: RemoteSession, message: Message) -> bool:
        """Queued for the CP's gateway (True); whether its Monitor takes it is the gateway's affair."""
        return self._send(Command("cp.command", session.gateway, session.incarnation,
                                  now_ms() + int(COMMAND_TTL * 1000), message.cp_id, session.number, message),
                          message.cp_id)

    def _send(self, command: Command, key: str, on_delivery: Callable[[bool], None] | None = None) -> bool:
        try:
            self.publisher.publish(self.topics.gateway_commands(command.gateway), key, command, on_delivery,
                                   encode=wire.encode)
            return True
        except Exception:  # never raised by the publisher; a bug must not break a decision
            log.exception("command %s for %s not sent", command.kind, key)
            return False

    # -- records (the consumer's thread) ----------------------------------------------------------------

    def on_record(self, key: str | None, record) -> None:
        if _ms(record.ts) < self.started_ms - STARTED_MARGIN_MS:  # before this core: the rosters tell
            self.skipped_old += 1
            return
        with self._lock:
            if isinstance(record, Beacon):
                self._beacon(record)
            elif isinstance(record, CPEvent):
                self._event(record)
            else:
                log.warning("ignored %s on the gateways' topics", record.TYPE)

    def _token(self, cp_id: str, gateway: str, incarnation: str, number: int, since_ms: int = 0,
               peer: str = "") -> RemoteSession:
        return RemoteSession(cp_id, gateway, incarnation, number, since_ms, peer, self._close)

    def _close(self, session: RemoteSession, reason: str) -> None:
        """(RemoteLink.close) Whoever replaced it, the gateway closes the session."""
        cp_id = session.cp_id
        self._send(Command("cp.drop", session.gateway, session.incarnation, now_ms() + int(COMMAND_TTL * 1000),
                           cp_id, session.number, reason=reason[:wire.TEXT_MAX]), cp_id)

    def _event(self, e: CPEvent) -> None:
        if (e.gateway, e.incarnation) in self._superseded:
            log.debug("%s: %s from an earlier run of gateway %s ignored", e.cp_id, e.kind, e.gateway)
            return
        if e.kind == "cp.answer":
            return self._answered(e)
        if e.kind == "cp.undelivered":
            return self._undelivered(e)
        token = self._token(e.cp_id, e.gateway, e.incarnation, e.session, e.since_ms, e.peer)
        if e.kind == "cp.registered":
            if self._stale(e.cp_id, token):
                log.info("%s: registration through gateway %s is older than the one in force; ignored", e.cp_id,
                         e.gateway)
                return
            self._known_gateway(e.gateway, e.incarnation)
            self._register(e.cp_id, e.location, e.price_eur_kwh, token, key_version=e.key_version)
            return
        supplies, network = self.supplies, self.network
        if e.kind == "cp.fault":
            log.info("%s: fault reported by its Monitor (gateway %s): %s", e.cp_id, e.gateway, e.reason)
            supplies.changed(network.engine_fault(e.cp_id, token, e.reason))
        elif e.kind == "cp.recovered":
            log.info("%s: recovery reported by its Monitor (gateway %s)", e.cp_id, e.gateway)
            supplies.changed(network.engine_ok(e.cp_id, token))
        elif e.kind == "cp.lost":
            keep_newest(self._ended, token.key, None, ENDED_KEPT)
            change = network.session_ended(e.cp_id, token, e.reason)
            if change is not None:
                self._where.pop(e.cp_id, None)
                log.info("%s: its session at gateway %s ended: %s", e.cp_id, e.gateway, e.reason)
            supplies.changed(change)
        elif e.kind == "cp.supply":
            if network.owner(e.cp_id) == token:
                for message in supplies.on_supply_state(e.cp_id, e.message) or ():
                    self.command(token, message)

    def _stale(self, cp_id: str, token: RemoteSession) -> bool:
        """A registration older than the one in force (a newer one came first, or it ended)."""
        if token.key in self._ended:
            return True
        owner = self.network.owner(cp_id)
        if not isinstance(owner, RemoteSession) or owner == token:
            return False  # none, or a local Monitor's: the later news (this one) wins
        if (owner.gateway, owner.incarnation) == (token.gateway, token.incarnation):
            return token.number < owner.number
        return token.since_ms < owner.since_ms

    def _register(self, cp_id: str, location: str, price: Decimal, token: RemoteSession, *, key_version: int = 0,
                  fault: str = "") -> None:
        if self.keys is not None and key_version and self.keys.version_of(cp_id) != key_version:
            try:  # issued by a gateway: read from the store
                if self.keys.refresh(cp_id) != key_version:
                    log.warning("%s registered with key v%d, which the store does not have in force", cp_id,
                                key_version)
            except Exception as exc:  # StoreError: its records are refused until it is read
                log.warning("cannot read %s's key v%d from the database: %s", cp_id, key_version, exc)
        change, replaced = self.network.register(cp_id, location, price, token)
        self._where[cp_id] = token
        gateway = self._gateways.get(token.gateway)
        if gateway is not None and gateway.incarnation == token.incarnation:
            gateway.cps.add(cp_id)
        if replaced is not None:
            log.warning("%s: a newer Monitor session (gateway %s) replaces %r", cp_id, token.gateway, replaced)
            replaced.link.close("replaced by a newer session for the same CP")
        self.supplies.changed(change)
        if fault:
            self.supplies.changed(self.network.engine_fault(cp_id, token, fault))
        if change.stopped or change.weather:  # the CP must know it is out of service, as after AUTH
            self.command(token, Stop(cp_id))

    def _answered(self, e: CPEvent) -> None:
        answer: Supr = e.message
        waiting = self._asks.get(e.ask_id)
        if waiting is not None:
            try:
                waiting[0].set_result(answer)
                return
            except InvalidStateError:  # given up just now
                pass
        session = self._gave_up.pop(answer.session_id, None)
        if session is not None and answer.ok:
            log.warning("%s accepted supply %s after Central gave up on it: cancelling it at the CP", e.cp_id,
                        answer.session_id[:8])
            self.command(session, Can(e.cp_id, answer.session_id, GAVE_UP))

    def _undelivered(self, e: CPEvent) -> None:
        waiting = self._asks.get(e.ask_id)
        if waiting is not None:
            try:
                waiting[0].set_exception(CPUnreachable(f"{e.cp_id}: gateway {e.gateway}: {e.reason}"))
            except InvalidStateError:
                pass

    # -- gateways ------------------------------------------------------------------------------------

    def _known_gateway(self, gateway_id: str, incarnation: str, started_ms: int = 0) -> _Gateway | None:
        """The gateway's entry for this run, made (and an earlier run's CPs ended) when new. None
        for a late word of an earlier run."""
        gateway = self._gateways.get(gateway_id)
        if gateway is not None and gateway.incarnation == incarnation:
            return gateway
        if gateway is not None:
            if started_ms and started_ms < gateway.started_ms:
                keep_newest(self._superseded, (gateway_id, incarnation), None, ENDED_KEPT)
                return None
            keep_newest(self._superseded, (gateway_id, gateway.incarnation), None, ENDED_KEPT)
            self._end_cps(gateway, f"gateway {gateway_id} restarted")
        gateway = self._gateways[gateway_id] = _Gateway(gateway_id, incarnation, started_ms, self._clock())
        log.info("gateway %s (run %s) is serving Monitors", gateway_id, incarnation)
        return gateway

    def _beacon(self, b: Beacon) -> None:
        current = self._gateways.get(b.gateway)
        if (current is not None and current.incarnation != b.incarnation and b.started_ms < current.started_ms
                and _ms(b.ts) > current.started_ms + DUPLICATE_MARGIN_MS):
            self._duplicate(b, current)
        gateway = self._known_gateway(b.gateway, b.incarnation, b.started_ms)
        if gateway is None:
            return
        if not gateway.started_ms:  # made by an event of this run
            gateway.started_ms = b.started_ms
        gateway.last_seen, gateway.address, gateway.sessions = self._clock(), b.address, b.sessions
        if not gateway.alive:
            log.warning("gateway %s is back; asking for its roster", b.gateway)
            gateway.alive, gateway.roster_asked = True, False
        if b.leaving:
            log.warning("gateway %s is leaving; its Monitors have %g s to register elsewhere", b.gateway, LEAVE_GRACE)
            gateway.leaving_at = self._clock() + LEAVE_GRACE
        elif not gateway.roster_asked and not b.roster_id:
            self._ask_roster(gateway)
        if b.roster_id:
            gateway.roster_asked = True
            for entry in b.roster:
                self._adopt(gateway, entry)

    def _duplicate(self, b: Beacon, current: _Gateway) -> None:
        """An earlier run of a gateway beacons well after a newer run started: two live gateways
        have one id. The core follows the newer; the older one's Monitors are served by no one."""
        pair = (b.gateway, b.incarnation, current.incarnation)
        if pair in self._duplicates:
            return
        keep_newest(self._duplicates, pair, None, ENDED_KEPT)
        log.error("two gateways run with the id %s: run %s at %s and run %s at %s (started %.0f s later); the "
                  "core follows the newer, and the CPs of the other are DESCONECTADO here: give every gateway "
                  "its own --id", b.gateway, b.incarnation, b.address or "?", current.incarnation,
                  current.address or "?", (current.started_ms - b.started_ms) / 1000)

    def _ask_roster(self, gateway: _Gateway) -> None:
        gateway.roster_asked = True
        self._send(Command("roster.request", gateway.gateway_id, gateway.incarnation,
                           now_ms() + int(COMMAND_TTL * 1000)), gateway.gateway_id)

    def _adopt(self, gateway: _Gateway, entry: wire.RosterEntry) -> None:
        """A CP in a gateway's roster: back in force unless the core holds a newer session for it."""
        token = self._token(entry.cp_id, gateway.gateway_id, gateway.incarnation, entry.session, entry.since_ms,
                            entry.peer)
        if self.network.owner(entry.cp_id) == token or self._stale(entry.cp_id, token):
            return
        log.info("%s: held by gateway %s (from its roster)", entry.cp_id, gateway.gateway_id)
        self._register(entry.cp_id, entry.location, entry.price_eur_kwh, token, fault=entry.fault)

    def _end_cps(self, gateway: _Gateway, cause: str) -> None:
        ended = 0
        for cp_id in sorted(gateway.cps):
            token = self._where.get(cp_id)
            if token is None or (token.gateway, token.incarnation) != (gateway.gateway_id, gateway.incarnation):
                continue
            change = self.network.session_ended(cp_id, token, cause)
            if change is not None:
                self._where.pop(cp_id, None)
                ended += 1
                self.supplies.changed(change)
        gateway.cps.clear()
        if ended:
            log.warning("%d CP(s) of gateway %s DESCONECTADO: %s", ended, gateway.gateway_id, cause)

    def _sweep(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL):
            try:
                self.sweep()
            except Exception:
                log.exception("checking the gateways failed; will retry")

    def sweep(self) -> None:
        """Mark dead the gateways silent past the timeout (or gone past their leaving grace)."""
        now = self._clock()
        with self._lock:
            for gateway in self._gateways.values():
                if not gateway.alive:
                    continue
                if gateway.leaving_at is not None and now >= gateway.leaving_at:
                    gateway.alive, gateway.leaving_at = False, None
                    self._end_cps(gateway, f"gateway {gateway.gateway_id} stopped")
                elif now - gateway.last_seen > self.timeout:
                    gateway.alive = False
                    cause = f"gateway {gateway.gateway_id} silent for {now - gateway.last_seen:.1f} s"
                    log.warning("gateway %s is dead (%s)", gateway.gateway_id, cause)
                    self._end_cps(gateway, cause)


class CPRouter:
    """The core's ``CPGateway``: each CP through its local Monitor session or its gateway."""

    def __init__(self, network: ChargingNetwork, local: MonitorServer, remote: RemoteGateways) -> None:
        self.network = network
        self.local = local
        self.remote = remote

    def ask(self, cp_id: str, question: Sup, timeout: float) -> Supr:
        owner = self.network.owner(cp_id)
        if isinstance(owner, RemoteSession):
            return self.remote.ask(owner, question, timeout)
        return self.local.ask(cp_id, question, timeout)

    def command(self, cp_id: str, message: Message) -> bool:
        owner = self.network.owner(cp_id)
        if isinstance(owner, RemoteSession):
            return self.remote.command(owner, message)
        try:
            return self.local.command(cp_id, message)
        except AttributeError:  # the owner became remote meanwhile
            return False

    def revoke(self, cp_id: str, reason: str) -> bool:
        """As ``MonitorServer.revoke``: the CP out of service at once, its Monitor told (RVK)."""
        from ev_common.protocol import Rvk

        owner = self.network.owner(cp_id)
        if not isinstance(owner, RemoteSession):
            return self.local.revoke(cp_id, reason)
        self.remote.supplies.changed(self.network.session_ended(cp_id, owner, reason))
        return self.remote.command(owner, Rvk(cp_id, reason))


def _ms(moment) -> int:
    return int(moment.timestamp() * 1000)
