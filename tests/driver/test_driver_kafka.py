"""EV_Driver as a real process against a real broker; the test plays Central with its own
confluent-kafka consumer (ev.driver.requests) and producer (ev.driver.notifications, ev.cp.status)."""

from __future__ import annotations

import signal
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from ev_common.bus import Topics, ensure_topics
from ev_common.records import (
    CPStatus,
    Record,
    RequestAuthorised,
    RequestDenied,
    RequestReceived,
    SupplyProgress,
    SupplyRequest,
    Ticket,
    decode,
    encode,
)
from tests.support.processes import Program, ProgramRunner
from tests.support.services import consumer_config, free_port, unique_name
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

D = "D1"


class FakeCentral:
    """Reads the drivers' requests and answers them as Central would, with real records."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.topics = topics
        self.consumer = Consumer(consumer_config(bootstrap, unique_name("fake-central")))
        self.consumer.subscribe([topics.driver_requests])
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": True})

    def next_request(self, timeout: float = 20.0) -> SupplyRequest:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            record = decode(msg.value())
            assert isinstance(record, SupplyRequest) and msg.key() == record.driver_id.encode()
            return record
        raise AssertionError(f"no supply.request within {timeout:g} s")

    def send(self, *records: Record) -> None:
        for record in records:
            topic, key = ((self.topics.cp_status, record.cp_id) if isinstance(record, CPStatus)
                          else (self.topics.driver_notifications, record.driver_id))
            self.produce(topic, key, encode(record))
        assert self.producer.flush(10) == 0

    def produce(self, topic: str, key: str, value: bytes | None) -> None:
        self.producer.produce(topic, key=key.encode(), value=value)

    def supply(self, request: SupplyRequest, session: str, kwh_steps: list[str], price: str = "0.50",
               status: str = "COMPLETED") -> datetime:
        """received, authorised, one progress per step, ticket; returns when the ticket was sent."""
        self.send(RequestReceived(request_id=request.request_id, driver_id=request.driver_id, cp_id=request.cp_id),
                  RequestAuthorised(request_id=request.request_id, driver_id=request.driver_id,
                                    cp_id=request.cp_id, session_id=session, price_eur_kwh=Decimal(price)))
        for seq, kwh in enumerate(kwh_steps, start=1):
            self.send(progress(request, session, seq, kwh, price))
        sent_at = datetime.now(timezone.utc)
        self.send(ticket(request, session, kwh_steps[-1], price, status))
        return sent_at

    def close(self) -> None:
        self.consumer.close()


def progress(request: SupplyRequest, session: str, seq: int, kwh: str, price: str = "0.50") -> SupplyProgress:
    return SupplyProgress(session_id=session, driver_id=request.driver_id, cp_id=request.cp_id, seq=seq,
                          kwh=Decimal(kwh), amount_eur=(Decimal(kwh) * Decimal(price)).quantize(Decimal("0.01")),
                          power_kw=Decimal("7.2"))


def ticket(request: SupplyRequest, session: str, kwh: str, price: str = "0.50", status: str = "COMPLETED") -> Ticket:
    ended = datetime.now(timezone.utc)
    return Ticket(session_id=session, request_id=request.request_id, driver_id=request.driver_id,
                  cp_id=request.cp_id, started_at=ended - timedelta(seconds=30), ended_at=ended, kwh=Decimal(kwh),
                  price_eur_kwh=Decimal(price), amount_eur=(Decimal(kwh) * Decimal(price)).quantize(Decimal("0.01")),
                  status=status, end_reason="unplugged" if status == "COMPLETED" else "Engine fault")


@pytest.fixture
def topics(kafka_bootstrap, kafka_topic_prefix) -> Topics:
    topics = Topics(kafka_topic_prefix)
    ensure_topics(kafka_bootstrap, topics.all())
    return topics


@pytest.fixture
def central(kafka_bootstrap, topics):
    central = FakeCentral(kafka_bootstrap, topics)
    yield central
    central.close()


def start_driver(runner: ProgramRunner, name: str, bootstrap: str, topics: Topics, *args: str) -> Program:
    return runner.start(name, ["--kafka", bootstrap, "--driver_id", D, "--topic-prefix", topics.prefix, *args],
                        package="ev_driver")


def assert_clean(program: Program) -> None:
    assert "Traceback" not in program.output(), program.output()


JUNK = [b"not json", b'{"type":"supply.ticket","v":1}', b'{"type":"supply.ticket","v":99}',
        b'{"type":"no.such.type","v":1}', b"[1,2]", b"", None]


def test_services_file_each_step_pause_and_summary(runner, central, kafka_bootstrap, topics, tmp_path):
    """(a) three entries: completed, denied, completed; and (d) malformed records in between."""
    services = tmp_path / "services.txt"
    services.write_text("# three supplies\nCP1\n\nCP2   # broken today\nCP3\n")
    driver = start_driver(runner, "driver", kafka_bootstrap, topics, "--file", str(services), "--pause", "0.5")

    first = central.next_request()
    assert (first.cp_id, first.driver_id, first.source) == ("CP1", D, "driver")
    for junk in JUNK:  # malformed records are skipped; the driver goes on
        central.produce(topics.driver_notifications, D, junk)
    ticket_sent = central.supply(first, "S1", ["0.5", "1.0"])
    driver.wait_for_output(r"TICKET of your supply at CP1: COMPLETED")

    second = central.next_request()
    assert second.cp_id == "CP2" and second.request_id != first.request_id
    assert second.ts - ticket_sent >= timedelta(seconds=0.45), "the driver did not pause after the supply"
    central.send(RequestReceived(request_id=second.request_id, driver_id=D, cp_id="CP2"),
                 RequestDenied(request_id=second.request_id, driver_id=D, cp_id="CP2", reason="CP2 is AVERIADO"))

    third = central.next_request()
    assert third.cp_id == "CP3"
    central.supply(third, "S3", ["1.25", "2.5"], price="0.40")

    assert driver.wait_exit(20) == 0
    text = driver.output()
    for expected in [
        "[1 of 3] Supply requested at CP1", "Central received the request for CP1",
        "AUTHORISED at CP1: session S1, price 0.50 EUR/kWh",
        "Charging at CP1: 0.500 kWh, 0.25 EUR", "Charging at CP1: 1.000 kWh, 0.50 EUR",
        "Energy     1.000 kWh", "Amount     0.50 EUR", "Next request in 0.5 s (2 left)",
        "[2 of 3] Supply requested at CP2", "DENIED at CP2: CP2 is AVERIADO",
        "[3 of 3] Supply requested at CP3", "AUTHORISED at CP3: session S3, price 0.40 EUR/kWh",
        "Charging at CP3: 2.500 kWh, 1.00 EUR", "TICKET of your supply at CP3: COMPLETED",
        "===== Summary for driver D1 =====",
        "Total: 3 request(s): 2 completed, 1 denied; 3.500 kWh, 1.50 EUR",
    ]:
        assert expected in text, f"{expected!r} missing from:\n{text}"
    assert text.index("[1 of 3]") < text.index("[2 of 3]") < text.index("[3 of 3]") < text.index("Summary")
    assert text.count("skipped a malformed record") == len(JUNK), text
    assert_clean(driver)


def test_no_answer_is_cannot_connect_to_central(runner, central, kafka_bootstrap, topics):
    started = time.monotonic()
    driver = start_driver(runner, "driver", kafka_bootstrap, topics, "--cp", "CP1", "--timeout", "2")
    request = central.next_request()  # Central hears it but never answers
    assert request.cp_id == "CP1"
    driver.wait_for_output(r"FAILED at CP1: Cannot connect to CENTRAL \(no answer from Central in 2 s\)")
    assert driver.wait_exit(15) == 1
    assert time.monotonic() - started >= 2
    assert_clean(driver)


def committed_offset(bootstrap: str, group: str, topic: str) -> int:
    probe = Consumer(consumer_config(bootstrap, group))
    try:
        return probe.committed([TopicPartition(topic, 0)], timeout=5)[0].offset
    finally:
        probe.close()


def test_driver_killed_mid_supply_shows_the_ticket_after_restart(runner, central, kafka_bootstrap, topics):
    central.send(CPStatus(cp_id="CP1", state="SUMINISTRANDO", location="Plaza 1", price_eur_kwh=Decimal("0.50"),
                          driver_id=D),
                 CPStatus(cp_id="CP2", state="AVERIADO", location="Plaza 2", price_eur_kwh=Decimal("0.45")))
    first = start_driver(runner, "driver-1", kafka_bootstrap, topics, "--cp", "CP1")
    request = central.next_request()
    central.send(RequestReceived(request_id=request.request_id, driver_id=D, cp_id="CP1"),
                 RequestAuthorised(request_id=request.request_id, driver_id=D, cp_id="CP1", session_id="S1",
                                   price_eur_kwh=Decimal("0.50")),
                 progress(request, "S1", 1, "0.4"))
    first.wait_for_output(r"Charging at CP1: 0.400 kWh, 0.20 EUR")
    group = topics.prefix + "ev-driver-" + D
    wait_until(lambda: committed_offset(kafka_bootstrap, group, topics.driver_notifications) >= 3, 10,
               "the driver to commit what it showed")
    first.kill()  # the app dies mid-supply; the supply goes on
    central.send(progress(request, "S1", 2, "0.8"), ticket(request, "S1", "1.2"),
                 CPStatus(cp_id="CP1", state="ACTIVADO", location="Plaza 1", price_eur_kwh=Decimal("0.50")))

    second = start_driver(runner, "driver-2", kafka_bootstrap, topics)  # the menu
    second.wait_for_output(r"\[earlier supply at CP1\] Charging at CP1: 0.800 kWh, 0.40 EUR", timeout=20)
    second.wait_for_output(r"TICKET of an earlier supply at CP1: COMPLETED")
    second.wait_for_output(r"Amount     0.60 EUR")

    def listed():  # the list of CPs fills from ev.cp.status in the background
        mark = second.mark()
        second.proc.stdin.write(b"l\n")
        second.proc.stdin.flush()
        try:
            return second.wait_for_output(r"(Available CPs: 1, cheapest first\n.*CP1 .*Plaza 1)|No CP", timeout=3, after=mark)[1]
        except AssertionError:
            return None
    wait_until(listed, 15, "CP1 listed as available", interval=0.5)
    assert "not available: CP2 (AVERIADO)" in second.output()
    second.proc.stdin.write(b"q\n")
    second.proc.stdin.flush()
    assert second.wait_exit(15) == 0
    text = second.output()
    assert text.count("TICKET of") == 1
    assert "Charging at CP1: 0.400 kWh" not in text  # already shown (and committed) by the first run
    assert_clean(second)


def test_kafka_down_at_start_fails_cleanly(runner):
    dead = f"127.0.0.1:{free_port()}"
    topics = Topics("unused-")
    one = start_driver(runner, "one", dead, topics, "--cp", "CP1", "--timeout", "1")
    menu = start_driver(runner, "menu", dead, topics)
    assert one.wait_exit(15) == 1
    assert "Kafka unreachable" in one.output()
    assert "FAILED at CP1: Cannot connect to CENTRAL" in one.output()
    assert_clean(one)
    menu.wait_for_output("Kafka unreachable")
    menu.wait_for_output("Menu:")
    assert menu.stop(signal.SIGINT, timeout=15) in (0, 1)  # Ctrl+C
    assert_clean(menu)


def test_broker_outage_during_the_run(runner, tansu_factory, tmp_path):
    broker = tansu_factory()
    topics = Topics("outage-")
    driver = start_driver(runner, "driver", broker.bootstrap, topics)
    wait_until(lambda: set(topics.all()) <= set(_topic_names(broker.bootstrap)), 15, "the driver to create topics")
    mark = driver.mark()
    broker.kill()
    driver.wait_for_output(r"Kafka unreachable", timeout=15, after=mark)
    broker.start()
    driver.wait_for_output(r"Kafka reachable at .* again", timeout=15, after=mark)
    wait_until(lambda: set(topics.all()) <= set(_topic_names(broker.bootstrap)), 15,
               "the driver to create the topics again on the empty broker")
    assert driver.stop(signal.SIGINT, timeout=15) in (0, 1)
    assert_clean(driver)


def _topic_names(bootstrap: str) -> list[str]:
    from confluent_kafka.admin import AdminClient

    try:
        return list(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=2).topics)
    except Exception:
        return []
