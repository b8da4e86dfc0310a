"""Central's API served by uvicorn on a thread of Central's process, and what feeds its live
events.

``ApiServer(central, view, host, port, cert=..., key=..., operator_token=..., weather_token=...)``:
``start()`` binds (``OSError`` if the port is taken), starts the live feed and serves on a
thread, returning once uvicorn listens; ``address``/``url`` are then known (``port=0`` asks
the system for one); ``stop()`` ends the live streams, then the server within its timeout.
HTTPS with ``cert`` and ``key`` (TLS 1.2 or newer), plain HTTP without.

Timeouts on every stage of a connection, as EV_Registry's (ev_registry/server.py): the TLS
handshake, a request's headers (``header_timeout``), its body (the API's ``body_timeout``), an
idle kept-alive connection, each write of a live stream (ev_central/api/sse.py); at most
``limit_concurrency`` connections and tasks at once (503 past that). Client addresses are the
peers' own: ``X-Forwarded-For`` is not trusted.

``LiveFeed`` publishes to Central's ``EventHub``: ``alert`` events from each CP change
(SupplyService.on_cp_change, the effects thread), ``telemetry`` (SupplyService.on_progress),
``message`` (a logging handler); and from its own thread ``cp`` events, each CP that changed
once per ``CP_BATCH`` s (the effects thread only notes which: a CP changing ten times in a
moment is one event, made with one look at the supplies), and once a second ``health`` and
``weather`` when they changed (and ``alert`` when a part starts or stops failing, or a weather
alert starts or ends); that thread also reads the CPs' registrations every 10 s and asks
EV_Registry every 15 s. Nothing of it works while nobody listens, but for those two reads.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import uvicorn

from ev_common.words import AVERIADO, DESCONECTADO, PARADO
from ev_registry.server import HEADER_TIMEOUT, KEEP_ALIVE_TIMEOUT, _TimedH11Protocol, bind, harden

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


class _ApiProtocol(_TimedH11Protocol):
    """EV_Registry's h11 protocol (a deadline on each request's headers) that also puts in each
    request's scope a way to cut its connection at once (``ev.abort``): a live-events reader
    that stopped reading is dropped without waiting for its buffers to drain."""

    def handle_events(self) -> None:
        super().handle_events()
        scope = self.scope
        if scope is not None and ABORT not in scope:
            scope[ABORT] = self.transport.abort


def _protocol(header_timeout: float) -> type:
    return type("ApiH11Protocol", (_ApiProtocol,), {"header_timeout": header_timeout})


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

    def start(self) -> "LiveFeed":
        supplies = self.api.central.supplies
        supplies.on_cp_change = self._cp_changed
        supplies.on_progress = self._progress
        logging.getLogger().addHandler(self._handler)
        self._thread = threading.Thread(target=self._run, name="api-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        supplies = self.api.central.supplies
        if supplies.on_cp_change == self._cp_changed:
            supplies.on_cp_change = None
        if supplies.on_progress == self._progress:
            supplies.on_progress = None
        logging.getLogger().removeHandler(self._handler)
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(10)

    # -- from Central's threads: one check while nobody listens -----------------------------------

    def _cp_changed(self, change, interrupted) -> None:
        hub = self.hub
        if not hub.live:
            return
        with self._dirty_lock:
            self._dirty.add(change.cp_id)
        self._changed.set()
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
                if now >= next_watch:
                    next_watch = now + self.interval
                    if now >= next_registrations:
                        next_registrations = now + self.registrations_interval
                        self.api.registrations.refresh()
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


class ApiServer:
    """Central's API on ``host``:``port`` (see the module's doc)."""

    def __init__(self, central, view, host: str, port: int, *, cert: str | Path | None = None,
                 key: str | Path | None = None, operator_token: str | None = None, weather_token: str | None = None,
                 limit_concurrency: int = LIMIT_CONCURRENCY, timeout_keep_alive: int = KEEP_ALIVE_TIMEOUT,
                 header_timeout: float = HEADER_TIMEOUT, graceful_shutdown: int = GRACEFUL_SHUTDOWN,
                 watch_interval: float = WATCH_INTERVAL, own_store: bool = False, **app_options) -> None:
        """``app_options`` go to ``create_app`` (``store``: the API's own, closed by ``stop()``
        when ``own_store``)."""
        if (cert is None) != (key is None):
            raise ValueError("give both the API's certificate and its key, or neither (plain HTTP)")
        self.central = central
        self.own_store = own_store
        self.host = host
        self.requested_port = port
        self.app = create_app(central, view, operator_token=operator_token, weather_token=weather_token,
                              **app_options)
        self.api: Api = self.app.state.api
        self.feed = LiveFeed(self.api, interval=watch_interval)
        self.tls = cert is not None
        options = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)} if self.tls else {}
        self.config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", ws="none", proxy_headers=False,
            server_header=False, http=_protocol(header_timeout), timeout_keep_alive=timeout_keep_alive,
            limit_concurrency=limit_concurrency, timeout_graceful_shutdown=graceful_shutdown, **options)
        self.config.load()  # builds the SSLContext from the files (ssl.SSLError / OSError if they are bad)
        if self.tls:
            harden(self.config.ssl)
        self.server = uvicorn.Server(self.config)
        self._socket = None
        self._address: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("the API is not listening yet")
        return self._address

    @property
    def url(self) -> str:
        host, port = self.address
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1" if host != "::" else "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def start(self, timeout: float = 15.0) -> "ApiServer":
        """Bind, serve on a thread, return once listening (``RuntimeError`` if it did not start
        within ``timeout`` s, ``OSError`` if the port cannot be bound)."""
        self._socket = bind(self.host, self.requested_port)
        self._address = self._socket.getsockname()[:2]
        self.feed.start()
        self._thread = threading.Thread(target=self._run, name="api-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"the API's server stopped while starting: {self.error!r}")
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"the API's server did not start within {timeout:g} s")
            self._thread.join(0.02)
        return self

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._socket])
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self.error = exc
            log.error("the API's server failed: %s", exc)

    def stop(self, timeout: float = 10.0) -> None:
        """End the live streams, stop serving (open requests get ``graceful_shutdown`` s), then
        close the socket and stop the feed."""
        self.api.hub.close_all()
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.server.force_exit = True
                self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self.feed.stop()
        if self.api.registry is not None:
            self.api.registry.close()
        if self.own_store:
            self.api.db.store.close()
