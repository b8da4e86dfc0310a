"""Central's API served by uvicorn on a thread of Central's process, and what feeds its live
events.

``ApiServer(central, view, host, port, cert=..., key=..., operator_token=..., weather_token=...)``:
``start()`` binds (``OSError`` if the port is taken), starts the live feed and serves on a
thread, returning once uvicorn listens; ``address``/``url`` are then known (``port=0`` asks
the system for one); ``stop()`` ends the live streams, then the server within its timeout.
HTTPS with ``cert`` and ``key`` (TLS 1.2 or newer), plain HTTP without.

Timeouts on every stage of a connection, as EV_Registry's (``ev_common.web_server``): the TLS
handshake, a request's headers (``header_timeout``), its body (the API's ``body_timeout``), an
idle kept-alive connection, each write of a live stream (ev_central/api/sse.py); at most
``limit_concurrency`` connections and tasks at once (503 past that). Client addresses are the
peers' own: ``X-Forwarded-For`` is not trusted.

``LiveFeed`` publishes to Central's ``EventHub``: ``alert`` events from each CP change
(SupplyService.on_cp_change, the effects thread), ``telemetry`` (SupplyService.on_progress),
``message`` (a logging handler); and from its own thread ``cp`` events, each CP that changed
(or whose supply opened: SupplyService.on_supply_open) once per ``CP_BATCH`` s (the effects
thread only notes which: a CP changing ten times in a moment is one event, made with one look
at the supplies), and once a second ``health`` and
``weather`` when they changed (and ``alert`` when a part starts or stops failing, or a weather
alert starts or ends); that thread also reads the CPs' registrations every 10 s (a ``cp`` event
for each CP whose registration changed: registered, deregistered, registered again) and asks
EV_Registry every 15 s. Nothing of it works while nobody listens, but for those two reads.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from ev_common.web_server import HEADER_TIMEOUT, KEEP_ALIVE_TIMEOUT, TimedH11Protocol, WebServer
from ev_common.words import AVERIADO, DESCONECTADO, PARADO

from ..events import EventLogHandler, to_json
from .app import Api, create_app
from .present import telemetry
from .sse import ABORT

log = logging.getLogger("ev_central.api")

LIMIT_CONCURRENCY = 128
GRACEFUL_SHUTDOWN = 3
WATCH_INTERVAL = 1.0
CP_BATCH = 0.1  # s: the changed CPs' events are made this often
REGISTRATIONS_INTERVAL = 10.0
REGISTRY_INTERVAL = 15.0
OUT_OF_SERVICE = {AVERIADO: "faulty", DESCONECTADO: "disconnected", PARADO: "out of order"}


class ApiProtocol(TimedH11Protocol):
    """``ev_common.web_server``'s h11 protocol (a deadline on each request's headers) that also
    puts in each request's scope a way to cut its connection at once (``ev.abort``): a
    live-events reader that stopped reading is dropped without waiting for its buffers to drain."""

    def handle_events(self) -> None:
        super().handle_events()
        scope = self.scope
        if scope is not None and ABORT not in scope:
            scope[ABORT] = self.transport.abort


class LiveFeed:
    """See the module's doc. ``start()``/``stop()``."""

    def __init__(self, api: Api, *, interval: float = WATCH_INTERVAL,
                 registrations_interval: float = REGISTRATIONS_INTERVAL,
                 registry_interval: float = REGISTRY_INTERVAL) -> None:
        self.api = api
        self.hub = api.hub
        self.interval = interval
        self.registrations_interval = registrations_interval
        self.registry_interval = registry_interval
        self._handler = EventLogHandler(api.hub)
        self._stop = threading.Event()
        self._changed = threading.Event()  # CPs changed (or stop): the thread makes their events
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._health: tuple | None = None
        self._failing: set[str] = set()
        self._weather: str | None = None
        self._alerts: dict[str, dict] = {}
        self._newcomer = False  # a reader subscribed: see _subscribed

    def start(self) -> "LiveFeed":
        supplies = self.api.central.supplies
        supplies.on_cp_change = self._cp_changed
        supplies.on_progress = self._progress
        supplies.on_supply_open = self._supply_opened
        logging.getLogger().addHandler(self._handler)
        self.hub.on_subscribe = self._subscribed
        self._thread = threading.Thread(target=self._run, name="api-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        supplies = self.api.central.supplies
        if supplies.on_cp_change == self._cp_changed:
            supplies.on_cp_change = None
        if supplies.on_progress == self._progress:
            supplies.on_progress = None
        if supplies.on_supply_open == self._supply_opened:
            supplies.on_supply_open = None
        logging.getLogger().removeHandler(self._handler)
        if self.hub.on_subscribe == self._subscribed:
            self.hub.on_subscribe = None
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(10)

    # -- from Central's threads: one check while nobody listens -----------------------------------

    def _cp_changed(self, change, interrupted) -> None:
        hub = self.hub
        if not hub.live:
            return
        self._mark(change.cp_id)
        now = change.at
        if interrupted is not None:
            hub.publish("alert", {"at": now, "level": "warning", "kind": "supply_interrupted",
                                  "cp_id": change.cp_id, "session_id": interrupted.session_id,
                                  "text": f"supply {interrupted.session_id[:8]} at {change.cp_id} interrupted: "
                                          f"{change.cause}"})
        if change.state_changed and change.new.value in OUT_OF_SERVICE:
            hub.publish("alert", {"at": now, "level": "error" if change.new.value == AVERIADO else "warning",
                                  "kind": "cp_out_of_service", "cp_id": change.cp_id, "state": change.new.value,
                                  "text": f"{change.cp_id} {OUT_OF_SERVICE[change.new.value]}: {change.cause}"})

    def _supply_opened(self, row) -> None:
        """The CP turned SUMINISTRANDO when it was asked; its supply opens only once it said yes:
        its ``cp`` event again, with the supply (the first may have gone out without it)."""
        if self.hub.live:
            self._mark(row.cp_id)

    def _mark(self, cp_id: str) -> None:
        """``cp_id`` goes in the next batch of ``cp`` events."""
        with self._dirty_lock:
            self._dirty.add(cp_id)
        self._changed.set()

    def _progress(self, row, seq: int) -> None:
        if self.hub.live:
            self.hub.publish("telemetry", lambda: telemetry(row, seq))

    # -- the watcher thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        next_watch = next_registrations = next_registry = 0.0
        while not self._stop.is_set():
            try:
                self._publish_cps()
                now = time.monotonic()
                if now >= next_watch or self._first_look():
                    next_watch = now + self.interval
                    if now >= next_registrations:
                        next_registrations = now + self.registrations_interval
                        self._refresh_registrations()
                    if self.api.registry is not None and now >= next_registry:
                        next_registry = now + self.registry_interval
                        self.api.registry.check()
                    self.watch()
            except Exception:  # the watcher goes on
                log.exception("API: watching Central's health failed; will retry")
            self._changed.wait(max(0.0, next_watch - time.monotonic()))
            if not self._stop.is_set():
                self._stop.wait(CP_BATCH)  # more changes join this batch
            self._changed.clear()

    def _refresh_registrations(self) -> None:
        """Read the CPs' registrations again; a ``cp`` event for each CP whose registration
        changed (every CP after the first read)."""
        registrations = self.api.registrations
        registrations.refresh()
        changed = registrations.take_changes()
        if not self.hub.live:
            return
        if changed is None:
            for cp in self.api.presenter.cps():
                self.hub.publish("cp", cp)
        elif changed:
            with self._dirty_lock:
                self._dirty |= changed
            self._publish_cps()

    def _subscribed(self) -> None:
        """(the hub, on a reader's thread) Someone subscribed: if nobody listened before, the
        watcher looks at once (not up to ``interval`` s later), so that a change soon after
        the reader's snapshot (a weather alert cleared) is published to it."""
        self._newcomer = True
        self._changed.set()

    def _first_look(self) -> bool:
        """A reader came while the watcher published nothing (taken once)."""
        newcomer, self._newcomer = self._newcomer, False
        return newcomer and self._weather is None

    def _publish_cps(self) -> None:
        """A ``cp`` event for each CP that changed since the last batch."""
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
        if dirty and self.hub.live:
            for cp in self.api.presenter.cps(sorted(dirty)):
                self.hub.publish("cp", cp)

    def watch(self) -> None:
        """While someone listens, publish what changed."""
        if not self.hub.live:
            self._health = self._weather = None
            return
        presenter = self.api.presenter
        weather = presenter.weather()
        text = to_json(weather)
        if text != self._weather:
            self.hub.publish("weather", weather)
            if self._weather is not None:
                self._weather_alerts(weather)
            else:
                self._alerts = self._alerted(weather)
            self._weather = text
        health = presenter.health(self.api.registry_state(), weather)
        shown = (health["level"], health["text"], tuple((f["part"], f["text"]) for f in health["failing"]))
        if shown != self._health:
            self.hub.publish("health", health)
            self._parts(health)
            self._health = shown

    def _parts(self, health: dict) -> None:
        failing = {f["part"]: f for f in health["failing"] if f["part"] != "monitors"}
        at = health["at"]
        if self._health is not None:
            for part in failing.keys() - self._failing:
                self.hub.publish("alert", {"at": at, "level": "error", "kind": "part_failing", "part": part,
                                           "text": failing[part]["text"]})
            for part in self._failing - failing.keys():
                self.hub.publish("alert", {"at": at, "level": "info", "kind": "part_recovered", "part": part,
                                           "text": f"{part}: OK again"})
        self._failing = set(failing)

    @staticmethod
    def _alerted(weather: dict) -> dict[str, dict]:
        return {city["city"]: city for city in weather["cities"] if city["alert"]}

    def _weather_alerts(self, weather: dict) -> None:
        alerts = self._alerted(weather)
        at = datetime.now(timezone.utc)
        for name in alerts.keys() - self._alerts.keys():
            city = alerts[name]
            self.hub.publish("alert", {"at": at, "level": "warning", "kind": "weather_alert", "city": name,
                                       "temperature": city["temperature"], "cp_ids": city["cp_ids"],
                                       "text": f"weather alert at {name} ({city['temperature']} °C): "
                                               f"{', '.join(city['cp_ids']) or 'no CP'} out of service"})
        for name in self._alerts.keys() - alerts.keys():
            self.hub.publish("alert", {"at": at, "level": "info", "kind": "weather_clear", "city": name,
                                       "text": f"weather alert at {name} cleared"})
        self._alerts = alerts


class ApiServer(WebServer):
    """Central's API on ``host``:``port`` (see the module's doc)."""

    def __init__(self, central, view, host: str, port: int, *, cert: str | Path | None = None,
                 key: str | Path | None = None, operator_token: str | None = None, weather_token: str | None = None,
                 limit_concurrency: int = LIMIT_CONCURRENCY, timeout_keep_alive: int = KEEP_ALIVE_TIMEOUT,
                 header_timeout: float = HEADER_TIMEOUT, graceful_shutdown: int = GRACEFUL_SHUTDOWN,
                 watch_interval: float = WATCH_INTERVAL, registrations_interval: float = REGISTRATIONS_INTERVAL,
                 own_store: bool = False, **app_options) -> None:
        """``app_options`` go to ``create_app`` (``store``: the API's own, closed by ``stop()``
        when ``own_store``)."""
        if (cert is None) != (key is None):
            raise ValueError("give both the API's certificate and its key, or neither (plain HTTP)")
        self.central = central
        self.own_store = own_store
        app = create_app(central, view, operator_token=operator_token, weather_token=weather_token, **app_options)
        self.api: Api = app.state.api
        self.feed = LiveFeed(self.api, interval=watch_interval, registrations_interval=registrations_interval)
        super().__init__(app, host, port, cert=cert, key=key, protocol=ApiProtocol, header_timeout=header_timeout,
                         limit_concurrency=limit_concurrency, timeout_keep_alive=timeout_keep_alive,
                         graceful_shutdown=graceful_shutdown, name="api-http", what="the API's server")

    def serving(self) -> None:
        self.feed.start()

    def stop(self, timeout: float = 10.0) -> None:
        """End the live streams, stop serving (open requests get ``graceful_shutdown`` s), then
        close the socket and stop the feed."""
        self.api.hub.close_all()
        super().stop(timeout)
        self.feed.stop()
        if self.api.registry is not None:
            self.api.registry.close()
        if self.own_store:
            self.api.db.store.close()
