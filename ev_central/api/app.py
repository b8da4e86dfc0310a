"""Central's HTTP API (FastAPI): ``create_app(central, view, operator_token=..., weather_token=...)``.
docs/api.md describes every path; ``/openapi.json`` is its OpenAPI document.

Reads (GET, no token) come from Central's memory, as the panel's do; drivers, accounts,
sessions and the audit log live only in the database and are read on a few worker threads
of their own (``DatabaseReads``), each within a deadline: a database that is down or slow
answers 503 there, while every other path goes on answering from memory. Commands need a
bearer token: the operator's for the CPs, EV_W's for the weather. ``ApiGuard`` (an
``ev_common.web.Guard``) checks it before the body is read, bounds the body (413, 408), and puts
the security headers on every answer. Errors are JSON: ``{"error": "<code>", "message": "..."}``,
and 422 lists ``fields`` (``ev_common.web``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import anyio
from fastapi import FastAPI, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from ev_common.credentials import FailureLimiter
from ev_common.web import (NO_STORE, SECURITY_HEADERS, Guard, client_address, error_response, install_error_handlers,
                           refuse)

from .. import audit as audited
from ..core.states import IllegalTransition
from ..events import EventHub, TooManySubscribers, to_json
from ..store.base import StoreError, StoreUnavailable
from . import models as m
from .auth import OPERATOR, WEATHER, TokenGate
from .present import Presenter, Registrations, session
from .registry_probe import NOT_CONFIGURED
from .sse import HEARTBEAT, SEND_TIMEOUT, EventStream

log = logging.getLogger("ev_central.api")

API_VERSION = "1.0"
MAX_BODY = 256 * 1024  # a weather report of 1,000 cities fits
BODY_TIMEOUT = 10.0
DB_THREADS = 4
DB_TIMEOUT = 8.0  # s a database read may take before the API answers 503
CACHE_SECONDS = 2.0  # drivers' and accounts' pages are read again after this long
STATIC_DIR = Path(__file__).with_name("static")
REALM_NAME = "EV_Central"
CHECKED = "ev_central.api.checked"  # set in the ASGI scope by Guard once a command's token is checked


class DatabaseTimeout(Exception):
    pass


class DatabaseReads:
    """Store reads on ``threads`` worker threads of their own, each awaited at most ``timeout``
    s (the thread is then left to finish: the store bounds its own calls); a few answers are
    cached for ``cache_seconds``."""

    def __init__(self, store, *, threads: int = DB_THREADS, timeout: float = DB_TIMEOUT,
                 cache_seconds: float = CACHE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.threads = threads
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._limiter: anyio.CapacityLimiter | None = None
        self._cache: dict[tuple, tuple[float, Any]] = {}

    async def call(self, function: Callable[..., Any], *args: Any, cache: bool = False) -> Any:
        key = (function.__name__, *args)
        if cache:
            hit = self._cache.get(key)
            if hit is not None and self._clock() - hit[0] < self.cache_seconds:
                return hit[1]
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        try:
            with anyio.fail_after(self.timeout):
                result = await anyio.to_thread.run_sync(function, *args, limiter=self._limiter,
                                                        abandon_on_cancel=True)
        except TimeoutError:
            raise DatabaseTimeout(f"the database did not answer within {self.timeout:g} s") from None
        if cache:
            if len(self._cache) >= 64:
                self._cache.clear()
            self._cache[key] = (self._clock(), result)
        return result


@dataclass
class Api:
    """What the handlers use (``app.state.api``)."""

    central: Any
    view: Any
    hub: EventHub
    presenter: Presenter
    registrations: Registrations
    gate: TokenGate
    db: DatabaseReads
    registry: Any = None  # a RegistryProbe, or None

    def registry_state(self) -> dict:
        return self.registry.state() if self.registry is not None else dict(NOT_CONFIGURED)

    def health(self) -> dict:
        return self.presenter.health(self.registry_state())

    def snapshot(self) -> dict:
        weather = self.presenter.weather()
        return {"cps": self.presenter.cps(), "requests": self.presenter.requests(),
                "messages": self.presenter.messages(100), "weather": weather,
                "health": self.presenter.health(self.registry_state(), weather)}


# -- answers and errors ------------------------------------------------------------------------------


class JSON(JSONResponse):
    """JSON with Decimals as exact strings and times in ISO 8601 (``ev_central.events.to_json``)."""

    def render(self, content: Any) -> bytes:
        return to_json(content).encode("utf-8")


def _install_error_handlers(app: FastAPI) -> None:
    install_error_handlers(app, not_found="no such resource: /openapi.json lists the API's paths")

    @app.exception_handler(DatabaseTimeout)
    async def slow(_request: Request, exc: DatabaseTimeout) -> JSONResponse:
        log.warning("API: %s", exc)
        return error_response(503, f"{exc}; try again later (what Central holds in memory is still served)",
                              headers={"Retry-After": "5"})

    @app.exception_handler(StoreError)
    async def unavailable(_request: Request, exc: StoreError) -> JSONResponse:
        down = isinstance(exc, StoreUnavailable)
        log.warning("API: the database %s: %s", "is unavailable" if down else "failed", exc)
        said = ("the database is unavailable now; try again later (what Central holds in memory is still served)"
                if down else "the database failed to answer; try again later")
        return error_response(503, said, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("API: %s %s failed: %s: %s", request.method, request.url.path[:200], type(exc).__name__, exc,
                  exc_info=exc)
        return error_response(500, "internal error (in Central's log)")


# -- the guard: tokens, bounded bodies, headers ------------------------------------------------------


class ApiGuard(Guard):
    """Pure ASGI middleware (``ev_common.web.Guard``): a command (anything but GET and HEAD)
    needs its realm's token before its body is read; a bounded body; every answer carries
    ``SECURITY_HEADERS``, and the API's ``Cache-Control: no-store`` (the page's: no-cache)."""

    def __init__(self, app, gate: TokenGate, max_body: int = MAX_BODY, body_timeout: float = BODY_TIMEOUT) -> None:
        super().__init__(app, max_body=max_body, body_timeout=body_timeout)
        self.gate = gate

    def response_headers(self, scope) -> list[tuple[bytes, bytes]]:
        api = scope["path"].startswith("/api/") or scope["path"] == "/openapi.json"
        return SECURITY_HEADERS + [NO_STORE if api else (b"cache-control", b"no-cache")]

    async def admit(self, scope, headers: dict[str, str], send) -> bool:
        if scope["method"] in ("GET", "HEAD"):
            return True
        realm = WEATHER if scope["path"].startswith("/api/weather/") else OPERATOR
        verdict = await run_in_threadpool(self.gate.check, realm, headers.get("authorization"), client_address(scope),
                                          f"{scope['method']} {scope['path']}")
        if not verdict.ok:
            locked = verdict.status == 429
            await refuse(send, verdict.status, verdict.message, retry_after=verdict.retry_after if locked else None,
                         realm=REALM_NAME, token_given=verdict.token_given, close=locked)
            return False
        scope[CHECKED] = realm
        return True


def _realm(realm: str, description: str):
    bearer = HTTPBearer(auto_error=False, scheme_name=realm, description=description)

    def check(request: Request,
              _credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        """Documents the scheme; the check itself is ApiGuard's (defence in depth: refuse a
        request it did not mark)."""
        if request.scope.get(CHECKED) != realm:
            raise StarletteHTTPException(401, "the token was not checked",
                                         headers={"WWW-Authenticate": f'Bearer realm="{REALM_NAME}"'})

    return Security(check)


OPERATOR_TOKEN = _realm(OPERATOR, "The operator's token (EV_Central --api-token-file or $EV_API_TOKEN)")
WEATHER_TOKEN = _realm(WEATHER, "EV_W's token (EV_Central --weather-token-file or $EV_WEATHER_TOKEN)")

ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": m.Error, "description": "a parameter or field is invalid (each named in 'fields')"},
}
DB_ERRORS = {**ERRORS, 503: {"model": m.Error, "description": "the database is unavailable or too slow (Retry-After)"}}
COMMAND_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    401: {"model": m.Error, "description": "no token, or a wrong one (WWW-Authenticate: Bearer)"},
    403: {"model": m.Error, "description": "no such token is configured at Central, or this token is the "
                                           "other realm's"},
    404: {"model": m.Error, "description": "no such CP (or no alert for that city)"},
    408: {"model": m.Error, "description": "the body was not received in time"},
    413: {"model": m.Error, "description": "the body is too long"},
    429: {"model": m.Error, "description": "too many failed token attempts from this address (Retry-After)"},
}


# -- the app -------------------------------------------------------------------------------------------


def create_app(central, view, *, operator_token: str | None, weather_token: str | None, store=None,
               hub: EventHub | None = None, registry=None, limiter: FailureLimiter | None = None,
               max_body: int = MAX_BODY, body_timeout: float = BODY_TIMEOUT, db_timeout: float = DB_TIMEOUT,
               heartbeat: float = HEARTBEAT, send_timeout: float = SEND_TIMEOUT,
               static_dir: Path | None = STATIC_DIR) -> FastAPI:
    """The API over ``central`` and its ``view``. ``store``: what the API reads drivers,
    accounts, sessions, audit entries and registrations from (default: Central's);
    ``registry``: a ``RegistryProbe`` (None: not configured). Serve it with ``ApiServer``."""
    store = store if store is not None else central.store
    hub = hub if hub is not None else central.events
    registrations = Registrations(store)
    gate = TokenGate(operator_token, weather_token, limiter=limiter, audit=central.audit)
    api = Api(central, view, hub, Presenter(central, view, registrations), registrations, gate,
              DatabaseReads(store, timeout=db_timeout), registry)
    app = FastAPI(
        title="EV_Central", version=API_VERSION, docs_url=None, redoc_url=None, openapi_url="/openapi.json",
        description="Central's API: the state of every CP, the ongoing requests, the application messages, the "
                    "weather and Central's health, from memory; drivers, accounts, sessions and the audit log from "
                    "the database; live events (Server-Sent Events); the operator's commands and EV_W's weather "
                    "reports, each with its bearer token. See docs/api.md.")
    app.add_middleware(ApiGuard, gate=gate, max_body=max_body, body_timeout=body_timeout)
    _install_error_handlers(app)
    app.state.api = api
    present = api.presenter

    # -- reads from memory (worker threads: thousands of CPs never hold the event loop) ------------

    @app.get("/api/cps", summary="Every CP: state, supply in course, registration and key state",
             responses={200: {"model": m.CPList}})
    def list_cps() -> Response:
        return JSON({"cps": present.cps()})

    @app.get("/api/cps/{cp_id}", summary="One CP", responses={200: {"model": m.CP}, **_not_found("no such CP")})
    def get_cp(cp_id: m.CPId) -> Response:
        cp = present.cp(cp_id)
        return error_response(404, f"no CP {cp_id}") if cp is None else JSON(cp)

    @app.get("/api/requests", summary="The requests Central is handling now (deciding, authorised, supplying)",
             responses={200: {"model": m.RequestList}})
    def list_requests() -> Response:
        return JSON({"requests": present.requests()})

    @app.get("/api/messages", summary="The application messages, errors included, newest last",
             responses={200: {"model": m.MessageList}, **ERRORS})
    def list_messages(limit: int = m.limit_query(100, 500)) -> Response:
        return JSON({"messages": present.messages(limit)})

    @app.get("/api/weather", summary="The weather at each location EV_W watches, its alerts, and EV_W's status",
             responses={200: {"model": m.Weather}})
    def get_weather() -> Response:
        return JSON(present.weather())

    @app.get("/api/health", summary="Kafka, the database, the audit, EV_Registry, EV_W and the Monitors: what "
                                    "fails and since when", responses={200: {"model": m.Health}})
    def get_health() -> Response:
        return JSON(api.health())

    @app.get("/api/events", summary="Live events (text/event-stream): snapshot, cp, telemetry, message, alert, "
                                    "health, weather",
             responses={200: {"content": {"text/event-stream": {}}, "description": "docs/api.md, 'Live events'"},
                        503: {"model": m.Error, "description": "too many readers already"}})
    async def events(request: Request) -> Any:
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        if last is not None and len(last) > 64:
            return error_response(422, "Last-Event-ID is an id this API sent (at most 64 characters)")
        try:
            subscription = hub.subscribe(last)
        except TooManySubscribers as exc:
            return error_response(503, f"{exc}; try again later", headers={"Retry-After": "10"})
        snapshot = api.snapshot if (last is None or subscription.gap) else None
        return EventStream(hub, subscription, snapshot, heartbeat=heartbeat, send_timeout=send_timeout)

    # -- reads from the database -----------------------------------------------------------------------

    @app.get("/api/drivers", summary="Registered drivers, by id (paged)",
             responses={200: {"model": m.DriverPage}, **DB_ERRORS})
    async def list_drivers(limit: int = m.limit_query(100, 500), after: str | None = m.after_query("driver id")
                           ) -> Response:
        rows = await api.db.call(store.list_drivers_page, after, limit, cache=True)
        supplying = {row.driver_id: row.cp_id for row in central.book.open_sessions() if row.driver_id}
        drivers = [{"driver_id": d.driver_id, "account_id": d.account_id, "registered_at": d.registered_at,
                    "supplying_at": supplying.get(d.driver_id)} for d in rows]
        return JSON({"drivers": drivers, "next": rows[-1].driver_id if len(rows) == limit else None})

    @app.get("/api/accounts", summary="Accounts, by id (paged)", responses={200: {"model": m.AccountPage},
                                                                            **DB_ERRORS})
    async def list_accounts(limit: int = m.limit_query(100, 500), after: str | None = m.after_query("account id")
                            ) -> Response:
        rows = await api.db.call(store.list_accounts_page, after, limit, cache=True)
        accounts = [{"account_id": a.account_id, "name": a.name, "kind": a.kind, "active": a.active,
                     "created_at": a.created_at} for a in rows]
        return JSON({"accounts": accounts, "next": rows[-1].account_id if len(rows) == limit else None})

    @app.get("/api/sessions", summary="Sessions and their tickets, newest first (paged)",
             responses={200: {"model": m.SessionPage}, **DB_ERRORS})
    async def list_sessions(limit: int = m.limit_query(50, 500), after: str | None = m.after_query("session id"),
                            cp_id: str | None = Query(None, pattern=m.ID_REGEX, description="only this CP's"),
                            driver_id: str | None = Query(None, pattern=m.ID_REGEX, description="only this driver's")
                            ) -> Response:
        rows = await api.db.call(store.list_sessions_page, cp_id, driver_id, after, limit)
        return JSON({"sessions": [session(row) for row in rows],
                     "next": rows[-1].session_id if len(rows) == limit else None})

    @app.get("/api/audit", summary="The audit log: the newest entries, or those after or before a seq (paged)",
             responses={200: {"model": m.AuditPage}, **DB_ERRORS})
    async def list_audit(limit: int = m.limit_query(100, 1000),
                         after: int | None = Query(None, ge=0, le=2**31 - 1, description="entries after this seq"),
                         before: int | None = Query(None, ge=1, le=2**31 - 1, description="entries before this seq"),
                         action: str | None = Query(None, max_length=65, pattern=m.ACTION_REGEX,
                                                    description="one action, or a family ending in '.'")) -> Response:
        if after is not None and before is not None:
            return error_response(422, "give 'after' or 'before', not both")

        def read() -> tuple[int, list]:
            head = store.audit_head()[0]
            if after is not None:
                return head, store.list_audit(action=action, after_seq=after, limit=limit)
            return head, store.list_audit_before(min(head + 1, before or head + 1), action, limit)

        head, rows = await api.db.call(read)
        entries = [{"seq": r.seq, "at": r.entry.at, "actor": r.entry.actor, "source_ip": r.entry.source_ip,
                    "action": r.entry.action, "details": r.entry.details, "outcome": r.entry.outcome,
                    "hash": r.hash} for r in rows]
        newer = rows[-1].seq if rows and rows[-1].seq < head else None
        return JSON({"entries": entries, "head": head, "next": newer})

    # -- the operator's commands -----------------------------------------------------------------------

    def command(request: Request, what: str, run: Callable[[], Any]) -> Response:
        """Run an operator's command, answer it, and audit it with the caller's address."""
        source = request.client.host if request.client else ""
        try:
            answer, status, said = run(), 200, None
        except KeyError as exc:
            status, said = 404, f"no CP {exc.args[0] if exc.args else ''}".strip()
        except IllegalTransition as exc:
            status, said = 409, str(exc)
        except ValueError as exc:
            status, said = 409, str(exc)
        except StoreError as exc:
            status, said = 503, f"nothing done: the database cannot be reached ({exc}); try again"
        outcome = audited.OK if status == 200 else audited.FAILED if status == 503 else audited.REFUSED
        central.audit.record(audited.OPERATOR_COMMAND, audited.OPERATOR,
                             f"API {what} -> {said or _said(answer)}", outcome, source)
        log.info("API command from %s: %s -> %s", source, what, said or _said(answer))
        if status != 200:
            return error_response(status, said or "refused", headers={"Retry-After": "5"} if status == 503 else None)
        return JSON(answer)

    def stop_or_resume(verb: str, cp_ids: list[str] | None) -> dict:
        action = central.stop_cp if verb == "stop" else central.resume_cp
        cp_ids = cp_ids if cp_ids is not None else central.cp_ids()
        for cp_id in cp_ids:
            action(cp_id)
        return {"cps": present.cps(cp_ids)}

    cp_command = {"dependencies": [OPERATOR_TOKEN], "responses": {200: {"model": m.CP}, **COMMAND_ERRORS}}
    all_command = {"dependencies": [OPERATOR_TOKEN], "responses": {200: {"model": m.CPList}, **COMMAND_ERRORS}}

    @app.post("/api/cps/stop-all", summary="Stop every CP (out of service; supplies end)", **all_command)
    def stop_all(request: Request) -> Response:
        return command(request, "stop all", lambda: stop_or_resume("stop", None))

    @app.post("/api/cps/resume-all", summary="Resume every CP", **all_command)
    def resume_all(request: Request) -> Response:
        return command(request, "resume all", lambda: stop_or_resume("resume", None))

    @app.post("/api/cps/{cp_id}/stop", summary="Stop one CP: PARADO ('Out of Order'); a supply ends at once",
              **cp_command)
    def stop_cp(cp_id: m.CPId, request: Request) -> Response:
        return command(request, f"stop {cp_id}", lambda: stop_or_resume("stop", [cp_id])["cps"][0])

    @app.post("/api/cps/{cp_id}/resume", summary="Resume one CP", **cp_command)
    def resume_cp(cp_id: m.CPId, request: Request) -> Response:
        return command(request, f"resume {cp_id}", lambda: stop_or_resume("resume", [cp_id])["cps"][0])

    @app.post("/api/cps/{cp_id}/keys/revoke", summary="Secure mode: delete the CP's keys (out of service until "
                                                      "its Monitor authenticates again); 409 in open mode",
              **{**cp_command, "responses": {**cp_command["responses"], 409: {
                  "model": m.Error, "description": "open mode: CPs have no keys"},
                  503: {"model": m.Error, "description": "nothing revoked: the database cannot be reached"}}})
    def revoke_keys(cp_id: m.CPId, request: Request) -> Response:
        def run() -> dict:
            central.revoke_keys(cp_id)
            return present.cp(cp_id)

        return command(request, f"keys revoke {cp_id}", run)

    # -- EV_W ----------------------------------------------------------------------------------------------

    def office():
        weather = getattr(central, "weather", None)
        if weather is None:
            raise StarletteHTTPException(503, "Central runs no weather office")
        return weather

    weather_command = {"dependencies": [WEATHER_TOKEN], "responses": {**COMMAND_ERRORS, 503: {
        "model": m.Error, "description": "Central runs no weather office"}}}

    @app.post("/api/weather/reports", summary="EV_W's checks of one cycle (every 4 s): its sign of life",
              status_code=204, response_class=Response, **weather_command)
    def report_weather(body: m.WeatherReportIn, request: Request) -> Response:
        from ..weather import CityReport

        reports = [CityReport(r.city, r.temperature, list(r.cp_ids), r.error, r.simulated) for r in body.reports]
        try:
            office().report(reports, source_ip=_source(request))
        except ValueError as exc:
            return error_response(422, f"invalid report: {exc}")
        return Response(status_code=204)

    @app.put("/api/weather/alerts/{city}", summary="A weather alert (below 0 °C): the city's CPs out of service",
             **{**weather_command, "responses": {200: {"model": m.AlertOutcome}, **weather_command["responses"]}})
    def put_alert(city: m.City, body: m.AlertIn, request: Request) -> Response:
        city = m.check_city(city)
        try:
            outcome = office().alert(city, body.temperature, list(body.cp_ids), source_ip=_source(request))
        except ValueError as exc:
            return error_response(422, f"invalid alert: {exc}")
        return JSON(_outcome(outcome))

    @app.delete("/api/weather/alerts/{city}", summary="Clear a weather alert: the city's CPs back in service",
                **{**weather_command, "responses": {200: {"model": m.AlertOutcome}, **weather_command["responses"]}})
    def clear_alert(city: m.City, request: Request) -> Response:
        city = m.check_city(city)
        try:
            outcome = office().clear(city, source_ip=_source(request))
        except KeyError:
            return error_response(404, f"no weather alert for {city}")
        except ValueError as exc:
            return error_response(422, f"invalid city: {exc}")
        return JSON(_outcome(outcome))

    # -- the page (EV_Front) ----------------------------------------------------------------------------------

    if static_dir is not None and Path(static_dir).is_dir():
        app.mount("/", StaticFiles(directory=str(static_dir), html=True), name="front")
    return app


def _not_found(what: str) -> dict:
    return {**ERRORS, 404: {"model": m.Error, "description": what}}


def _source(request: Request) -> str:
    return request.client.host if request.client else ""


def _outcome(outcome) -> dict:
    return {"city": outcome.city, "active": outcome.active, "stopped": list(outcome.stopped),
            "resumed": list(outcome.resumed), "unchanged": outcome.unchanged}


def _said(answer: Any) -> str:
    """A command's answer in a few words, for the audit and the log."""
    if isinstance(answer, dict) and "cps" in answer:
        cps = answer["cps"]
        shown = ", ".join(f"{cp['cp_id']} {cp['state']}" for cp in cps[:20])
        return (shown + (f" (+{len(cps) - 20})" if len(cps) > 20 else "")) if cps else "no CPs"
    if isinstance(answer, dict) and "cp_id" in answer:
        key = answer.get("key") or {}
        return f"{answer['cp_id']} {answer['state']}" + (" (keys revoked)" if key.get("revoked") else "")
    return "done"


__all__ = ["Api", "create_app"]
