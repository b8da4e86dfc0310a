"""EV_Registry is HTTPS only, and every stage of a connection has a timeout; the client trusts
the Registry by a CA file or a pinned fingerprint, and sends nothing to a certificate it does
not trust."""

from __future__ import annotations

import socket
import ssl
import time
import warnings

import httpx
import pytest
import trustme

from ev_registry.client import RegistryClient, RegistryError
from tests.registry.conftest import Running
from tests.support.waiting import wait_until

BODY = {"location": "C/Mayor, 45", "price_eur_kwh": "0.48"}


def _requests_served(running: Running) -> int:
    return running.server.server.server_state.total_requests


def _tls_socket(running: Running, timeout: float = 5.0) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(running.ca_path))
    raw = socket.create_connection(("127.0.0.1", running.port), timeout=timeout)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _closed_by_peer(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes; fails if it is still open after ``timeout`` s."""
    sock.settimeout(timeout)
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            return received
        except socket.timeout:
            break
        if not data:
            return received
        received += data
    raise AssertionError(f"the server did not close the connection within {timeout:g} s")


# -- HTTPS only --------------------------------------------------------------------------------------


def test_plain_http_on_the_port_fails(sqlite_registry: Running):
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{sqlite_registry.port}/cps", timeout=5.0,
                  headers=sqlite_registry.auth(), trust_env=False)
    with socket.create_connection(("127.0.0.1", sqlite_registry.port), timeout=5.0) as raw:
        raw.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _closed_by_peer(raw, 5.0)
    assert not answer.startswith(b"HTTP/")
    assert _requests_served(sqlite_registry) == 0


def test_old_tls_versions_are_refused(sqlite_registry: Running):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(sqlite_registry.ca_path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{sqlite_registry.url}/openapi.json", verify=context, timeout=5.0, trust_env=False)


def test_a_client_that_trusts_another_ca_refuses_the_registry(sqlite_registry: Running, tmp_path):
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    client = RegistryClient(sqlite_registry.url, sqlite_registry.token, ca_file=str(other), timeout=5.0)
    with client, pytest.raises(RegistryError) as refused:
        client.register("CP001", "C/Mayor, 45", "0.48")
    assert refused.value.status is None and "not accepted" in refused.value.message
    assert sqlite_registry.store.list_registrations() == []
    assert _requests_served(sqlite_registry) == 0


def test_the_system_store_does_not_trust_a_test_ca(sqlite_registry: Running):
    client = RegistryClient(sqlite_registry.url, sqlite_registry.token, timeout=5.0)
    with client, pytest.raises(RegistryError):
        client.list()


def test_a_pinned_fingerprint_is_the_trust(sqlite_registry: Running):
    client = sqlite_registry.client(ca_file=None, fingerprint=sqlite_registry.fingerprint)
    assert "pin SHA256:" in repr(client) and sqlite_registry.token not in repr(client)
    credential = client.register("CP001", "C/Mayor, 45", "0.48")
    assert credential.startswith("evc1_")
    assert client.get("CP001")["registered"] is True
    lowercase_hex = sqlite_registry.fingerprint[7:].replace(":", "").lower()  # 64 hex digits work too
    assert sqlite_registry.client(ca_file=None, fingerprint=lowercase_hex).list()[0]["cp_id"] == "CP001"


def test_a_wrong_pin_sends_nothing_not_even_the_token(sqlite_registry: Running):
    wrong = "SHA256:" + ":".join(["AB"] * 32)
    client = sqlite_registry.client(ca_file=None, fingerprint=wrong)
    served = _requests_served(sqlite_registry)
    with pytest.raises(RegistryError) as refused:
        client.register("CP001", "C/Mayor, 45", "0.48")
    assert refused.value.status is None
    assert sqlite_registry.fingerprint in refused.value.message and "pinned" in refused.value.message
    assert sqlite_registry.store.list_registrations() == []
    assert _requests_served(sqlite_registry) == served  # the request never reached the server
    assert sqlite_registry.store.list_audit() == []


def test_the_client_checks_its_arguments(sqlite_registry: Running):
    with pytest.raises(ValueError, match="https"):
        RegistryClient(f"http://127.0.0.1:{sqlite_registry.port}", sqlite_registry.token)
    with pytest.raises(ValueError, match="not both"):
        RegistryClient(sqlite_registry.url, sqlite_registry.token, ca_file=str(sqlite_registry.ca_path),
                       fingerprint=sqlite_registry.fingerprint)
    with pytest.raises(ValueError, match="fingerprint"):
        RegistryClient(sqlite_registry.url, sqlite_registry.token, fingerprint="SHA256:12")
    with pytest.raises(ValueError, match="CA file"):
        RegistryClient(sqlite_registry.url, sqlite_registry.token, ca_file="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="token"):
        RegistryClient(sqlite_registry.url, " ")


def test_the_client_times_out_on_a_silent_server():
    with socket.socket() as silent:  # accepts connections (the backlog) but never answers the handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with RegistryClient(url, "an-operator-token-12345", fingerprint="SHA256:" + ":".join(["00"] * 32),
                            timeout=0.5) as client, pytest.raises(RegistryError) as late:
            client.list()
        assert time.monotonic() - started < 5.0
        assert late.value.status is None


def test_a_refused_connection_is_a_registry_error():
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    with RegistryClient(f"https://127.0.0.1:{port}", "an-operator-token-12345", timeout=2.0) as client:
        with pytest.raises(RegistryError) as refused:
            client.list()
    assert refused.value.status is None and "cannot reach" in refused.value.message


# -- timeouts ----------------------------------------------------------------------------------------


def test_a_connection_that_sends_no_request_is_closed(start_registry):
    running = start_registry(header_timeout=0.5)
    with _tls_socket(running) as tls:
        started = time.monotonic()
        _closed_by_peer(tls, 5.0)
        assert time.monotonic() - started < 4.0


def test_headers_sent_too_slowly_are_cut_off(start_registry):
    running = start_registry(header_timeout=0.5)
    with _tls_socket(running) as tls:
        tls.sendall(b"GET /cps HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        started = time.monotonic()
        _closed_by_peer(tls, 5.0)
        assert time.monotonic() - started < 4.0
    assert _requests_served(running) == 0


def test_a_body_that_does_not_come_is_408(start_registry):
    running = start_registry(body_timeout=0.5)
    with _tls_socket(running) as tls:
        tls.sendall(b"PUT /cps/CP001 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Authorization: Bearer " + running.token.encode() + b"\r\nContent-Length: 100\r\n\r\n{")
        answer = _closed_by_peer(tls, 5.0)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"error": "timeout"' in answer
    assert running.store.list_registrations() == []


def test_an_idle_kept_alive_connection_is_closed(start_registry):
    running = start_registry(timeout_keep_alive=1)
    with _tls_socket(running) as tls:
        tls.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = _closed_by_peer(tls, 6.0)
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_the_server_stops_promptly(start_registry):
    running = start_registry()
    assert running.http().get("/cps").status_code == 200
    started = time.monotonic()
    running.server.stop()
    assert time.monotonic() - started < 8.0
    wait_until(lambda: not running.server.alive, 5.0, "the server thread to end")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{running.url}/openapi.json", verify=False, timeout=2.0, trust_env=False)
