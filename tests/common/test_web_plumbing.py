"""What EVCharging's HTTP programs share, on its own: bearer tokens (``ev_common.tokens``), the
ASGI guard and JSON errors (``ev_common.web``), uvicorn on a thread (``ev_common.web_server``)
and the transports that verify a server (``ev_common.https_client``), over a tiny app served
on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ev_common.https_client import CertificatePinMismatch, PinnedTransport, tls_context, transport, transport_message
from ev_common.log import shown
from ev_common.tls import ensure_certificate, parse_fingerprint
from ev_common.tokens import MALFORMED, NO_TOKEN, WRONG_TOKEN, bearer_token, load_token, read_token, token_digest
from ev_common.web import Guard, error_body, error_code, refuse
from ev_common.web_server import WebServer

TOKEN = "a-token-of-the-right-form-0123"


# -- tokens and text for logs ----------------------------------------------------------------------


def test_a_bearer_token_is_found_in_its_header_or_said_missing_or_malformed():
    assert bearer_token(None) == (None, NO_TOKEN) == bearer_token("  ")
    assert bearer_token("Basic dXNlcg==") == (None, MALFORMED) == bearer_token("Bearer two words")
    assert bearer_token(f"bEaReR {TOKEN} ") == (TOKEN, WRONG_TOKEN)
    assert token_digest(TOKEN) == token_digest(TOKEN) != token_digest(TOKEN + "x") and len(token_digest(TOKEN)) == 32


def test_a_token_is_16_to_512_printable_ascii_characters(tmp_path: Path, monkeypatch, caplog):
    assert load_token(f"  {TOKEN}\n", "f") == TOKEN
    with pytest.raises(ValueError, match="the operator token in f is empty"):
        load_token(" \n", "f")
    with pytest.raises(ValueError, match=r"EV_W's token in f must be 16 to 512 .*\(it has 5 characters\)"):
        load_token("short", "f", "EV_W's token")
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert read_token(path, "EV_TEST_TOKEN", "the test token") == TOKEN
    if os.name == "posix":
        assert "the test token file" in caplog.text and "chmod 600" in caplog.text
    with pytest.raises(ValueError, match="cannot read the operator token file"):
        read_token(tmp_path / "missing", "EV_TEST_TOKEN")
    monkeypatch.setenv("EV_TEST_TOKEN", TOKEN)
    assert read_token(None, "EV_TEST_TOKEN") == TOKEN
    monkeypatch.setenv("EV_TEST_TOKEN", " ")
    assert read_token(None, "EV_TEST_TOKEN") is None


def test_shown_makes_any_text_fit_for_a_log_line():
    assert shown("PUT /cps/CP1\x1b[2J") == "PUT /cps/CP1?[2J"
    assert shown("x" * 200, 10) == "xxxxxxx..." and len(shown("y" * 500)) == 120


def test_error_codes():
    assert [error_code(s) for s in (404, 413, 403, 418, 999)] == [
        "not_found", "too_large", "forbidden", "i'm_a_teapot", "error"]
    assert error_body(422, "bad", [{"field": "a", "message": "m"}]) == {
        "error": "invalid", "message": "bad", "fields": [{"field": "a", "message": "m"}]}


# -- the guard, served by WebServer ------------------------------------------------------------------


class TokenGuard(Guard):
    """Every request needs ``TOKEN``."""

    async def admit(self, scope, headers, send) -> bool:
        token, reason = bearer_token(headers.get("authorization"))
        if token == TOKEN:
            return True
        await refuse(send, 401, reason, realm="test", token_given=token is not None)
        return False


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"size": len(body)}, headers={"cache-control": "public"})


@pytest.fixture
def served(tmp_path: Path):
    """``served(tls=False, **server_options)``: the echo app behind ``TokenGuard`` (at most 1 KiB,
    within 0.5 s) on 127.0.0.1."""
    servers: list[WebServer] = []

    def serve(*, tls: bool = False, **options) -> WebServer:
        app = TokenGuard(Starlette(routes=[Route("/echo", echo, methods=["GET", "POST"])]), max_body=1024,
                         body_timeout=0.5)
        files = {}
        if tls:
            certificate = ensure_certificate(tmp_path / "tls", "test", ["127.0.0.1"])
            files = {"cert": certificate.cert_path, "key": certificate.key_path}
            serve.certificate = certificate
        server = WebServer(app, "127.0.0.1", 0, **files, **options).start()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.stop()


def _raw(server: WebServer, request: bytes, timeout: float = 5.0) -> bytes:
    """What the server answers to ``request`` before it closes the connection."""
    with socket.create_connection(server.address, timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                return received
            received += data
    raise AssertionError("the server kept the connection open")


def test_the_guard_admits_then_hands_the_whole_body_on_and_sets_the_headers(served):
    server = served()
    assert server.url == f"http://127.0.0.1:{server.port}" and server.alive
    with httpx.Client(base_url=server.url, trust_env=False) as client:
        answer = client.post("/echo", content=b"x" * 1000, headers={"Authorization": f"Bearer {TOKEN}"})
        assert (answer.status_code, answer.json()) == (200, {"size": 1000})
        assert answer.headers.get_list("cache-control") == ["no-store"]  # the guard's, instead of the app's

        refused = client.post("/echo", content=b"x", headers={"Authorization": "Bearer not-it"})
        assert refused.status_code == 401 and refused.json() == {"error": "unauthorized", "message": WRONG_TOKEN}
        assert refused.headers["www-authenticate"] == 'Bearer realm="test", error="invalid_token"'
        missing = client.get("/echo")
        assert missing.headers["www-authenticate"] == 'Bearer realm="test"'

        too_long = client.post("/echo", content=b"x" * 1025, headers={"Authorization": f"Bearer {TOKEN}"})
        assert too_long.status_code == 413 and too_long.json()["error"] == "too_large"
        assert too_long.headers["connection"] == "close"


def test_a_body_longer_than_said_or_too_slow_is_refused(served):
    server = served()
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    chunked = _raw(server, b"POST /echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n"
                   + b"400\r\n" + b"x" * 1024 + b"\r\n1\r\ny\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 413 ") and b"longer than 1024 bytes" in chunked
    started = time.monotonic()
    slow = _raw(server, b"POST /echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 10\r\n\r\n{")
    assert slow.startswith(b"HTTP/1.1 408 ") and b"within 0.5 s" in slow and time.monotonic() - started < 4
    said = _raw(server, b"POST /echo HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 5000\r\n\r\n")
    assert said.startswith(b"HTTP/1.1 413 ") and b"the body has 5000 bytes; at most 1024" in said


def test_a_connection_without_a_whole_request_in_time_is_closed(served):
    server = served(header_timeout=0.5)
    started = time.monotonic()
    assert _raw(server, b"GET /echo HTTP/1.1\r\nHost: x\r\n") == b""  # never the blank line
    assert time.monotonic() - started < 4
    assert server.server.server_state.total_requests == 0


def test_stop_ends_the_thread_and_frees_the_port(served):
    server = served()
    server.stop()
    assert not server.alive
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=2).close()
    with pytest.raises(ValueError, match="both the certificate and its key"):
        WebServer(None, "127.0.0.1", 0, cert="a.crt")


# -- the transports that verify a server -------------------------------------------------------------


def test_a_pinned_server_is_reached_and_any_other_certificate_gets_no_byte(served):
    server = served(tls=True)
    certificate = served.certificate
    assert server.url.startswith("https://")
    good = transport(fingerprint=certificate.fingerprint, peer="the test server")
    assert isinstance(good, PinnedTransport) and good.fingerprint == certificate.fingerprint
    with httpx.Client(base_url=server.url, transport=good, trust_env=False) as client:
        assert client.get("/echo", headers={"Authorization": f"Bearer {TOKEN}"}).json() == {"size": 0}

    wrong = PinnedTransport(parse_fingerprint("AB" * 32), peer="the test server")
    with httpx.Client(base_url=server.url, transport=wrong, trust_env=False) as client:
        with pytest.raises(httpx.ConnectError) as refused:
            client.get("/echo", headers={"Authorization": f"Bearer {TOKEN}"})
    assert isinstance(refused.value.__cause__ or refused.value.__context__, CertificatePinMismatch)
    said = transport_message(server.url, refused.value, "the test server")
    assert said.startswith(f"the test server's certificate {certificate.fingerprint} does not match the pinned")
    assert server.server.server_state.total_requests == 1  # only the pinned client's request

    by_ca = transport(ca_file=str(certificate.cert_path))
    with httpx.Client(base_url=server.url, transport=by_ca, trust_env=False) as client:
        assert client.get("/echo", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    with httpx.Client(base_url=server.url, transport=transport(), trust_env=False) as client:  # the system's CAs
        with pytest.raises(httpx.ConnectError) as unknown:
            client.get("/echo")
    assert transport_message(server.url, unknown.value, "Central").startswith(
        f"Central's certificate at {server.url} was not accepted")


def test_transport_arguments_and_messages(tmp_path: Path):
    with pytest.raises(ValueError, match="not both"):
        transport(ca_file="ca.pem", fingerprint="AB" * 32)
    with pytest.raises(ValueError, match="verifies an https"):
        transport(ca_file="ca.pem", tls=False)
    with pytest.raises(ValueError, match="not found"):
        tls_context(str(tmp_path / "missing.pem"))
    (tmp_path / "empty.pem").write_text("not a certificate\n")
    with pytest.raises(ValueError, match="no usable PEM certificate"):
        tls_context(str(tmp_path / "empty.pem"))
    assert not isinstance(transport(tls=False), PinnedTransport)
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    assert transport_message("https://h:1", refused, "the Registry") == (
        "cannot reach the Registry at https://h:1: [Errno 111] Connection refused")
    plain = httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number")
    assert transport_message("https://h:1", plain).startswith("https://h:1 does not speak TLS")
