"""Fixtures for the real services the tests use (see docs/testing.md).

Session fixtures
    kafka_bootstrap   "host:port" of a Kafka-protocol broker: $EV_KAFKA_BOOTSTRAP if a broker
                      answers there, else a Tansu broker started for this run.
    mysql_url         "mysql://user[:password]@host:port/evtest_<pid>_<hex>": a database
                      created for this run on $EV_TEST_MYSQL_URL's server, dropped at the end.

Function fixtures
    kafka_topic_prefix  a unique "evt-<test>-<hex>-" prefix for topic names and group ids.
    tansu_factory       tansu_factory(port=None, start=True) -> TansuBroker; brokers owned by
                        the test (stop/kill/restart them freely), killed after it.
    root_logger_kept    for tests that run a program's main() in-process: the root logger's
                        handlers and level are put back after the test.
    fresh_mysql_url     like mysql_url, but a new empty database for this test only.

A missing service skips the tests that need it, or fails them when $EV_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Callable, Iterator, NoReturn

import pytest

from tests.support.processes import ProgramRunner
from tests.support.services import (
    DEFAULT_TEST_MYSQL_URL,
    ENV_KAFKA_BOOTSTRAP,
    ENV_REQUIRE_SERVICES,
    ENV_TEST_MYSQL_URL,
    ServiceUnavailable,
    TansuBroker,
    ThrowawayDatabase,
    kafka_answers,
    parse_mysql_url,
    services_required,
    tansu_binary,
    unique_name,
)

KAFKA_FIXTURES = {"kafka_bootstrap", "tansu_factory"}
MYSQL_FIXTURES = {"mysql_url", "fresh_mysql_url"}

# What the session used, printed at the end of the run.
_services_used: dict[str, str] = {}


def _unavailable(service: str, reason: str) -> NoReturn:
    """Skip the current test, or fail it when services are required."""
    message = f"{service} unavailable: {reason}"
    if services_required():
        pytest.fail(f"{message} (${ENV_REQUIRE_SERVICES}=1 makes this a failure)", pytrace=False)
    pytest.skip(f"{message} (set ${ENV_REQUIRE_SERVICES}=1 to fail instead of skipping)")


def _mysql_server_url() -> str:
    return os.environ.get(ENV_TEST_MYSQL_URL, "").strip() or DEFAULT_TEST_MYSQL_URL


# -- hooks --------------------------------------------------------------------------------------


def pytest_report_header(config: pytest.Config) -> list[str]:
    try:
        mysql = str(parse_mysql_url(_mysql_server_url()))
    except ValueError:
        mysql = "(invalid URL)"
    kafka = os.environ.get(ENV_KAFKA_BOOTSTRAP, "").strip() or "(unset: start Tansu)"
    required = "yes" if services_required() else "no (missing services skip)"
    return [f"services: kafka={kafka} mysql={mysql} required={required}"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by the services they use, so `-m "not kafka"` and the like work."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & KAFKA_FIXTURES:
            item.add_marker(pytest.mark.kafka)
        if names & MYSQL_FIXTURES:
            item.add_marker(pytest.mark.mysql)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _services_used:
        terminalreporter.write_sep("=", "services")
        for name, text in _services_used.items():
            terminalreporter.write_line(f"{name}: {text}")


# -- Kafka --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _kafka_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(bootstrap, "") or ("", reason); decided once per session."""
    reasons = []
    configured = os.environ.get(ENV_KAFKA_BOOTSTRAP, "").strip()
    if configured:
        why = kafka_answers(configured, timeout=5.0)
        if why is None:
            _services_used["kafka"] = f"${ENV_KAFKA_BOOTSTRAP} {configured}"
            yield configured, ""
            return
        reasons.append(f"${ENV_KAFKA_BOOTSTRAP}: {why}")
        warnings.warn(f"${ENV_KAFKA_BOOTSTRAP}: {why}; starting a Tansu broker instead")
    broker = TansuBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        broker.start()
    except ServiceUnavailable as exc:
        reasons.append(str(exc))
        _services_used["kafka"] = "unavailable: " + "; ".join(reasons)
        yield "", "; ".join(reasons)
        return
    _services_used["kafka"] = " ".join(
        [f"Tansu at {broker.bootstrap} (log: {broker.log_path})"]
        + [f"[{reason}]" for reason in reasons]
    )
    try:
        yield broker.bootstrap, ""
    finally:
        broker.stop(timeout=3.0)


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_service: tuple[str, str]) -> str:
    """``host:port`` of a Kafka-protocol broker shared by the whole session."""
    bootstrap, reason = _kafka_service
    if not bootstrap:
        _unavailable("Kafka", reason)
    return bootstrap


@pytest.fixture
def kafka_topic_prefix(request: pytest.FixtureRequest) -> str:
    """A prefix unique to this test, for topic names and consumer group ids."""
    return unique_name("evt", request.node.name) + "-"


@pytest.fixture(scope="session")
def _tansu_binary_problem() -> str:
    try:
        tansu_binary()
    except ServiceUnavailable as exc:
        return str(exc)
    return ""


@pytest.fixture
def tansu_factory(
    tmp_path: Path, _tansu_binary_problem: str
) -> Iterator[Callable[..., TansuBroker]]:
    """Start private Tansu brokers: ``tansu_factory(port=None, start=True, **kwargs)``.

    Each broker logs to ``tmp_path/tansu-N.log``; all are killed when the test ends."""
    if _tansu_binary_problem:
        _unavailable("Tansu broker", _tansu_binary_problem)
    brokers: list[TansuBroker] = []

    def make(port: int | None = None, *, start: bool = True, **kwargs) -> TansuBroker:
        broker = TansuBroker(port, log_path=tmp_path / f"tansu-{len(brokers)}.log", **kwargs)
        brokers.append(broker)
        if start:
            try:
                broker.start()
            except ServiceUnavailable as exc:
                _unavailable("Tansu broker", str(exc))
        return broker

    yield make
    for broker in brokers:
        broker.kill()


# -- MySQL --------------------------------------------------------------------------------------


def _throwaway_database() -> ThrowawayDatabase:
    raw = _mysql_server_url()
    try:
        server = parse_mysql_url(raw)
    except ValueError as exc:
        raise ServiceUnavailable(f"${ENV_TEST_MYSQL_URL}: {exc}") from None
    return ThrowawayDatabase(server, timeout=5.0).create()


def _drop(database: ThrowawayDatabase) -> None:
    try:
        database.drop()
    except Exception as exc:  # a leftover database must not fail the run
        warnings.warn(f"could not drop test database {database.name}: {exc}")


@pytest.fixture(scope="session")
def _mysql_service() -> Iterator[tuple[str, str]]:
    """(url, "") or ("", reason); decided once per session."""
    try:
        database = _throwaway_database()
    except ServiceUnavailable as exc:
        _services_used["mysql"] = f"unavailable: {exc}"
        yield "", str(exc)
        return
    _services_used["mysql"] = f"{database.target.redacted()} (dropped at the end)"
    try:
        yield database.url, ""
    finally:
        _drop(database)


@pytest.fixture(scope="session")
def mysql_url(_mysql_service: tuple[str, str]) -> str:
    """URL of a database created for this test run (shared by the session)."""
    url, reason = _mysql_service
    if not url:
        _unavailable("MySQL", reason)
    return url


@pytest.fixture
def fresh_mysql_url(_mysql_service: tuple[str, str]) -> Iterator[str]:
    """URL of a new empty database for this test only."""
    url, reason = _mysql_service
    if not url:
        _unavailable("MySQL", reason)
    try:
        database = _throwaway_database()
    except ServiceUnavailable as exc:
        _unavailable("MySQL", str(exc))
    try:
        yield database.url
    finally:
        _drop(database)


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[ProgramRunner]:
    """Starts the project's programs as processes for one test; kills what is left after it."""
    runner = ProgramRunner(tmp_path)
    yield runner
    runner.stop_all()


@pytest.fixture(autouse=True)
def _no_stray_log_stream() -> Iterator[None]:
    """A command run in-process puts a StreamHandler on the root logger, on the stream pytest
    captured for that test; a thread of a later test would log to it once closed ("Logging
    error ... I/O operation on closed file"). Such a handler leaves with its test."""
    root = logging.getLogger()
    before = set(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in before and type(handler) is logging.StreamHandler:
            root.removeHandler(handler)


@pytest.fixture
def root_logger_kept() -> Iterator[None]:
    """For tests that run a command in-process: it configures the root logger as a program
    does; the next tests get theirs back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
