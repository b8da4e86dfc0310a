"""Central's Kafka side: requests and telemetry in, notifications and CP status out.

Two consumers (their own groups, committed offsets) feed the supply service.
Requests are decided by a small pool of workers, because asking a CP takes a
round trip to its Monitor and Engine; at most ``max_in_flight`` wait at once,
beyond that the requests consumer waits (backpressure, nothing dropped).
Telemetry is applied in order on the consumer's own thread.

Durable before acknowledged: a request's offset is committed once it has been decided,
a telemetry record's or a ``supply.end``'s once the session row it changed is in the
database (or was set aside as refused); while the database is down they wait, and a
restart reads them again (every handler is idempotent).

With a ``gate`` (``record_gate.RecordGate``) both consumers decode through it: sealed records
are opened, and a record it refuses (reported to its ``on_rejected``, counted in
``gate.rejected``) is skipped, its offset done at once, and never reaches the supply service.
Without one, records are decoded as in Release 1.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from confluent_kafka import KafkaError, KafkaException

from ev_common.bus import Done, KafkaHealth, Publisher, RecordConsumer, Topics, ensure_topics, kafka_health
from ev_common.records import CPStatus, Record, SupplyEnd, SupplyRequest, Telemetry
from ev_common.retry import Backoff

from .record_gate import RecordGate
from .supply_service import SupplyService

log = logging.getLogger(__name__)

TOPIC_CHECK_INTERVAL = 30.0
TOPIC_WAIT = 5.0  # s: how long start-up waits for the broker to create the topics
_BROKER_DOWN = (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE, KafkaError._TIMED_OUT)


def _broker_down(exc: Exception) -> bool:
    """True when ``exc`` means the broker did not answer (rather than refused the request)."""
    if isinstance(exc, KafkaException):
        err = exc.args[0] if exc.args else None
        return not isinstance(err, KafkaError) or err.code() in _BROKER_DOWN
    return True  # a timeout waiting for the broker


def _said(exc: Exception) -> str:
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc) or type(exc).__name__
REQUESTS_GROUP = "ev-central-requests"
TELEMETRY_GROUP = "ev-central-telemetry"


class KafkaNotifier:
    def __init__(self, publisher: Publisher, topics: Topics) -> None:
        self.publisher = publisher
        self.topics = topics

    def to_driver(self, driver_id: str, record: Record, on_delivery: Callable[[bool], None] | None = None) -> None:
        self.publisher.publish(self.topics.driver_notifications, driver_id, record, on_delivery)

    def cp_status(self, record: CPStatus) -> None:
        self.publisher.publish(self.topics.cp_status, record.cp_id, record)


class CentralBus:
    def __init__(self, bootstrap: str, topics: Topics, publisher: Publisher, *, partitions: int = 1,
                 replication: int = 1, workers: int = 8, max_in_flight: int = 64,
                 topic_wait: float = TOPIC_WAIT, gate: RecordGate | None = None) -> None:
        self.bootstrap = bootstrap
        self.gate = gate  # None: records decoded as they come (open mode, Release 1)
        if gate is not None and gate.topics is None:
            gate.topics = topics  # which topic is the CPs' own
        self.health: KafkaHealth = kafka_health(bootstrap)  # shared by every Kafka client of Central
        self.topic_wait = topic_wait
        self.topics = topics
        self.publisher = publisher
        self.partitions = partitions
        self.replication = replication
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="authorise")
        self._in_flight = threading.BoundedSemaphore(max_in_flight)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.service: SupplyService | None = None
        self.consumers: list[RecordConsumer] = []

    def start(self, service: SupplyService) -> "CentralBus":
        self.service = service
        # topics first, so that the consumers find them at once
        log.info("creating the Kafka topics at %s (waiting up to %g s for the broker)...", self.bootstrap,
                 self.topic_wait)
        ready = self._ensure_topics(self.topic_wait)
        if ready:
            log.info("Kafka topics ready")
        self._spawn("kafka-topics", self._keep_topics, ready)
        # group ids carry the topic prefix: two systems sharing a broker never share a group
        decoder = self.gate.open if self.gate is not None else None
        requests = RecordConsumer(self.bootstrap, self.topics.prefix + REQUESTS_GROUP, [self.topics.driver_requests],
                                  self._on_request, client_id="ev-central", deferred=True, decoder=decoder)
        telemetry = RecordConsumer(self.bootstrap, self.topics.prefix + TELEMETRY_GROUP, [self.topics.cp_telemetry],
                                   self._on_telemetry, client_id="ev-central", deferred=True, decoder=decoder)
        self.consumers = [requests, telemetry]
        self._spawn("kafka-requests", requests.run, self._stop)
        self._spawn("kafka-telemetry", telemetry.run, self._stop)
        self._spawn("kafka-delivery", self._deliver)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:  # topic creation may sit in a broker call: not worth waiting for
            thread.join(0.5 if thread.name == "kafka-topics" else 10)
        self._pool.shutdown(wait=True, cancel_futures=False)
        self.publisher.flush(3)  # bounded: during a broker outage shutdown must not hang

    # -- threads ------------------------------------------------------------------------------

    def _spawn(self, name: str, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _keep_topics(self, ok: bool) -> None:
        """Make sure the topics exist: retried with backoff while the broker is down, then
        checked every ``TOPIC_CHECK_INTERVAL`` s (a broker that lost its data gets them back)."""
        backoff = Backoff(initial=0.5, cap=10)
        while not self._stop.wait(TOPIC_CHECK_INTERVAL if ok else backoff.next()):
            if not self._ensure_topics(TOPIC_WAIT, quiet=not ok):
                ok = False
                continue
            if not ok:
                log.info("Kafka topics ready")
            ok = True
            backoff.reset()

    def _ensure_topics(self, timeout: float, quiet: bool = False) -> bool:
        """Create the missing topics; False when it could not. A broker that does not answer is
        the program's Kafka outage (said once, by ``health``); a refusal is said here (unless
        ``quiet``: it was said already)."""
        try:
            ensure_topics(self.bootstrap, self.topics.all(), self.partitions, self.replication, timeout=timeout)
        except Exception as exc:  # KafkaException, or the broker not answering in time
            if _broker_down(exc):
                self.health.lost(f"cannot create the topics: {_said(exc)}")
            elif not quiet:
                log.error("cannot create the Kafka topics (%s); retrying", _said(exc))
            return False
        self.health.back()
        return True

    def _deliver(self) -> None:
        while not self._stop.is_set():
            try:
                self.publisher.poll(0.1)  # runs delivery callbacks (tickets marked sent)
            except Exception:  # this thread must outlive any error of the client
                log.exception("Kafka delivery poll failed; going on")
                self._stop.wait(0.5)

    # -- handlers (consumer threads) ----------------------------------------------------------------

    def _on_request(self, key: str | None, record: Record, done: Done) -> None:
        if not isinstance(record, SupplyRequest):
            log.warning("ignored %s on %s", record.TYPE, self.topics.driver_requests)
            return done()
        while not self._in_flight.acquire(timeout=0.5):
            if self._stop.is_set():
                return  # not done: read again after the restart
        future = self._pool.submit(self.service.on_request, record)
        future.add_done_callback(lambda f: self._request_done(f, done))

    def _request_done(self, future, done: Done) -> None:
        self._in_flight.release()
        if future.exception() is not None:
            log.error("deciding a request failed", exc_info=future.exception())
        done()

    def _on_telemetry(self, key: str | None, record: Record, done: Done) -> None:
        if isinstance(record, Telemetry):
            self.service.on_telemetry(record, done)
        elif isinstance(record, SupplyEnd):
            self.service.on_supply_end(record, done)
        else:
            log.warning("ignored %s on %s", record.TYPE, self.topics.cp_telemetry)
            done()
