"""The API as an HTTP server: HTTPS with a certificate ``ev_common.tls`` made (verified as a
client would), plain HTTP refused on its port, security headers on every answer, the page at
``/`` without anything from another origin, the OpenAPI document, slow clients cut off, and
``EV_Central``'s flags."""

from __future__ import annotations

import re
import socket
import ssl
import time
import warnings
from pathlib import Path

import httpx
import pytest

from ev_central.api.app import STATIC_DIR
from ev_central.cli import api_parts, build_parser

from .conftest import OPERATOR_TOKEN, WEATHER_TOKEN

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def test_https_with_a_made_certificate(start_api):
    running = start_api(tls=True)
    assert running.url.startswith("https://127.0.0.1:")
    client = running.http()  # verifies the certificate against itself, as a pinned client would
    assert client.get("/api/cps").json() == {"cps": []}
    assert running.http(OPERATOR_TOKEN).post("/api/cps/CP1/stop").status_code == 404

    untrusting = httpx.Client(base_url=running.url, verify=ssl.create_default_context(), trust_env=False, timeout=5)
    with pytest.raises(httpx.ConnectError):
        untrusting.get("/api/cps")
    untrusting.close()
    plain = running.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(plain + "/api/cps", timeout=5, trust_env=False)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(cafile=str(running.certificate.cert_path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        return  # this OpenSSL cannot even offer TLS 1.1
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.url + "/api/cps", verify=old, timeout=5, trust_env=False)


def test_every_answer_carries_the_security_headers(running):
    client = running.http()
    for path in ["/api/cps", "/api/cps/nope", "/openapi.json", "/", "/index.html", "/no-such-file"]:
        answer = client.get(path)
        assert answer.headers["content-security-policy"] == CSP, path
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert "server" not in answer.headers
    assert client.get("/api/cps").headers["cache-control"] == "no-store"
    refused = client.post("/api/cps/CP1/stop")
    assert refused.headers["content-security-policy"] == CSP and refused.headers["cache-control"] == "no-store"


def test_the_page_is_served_at_the_root_and_loads_nothing_from_elsewhere(running):
    page = running.http().get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for path in Path(STATIC_DIR).rglob("*"):
        if path.is_file() and path.suffix in (".html", ".js", ".css"):
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), path
            assert not re.search(r"url\(\s*[\"']?(https?:)?//", text), path
            assert "@import" not in text, path


def test_the_openapi_document_lists_every_path_and_its_security(running):
    document = running.http().get("/openapi.json").json()
    paths = document["paths"]
    for path in ["/api/cps", "/api/cps/{cp_id}", "/api/drivers", "/api/accounts", "/api/requests", "/api/sessions",
                 "/api/messages", "/api/audit", "/api/weather", "/api/health", "/api/events",
                 "/api/cps/{cp_id}/stop", "/api/cps/{cp_id}/resume", "/api/cps/stop-all", "/api/cps/resume-all",
                 "/api/cps/{cp_id}/keys/revoke", "/api/weather/reports", "/api/weather/alerts/{city}"]:
        assert path in paths, path
    assert paths["/api/cps/{cp_id}/stop"]["post"]["security"] == [{"operator": []}]
    assert paths["/api/weather/alerts/{city}"]["put"]["security"] == [{"weather": []}]
    assert "security" not in paths["/api/cps"]["get"]
    assert set(paths["/api/cps/{cp_id}/stop"]["post"]["responses"]) >= {"200", "401", "403", "404", "422", "429"}
    assert document["components"]["securitySchemes"]["operator"]["scheme"] == "bearer"
    assert running.http().get("/docs").status_code == 404  # no page that would load scripts from a CDN


def test_a_client_that_sends_no_request_is_cut_off(start_api):
    running = start_api(header_timeout=0.5)
    host, port = running.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /api/cps HTTP/1.1\r\nHost: x\r\n")  # and never the end of its headers
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert time.monotonic() - started < 3


def test_flags(tmp_path, monkeypatch):
    monkeypatch.delenv("EV_API_TOKEN", raising=False)
    monkeypatch.delenv("EV_WEATHER_TOKEN", raising=False)
    monkeypatch.delenv("EV_API_PORT", raising=False)
    monkeypatch.delenv("EV_REGISTRY_URL", raising=False)
    args = build_parser().parse_args(["--port", "5000"])
    assert args.api_port is None  # off unless given
    token = tmp_path / "operator.token"
    token.write_text(OPERATOR_TOKEN + "\n")
    token.chmod(0o600)
    args = build_parser().parse_args(["--port", "5000", "--api-port", "8080", "--api-token-file", str(token),
                                      "--host", "10.0.0.1"])
    settings = api_parts(args)
    assert (args.api_port, settings.operator_token, settings.weather_token, settings.cert) == (
        8080, OPERATOR_TOKEN, None, None)
    monkeypatch.setenv("EV_WEATHER_TOKEN", WEATHER_TOKEN)
    monkeypatch.setenv("EV_API_PORT", "8081")
    args = build_parser().parse_args(["--port", "5000"])
    assert args.api_port == 8081 and api_parts(args).weather_token == WEATHER_TOKEN
    for bad, message in ((["--api-cert", str(token)], "--api-key"),
                         (["--api-token-file", str(tmp_path / "missing")], "cannot read"),
                         (["--registry-url", "http://registry:8443"], "https://"),
                         (["--registry-url", "https://r:1", "--registry-ca", "a", "--registry-fingerprint", "b"],
                          "not both")):
        with pytest.raises(ValueError, match=message):
            api_parts(build_parser().parse_args(["--port", "5000", *bad]))
    short = tmp_path / "short.token"
    short.write_text("short")
    with pytest.raises(ValueError, match="16 to 512"):
        api_parts(build_parser().parse_args(["--port", "5000", "--api-token-file", str(short)]))


def test_health_says_whether_ev_registry_answers(start_api, tmp_path):
    from ev_central.api.registry_probe import RegistryProbe
    from ev_central.store import open_store
    from ev_common.tls import ensure_certificate
    from ev_registry.api import create_app as registry_app
    from ev_registry.server import RegistryServer
    from ev_registry.service import Registry

    made = ensure_certificate(tmp_path / "registry", "ev_registry", ["127.0.0.1"])
    store = open_store(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = RegistryServer(registry_app(Registry(store, OPERATOR_TOKEN)), "127.0.0.1", 0, made.cert_path,
                              made.key_path).start()
    probe = RegistryProbe(registry.url, fingerprint=made.fingerprint, timeout=2)
    try:
        running = start_api(registry=probe)
        probe.check()
        health = running.http().get("/api/health").json()
        assert health["registry"]["configured"] is True and health["registry"]["ok"] is True
        assert health["registry"]["url"] == registry.url
        wrong = RegistryProbe(registry.url, fingerprint="SHA256:" + "00:" * 31 + "00", timeout=2)
        assert wrong.check() is False and "does not match the pinned fingerprint" in wrong.state()["error"]
        wrong.close()
        registry.stop()
        assert probe.check() is False
        health = running.http().get("/api/health").json()
        assert health["registry"]["ok"] is False and health["registry"]["since"] is not None
        assert "cannot reach the Registry" in health["registry"]["error"]
        assert "registry" in {f["part"] for f in health["failing"]}
    finally:
        registry.stop()
        store.close()


def test_central_starts_its_api_from_its_flags(tmp_path, monkeypatch):
    import logging

    from ev_central.app import Central
    from ev_central.cli import start_api
    from ev_central.store import open_store
    from ev_central.view import CentralView, MessageLog

    for name in ("EV_API_TOKEN", "EV_WEATHER_TOKEN", "EV_API_PORT", "EV_REGISTRY_URL"):
        monkeypatch.delenv(name, raising=False)
    db = f"sqlite:///{tmp_path / 'central.db'}"
    args = build_parser().parse_args(["--port", "0", "--host", "127.0.0.1", "--api-port", "0", "--db", db])
    settings = api_parts(args)
    central = Central(open_store(db), "127.0.0.1", 0).start()
    logger = logging.getLogger("ev_central.cli")
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        api = start_api(args, settings, central, CentralView(central, MessageLog()))
        try:
            assert httpx.get(api.url + "/api/cps", trust_env=False, timeout=5).json() == {"cps": []}
            stop = httpx.post(api.url + "/api/cps/stop-all", trust_env=False, timeout=5)
            assert stop.status_code == 403
        finally:
            api.stop()
        assert any(line.startswith(f"API on {api.url} (plain HTTP") for line in said)
        assert any("operator's commands answer 403" in line for line in said)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        central.stop()
