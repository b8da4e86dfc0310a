"""Kafka: topic names, producer and consumer factories, topic creation, a consumer loop.

The only module that imports confluent_kafka. Settings follow standard Kafka
semantics (users run Apache Kafka):

* producers are idempotent (``enable.idempotence``), keyed, and flushed on close;
* consumers belong to a group, start from the earliest offset when the group has
  none, and commit only *after* a record was processed (no auto-commit), so a
  restarted program resumes where it stopped;
* the consumer timing settings (``session.timeout.ms`` 6000, ``heartbeat.interval.ms``
  500, ``fetch.wait.max.ms`` 10, ``topic.metadata.refresh.interval.ms`` 10000) keep
  latency low and are valid on any broker.

A broker outage is reported once per program through ``log`` ("Kafka unreachable", then
"Kafka reachable again"), whatever the number of its clients (``KafkaHealth``); the
clients reconnect by themselves; nothing here blocks forever.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .records import BadRecord, Record, decode, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topics:
    """The topic names, all under one prefix (``--topic-prefix`` / ``$EV_TOPIC_PREFIX``)."""

    prefix: str = ""

    @property
    def driver_requests(self) -> str:
        return self.prefix + "ev.driver.requests"

    @property
    def driver_notifications(self) -> str:
        return self.prefix + "ev.driver.notifications"

    @property
    def cp_telemetry(self) -> str:
        return self.prefix + "ev.cp.telemetry"

    @property
    def cp_status(self) -> str:
        return self.prefix + "ev.cp.status"

    def all(self) -> list[str]:
        return [self.driver_requests, self.driver_notifications, self.cp_telemetry, self.cp_status]

    # Central's gateways (docs/scaling.md): not in all(), made by the gateways and a core that serves them

    @property
    def cp_events(self) -> str:
        return self.prefix + "ev.cp.events"

    @property
    def gateway_beacons(self) -> str:
        return self.prefix + "ev.gateway.beacons"

    def gateway_commands(self, gateway_id: str) -> str:
        return self.prefix + "ev.gateway.commands." + gateway_id


# librdkafka logs every failed connection attempt; an outage is reported once by _OutageReporter
# instead, and the client's own log keeps only critical lines, through Python logging.
_CLIENT_LOG = {"log_level": 2, "logger": logging.getLogger("ev_common.kafka_client")}

CONSUMER_DEFAULTS = {
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "fetch.wait.max.ms": 10,
    "socket.timeout.ms": 10000,
    "topic.metadata.refresh.interval.ms": 10000,  # find a topic created after subscribing within 10 s
}
PRODUCER_DEFAULTS = {
    "enable.idempotence": True,
    "linger.ms": 5,
    "message.timeout.ms": 300000,  # keep trying through a broker outage of up to 5 min
    "socket.timeout.ms": 10000,
}


class KafkaHealth:
    """Whether one program reaches its Kafka broker, for all of its clients together.

    Every client (the producer, each consumer, topic checks) reports what it sees: ``lost``
    when the broker cannot be reached, ``back`` when it answered. The first loss says
    "Kafka unreachable" (an ERROR line) and the first answer after it "Kafka reachable
    again" (a WARNING line): once per outage for the program, however many clients it has.
    ``down_since`` (wall clock, UTC) is None while Kafka is reachable. A loss reported within
    ``SETTLE`` s after the broker answered again is a late report of the same outage from a
    client that has not reconnected yet, and is not said again.
    """

    SETTLE = 2.0

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.down_since: datetime | None = None
        self.reason = ""
        self._lock = threading.Lock()
        self._back_at = float("-inf")  # monotonic time of the last "reachable again"

    @property
    def reachable(self) -> bool:
        return self.down_since is None

    def lost(self, reason: str) -> None:
        with self._lock:
            if self.down_since is not None or time.monotonic() - self._back_at < self.SETTLE:
                return
            self.down_since, self.reason = datetime.now(timezone.utc), reason
        log.error("Kafka unreachable at %s (%s); retrying", self.bootstrap, reason)

    def back(self) -> None:
        with self._lock:
            if self.down_since is None:
                return
            since, self.down_since, self.reason = self.down_since, None, ""
            self._back_at = time.monotonic()
        log.warning("Kafka reachable again at %s (unreachable for %.0f s)", self.bootstrap,
                    (datetime.now(timezone.utc) - since).total_seconds())


_HEALTH: dict[str, KafkaHealth] = {}
_HEALTH_LOCK = threading.Lock()


def kafka_health(bootstrap: str) -> KafkaHealth:
    """The one ``KafkaHealth`` of this process for the broker at ``bootstrap``."""
    with _HEALTH_LOCK:
        return _HEALTH.setdefault(bootstrap, KafkaHealth(bootstrap))


class _OutageReporter:
    """Turns librdkafka's error callbacks into the program's ``KafkaHealth`` (one line per outage).

    ``down`` is this client's own view: True from a broker error until its next success."""

    def __init__(self, who: str, bootstrap: str) -> None:
        self.who = who
        self.health = kafka_health(bootstrap)
        self.down = False

    def error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            self.down = True
            self.health.lost(err.str())
        else:
            log.warning("%s: Kafka: %s", self.who, err.str())

    def ok(self) -> None:
        self.down = False
        self.health.back()


def ensure_topics(bootstrap: str, names: Iterable[str], partitions: int = 1, replication: int = 1,
                  timeout: float = 10.0) -> None:
    """Create the topics that do not exist yet. Raises KafkaException if the broker cannot be reached."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000, **_CLIENT_LOG})
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [n for n in names if n not in existing]
    if not missing:
        return
    futures = admin.create_topics([NewTopic(n, partitions, replication) for n in missing],
                                  operation_timeout=timeout, request_timeout=timeout)
    for name, future in futures.items():
        try:
            future.result(timeout)
            log.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise



@dataclass(frozen=True)
class GroupMembers:
    """Who consumes in a group now: ``active`` is False when nobody does; ``members`` names
    them (client id @ host) when the broker says."""

    active: bool
    members: tuple[str, ...] = ()


_ACTIVE_GROUP_STATES = ("STABLE", "PREPARING_REBALANCE", "COMPLETING_REBALANCE")


def group_members(bootstrap: str, group: str, timeout: float = 5.0) -> GroupMembers:
    """Describe a consumer group. Raises KafkaException (or a timeout) when the broker cannot say."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000), **_CLIENT_LOG})
    description = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(timeout)
    members = tuple(f"{m.client_id}@{m.host}" for m in (description.members or ()))
    state = getattr(description.state, "name", str(description.state)).upper()
    return GroupMembers(bool(members) or state in _ACTIVE_GROUP_STATES, members)

class Publisher:
    """An idempotent producer of records. ``publish`` never blocks on the broker and never raises.

    A producer that hits a *fatal* error (for example its sequence numbers no longer match a
    broker that lost its state) cannot go on: it is replaced by a new one, and the records that
    the old one failed or still held are sent again by the new one (at most ``MAX_RESENDS``
    times each; a record may then arrive twice, and every consumer here tolerates that). Only
    a record that still fails is reported undelivered (``on_delivery(False)``).
    """

    MAX_RESENDS = 3

    def __init__(self, bootstrap: str, client_id: str, *, producer_factory: Callable[[dict], Producer] = Producer,
                 **overrides) -> None:
        self._outage = _OutageReporter(client_id, bootstrap)
        self._config = {"bootstrap.servers": bootstrap, "client.id": client_id, "error_cb": self._on_error,
                        **_CLIENT_LOG, **PRODUCER_DEFAULTS, **overrides}
        self._new_producer = producer_factory
        self._producer = producer_factory(self._config)
        self._lock = threading.RLock()
        self._fatal: str | None = None
        self._resend: list[tuple] = []  # (topic, key, record, on_delivery, sends so far, encoder)
        self.failed = 0
        self.replaced = 0
        self.resent = 0

    def publish(self, topic: str, key: str, record: Record,
                on_delivery: Callable[[bool], None] | None = None,
                encode: Callable[[Record], bytes] | None = None) -> None:
        """Queue ``record``; ``on_delivery(ok)`` runs from a later ``poll``/``flush`` once the broker answered.

        ``encode(record)`` gives the value (default: ``records.encode``); it is called again
        for a record sent again by a new producer (a sealed record gets a fresh counter). An
        ``encode`` that raises makes the record undelivered (``on_delivery(False)``)."""
        with self._lock:
            self._replace_if_fatal()
            self._produce(topic, key, record, on_delivery, 1, encode)

    def _produce(self, topic: str, key: str, record: Record, on_delivery, sends: int,
                 encoder: Callable[[Record], bytes] | None = None) -> None:
        def delivered(err, _msg):
            if err is None:
                self._outage.ok()
            else:
                dead = err.fatal() or err.code() in _DEAD_PRODUCER
                if dead:
                    self._fatal = err.str()
                if (dead or err.code() in _PURGED) and sends <= self.MAX_RESENDS:
                    # the producer is (being) replaced: the new one sends the record again
                    self._resend.append((topic, key, record, on_delivery, sends + 1, encoder))
                    return
                self.failed += 1
                log.error("record %s for %s not delivered: %s", record.TYPE, key, err.str())
            if on_delivery is not None:
                on_delivery(err is None)

        try:
            value = encode(record) if encoder is None else encoder(record)
        except Exception as exc:  # e.g. no key to seal it with now; the text names no secret
            self.failed += 1
            log.error("record %s for %s not queued: cannot encode it (%s)", record.TYPE, key, exc)
            if on_delivery is not None:
                on_delivery(False)
            return
        for _attempt in range(2):
            try:
                while True:
                    try:
                        self._producer.produce(topic, value=value, key=key.encode(), on_delivery=delivered)
                        break
                    except BufferError:  # local queue full (long outage): wait for room
                        self._producer.poll(0.1)
                self._producer.poll(0)
                return
            except KafkaException as exc:
                if not _is_fatal(exc):
                    break
                self._fatal = exc.args[0].str()
                self._replace_if_fatal()
        self.failed += 1
        log.error("record %s for %s not queued", record.TYPE, key)
        if on_delivery is not None:
            on_delivery(False)

    @property
    def reachable(self) -> bool:
        """False from a broker error until the next successful delivery."""
        return not self._outage.down

    def poll(self, timeout: float = 0) -> None:
        try:
            self._producer.poll(timeout)
        except KafkaException as exc:
            if not _is_fatal(exc):
                raise
            self._fatal = exc.args[0].str()
        with self._lock:
            self._replace_if_fatal()

    def flush(self, timeout: float = 10.0) -> int:
        """Deliver what is queued; returns how many records are still undelivered."""
        deadline = time.monotonic() + timeout
        try:
            left = self._producer.flush(timeout)
            with self._lock:
                if self._fatal is not None:  # it died meanwhile: its records go out with the next one
                    self._replace_if_fatal()
                    left = self._producer.flush(max(0.0, deadline - time.monotonic()))
        except KafkaException as exc:
            log.error("flush failed: %s", exc.args[0].str())
            return -1
        if left:
            log.error("%d record(s) not delivered after %g s", left, timeout)
        return left

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err.str()
        self._outage.error(err)

    def _replace_if_fatal(self) -> None:
        if self._fatal is None:
            return
        log.error("the Kafka producer hit a fatal error (%s); replacing it", self._fatal)
        old, self._producer = self._producer, self._new_producer(self._config)
        self._fatal = None
        self.replaced += 1
        try:
            old.purge()  # what it still held comes back through its callbacks, to be sent again
            old.flush(1.0)  # serves those callbacks (nothing is left to send after the purge)
        except KafkaException:
            pass
        pending, self._resend = self._resend, []
        if pending:  # in their original order; one that fails again waits for the next replacement
            self.resent += len(pending)
            log.warning("sending %d record(s) again with the new Kafka producer", len(pending))
            for topic, key, record, on_delivery, sends, encoder in pending:
                self._produce(topic, key, record, on_delivery, sends, encoder)


# delivery errors after which this producer's identity is dead: only a new producer can go on
_DEAD_PRODUCER = {KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
                  KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.UNKNOWN_PRODUCER_ID,
                  KafkaError.INVALID_PRODUCER_ID_MAPPING}
# what a replaced producer reports for the records it still held
_PURGED = {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}


def _is_fatal(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and (err.fatal() or err.code() == KafkaError._FATAL)


Handler = Callable[[str | None, Record], None]
Done = Callable[[], None]
Decoder = Callable[..., Record]  # decoder(topic, value, partition=, offset=) -> Record, or raises BadRecord


class OffsetTracker:
    """Which offsets a consumer may commit when records finish out of order.

    ``add`` hands out a ``done`` callback per record (idempotent, callable from any
    thread); ``commit_points`` gives, per partition, the offset just past the longest run
    of done records from the oldest one handed out: everything before it is finished, so a
    restart re-reads exactly the records whose work may not be durable yet.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._order: dict[tuple[str, int], collections.deque[int]] = {}
        self._done: dict[tuple[str, int], set[int]] = {}
        self._count = 0

    def add(self, topic: str, partition: int, offset: int) -> Done:
        part = (topic, partition)
        with self._lock:
            self._order.setdefault(part, collections.deque()).append(offset)
            self._done.setdefault(part, set())
            self._count += 1

        def done() -> None:
            with self._lock:
                if part in self._done and offset not in self._done[part]:
                    self._done[part].add(offset)
        return done

    def in_flight(self) -> int:
        with self._lock:
            return self._count

    def commit_points(self) -> list[tuple[str, int, int]]:
        """(topic, partition, next offset to read) for each partition that moved on."""
        points = []
        with self._lock:
            for part, order in self._order.items():
                done, last = self._done[part], None
                while order and order[0] in done:
                    last = order.popleft()
                    done.discard(last)
                    self._count -= 1
                if last is not None:
                    points.append((part[0], part[1], last + 1))
        return points

    def forget(self) -> None:
        """The partitions were taken away (a rebalance): what was not done is read again by
        their next owner."""
        with self._lock:
            self._order.clear()
            self._done.clear()
            self._count = 0


class RecordConsumer:
    """Consumes records from ``topics`` in a group; ``handler(key, record)`` for each.

    ``run(stop)`` polls until ``stop`` is set. An offset is committed only after its
    record was handled (or judged malformed and skipped), every ``commit_every`` s;
    ``commit=False`` makes a reader that never commits (it re-reads from the start).
    ``on_assign()`` runs each time the group gives this consumer its partitions.
    A handler that raises is logged and the record is skipped: one bad record never
    stops the consumer.

    With ``deferred=True`` the handler is called as ``handler(key, record, done)`` and the
    record's offset is committed only after ``done()`` was called for it and for every
    earlier record of its partition (for work that becomes durable later, on another
    thread). At most ``max_in_flight`` records wait for their ``done``; beyond that the
    consumer pauses its partitions until they drain.

    ``decoder(topic, value, partition=, offset=)`` turns a record value into a record (default:
    ``records.decode``); one that raises ``BadRecord`` makes the record skipped (counted in
    ``skipped``), its offset done at once, as a malformed record's.
    """

    def __init__(self, bootstrap: str, group_id: str, topics: list[str], handler: Handler,
                 client_id: str = "", commit_every: float = 0.5, commit: bool = True,
                 on_assign: Callable[[], None] | None = None, deferred: bool = False,
                 max_in_flight: int = 100_000, decoder: Decoder | None = None, **overrides) -> None:
        self._outage = _OutageReporter(client_id or group_id, bootstrap)
        self._decoder = decoder
        config = {"bootstrap.servers": bootstrap, "group.id": group_id, "client.id": client_id or group_id,
                  "error_cb": self._outage.error, **_CLIENT_LOG, **CONSUMER_DEFAULTS, **overrides}
        if not commit:
            config["enable.auto.offset.store"] = False
        self._consumer = Consumer(config)
        self._tracker = OffsetTracker() if deferred else None
        self.max_in_flight = max_in_flight
        self._paused = False

        def assigned(_consumer, _partitions) -> None:
            self._outage.ok()  # the group coordinator answered
            if self._tracker is not None:
                self._tracker.forget()
            if on_assign is not None:
                on_assign()

        self._consumer.subscribe(topics, on_assign=assigned)
        self.topics = topics
        self.handler = handler
        self.commit_every = commit_every
        self.commits = commit
        self.skipped = 0
        self.handled = 0
        self._dirty = False

    def run(self, stop: threading.Event, poll: float = 0.1) -> None:
        last_commit = time.monotonic()
        try:
            while not stop.is_set():
                msg = self._consumer.poll(poll)
                if msg is not None:
                    self._one(msg)
                if self._tracker is not None:
                    self._pause_if_full()
                if self.commits and self._dirty and time.monotonic() - last_commit >= self.commit_every:
                    self._commit()
                    last_commit = time.monotonic()
        finally:
            if self.commits and self._dirty:
                self._commit()
            self._consumer.close()

    def _pause_if_full(self) -> None:
        full = self._tracker.in_flight() >= self.max_in_flight
        if full != self._paused:
            try:
                assignment = self._consumer.assignment()
                (self._consumer.pause if full else self._consumer.resume)(assignment)
                self._paused = full
                log.warning("%s: %d records wait for their work to be durable; %s", ",".join(self.topics),
                            self._tracker.in_flight(), "pausing" if full else "resuming")
            except KafkaException as exc:
                log.warning("cannot pause/resume %s: %s", ",".join(self.topics), exc)

    def _one(self, msg: Message) -> None:
        if msg.error():
            if msg.error().code() != KafkaError._PARTITION_EOF:
                log.warning("%s: consumer error: %s", ",".join(self.topics), msg.error().str())
            return
        self._outage.ok()
        key = msg.key().decode("utf-8", "replace") if msg.key() is not None else None
        done = self._tracker.add(msg.topic(), msg.partition(), msg.offset()) if self._tracker else None
        try:
            if self._decoder is None:
                record = decode(msg.value())
            else:
                record = self._decoder(msg.topic(), msg.value(), partition=msg.partition(), offset=msg.offset())
        except BadRecord as exc:
            self.skipped += 1
            if getattr(exc, "reason", None):  # refused by the decoder (a sealed record's check): said there
                log.warning("skipped a record on %s (key %s, partition %d, offset %d): %s: %s", msg.topic(), key,
                            msg.partition(), msg.offset(), exc.reason, exc)
            else:
                log.warning("skipped a malformed record on %s (key %s, offset %d): %s; value %r",
                            msg.topic(), key, msg.offset(), exc, exc.raw)
            if done is not None:
                done()
        except Exception:  # a bug in a decoder must not stop the stream either
            self.skipped += 1
            log.exception("failed to decode a record from %s (offset %d); skipped", msg.topic(), msg.offset())
            if done is not None:
                done()
        else:
            try:
                if done is None:
                    self.handler(key, record)
                else:
                    self.handler(key, record, done)
                self.handled += 1
            except Exception:  # a bug in one handler must not stop the stream
                self.skipped += 1
                log.exception("failed to handle %s from %s (offset %d); skipped", record.TYPE, msg.topic(),
                              msg.offset())
                if done is not None:
                    done()
        self._dirty = True

    def _commit(self) -> None:
        try:
            if self._tracker is None:
                self._consumer.commit(asynchronous=False)
            else:
                points = self._tracker.commit_points()
                if points:
                    self._consumer.commit(offsets=[TopicPartition(t, p, o) for t, p, o in points],
                                          asynchronous=False)
                self._dirty = self._tracker.in_flight() > 0
                return
            self._dirty = False
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("commit failed (will retry): %s", exc.args[0].str())
