"""Central's status line and how a Kafka outage is said: once for the program, in red on the
panel, with its errors among the messages. Kafka is a closed local port (no broker answers
there); everything else is real (SQLite, the Kafka clients, the panel under ``App.run_test``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest
from confluent_kafka import KafkaError

from ev_central.app import Central
from ev_central.bus_adapter import CentralBus
from ev_central.panel import CentralPanel
from ev_central.panel.widgets import MessageList, StatusLine
from ev_central.store import open_store
from ev_central.view import CentralView, MessageLog, clock_time
from ev_common.bus import Publisher, RecordConsumer, Topics, _OutageReporter
from ev_common.records import CPStatus
from ev_common.words import CENTRAL_OK, KAFKA_UNREACHABLE
from tests.central.test_panel import FAST, HOST, QUIET, WITHIN_REFRESH, until
from tests.support.waiting import wait_until

SIZE = (120, 40)
STATUS = CPStatus("CP1", "ACTIVADO", "C/Mayor 45", Decimal("0.48"))  # a record to publish


def closed_port() -> str:
    """``host:port`` where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return f"{HOST}:{sock.getsockname()[1]}"


def said(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


@pytest.fixture
def root_messages() -> Iterator[MessageLog]:
    """The MessageLog on the root logger, as EV_Central attaches it."""
    handler = MessageLog()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


@pytest.fixture
def central_without_broker(tmp_path: Path) -> Iterator[Central]:
    """A Central whose Kafka is a closed port; the Monitor side runs, the Kafka side is not
    started (its clients are used by the tests themselves)."""
    store = open_store(f"sqlite:///{tmp_path / 'central.db'}")
    central = Central(store, HOST, 0, kafka=closed_port(), silence_timeout=QUIET, link_config=FAST)
    central.monitors.start()
    central.writer.start()
    central.session_writer.start()
    yield central
    central.monitors.stop()
    central.session_writer.stop()
    central.writer.stop()
    store.close()


def test_an_outage_is_said_once_for_all_clients_and_once_when_over(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ev_common.bus")
    bootstrap = closed_port()
    reporters = [_OutageReporter(who, bootstrap) for who in ("ev-central", "requests", "telemetry")]
    health = reporters[0].health
    assert all(r.health is health for r in reporters) and health.reachable
    down = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")
    for reporter in reporters:
        reporter.error(down)
        reporter.error(KafkaError(KafkaError._TRANSPORT, "Connection refused"))
    assert len(said(caplog, KAFKA_UNREACHABLE)) == 1
    assert all(r.down for r in reporters) and not health.reachable and health.down_since is not None

    reporters[1].ok()  # one client got through: the broker is back, for the program
    reporters[0].ok()
    assert len(said(caplog, "Kafka reachable again")) == 1 and health.reachable
    reporters[2].error(down)  # a late report of the same outage, from a client not reconnected yet
    assert len(said(caplog, KAFKA_UNREACHABLE)) == 1 and health.reachable

    health.SETTLE = 0.0  # a new outage, later
    reporters[2].error(down)
    assert len(said(caplog, KAFKA_UNREACHABLE)) == 2


def test_the_three_kafka_clients_of_central_say_kafka_unreachable_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ev_common.bus")
    bootstrap = closed_port()
    topics = Topics("panel-status-")
    publisher = Publisher(bootstrap, "ev-central")
    consumers = [RecordConsumer(bootstrap, topics.prefix + group, [topic], lambda key, record: None,
                                client_id="ev-central")
                 for group, topic in (("requests", topics.driver_requests), ("telemetry", topics.cp_telemetry))]
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in consumers]
    for thread in threads:
        thread.start()
    try:
        publisher.publish(topics.cp_status, "CP1", STATUS)
        clients = [publisher._outage] + [c._outage for c in consumers]
        wait_until(lambda: (publisher.poll(0.05), all(c.down for c in clients))[1], 20,
                   "all three clients to meet the outage")
        assert len(said(caplog, KAFKA_UNREACHABLE)) == 1, [r.getMessage() for r in said(caplog, KAFKA_UNREACHABLE)]
        assert said(caplog, KAFKA_UNREACHABLE)[0].levelno == logging.ERROR
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        publisher.flush(0)


def test_start_up_says_it_waits_for_the_topics(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    bootstrap = closed_port()
    bus = CentralBus(bootstrap, Topics("panel-topics-"), Publisher(bootstrap, "ev-central"), topic_wait=0.5)
    try:
        bus.start(service=None)
    finally:
        bus.stop()
    lines = [r.getMessage() for r in caplog.records]
    waiting = next(i for i, line in enumerate(lines) if line.startswith("creating the Kafka topics"))
    failed = next(i for i, line in enumerate(lines) if KAFKA_UNREACHABLE in line)
    assert waiting < failed, lines
    assert "cannot create the topics" in lines[failed]
    assert not bus.health.reachable
    assert len(said(caplog, KAFKA_UNREACHABLE)) == 1


def test_panel_status_is_red_with_kafka_down_and_its_error_among_the_messages(
        central_without_broker: Central, root_messages: MessageLog) -> None:
    central = central_without_broker
    view = CentralView(central, root_messages)
    assert view.health().level == "ok" and view.health().text.startswith(CENTRAL_OK)
    assert "Kafka OK" in view.health().text and "database OK" in view.health().text

    async def scenario() -> None:
        app = CentralPanel(view)
        async with app.run_test(size=SIZE) as pilot:
            status = app.query_one(StatusLine)
            await until(pilot, lambda: CENTRAL_OK in status.line, WITHIN_REFRESH, "the status OK")
            assert not status.has_class("-problem")

            # the Publisher meets the closed port: its client reports the outage
            publisher = central.bus.publisher
            publisher.publish(central.bus.topics.cp_status, "CP1",
                              STATUS)

            def outage_seen() -> bool:
                publisher.poll(0)
                return not central.bus.health.reachable
            await until(pilot, outage_seen, 20, "the Kafka outage")
            since = clock_time(central.bus.health.down_since)
            await until(pilot, lambda: status.has_class("-problem"), WITHIN_REFRESH, "the status line red")
            assert f"{KAFKA_UNREACHABLE} since {since}" in status.line
            assert CENTRAL_OK not in status.line and "database OK" in status.line
            assert status.styles.background.rgb == (255, 0, 0)

            # the ERROR line of ev_common.bus is among the messages, in red
            log = app.query_one(MessageList)
            await until(pilot, lambda: any(KAFKA_UNREACHABLE in m.text for m in log.shown), WITHIN_REFRESH,
                        "the outage among the messages")
            (shown,) = [m for m in log.shown if KAFKA_UNREACHABLE in m.text]
            assert shown.level == "error"
            (strip,) = [s for s in log.lines if KAFKA_UNREACHABLE in s.text][:1]
            assert any(seg.style and seg.style.color and seg.style.color.name == "red" for seg in strip)
            assert not any(CENTRAL_OK in m.text for m in log.shown)

            # the broker answers again: green, and said once
            central.bus.health.back()
            await until(pilot, lambda: CENTRAL_OK in status.line, WITHIN_REFRESH, "the status OK again")
            assert not status.has_class("-problem")
            await until(pilot, lambda: any("Kafka reachable again" in m.text for m in log.shown), WITHIN_REFRESH,
                        "the recovery among the messages")

    asyncio.run(scenario())
    central.bus.publisher.flush(0)


def test_status_names_cps_without_their_monitor_and_since_when(central_without_broker: Central,
                                                                root_messages: MessageLog) -> None:
    central = central_without_broker
    central.bus.health.back()  # (a closed port that was never tried: reachable as far as known)
    view = CentralView(central, root_messages)
    assert view.health().text.endswith("no Monitors yet")
    session = object()
    central.network.register("CP1", "C/Mayor 45", Decimal("0.48"), session=session)
    central.network.register("CP2", "Gran Via 2", Decimal("0.48"), session=object())
    assert view.health().level == "ok" and view.health().text.endswith("2 Monitors connected")
    central.network.session_ended("CP1", session, "test: Monitor gone")
    health = view.health()
    since = clock_time(central.network.get("CP1").updated_at)
    assert health.level == "warning" and health.ok  # Central itself is well: green-yellow, not red
    assert health.text.startswith(CENTRAL_OK)
    assert f"Monitors: 1 of 2 connected, CP1 without its Monitor since {since}" in health.text
