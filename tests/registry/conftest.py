"""EV_Registry over real HTTPS: a test CA (trustme), a server certificate it issued, the API
served by uvicorn on a thread on 127.0.0.1, and the database (SQLite, or a fresh MySQL one).

Fixtures
    test_ca           a trustme CA for the session
    certificate       (cert chain, key, CA file) for 127.0.0.1 and localhost, in tmp_path
    db_url            sqlite:///... and, as a second parameter, a fresh MySQL database
    registry          a running Registry on ``db_url`` (``Running``)
    sqlite_registry   the same on SQLite only (for tests about TLS, limits and timeouts)
    start_registry    start_registry(db_url=None, **options) -> Running, for custom settings
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import trustme

from ev_central.store import open_store
from ev_common.credentials import FailureLimiter
from ev_common.tls import fingerprint_of
from ev_registry.api import create_app
from ev_registry.client import RegistryClient
from ev_registry.server import RegistryServer
from ev_registry.service import Registry
from tests.support.clock import FakeClock

TOKEN = "test-operator-token-0123456789abcdef"


@dataclass
class Running:
    url: str
    port: int
    token: str
    ca_path: Path
    fingerprint: str
    store: object
    registry: Registry
    server: RegistryServer
    clock: FakeClock
    clients: list = field(default_factory=list)

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def http(self, *, token: str | None = None, authenticated: bool = True, timeout: float = 10.0) -> httpx.Client:
        """An httpx client verifying the server against the test CA."""
        context = ssl.create_default_context(cafile=str(self.ca_path))
        headers = self.auth(token) if authenticated else {}
        client = httpx.Client(base_url=self.url, verify=context, headers=headers, timeout=timeout, trust_env=False)
        self.clients.append(client)
        return client

    def client(self, **kwargs) -> RegistryClient:
        kwargs.setdefault("ca_file", str(self.ca_path))
        client = RegistryClient(self.url, kwargs.pop("token", self.token), **kwargs)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.server.stop()
        self.store.close()


@pytest.fixture(scope="session")
def test_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certificate(tmp_path: Path, test_ca: trustme.CA) -> tuple[Path, Path, Path]:
    issued = test_ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca = tmp_path / "server.crt", tmp_path / "server.key", tmp_path / "ca.pem"
    cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    test_ca.cert_pem.write_to_path(str(ca))
    return cert, key, ca


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ev_central.db'}"
    return request.getfixturevalue("fresh_mysql_url")


@pytest.fixture
def start_registry(tmp_path: Path, certificate) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(db_url: str | None = None, *, limiter: FailureLimiter | None = None, max_body: int = 16 * 1024,
              body_timeout: float = 10.0, **server_options) -> Running:
        cert, key, ca = certificate
        store = open_store(db_url or f"sqlite:///{tmp_path / 'ev_central.db'}")
        clock = FakeClock(1000.0)
        limiter = limiter or FailureLimiter(max_failures=5, window=60, lockout=30, max_lockout=240, clock=clock)
        registry = Registry(store, TOKEN, limiter=limiter)
        app = create_app(registry, max_body=max_body, body_timeout=body_timeout)
        server = RegistryServer(app, "127.0.0.1", 0, cert, key, **server_options).start()
        running = Running(server.url, server.port, TOKEN, ca, fingerprint_of(cert.read_bytes()), store, registry,
                          server, clock)
        started.append(running)
        return running

    yield start
    for running in reversed(started):
        running.close()


@pytest.fixture
def registry(db_url: str, start_registry) -> Running:
    return start_registry(db_url)


@pytest.fixture
def sqlite_registry(start_registry) -> Running:
    return start_registry()
