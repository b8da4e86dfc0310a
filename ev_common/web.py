"""What EVCharging's HTTP APIs (EV_Registry's, Central's) share, over FastAPI/Starlette:

* JSON errors: ``{"error": "<code>", "message": "<what happened>"}``, and for 422 ``fields``,
  a list of ``{"field", "message"}`` (``error_body``, ``error_response``, the ``Error`` and
  ``FieldError`` models for OpenAPI documents); ``install_error_handlers(app, not_found=...)``
  answers FastAPI's validation errors and Starlette's HTTP errors that way;
* ``Guard``, a pure ASGI middleware to subclass: a request is first admitted or refused
  (``admit``: a token, before anything else is read, so that a caller without one learns
  nothing, not even whether its body was valid), then its body is read whole within bounds
  (413 past ``max_body`` bytes, 408 when it is not received within ``body_timeout`` s, the
  connection closed after either) and handed on; every answer carries ``response_headers``
  (``Cache-Control: no-store`` by default; ``SECURITY_HEADERS`` for a site with its own page);
* the ASGI pieces under it: ``request_headers``, ``send_json``, ``refuse``, ``read_body``.
"""

from __future__ import annotations

import asyncio
import json
import math
from http import HTTPStatus
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["BODY_TIMEOUT", "MAX_BODY", "NO_STORE", "SECURITY_HEADERS", "BodyRefused", "Disconnected", "Error",
           "FieldError", "Guard", "client_address", "error_body", "error_code", "error_response", "field_errors",
           "install_error_handlers", "read_body", "refuse", "request_headers", "send_json", "with_headers"]

MAX_BODY = 16 * 1024
BODY_TIMEOUT = 10.0
Header = tuple[bytes, bytes]
NO_STORE: Header = (b"cache-control", b"no-store")
#: For a site that serves its own page: only this origin's scripts, styles, images, fonts and
#: connections; never framed; no referrer; no camera, microphone, location nor payment.
SECURITY_HEADERS: list[Header] = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                                 b"form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
]


# -- JSON errors ------------------------------------------------------------------------------------


class FieldError(BaseModel):
    field: str
    message: str


class Error(BaseModel):
    error: str = Field(description="a short code: unauthorized, not_found, conflict, invalid, too_large...")
    message: str
    fields: list[FieldError] | None = None


_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 408: "timeout",
          409: "conflict", 413: "too_large", 422: "invalid", 429: "locked_out", 500: "internal", 503: "unavailable"}


def error_code(status: int) -> str:
    """The short code of an HTTP error status: ``not_found``, ``too_large``, ``forbidden``..."""
    if status in _CODES:
        return _CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def error_body(status: int, message: str, fields: list[dict] | None = None) -> dict:
    body: dict[str, Any] = {"error": error_code(status), "message": message}
    if fields is not None:
        body["fields"] = fields
    return body


def error_response(status: int, message: str, headers: dict[str, str] | None = None,
                   fields: list[dict] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, fields), status_code=status, headers=headers)


def field_errors(exc: RequestValidationError) -> list[dict]:
    """FastAPI's validation errors as ``{"field": "a.b", "message": ...}`` (at most 20; the
    field named without "body", "path" or "query"; a body that is not JSON is field "body")."""
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


def install_error_handlers(app: FastAPI, *, not_found: str) -> None:
    """Answer an invalid request with 422 and its ``fields``, and Starlette's HTTP errors (404,
    405...) as JSON errors; ``not_found`` is the message of a 404 for an unknown path."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = field_errors(exc)
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:3])
        return error_response(422, f"invalid request: {summary}", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else error_code(exc.status_code)
        if exc.status_code == 404 and message == "Not Found":
            message = not_found
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


# -- ASGI pieces ------------------------------------------------------------------------------------


Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]


def request_headers(scope) -> dict[str, str]:
    """A request's headers by lower-case name; a repeated header's values joined by ',' (so a
    repeated Authorization or Content-Length is malformed, and refused as such)."""
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        key = name.decode("latin-1").lower()
        if key in headers:
            headers[key] = headers[key] + "," + value.decode("latin-1")
        else:
            headers[key] = value.decode("latin-1")
    return headers


async def send_json(send: Send, status: int, body: dict, extra: dict[str, str] | None = None) -> None:
    """A whole JSON answer, never cached; ``extra`` headers besides."""
    data = json.dumps(body).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), NO_STORE]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def refuse(send: Send, status: int, message: str, *, retry_after: float | None = None,
                 realm: str | None = None, token_given: bool = False, close: bool = False) -> None:
    """A refusal as a JSON error: with ``retry_after`` (s), the message says when to try again and
    ``Retry-After`` too; a 401 with ``realm`` challenges for a bearer token (``invalid_token``
    when one was given); ``close`` closes the connection after it."""
    extra: dict[str, str] = {"connection": "close"} if close else {}
    if retry_after is not None:
        wait = str(math.ceil(retry_after))
        extra["retry-after"] = wait
        message = f"{message}: try again in {wait} s"
    if status == 401 and realm is not None:
        extra["www-authenticate"] = f'Bearer realm="{realm}"' + (', error="invalid_token"' if token_given else "")
    await send_json(send, status, error_body(status, message), extra)


def with_headers(send: Send, headers: list[Header]) -> Send:
    """``send`` putting ``headers`` on the answer, instead of any the app gave by those names."""
    taken = {name for name, _ in headers}

    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [(k, v) for k, v in message.get("headers", []) if k.lower() not in taken] + headers
        await send(message)

    return sending


class BodyRefused(Exception):
    """The body is refused: ``status`` (400, 408, 413) and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Disconnected(Exception):
    """The client went away while its body was being read."""


async def read_body(receive: Receive, headers: dict[str, str], max_body: int, body_timeout: float) -> bytes:
    """The whole body of a request: ``BodyRefused`` when its Content-Length is not a number
    (400) or is over ``max_body`` (413), when more than ``max_body`` bytes come (413) or when
    it is not all received within ``body_timeout`` s (408); ``Disconnected``."""
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise BodyRefused(400, "Content-Length is not a number")
        if int(length) > max_body:
            raise BodyRefused(413, f"the body has {length} bytes; at most {max_body} are accepted")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body_timeout
    chunks, size = [], 0
    while True:
        left = deadline - loop.time()
        try:
            if left <= 0:
                raise asyncio.TimeoutError
            message = await asyncio.wait_for(receive(), left)
        except asyncio.TimeoutError:
            raise BodyRefused(408, f"the body was not received within {body_timeout:g} s") from None
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            raise BodyRefused(413, f"the body is longer than {max_body} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` giving ``body`` whole first, then what the client sends (its disconnect)."""
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# -- the guard --------------------------------------------------------------------------------------


class Guard:
    """Pure ASGI middleware (see the module's doc). Subclasses say who may pass (``admit``) and
    what every answer carries (``response_headers``)."""

    def __init__(self, app, *, max_body: int = MAX_BODY, body_timeout: float = BODY_TIMEOUT) -> None:
        self.app = app
        self.max_body = max_body
        self.body_timeout = body_timeout

    def response_headers(self, scope) -> list[Header]:
        """The headers every answer to this request carries (instead of the app's by those names)."""
        return [NO_STORE]

    async def admit(self, scope, headers: dict[str, str], send: Send) -> bool:
        """Whether the request goes on; before False, send its refusal (``refuse``). Its body
        is not read yet. Every request passes by default."""
        return True

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = request_headers(scope)
        send = with_headers(send, self.response_headers(scope))
        if not await self.admit(scope, headers, send):
            return
        try:
            body = await read_body(receive, headers, self.max_body, self.body_timeout)
        except BodyRefused as refused:
            await refuse(send, refused.status, refused.message, close=True)
            return
        except Disconnected:
            return
        await self.app(scope, _replay(body, receive), send)


def client_address(scope) -> str:
    """The peer's address (never X-Forwarded-For), or ''."""
    return (scope.get("client") or ("", 0))[0] or ""
