"""EV_Registry's REST API (FastAPI): ``create_app(registry)``; docs/registry.md describes it.

    PUT    /cps/{cp_id}   register, or register again: 201 or 200 with the credential (shown once)
    DELETE /cps/{cp_id}   deregister: 204; 404 never registered; 409 already deregistered
    GET    /cps           every registration (never a credential nor its hash)
    GET    /cps/{cp_id}   one registration; 404 never registered
    GET    /openapi.json  this API's OpenAPI document (the only path without the operator token)

Every other request needs ``Authorization: Bearer <operator token>``. The ``RegistryGuard``
middleware (an ``ev_common.web.Guard``) checks it before anything else is read (so an
unauthenticated client learns nothing, not even whether its body was valid), bounds the body
(413 past ``max_body`` bytes, 408 when it is not received within ``body_timeout`` s) and marks
every answer ``Cache-Control: no-store``. Errors are JSON: ``{"error": "<code>", "message":
"<what happened>"}``, and 422 lists ``fields`` (``ev_common.web``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ev_central.core.entities import RegistrationRow
from ev_central.store.base import StoreError, StoreRefused, StoreUnavailable
from ev_common.web import Error, FieldError, Guard, client_address, error_response, install_error_handlers, refuse

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
__all__ = ["API_VERSION", "BODY_TIMEOUT", "MAX_BODY", "Error", "FieldError", "RegistryGuard", "create_app"]
PUBLIC_PATHS = frozenset({"/openapi.json"})
CP_ID_REGEX = r"^[A-Za-z0-9_-]{1,64}$"
AUTHENTICATED = "ev_registry.operator"  # set in the ASGI scope by RegistryGuard once the token is checked
REALM_NAME = "EV_Registry"
REALM = f'Bearer realm="{REALM_NAME}"'


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


def _state(row: RegistrationRow) -> dict[str, Any]:
    return {"cp_id": row.cp_id, "location": row.location, "price_eur_kwh": str(row.price_eur_kwh),
            "registered": row.registered, "registered_at": row.registered_at,
            "deregistered_at": row.deregistered_at}


# -- errors ----------------------------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    install_error_handlers(app, not_found="no such resource: the API has /cps and /cps/{cp_id}")

    @app.exception_handler(StoreRefused)
    async def refused(_request: Request, exc: StoreRefused) -> JSONResponse:
        return error_response(422, f"the database refused the data: {exc.reason}")

    @app.exception_handler(StoreUnavailable)
    async def unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.error("the database is unavailable: %s", exc)
        return error_response(503, "the database is unavailable now; try again later", headers={"Retry-After": "5"})

    @app.exception_handler(StoreError)
    async def store_error(_request: Request, exc: StoreError) -> JSONResponse:
        log.error("database error: %s", exc)
        return error_response(500, "database error")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s: %s", request.method, request.url.path[:200], type(exc).__name__, exc,
                  exc_info=exc)
        return error_response(500, "internal error (logged by EV_Registry)")


# -- the guard: the operator token, then ev_common.web's body bounds and no caching ---------------


class RegistryGuard(Guard):
    """Pure ASGI middleware (``ev_common.web.Guard``): the operator token before anything else
    (but for ``PUBLIC_PATHS``), a bounded body, no caching."""

    def __init__(self, app, registry: Registry, max_body: int = MAX_BODY, body_timeout: float = BODY_TIMEOUT) -> None:
        super().__init__(app, max_body=max_body, body_timeout=body_timeout)
        self.registry = registry

    async def admit(self, scope, headers: dict[str, str], send) -> bool:
        if scope["path"] in PUBLIC_PATHS:
            return True
        source = client_address(scope)
        result = await run_in_threadpool(self.registry.authenticate, headers.get("authorization"), source,
                                         f"{scope['method']} {scope['path']}")
        if result.retry_after > 0:
            await refuse(send, 429, f"too many failed token attempts from {source}", retry_after=result.retry_after)
            return False
        if not result.ok:
            await refuse(send, 401, f"{result.reason}: send 'Authorization: Bearer <operator token>'",
                         realm=REALM_NAME, token_given=result.token_given)
            return False
        scope[AUTHENTICATED] = True
        return True


# -- the app -----------------------------------------------------------------------------------


_bearer = HTTPBearer(auto_error=False, scheme_name="operator",
                     description="The operator token (--admin-token-file or $EV_REGISTRY_TOKEN)")


def _operator(request: Request,
              _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None) -> None:
    """Documents the bearer scheme; the check itself is RegistryGuard's (defence in depth: refuse a
    request it did not mark)."""
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
    app.add_middleware(RegistryGuard, registry=registry, max_body=max_body, body_timeout=body_timeout)
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
            return error_response(404, f"{cp_id} is not registered")
        except AlreadyDeregistered as exc:
            since = f" (since {exc.row.deregistered_at.isoformat()})" if exc.row.deregistered_at else ""
            return error_response(409, f"{cp_id} is already deregistered{since}; PUT registers it again")
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
            return error_response(404, f"{cp_id} is not registered")
        return _state(row)

    return app
