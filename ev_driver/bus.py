"""The driver's Kafka side: one producer, two consumers, and a watch on the broker.

* requests go to ``ev.driver.requests`` keyed by driver_id (``Publisher``: queued
  during an outage, never blocking);
* ONE consumer of ``ev.driver.notifications`` for the program's whole life, group
  ``<prefix>ev-driver-<driver_id>``, offsets committed after processing, so a
  restarted app resumes where it stopped (and shows the ticket of a supply that
  ended while it was down); ``ready`` is set once it has joined its group;
* one consumer of ``ev.cp.status`` in a group of its own per run, read from the
  beginning and never committed (offsets are never stored);
* a "kafka" thread creates missing topics, starts the consumers, serves the
  producer's callbacks and tells the driver at once when Kafka becomes unreachable
  (checked within a second of a client's report), again every minute while it
  stays so, and once when it is back. librdkafka's own log lines go through
  ``logging`` (logger ``ev_driver.kafka``, kept off a terminal by ev_driver.cli),
  each repeated line at most once a minute.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import uuid
from typing import Callable

from ev_common.bus import Publisher, RecordConsumer, Topics, ensure_topics
from ev_common.records import Record

from .screen import Screen

log = logging.getLogger(__name__)
client_log = logging.getLogger("ev_driver.kafka")

Handler = Callable[[str | None, Record], None]
OUTAGE_ERRORS = {"_ALL_BROKERS_DOWN", "_TRANSPORT", "_RESOLVE"}
_VARYING = re.compile(r"\s*\(after \d+ms.*$")


class _OncePerMinute(logging.Filter):
    """Drops a librdkafka log line identical to one let through in the last ``window`` seconds."""

    def __init__(self, window: float = 60.0) -> None:
        super().__init__()
        self.window = window
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage().split("]: ", 1)[-1]  # without the client's name and thread
        text = _VARYING.sub("", text)  # "(after 12ms in state CONNECT, 3 identical error(s) suppressed)"
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(text, -self.window) < self.window:
                return False
            self._last[text] = now
            if len(self._last) > 1000:
                self._last.clear()
        return True


def _quiet_client_log() -> None:
    if not any(isinstance(f, _OncePerMinute) for f in client_log.filters):
        client_log.addFilter(_OncePerMinute())


def reachable(bootstrap: str, timeout: float = 1.0) -> bool:
    """True when some ``host:port`` of ``bootstrap`` accepts a TCP connection."""
    for item in bootstrap.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not port.isdigit():
            continue
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
                return True
        except OSError:
            continue
    return False


SHOWN = {"shown": True}  # a log record the screen also shows: not repeated on the terminal
REMIND_EVERY = 60.0  # while Kafka stays unreachable, the screen says so again this often


class KafkaHealth:
    """Says on screen (and in the log) that Kafka is unreachable, again every ``remind_every``
    seconds while it lasts (each time ``unreachable`` is called past that), and once that it is back."""

    def __init__(self, screen: Screen, bootstrap: str, *, remind_every: float = REMIND_EVERY,
                 clock=time.monotonic) -> None:
        self.screen = screen
        self.bootstrap = bootstrap
        self.remind_every = remind_every
        self._clock = clock
        self.down = False
        self.suspect = False  # a client reported a broker connection problem: check it
        self._lock = threading.Lock()
        self._down_since = 0.0
        self._reminded = 0.0

    def client_error(self, err) -> None:
        """``error_cb`` of every client (runs in the thread that polls it)."""
        if err.name() in OUTAGE_ERRORS:
            self.suspect = True
            log.debug("Kafka client: %s", err.str())
        else:
            log.warning("Kafka: %s", err.str())

    def unreachable(self) -> None:
        now = self._clock()
        with self._lock:
            if self.down:
                if now - self._reminded < self.remind_every:
                    return
                self._reminded = now
                remind = True
            else:
                self.down, self._down_since, self._reminded = True, now, now
                remind = False
        if remind:
            log.warning("Kafka still unreachable at %s", self.bootstrap, extra=SHOWN)
            self.screen.kafka_still_unreachable(self.bootstrap, now - self._down_since)
            return
        log.error("Kafka unreachable at %s; retrying", self.bootstrap, extra=SHOWN)
        self.screen.kafka_unreachable(self.bootstrap)

    def ok(self) -> None:
        self.suspect = False
        with self._lock:
            if not self.down:
                return
            self.down = False
        log.warning("Kafka reachable again at %s", self.bootstrap, extra=SHOWN)
        self.screen.kafka_reachable(self.bootstrap)


class DriverBus:
    def __init__(self, bootstrap: str, driver_id: str, topics: Topics, screen: Screen, *,
                 check_every: float = 1.0, retry_every: float = 2.0) -> None:
        self.bootstrap = bootstrap
        self.driver_id = driver_id
        self.topics = topics
        self.health = KafkaHealth(screen, bootstrap)
        self.check_every = check_every
        self.retry_every = retry_every
        _quiet_client_log()
        self.client_id = f"ev-driver-{driver_id}"
        self.group_id = f"{topics.prefix}ev-driver-{driver_id}"
        self.status_group_id = f"{topics.prefix}ev-driver-{driver_id}-cps-{uuid.uuid4().hex}"
        self.publisher = Publisher(bootstrap, self.client_id, error_cb=self.health.client_error, logger=client_log)
        self.ready = threading.Event()  # the notifications consumer joined its group
        self._stop = threading.Event()  # stops the watch thread
        self._stop_consumers = threading.Event()
        self._watch: threading.Thread | None = None
        self._consumers: list[threading.Thread] = []
        self._on_notification: Handler | None = None
        self._on_status: Handler | None = None

    @property
    def down(self) -> bool:
        return self.health.down

    # -- sending ----------------------------------------------------------------------------------

    def send_request(self, record: Record) -> None:
        self.publisher.publish(self.topics.driver_requests, self.driver_id, record, self._delivered)

    def _delivered(self, ok: bool) -> None:
        if ok:
            self.health.ok()

    # -- life ---------------------------------------------------------------------------------------

    def start(self, on_notification: Handler, on_status: Handler) -> "DriverBus":
        self._on_notification = on_notification
        self._on_status = on_status
        self._watch = threading.Thread(target=self._run, name="kafka", daemon=True)
        self._watch.start()
        return self

    def close(self, timeout: float = 8.0) -> None:
        """Stop the watch, flush the producer, then close the consumers (committing)."""
        self._stop.set()
        if self._watch is not None:
            self._watch.join(timeout)
        self.publisher.flush(1.0 if self.health.down else 5.0)
        self._stop_consumers.set()
        deadline = time.monotonic() + timeout
        for thread in self._consumers:
            thread.join(max(0.1, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("the %s consumer did not close in time (Kafka unreachable?)", thread.name)

    # -- the "kafka" thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self._make_topics():
                self._start_consumers()
                self._watch_broker()
        except Exception:  # a bug here must not take the app down: say it and go on without Kafka
            log.exception("the Kafka thread failed")
            self.health.unreachable()

    def _make_topics(self) -> bool:
        """Create the topics that are missing; wait (saying so once) while Kafka is unreachable."""
        failures = 0
        while not self._stop.is_set():
            if reachable(self.bootstrap):
                try:
                    ensure_topics(self.bootstrap, self.topics.all(), timeout=5.0)
                    self.health.ok()
                    return True
                except Exception as exc:  # KafkaException, or no answer in time
                    failures += 1
                    log.warning("cannot check or create the Kafka topics (%s)", exc)
                    if failures >= 3:  # the broker answers but refuses: go on with the topics it has
                        return True
            else:
                self.health.unreachable()
            self._stop.wait(self.retry_every)
        return False

    def _start_consumers(self) -> None:
        common = {"client_id": self.client_id, "error_cb": self.health.client_error, "logger": client_log}
        notifications = RecordConsumer(self.bootstrap, self.group_id, [self.topics.driver_notifications],
                                       self._notification, on_assign=self._assigned, **common)
        statuses = RecordConsumer(self.bootstrap, self.status_group_id, [self.topics.cp_status], self._on_status,
                                  commit=False, **common)
        for name, consumer in (("notifications", notifications), ("cp-status", statuses)):
            thread = threading.Thread(target=self._consume, args=(consumer,), name=name, daemon=True)
            thread.start()
            self._consumers.append(thread)
        log.info("consuming %s (group %s) and %s", self.topics.driver_notifications, self.group_id,
                 self.topics.cp_status)

    def _consume(self, consumer: RecordConsumer) -> None:
        try:
            consumer.run(self._stop_consumers)
        except Exception:
            log.exception("the %s consumer stopped", threading.current_thread().name)

    def _assigned(self) -> None:
        if not self.ready.is_set():
            log.info("the notifications consumer joined group %s", self.group_id)
            self.ready.set()

    def _notification(self, key: str | None, record: Record) -> None:
        self.health.ok()
        self.ready.set()
        if key == self.driver_id:
            self._on_notification(key, record)

    def _watch_broker(self) -> None:
        last_check = time.monotonic()
        while not self._stop.wait(0.2):
            self.publisher.poll(0)  # delivery reports, errors and logs of the producer
            if (self.health.suspect or self.health.down) and time.monotonic() - last_check >= self.check_every:
                last_check = time.monotonic()
                if not reachable(self.bootstrap):
                    self.health.unreachable()
                elif self.health.down:
                    try:  # back: a broker that lost its topics (memory storage) gets them again
                        ensure_topics(self.bootstrap, self.topics.all(), timeout=5.0)
                    except Exception as exc:
                        log.warning("cannot check the Kafka topics (%s)", exc)
                    self.health.ok()
                else:
                    self.health.ok()
