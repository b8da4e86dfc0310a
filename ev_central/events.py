"""Central's live events: what changed, for whoever listens (the API's ``GET /api/events``).

``EventHub.publish(kind, data)`` is called from any thread: the effects thread (a CP
changed), the Kafka consumers (telemetry), a logging handler (a message), the API's feed
(CPs, health, weather). It never blocks, never raises, and costs its caller almost nothing:

- while nobody listens (and for ``linger`` seconds after the last listener left, so that
  a page reconnecting finds what it missed) it returns after one check of ``live``;
- otherwise it appends ``(kind, data)`` to a bounded list of pending events (``data`` may
  be a function, called later); the hub's pump thread takes them every ``interval`` s,
  numbers them, turns each into JSON once, keeps the last ``replay`` in a replay buffer, and
  appends them to each subscriber's queue;
- a subscriber whose queue holds ``queue_limit`` events is dropped there and then
  (``Subscription.dropped``): a slow client loses its stream, never slows Central. If the
  pump itself falls ``pending_limit`` events behind, events are lost and every subscriber is
  dropped (each comes back with a fresh snapshot).

Subscribers (at most ``max_subscribers``) are read by one asyncio loop each: the pump wakes
a subscriber's loop with ``call_soon_threadsafe`` only when its queue was empty.
``subscribe(last_event_id)`` replays the events after that one still in the buffer
(``Subscription.gap`` tells when some are gone: the reader must fetch the state again).

Event ids are ``<run>-<n>``: ``run`` is drawn when the hub is made, so that an id from
before a restart of Central is never taken for one of this run.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable

log = logging.getLogger(__name__)

REPLAY = 2048  # events kept for reconnecting readers
QUEUE_LIMIT = 2048  # events waiting for one subscriber before it is dropped
MAX_SUBSCRIBERS = 32
LINGER = 60.0  # s events are still numbered and kept after the last subscriber left
INTERVAL = 0.02  # s between two rounds of the pump while someone listens
PENDING_LIMIT = 100_000  # events published but not yet pumped
QUIET_LOGGERS = ("ev_central.live",)  # per-second figures: the telemetry events carry them


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    data: str  # JSON, one line
    run: str = ""

    @property
    def event_id(self) -> str:
        return f"{self.run}-{self.id}"

    def frame(self) -> bytes:
        """The event as Server-Sent Events send it."""
        return f"id: {self.event_id}\nevent: {self.kind}\ndata: {self.data}\n\n".encode("utf-8")


def to_json(value: Any) -> str:
    """JSON of what the API shows: Decimals as exact strings, times in ISO 8601."""
    return json.dumps(value, default=_plain, separators=(",", ":"), ensure_ascii=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


class TooManySubscribers(Exception):
    """``max_subscribers`` listen already."""


class Subscription:
    """One reader's queue. ``take()`` (on its loop) returns what waits; ``wait()`` until more
    comes, it is dropped, or ``timeout``."""

    def __init__(self, hub: "EventHub", loop: asyncio.AbstractEventLoop | None) -> None:
        self._hub = hub
        self._loop = loop
        self._items: collections.deque[Event] = collections.deque()
        self._wake = asyncio.Event() if loop is not None else None
        self._gone = asyncio.Event() if loop is not None else None  # set once dropped
        self._notified = False
        self.dropped = False  # it fell behind (or the hub closed): its stream must end
        self.closed = False  # the hub is closing (Central stops)
        self.gap = False  # events after the reader's last id are gone from the replay buffer
        self.last_id = 0  # the hub's last event when it subscribed (after the replayed ones)
        self.last_event_id = ""  # the same as an SSE id

    def _push(self, event: Event, limit: int) -> bool:
        """(hub lock held) False when the queue is full: the subscriber is dropped."""
        if len(self._items) >= limit:
            self._drop()
            return False
        self._items.append(event)
        if not self._notified:
            self._notify()
        return True

    def _notify(self) -> None:
        self._notified = True
        self._call(self._wake)

    def _drop(self, closing: bool = False) -> None:
        self.closed = self.closed or closing
        self.dropped = True
        self._call(self._wake)
        self._call(self._gone)

    def _call(self, event: asyncio.Event | None) -> None:
        if self._loop is not None and event is not None:
            try:
                self._loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # its loop is closed: nobody reads it any more
                self.dropped = True

    def take(self) -> list[Event]:
        """Everything queued now (the reader's loop only)."""
        if self._wake is not None:
            self._wake.clear()
        self._notified = False
        items = []
        while self._items:
            items.append(self._items.popleft())
        return items

    async def wait(self, timeout: float) -> None:
        if self._items or self.dropped or self._wake is None:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def until_dropped(self) -> None:
        """Returns once the hub dropped this reader (never without a loop)."""
        if self._gone is not None:
            await self._gone.wait()

    def queued(self) -> int:
        return len(self._items)

    def close(self) -> None:
        self._hub.unsubscribe(self)


class EventHub:
    """See the module's doc. ``clock``: monotonic seconds (tests inject one). ``pump``: run the
    pump thread (False: the caller runs ``pump_now()``, as the unit tests do)."""

    def __init__(self, *, replay: int = REPLAY, queue_limit: int = QUEUE_LIMIT,
                 max_subscribers: int = MAX_SUBSCRIBERS, linger: float = LINGER, interval: float = INTERVAL,
                 pending_limit: int = PENDING_LIMIT, pump: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if replay < 1 or queue_limit < 1 or max_subscribers < 1 or linger < 0 or interval <= 0 or pending_limit < 1:
            raise ValueError("EventHub: replay, queue_limit, max_subscribers, pending_limit >= 1, linger >= 0, "
                             "interval > 0")
        self.queue_limit = queue_limit
        self.max_subscribers = max_subscribers
        self.linger = linger
        self.interval = interval
        self.pending_limit = pending_limit
        self._clock = clock
        self._lock = threading.Lock()
        self._pumping = threading.Lock()  # one round at a time
        self._pending: collections.deque[tuple[str, Any]] = collections.deque()
        self._subscribers: list[Subscription] = []
        self._replay: collections.deque[Event] = collections.deque(maxlen=replay)
        self._last_id = 0
        self.run = secrets.token_hex(4)
        self._idle_since: float | None = None
        self._lost = 0  # events not even pended (the pump fell behind): every reader must start again
        self._pump = pump
        self._thread: threading.Thread | None = None
        self._wakeup = threading.Event()  # someone subscribed: the pump starts its rounds
        self.live = False  # someone listens, or did within ``linger`` s: publish does its work
        self.published = 0
        self.dropped = 0  # subscribers dropped for falling behind
        #: Called (on the subscriber's thread, never under the hub's lock) after each subscribe:
        #: the API's feed looks at once at what it publishes only while someone listens.
        self.on_subscribe: Callable[[], None] | None = None

    # -- publishing (any thread) ------------------------------------------------------------

    def publish(self, kind: str, data: Any | Callable[[], Any]) -> None:
        """Send an event of ``kind`` to every subscriber (see the module's doc). ``data``: a
        JSON-able value, or a function making it (called by the pump, only when someone listens)."""
        if not self.live:
            return
        if len(self._pending) >= self.pending_limit:
            self._lost += 1
            return
        self._pending.append((kind, data))

    # -- the pump -------------------------------------------------------------------------------

    def _run_pump(self) -> None:
        while True:
            if not self.live:
                self._wakeup.wait()
                self._wakeup.clear()
            time.sleep(self.interval)
            try:
                self.pump_now()
            except Exception:  # the pump goes on
                log.exception("live events: a round of the pump failed")

    def pump_now(self) -> None:
        """Number, encode and deliver what was published (the pump thread, or a test)."""
        with self._pumping:
            items = []
            while self._pending:
                items.append(self._pending.popleft())
            made = []
            for kind, data in items:
                try:
                    made.append((kind, to_json(data() if callable(data) else data)))
                except Exception:  # a bad event is left out; the others go
                    log.exception("event %s could not be made", kind)
            self._deliver(made)

    def _deliver(self, made: list[tuple[str, str]]) -> None:
        dropped: list[Subscription] = []
        with self._lock:
            if self._lost:  # events are missing: nobody can follow from here
                self._lost = 0
                self._last_id += 1  # this number stands for the events lost, a gap to all
                self._replay.clear()
                dropped, self._subscribers = self._subscribers, []
                for subscriber in dropped:
                    subscriber._drop()
                self._idle_since = self._clock()
            elif not self._subscribers and self._idle_since is not None:
                if self._clock() - self._idle_since > self.linger:
                    self.live = False
                    self._replay.clear()  # a reader back after this long fetches the state again:
                    self._last_id += 1  # this number stands for the changes not kept, a gap to all
                    self._pending.clear()
                    return
            for kind, text in made:
                self._last_id += 1
                event = Event(self._last_id, kind, text, self.run)
                self._replay.append(event)
                for subscriber in self._subscribers:
                    if not subscriber.dropped and not subscriber._push(event, self.queue_limit):
                        dropped.append(subscriber)
            self.published += len(made)
            for subscriber in dropped:
                self._remove(subscriber)
            self.dropped += len(dropped)
        if dropped:  # (outside the lock: the log line is an event too)
            log.warning("%d live-events reader(s) fell behind (%d events queued, or events lost): their streams "
                        "are dropped", len(dropped), self.queue_limit)

    # -- subscribing ------------------------------------------------------------------------------

    def subscribe(self, last_event_id: str | None = None,
                  loop: asyncio.AbstractEventLoop | None = None) -> Subscription:
        """A new subscriber, read on ``loop`` (default: the running loop). Events after
        ``last_event_id`` still in the replay buffer are queued first; ``gap`` is set when
        some after it are gone, or it is not an id of this run. Raises ``TooManySubscribers``."""
        if loop is None:
            loop = asyncio.get_running_loop()
        subscriber = Subscription(self, loop)
        last_id = self._parse(last_event_id) if last_event_id is not None else None
        with self._lock:
            if len(self._subscribers) >= self.max_subscribers:
                raise TooManySubscribers(f"{self.max_subscribers} readers listen already")
            if last_event_id is not None:
                oldest = self._replay[0].id if self._replay else self._last_id + 1
                subscriber.gap = last_id is None or last_id > self._last_id or last_id + 1 < oldest
                if not subscriber.gap:
                    for event in self._replay:
                        if event.id > last_id:
                            subscriber._items.append(event)
            subscriber.last_id = self._last_id
            subscriber.last_event_id = f"{self.run}-{self._last_id}"
            self._subscribers.append(subscriber)
            self._idle_since = None
            self.live = True
            if self._pump and self._thread is None:
                self._thread = threading.Thread(target=self._run_pump, name="live-events", daemon=True)
                self._thread.start()
        self._wakeup.set()
        if self.on_subscribe is not None:
            self.on_subscribe()
        return subscriber

    def _parse(self, event_id: str) -> int | None:
        """The number of one of this run's event ids, else None."""
        run, _, number = event_id.strip().partition("-")
        if run != self.run or not number.isdigit() or len(number) > 18:
            return None
        return int(number)

    def unsubscribe(self, subscriber: Subscription) -> None:
        with self._lock:
            self._remove(subscriber)

    def _remove(self, subscriber: Subscription) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
            if not self._subscribers:
                self._idle_since = self._clock()

    def close_all(self) -> None:
        """End every subscriber's stream (Central stops)."""
        with self._lock:
            subscribers, self._subscribers = self._subscribers, []
            self._idle_since = self._clock()
            for subscriber in subscribers:
                subscriber._drop(closing=True)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    @property
    def last_id(self) -> int:
        with self._lock:
            return self._last_id


class EventLogHandler(logging.Handler):
    """Publishes the program's log lines (INFO and up, not the per-second figures) as
    ``message`` events: ``{"at", "level", "text"}``, as the panel lists them."""

    def __init__(self, hub: EventHub) -> None:
        super().__init__(logging.INFO)
        self.hub = hub

    def emit(self, record: logging.LogRecord) -> None:
        if not self.hub.live or record.name.startswith(QUIET_LOGGERS):
            return
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        self.hub.publish("message", {"at": datetime.fromtimestamp(record.created, timezone.utc),
                                     "level": level_name(record.levelno), "text": text})


def level_name(levelno: int) -> str:
    return "error" if levelno >= logging.ERROR else "warning" if levelno >= logging.WARNING else "info"
