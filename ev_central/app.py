"""Central, assembled: store, CP network, supply book, writers, Monitor server, Kafka.

Start-up order: open the database (fail fast if unreachable), load the CPs (all
DESCONECTADO) and the open sessions, start the writers, accept Monitors, start
Kafka, publish every CP's state and any ticket that never left. Shutdown runs in
reverse: stop accepting and close sessions, stop Kafka (flushing the producer),
write what is pending, close the database.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from ev_common.bus import GroupMembers, Publisher, Topics, group_members
from ev_common.words import KEYS_REVOKED
from ev_common.link import LinkConfig
from ev_common.records import CPStatus, Record

from .audit import AuditLog, default_spool_path
from .auth import CPAuthenticator
from .bus_adapter import REQUESTS_GROUP, CentralBus, KafkaNotifier
from .effects import Effects
from .events import EventHub
from .keys import KeyRing
from .record_gate import RecordGate, RejectedRecord
from .core.network import DEFAULT_SILENCE_TIMEOUT, ChargingNetwork, StateChange
from .core.supplies import DEFAULT_END_GRACE, DEFAULT_STALE_AFTER, SupplyBook
from .mcsp_server import MCSPServer
from .persistence import cp_state_writer, session_writer
from .remote import DEFAULT_GATEWAY_TIMEOUT, CPRouter, RemoteGateways
from .server import MonitorServer
from .store import Store
from .supply_service import DEFAULT_REQUEST_TTL, DriverDirectory, SupplyService
from .tickets import TicketBox
from .weather import WeatherOffice

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 0.25
ANOTHER_CENTRAL_WAIT = 8.0  # s: a crashed Central's consumers leave their group after session.timeout.ms (6 s)


class AnotherCentral(RuntimeError):
    """Another Central is live on the same broker and topic prefix."""


class _NoBus:
    """Central without Kafka (tests of the socket side): notifications are only logged."""

    def to_driver(self, driver_id: str, record: Record, on_delivery: Callable[[bool], None] | None = None) -> None:
        log.debug("no Kafka: %s for %s not sent", record.TYPE, driver_id)

    def cp_status(self, record: CPStatus) -> None:
        pass


class Central:
    def __init__(self, store: Store, host: str, port: int, *, kafka: str | None = None,
                 topics: Topics = Topics(), silence_timeout: float = DEFAULT_SILENCE_TIMEOUT,
                 link_config: LinkConfig = LinkConfig(), request_ttl: float = DEFAULT_REQUEST_TTL,
                 end_grace: float = DEFAULT_END_GRACE, stale_after: float = DEFAULT_STALE_AFTER,
                 topic_partitions: int = 1, topic_replication: int = 1, mcsp_port: int | None = None,
                 secure: bool = False, tls: ssl.SSLContext | None = None, master_key: bytes | None = None,
                 audit: AuditLog | None = None, audit_store: Store | None = None, gateways: bool = False,
                 gateway_timeout: float = DEFAULT_GATEWAY_TIMEOUT) -> None:
        """``secure``: CPs authenticate with their credential and get a key (docs/security.md);
        it needs ``master_key`` (ev_central/keys.py), and ``tls`` for the Monitor port.
        ``audit``: the audit writer (default: one spooling next to the database, ev_central/audit.py),
        appending through ``audit_store`` when given: a connection of its own, which Central closes
        at its stop (its retries then never wait behind, nor hold up, the writers of CPs and
        sessions). ``gateways``: also serve CPs whose Monitors are served by gateway processes
        (``EV_Central gateway``, docs/scaling.md), over Kafka; a gateway silent for
        ``gateway_timeout`` s is dead."""
        if secure and (master_key is None or tls is None):
            raise ValueError("secure mode needs a master key and a TLS context")
        if gateways and not kafka:
            raise ValueError("serving gateways needs Kafka")
        self.store = store
        self.secure = secure
        self._audit_store = audit_store
        self.audit = audit if audit is not None else AuditLog(audit_store or store, default_spool_path(store))
        self._host = host
        self._mcsp_port = mcsp_port  # None: no MCSP port
        self.network = ChargingNetwork(silence_timeout=silence_timeout)
        self.book = SupplyBook(end_grace=end_grace, stale_after=stale_after)
        self.writer = cp_state_writer(store)
        self.session_writer = session_writer(store)
        self.effects = Effects()  # the one thread that carries out what the decisions cause outside
        self.events = EventHub()  # live events for the API's readers (ev_central/api); idle while none listens
        self.keys = KeyRing(store, master_key) if secure else None  # the CPs' keys, in secure mode
        self.monitors = MonitorServer(self.network, lambda change: None, host, port, config=link_config, tls=tls)
        # CPs' records: opened with their keys in secure mode, refused when not genuine (docs/topics.md)
        self.gate = RecordGate(secure, self.keys.key_for if self.keys else (lambda cp_id, version: None),
                               self._record_rejected)
        self.remote: RemoteGateways | None = None  # the gateways' CPs (docs/scaling.md), when served
        if kafka:
            publisher = Publisher(kafka, "ev-central")
            self.bus: CentralBus | None = CentralBus(kafka, topics, publisher, partitions=topic_partitions,
                                                     replication=topic_replication, gate=self.gate)
            notifier = KafkaNotifier(publisher, topics)
            if gateways:
                self.remote = RemoteGateways(self.network, publisher, kafka, topics, timeout=gateway_timeout,
                                             partitions=topic_partitions, replication=topic_replication,
                                             keys=self.keys)
        else:
            self.bus, notifier = None, _NoBus()
        # how the core reaches a CP: its Monitor's session here, or (with gateways) its gateway
        self.cps = self.monitors if self.remote is None else CPRouter(self.network, self.monitors, self.remote)
        self.supplies = SupplyService(self.network, self.book, self.cps, DriverDirectory(store), notifier,
                                      self.session_writer, store, cp_rows=self.writer, effects=self.effects,
                                      request_ttl=request_ttl, audit=self.audit)
        self.supplies.audit_registrations = not secure  # in secure mode "auth" records each REG
        self.weather = WeatherOffice(self.supplies, store, self.audit)  # EV_W's reports and alerts (docs/weather.md)
        # the Monitor side reports to the core through these two doors only
        self.monitors.on_change = self.supplies.changed
        self.monitors.on_changes = self.supplies.changed_many
        self.monitors.on_supply_state = self.supplies.on_supply_state
        if self.keys is not None:
            self.monitors.authenticator = CPAuthenticator(store, self.keys, self.audit,
                                                          tickets=TicketBox(master_key))
        self.mcsp: MCSPServer | None = None  # RFID stations (docs/mcsp.md), once started
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.monitors.address

    @property
    def mcsp_address(self) -> tuple[str, int] | None:
        return self.mcsp.address if self.mcsp is not None else None

    def start(self) -> "Central":
        """Raises ``AnotherCentral`` (before touching anything) when another Central is live on
        the same broker and topic prefix, and OSError when the Monitor port cannot be opened."""
        if self.bus is not None:
            self._refuse_if_another_central()
        if self.keys is not None:
            log.info("secure mode: CPs authenticate with their EV_Registry credential over TLS; %d CP key(s) in "
                     "force", self.keys.load())
        else:
            log.warning("open mode: CPs are NOT authenticated and their records travel in clear (Release 1); "
                        "EV_Central --secure authenticates them (docs/security.md)")
        self.store.mark_all_disconnected(datetime.now(timezone.utc))
        rows = self.store.load_charging_points()
        self.network.load(rows)
        self.weather.load()  # the weather alerts in force hold their CPs again
        for row in rows:
            log.info("CP %s (%s, %s EUR/kWh%s): DESCONECTADO until its Monitor connects",
                     row.cp_id, row.location, row.price_eur_kwh, ", stopped" if row.stopped else "")
        log.info("loaded %d CP(s) from %s", len(rows), self.store.description)
        open_sessions = self.store.load_open_sessions()
        self.book.load(open_sessions)
        if open_sessions:
            log.info("%d supply session(s) still open: waiting for their end", len(open_sessions))
        self.audit.start()
        self.writer.start()
        self.session_writer.start()
        self.effects.start()
        self.monitors.start()
        host, port = self.address
        log.info("Central listening for Monitors on %s:%d", host, port)
        if self._mcsp_port is not None:
            try:
                self.mcsp = MCSPServer(self.supplies, self._host, self._mcsp_port, audit=self.audit).start()
            except OSError:
                self.monitors.stop()
                raise
            host, port = self.mcsp.address
            log.info("Central listening for RFID stations (MCSP/1.0) on %s:%d", host, port)
        if self.bus is not None:
            self.bus.start(self.supplies)
        if self.remote is not None:
            self.remote.start(self.supplies)
        self.supplies.publish_all_status()
        resent = self.supplies.resend_unsent_tickets()
        if resent:
            log.info("sent %d ticket(s) stored before a restart but never delivered", resent)
        self._sweeper = threading.Thread(target=self._sweep, name="supply-sweeper", daemon=True)
        self._sweeper.start()
        return self

    def stop(self) -> None:
        """A clean stop (SIGTERM, Ctrl+C): no session is closed for it and no CP reported failed;
        supplies go on at the CPs and close with their true figures once Central is back."""
        self._stop.set()
        if self._sweeper is not None:  # first: no session closes because Central is stopping
            self._sweeper.join(2)
        if self.mcsp is not None:
            self.mcsp.stop()
        self.monitors.stop()
        if self.remote is not None:
            self.remote.stop()
        self.effects.stop()  # what the last decisions caused, before Kafka and the writers stop
        if self.bus is not None:
            self.bus.stop()
        self.session_writer.stop()
        self.writer.stop()
        self.weather.stop()
        self.audit.stop()  # last: what every part recorded, appended or spooled
        if self._audit_store is not None:
            self._audit_store.close()
        self.store.close()

    # -- operator commands -----------------------------------------------------------------------

    def stop_cp(self, cp_id: str) -> StateChange:
        """Stop one CP (raises KeyError for an unknown id)."""
        return self.supplies.stop(cp_id)

    def resume_cp(self, cp_id: str) -> StateChange:
        return self.supplies.resume(cp_id)

    def _record_rejected(self, rejected: RejectedRecord) -> None:
        """(a Kafka consumer's thread) A record that is not genuine: dropped, never near a session."""
        log.warning("%s", rejected.describe())
        self.audit.record("record.rejected", rejected.cp_id or "unknown", rejected.describe(), "dropped")

    def revoke_keys(self, cp_id: str, actor: str = "operator") -> str:
        """Restore keys: delete the CP's keys. It goes out of service at once (its records are
        refused; a running supply ends with the energy known so far, and its ticket); its
        Monitor must authenticate again to get a new key. Raises KeyError (unknown CP),
        ValueError (open mode) or StoreError (nothing revoked)."""
        if self.keys is None:
            raise ValueError("CPs have no keys in open mode (EV_Central --secure)")
        if self.network.get(cp_id) is None:
            raise KeyError(cp_id)
        count = self.keys.revoke(cp_id)
        told = self.cps.revoke(cp_id, KEYS_REVOKED)
        self.audit.record("key.revoke", actor, f"{cp_id}: {count} key(s) revoked", "ok")
        log.warning("%s: keys revoked (%d); %s", cp_id, count,
                    "its Monitor was told and must authenticate again" if told
                    else "its Monitor is not connected; it must authenticate again")
        return f"{cp_id}: keys revoked; out of service until its Monitor authenticates again"

    def cp_ids(self) -> list[str]:
        return [row.cp_id for row in self.network.snapshot()]

    # -- internals -----------------------------------------------------------------------------------

    def _refuse_if_another_central(self, wait: float = ANOTHER_CENTRAL_WAIT,
                                   clock: Callable[[], float] = time.monotonic,
                                   describe: Callable[[str, str], GroupMembers] | None = None) -> None:
        """Two Centrals on one broker and prefix would split the requests between them without a
        word: a live one is a member of the requests group, so this one refuses to start, naming
        it. A Central that crashed stays a member until its session times out: so much is
        waited for. A broker that says the group is active but names no member (the test
        broker does so, even for a member that died) cannot tell a live Central from a dead
        one: then this Central starts, and says loudly that another one may be running."""
        describe = describe or (lambda bootstrap, group: group_members(bootstrap, group, timeout=3))
        group = self.bus.topics.prefix + REQUESTS_GROUP
        deadline, said = clock() + wait, False
        while True:
            try:
                found = describe(self.bus.bootstrap, group)
            except Exception as exc:  # the broker cannot say now (down, too old): go on
                log.warning("cannot tell whether another Central uses Kafka %s (%s); starting",
                            self.bus.bootstrap, str(exc) or f"no answer within 3 s: {type(exc).__name__}")
                return
            if not found.active:
                return
            if clock() >= deadline:
                where = (f"Kafka {self.bus.bootstrap} with topic prefix '{self.bus.topics.prefix}'")
                if found.members:
                    raise AnotherCentral(
                        f"another Central is running on {where} ({', '.join(found.members)} in group {group}); "
                        f"stop it, or give this one another --topic-prefix")
                log.error("another Central may be running on %s: the broker says group %s is active but names "
                          "no member; if one is, stop it or give each its own --topic-prefix (starting)", where,
                          group)
                return
            if not said:
                log.info("another Central seems to use Kafka %s with this topic prefix; waiting up to %.0f s "
                         "to see whether it is gone (one that crashed leaves when its session times out)",
                         self.bus.bootstrap, wait)
                said = True
            self._stop.wait(min(1.0, max(0.0, deadline - clock())))

    def _sweep(self) -> None:
        while not self._stop.wait(SWEEP_INTERVAL):
            try:
                self.supplies.sweep()
                self.weather.sweep()
            except Exception:
                log.exception("closing due sessions failed; will retry")
