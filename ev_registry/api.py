"""EV_Registry's REST API (FastAPI): ``create_app(registry)``; docs/registry.md describes it.

    PUT    /cps/{cp_id}   register, or register again: 201 or 200 with the credential (shown once)
    DELETE /cps/{cp_id}   deregister: 204; 404 never registered; 409 already deregistered
    GET    /cps           every registration (never a credential nor its hash)
    GET    /cps/{cp_id}   one registration; 404 never registered
    GET    /openapi.json  this API's OpenAPI document (the only path without the operator token)

Every other request needs ``Authorization: Bearer <operator token>``. The ``Guard`` middleware
checks it before anything else is read (so an unauthenticated client learns nothing, not even
whether its body was valid), bounds the body (413 past ``max_body`` bytes, 408 when it is not
received within ``body_timeout`` s) and marks every answer ``Cache-Control: no-store``. Errors
are JSON: ``{"error": "<code>", "message": "<what happened>"}``, and 422 lists ``fields``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from datetime import datetime
from decimal import Decimal
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ev_central.core.entities import RegistrationRow
from ev_central.store.base import StoreError, StoreRefused, StoreUnavailable

from .service import (
    LOCATION_MAX,
    LOCATION_PATTERN,
    PRICE_TEXT_PATTERN,
    AlreadyDeregistered,
    NotRegistered,
    Registry,
    validate_location,
    validate_price,
)

log = logging.getLogger("ev_registry")

API_VERSION = "1.0"
MAX_BODY = 16 * 1024
BODY_TIMEOUT = 10.0
PUBLIC_PATHS = frozenset({"/openapi.json"})
CP_ID_REGEX = r"^[A-Za-z0-9_-]{1,64}$"
AUTHENTICATED = "ev_registry.operator"  # set in the ASGI scope by Guard once the token is checked
REALM = 'Bearer realm="EV_Registry"'


# -- models ----------------------------------------------------------------------------------


PRICE_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0, "maximum": 1000, "multipleOf": 0.0001},
        {"type": "string", "pattern": PRICE_TEXT_PATTERN},
    ],
    "description": "EUR per kWh, 0 to 1000, at most 4 decimal places: a JSON number (its shortest decimal form "
                   "has at most 4 places) or, to keep it exact, a string such as \"0.48\"",
    "examples": ["0.48", 0.35],
}
LOCATION_SCHEMA = {
    "type": "string", "minLength": 1, "maxLength": LOCATION_MAX, "pattern": LOCATION_PATTERN, "format": "printable",
    "description": "where the CP is: 1-200 printable characters (format printable: Python's str.isprintable, no "
                   "control, format, separator other than the space, private-use or unassigned characters), not "
                   "only white space, without '#'",
    "examples": ["C/Mayor, 45"],
}


class RegistrationIn(BaseModel):
    """A CP's registration: where it is and its price."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"location": "C/Mayor, 45", "price_eur_kwh": "0.48"}]})

    location: Annotated[str, WithJsonSchema(LOCATION_SCHEMA)]
    price_eur_kwh: Annotated[Decimal, WithJsonSchema(PRICE_SCHEMA)]

    @field_validator("location", mode="before")
    @classmethod
    def _location(cls, value: object) -> str:
        return validate_location(value)

    @field_validator("price_eur_kwh", mode="before")
    @classmethod
    def _price(cls, value: object) -> Decimal:
        return validate_price(value)


class CPRegistration(BaseModel):
    """A CP's registration state. Never a credential nor its hash."""

    cp_id: str
    location: str
    price_eur_kwh: str = Field(description="exact decimal as text, 4 decimal places, e.g. \"0.4800\"")
    registered: bool = Field(description="false once deregistered (the CP can no longer authenticate)")
    registered_at: datetime = Field(description="the last (re)registration, UTC")
    deregistered_at: datetime | None = Field(description="when it was deregistered; null while registered")


class NewCredential(CPRegistration):
    """A registration and its new credential: shown this once, stored only as a hash."""

    credential: str = Field(description="evc1_ + 43 base64url characters; give it to the CP's Monitor")


class CPList(BaseModel):
    cps: list[CPRegistration]


class FieldError(BaseModel):
    field: str
    message: str


class Error(BaseModel):
    error: str = Field(description="a short code: unauthorized, not_found, conflict, invalid, too_large...")
    message: str
    fields: list[FieldError] | None = None


def _state(row: RegistrationRow) -> dict[str, Any]:
    return {"cp_id": row.cp_id, "location": row.location, "price_eur_kwh": str(row.price_eur_kwh),
            "registered": row.registered, "registered_at": row.registered_at,
            "deregistered_at": row.deregistered_at}


# -- errors ----------------------------------------------------------------------------------


_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 408: "timeout",
          409: "conflict", 413: "too_large", 422: "invalid", 429: "locked_out", 500: "internal", 503: "unavailable"}


def _code(status: int) -> str:
    if status in _CODES:
        return _CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def error_body(status: int, message: str, fields: list[dict] | None = None) -> dict:
    body: dict[str, Any] = {"error": _code(status), "message": message}
    if fields is not None:
        body["fields"] = fields
    return body


def _error(status: int, message: str, headers: dict[str, str] | None = None,
           fields: list[dict] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, fields), status_code=status, headers=headers)


def _field_errors(exc: RequestValidationError) -> list[dict]:
    fields = []
    for error in exc.errors()[:20]:
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "path", "query")]
        message = str(error.get("msg", "invalid"))
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        if error.get("type") == "json_invalid":
            loc, message = [], "the body is not valid JSON"
        fields.append({"field": ".".join(loc) or "body", "message": message[:300]})
    return fields


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _field_errors(exc)
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:3])
        return _error(422, f"invalid request: {summary}", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and message == "Not Found":
            message = "no such resource: the API has /cps and /cps/{cp_id}"
        return _error(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(StoreRefused)
    async def refused(_request: Request, exc: StoreRefused) -> JSONResponse:
        return _error(422, f"the database refused the data: {exc.reason}")

    @app.exception_handler(StoreUnavailable)
    async def unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.error("the database is unavailable: %s", exc)
        return _error(503, "the database is unavailable now; try again later", headers={"Retry-After": "5"})

    @app.exception_handler(StoreError)
    async def store_error(_request: Request, exc: StoreError) -> JSONResponse:
        log.error("database error: %s", exc)
        return _error(500, "database error")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s: %s", request.method, request.url.path[:200], type(exc).__name__, exc,
                  exc_info=exc)
        return _error(500, "internal error (logged by EV_Registry)")


# -- the guard: token, body size, no caching --------------------------------------------------


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Guard:
    """Pure ASGI middleware: the operator token before anything else, a bounded body, no caching."""

    def __init__(self, app, registry: Registry, max_body: int = MAX_BODY, body_timeout: float = BODY_TIMEOUT) -> None:
        self.app = app
        self.registry = registry
        self.max_body = max_body
        self.body_timeout = body_timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        source = (scope.get("client") or ("", 0))[0] or ""
        if scope["path"] not in PUBLIC_PATHS:
            authorization = headers.get("authorization")
            result = await run_in_threadpool(self.registry.authenticate, authorization, source,
                                             f"{scope['method']} {scope['path']}")
            if result.retry_after > 0:
                await _send_json(send, 429, error_body(
                    429, f"too many failed token attempts from {source}: try again in "
                         f"{math.ceil(result.retry_after)} s"), {"retry-after": str(math.ceil(result.retry_after))})
                return
            if not result.ok:
                challenge = REALM + (', error="invalid_token"' if result.token_given else "")
                await _send_json(send, 401, error_body(401, f"{result.reason}: send 'Authorization: Bearer "
                                                            f"<operator token>'"), {"www-authenticate": challenge})
                return
            scope[AUTHENTICATED] = True
        try:
            body = await self._read_body(headers, receive)
        except _Refused as refused:
            await _send_json(send, refused.status, error_body(refused.status, refused.message),
                             {"connection": "close"})
            return
        except _Disconnected:
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def no_store(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), (b"cache-control", b"no-store")]
            await send(message)

        await self.app(scope, replay, no_store)

    async def _read_body(self, headers: dict[str, str], receive) -> bytes:
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise _Refused(400, "Content-Length is not a number")
            if int(length) > self.max_body:
                raise _Refused(413, f"the body has {length} bytes; at most {self.max_body} are accepted")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks, size = [], 0
        while True:
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), left)
            except asyncio.TimeoutError:
                raise _Refused(408, f"the body was not received within {self.body_timeout:g} s") from None
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _Refused(413, f"the body is longer than {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _Disconnected(Exception):
    pass


def _headers(scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        key = name.decode("latin-1").lower()
        if key in headers:  # a repeated Authorization or Content-Length is refused below as malformed
            headers[key] = headers[key] + "," + value.decode("latin-1")
        else:
            headers[key] = value.decode("latin-1")
    return headers


async def _send_json(send, status: int, body: dict, extra: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
               (b"cache-control", b"no-store")]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


# -- the app -----------------------------------------------------------------------------------


_bearer = HTTPBearer(auto_error=False, scheme_name="operator",
                     description="The operator token (--admin-token-file or $EV_REGISTRY_TOKEN)")


def _operator(request: Request,
              _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None) -> None:
    """Documents the bearer scheme; the check itself is Guard's (defence in depth: refuse a
    request Guard did not mark)."""
    if request.scope.get(AUTHENTICATED) is not True:
        raise StarletteHTTPException(401, "the operator token was not checked", headers={"WWW-Authenticate": REALM})


CPId = Annotated[str, Path(pattern=CP_ID_REGEX, description="1-64 characters from A-Z a-z 0-9 _ -",
                           examples=["CP001"])]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "a body that cannot be read (such as a number too long to parse)"},
    401: {"model": Error, "description": "no operator token, or a wrong one (WWW-Authenticate: Bearer)"},
    408: {"model": Error, "description": "the body was not received in time"},
    413: {"model": Error, "description": "the body is longer than 16 KiB"},
    422: {"model": Error, "description": "a field is invalid (cp_id, location, price_eur_kwh)"},
    429: {"model": Error, "description": "too many failed token attempts from this address (Retry-After)"},
    503: {"model": Error, "description": "the database is unavailable"},
}


def create_app(registry: Registry, *, max_body: int = MAX_BODY, body_timeout: float = BODY_TIMEOUT) -> FastAPI:
    """The API over ``registry``. Serve it over HTTPS only (``ev_registry.server``)."""
    app = FastAPI(
        title="EV_Registry", version=API_VERSION, docs_url=None, redoc_url=None, openapi_url="/openapi.json",
        description="Registers and deregisters EVCharging's charging points (CPs) and gives each its "
                    "credential. HTTPS only; every path but this document needs the operator token as "
                    "'Authorization: Bearer <token>'. See docs/registry.md.",
    )
    app.add_middleware(Guard, registry=registry, max_body=max_body, body_timeout=body_timeout)
    _install_error_handlers(app)
    app.state.registry = registry

    @app.put("/cps/{cp_id:path}", response_model=NewCredential, status_code=201,
             summary="Register a CP, or register it again (a new credential replaces the old one)",
             dependencies=[Security(_operator)],
             responses={**ERRORS, 200: {"model": NewCredential,
                                        "description": "registered again: the old credential no longer works"},
                        201: {"description": "registered for the first time"}})
    def register(cp_id: CPId, registration: RegistrationIn, request: Request, response: Response) -> dict:
        source = request.client.host if request.client else ""
        done = registry.register(cp_id, registration.location, registration.price_eur_kwh, source)
        response.status_code = 201 if done.created else 200
        return {**_state(done.row), "credential": done.credential}

    @app.delete("/cps/{cp_id:path}", status_code=204, response_class=Response,
                summary="Deregister a CP: it can no longer authenticate; its history stays",
                dependencies=[Security(_operator)],
                responses={**ERRORS, 404: {"model": Error, "description": "never registered"},
                           409: {"model": Error, "description": "already deregistered"}})
    def deregister(cp_id: CPId, request: Request) -> Response:
        source = request.client.host if request.client else ""
        try:
            registry.deregister(cp_id, source)
        except NotRegistered:
            return _error(404, f"{cp_id} is not registered")
        except AlreadyDeregistered as exc:
            since = f" (since {exc.row.deregistered_at.isoformat()})" if exc.row.deregistered_at else ""
            return _error(409, f"{cp_id} is already deregistered{since}; PUT registers it again")
        return Response(status_code=204)

    @app.get("/cps", response_model=CPList, summary="Every CP ever registered, by cp_id",
             dependencies=[Security(_operator)], responses=ERRORS)
    def list_cps() -> dict:
        return {"cps": [_state(row) for row in registry.list()]}

    @app.get("/cps/{cp_id:path}", response_model=CPRegistration, summary="One CP's registration state",
             dependencies=[Security(_operator)],
             responses={**ERRORS, 404: {"model": Error, "description": "never registered"}})
    def get_cp(cp_id: CPId) -> Any:
        row = registry.get(cp_id)
        if row is None:
            return _error(404, f"{cp_id} is not registered")
        return _state(row)

    return app
