"""Sealed records on the real broker: a Central whose Kafka consumers read through a RecordGate
in secure mode, with a real supply service and an open session. A genuine sealed telemetry
record moves the session; a tampered one, a truncated one, a replayed copy of the genuine one,
one sealed with the wrong key and a plain one are dropped and reported, and the session keeps
the genuine record's figures; the consumer goes on past them (their offsets are committed)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from ev_central.app import Central
from ev_central.bus_adapter import TELEMETRY_GROUP, CentralBus
from ev_central.record_gate import RecordGate, RejectedRecord
from ev_central.store import SessionRow, open_store
from ev_common.bus import Topics
from ev_common.envelope import Sealer, b64url
from ev_common.records import SupplyRequest, Telemetry, encode
from tests.support.services import consumer_config, create_topics
from tests.support.waiting import wait_on, wait_until

CP, SESSION = "CP001", "s-sealed-1"
KEY, WRONG_KEY = bytes(range(32)), bytes(range(100, 132))
PRICE = Decimal("0.5")


class Reports:
    """on_rejected: the refused records, with a condition to wait on."""

    def __init__(self) -> None:
        self.items: list[RejectedRecord] = []
        self.cond = threading.Condition()

    def __call__(self, rejected: RejectedRecord) -> None:
        with self.cond:
            self.items.append(rejected)
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[RejectedRecord]:
        wait_on(self.cond, lambda: len(self.items) >= count, timeout, f"{count} refused records",
                lambda: f"refused so far: {[r.describe() for r in self.items]}")
        return list(self.items)


@pytest.fixture
def central(tmp_path: Path, kafka_bootstrap: str, kafka_topic_prefix: str):
    url = f"sqlite:///{tmp_path / 'central.db'}"
    store = open_store(url)
    store.save_sessions([SessionRow(SESSION, "r1", CP, "D001", PRICE, datetime.now(timezone.utc), None,
                                    Decimal("1.5"), Decimal("0.75"), "SUPPLYING", None, False, 7)])
    store.close()
    topics = Topics(kafka_topic_prefix)
    create_topics(kafka_bootstrap, topics.all())
    reports = Reports()
    gate = RecordGate(True, lambda cp_id, kv: KEY if (cp_id, kv) == (CP, 4) else None, reports)
    central = Central(open_store(url), "127.0.0.1", 0, kafka=kafka_bootstrap, topics=topics)
    # as Central's --secure wires it: the same bus, its consumers reading through the gate
    central.bus = CentralBus(kafka_bootstrap, topics, central.bus.publisher, gate=gate, topic_wait=10)
    central.reports = reports
    central.start()
    try:
        yield central
    finally:
        central.stop()


def figures(central: Central) -> tuple[int, Decimal, Decimal] | None:
    row = central.book.active_for_cp(CP)
    return (row.last_seq, row.kwh, row.amount_eur) if row is not None else None


def telemetry(seq: int, kwh: str) -> Telemetry:
    kwh_ = Decimal(kwh)
    return Telemetry(CP, SESSION, "D001", seq, kwh_, (kwh_ * PRICE).quantize(Decimal("0.0001")), Decimal("11"))


def flip_bit(raw: bytes, field: str) -> bytes:
    data = json.loads(raw)
    blob = bytearray(_unb64(data[field]))
    blob[len(blob) // 2] ^= 0x10
    data[field] = b64url(bytes(blob))
    return json.dumps(data, separators=(",", ":")).encode()


def truncate(raw: bytes) -> bytes:
    data = json.loads(raw)
    data["ct"] = b64url(_unb64(data["ct"])[:-7])
    return json.dumps(data, separators=(",", ":")).encode()


def _unb64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_only_the_genuine_sealed_record_reaches_the_session(central: Central, kafka_bootstrap: str):
    topics: Topics = central.bus.topics
    gate: RecordGate = central.bus.gate
    sealer = Sealer(CP, 4, KEY)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})

    def send(topic: str, value: bytes, key: str = CP) -> None:
        producer.produce(topic, value=value, key=key.encode())
        assert producer.flush(10) == 0

    assert figures(central) == (7, Decimal("1.5"), Decimal("0.75"))
    genuine = sealer.seal(topics.cp_telemetry, telemetry(8, "2.0"))
    send(topics.cp_telemetry, genuine)
    wait_until(lambda: figures(central) == (8, Decimal("2.0"), Decimal("1.0000")), 30,
               f"the genuine record's figures (are {figures(central)})")

    bad = [
        ("not authentic", flip_bit(sealer.seal(topics.cp_telemetry, telemetry(9, "9.0")), "ct")),  # tampered
        ("not authentic", truncate(sealer.seal(topics.cp_telemetry, telemetry(10, "10.0")))),
        ("replayed", genuine),  # the genuine record, again
        ("not authentic", Sealer(CP, 4, WRONG_KEY).seal(topics.cp_telemetry, telemetry(11, "11.0"))),
        ("unsealed", encode(telemetry(12, "12.0"))),  # plain
    ]
    for _reason, value in bad:
        send(topics.cp_telemetry, value)
    send(topics.driver_requests, encode(SupplyRequest("r-plain", "D001", CP, source="cp")), key="D001")
    reports = central.reports.wait_for(len(bad) + 1)
    on_telemetry = [r for r in reports if r.topic == topics.cp_telemetry]
    assert [(r.reason, r.cp_id, r.partition, r.offset) for r in on_telemetry] == [
        (reason, CP, 0, offset) for offset, (reason, _) in enumerate(bad, start=1)]
    (request,) = [r for r in reports if r.topic == topics.driver_requests]
    assert (request.reason, request.cp_id) == ("unsealed", CP)
    assert gate.rejected == 6
    assert gate.rejected_by_reason == {"not authentic": 3, "replayed": 1, "unsealed": 2}
    # the session kept the genuine record's figures, in memory and in the database
    assert figures(central) == (8, Decimal("2.0"), Decimal("1.0000"))
    assert central.session_writer.wait_idle(5)
    stored = central.store.get_session(SESSION)
    assert (stored.last_seq, stored.kwh) == (8, Decimal("2.0"))
    assert central.supplies.pending_requests() == []  # the plain request at the CP was never decided

    # the consumer went on past them: a later genuine record is applied
    send(topics.cp_telemetry, sealer.seal(topics.cp_telemetry, telemetry(13, "3.0")))
    wait_until(lambda: figures(central) == (13, Decimal("3.0"), Decimal("1.5000")), 30,
               f"the next genuine record's figures (are {figures(central)})")
    group = topics.prefix + TELEMETRY_GROUP
    central.stop()  # commits what is done
    reader = Consumer(consumer_config(kafka_bootstrap, group))
    try:
        (committed,) = reader.committed([TopicPartition(topics.cp_telemetry, 0)], timeout=10)
    finally:
        reader.close()
    assert committed.offset == 7  # every record, refused ones included
