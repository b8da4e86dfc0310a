"""An Engine process in secure mode, on the real broker, with a fake Monitor that passes KEY:
every record it puts on Kafka is sealed and opens with the CP's key; killed during a supply and
started again, it sends nothing until the key comes again, then the interrupted supply's end,
sealed."""

from __future__ import annotations

import base64
import json
import threading
import time
from decimal import Decimal

from confluent_kafka import Consumer

from ev_common.bus import Topics
from ev_common.envelope import open_envelope
from ev_common.link import Link, LinkError, SessionRefused
from ev_common.protocol import Chk, Health, Key, Message, Sup, Supr
from ev_common.records import SupplyEnd, SupplyRequest, Telemetry
from tests.cp.engine_process import CP, EngineUnderTest
from tests.cp.fakes import FAST, HOST
from tests.support.services import consumer_config, create_topics
from tests.support.waiting import wait_until

KEY = bytes(range(7, 39))
KEY_TEXT = base64.urlsafe_b64encode(KEY).decode().rstrip("=")


def key_for(cp_id: str, kv: int) -> bytes | None:
    return KEY if (cp_id, kv) == (CP, 5) else None


class FakeMonitor:
    """The Engine's Monitor reduced to its link: a health check every 0.5 s from a thread (the
    Engine drops a silent Monitor after 3 s), and what the test sends."""

    def __init__(self, port: int) -> None:
        def connect():
            try:
                return Link.connect(HOST, port, FAST)
            except SessionRefused:  # the Engine still serves the session of its port probe
                return None

        self.link: Link = wait_until(connect, 10, "the Engine to take its Monitor")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.answers: list[Message] = []
        self.ask(Chk(CP), Health)
        self._thread = threading.Thread(target=self._check, daemon=True)
        self._thread.start()

    def ask(self, message: Message, answer_type: type[Message] | None = None) -> Message | None:
        with self._lock:
            self.link.send(message)
            if answer_type is None:
                return None  # the ACK is the whole answer
            answer = self.link.recv(timeout=3)
        assert isinstance(answer, answer_type), answer
        return answer

    def _check(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.ask(Chk(CP), Health)
            except LinkError:  # the Engine was killed: this Monitor's link is over
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.link.close("test over")


class Topic:
    """Every value on the Engine's two topics, from their start, as the broker has them."""

    def __init__(self, bootstrap: str, topics) -> None:
        self.names = [topics.cp_telemetry, topics.driver_requests]
        self.consumer = Consumer(consumer_config(bootstrap, topics.prefix + "reader"))
        self.consumer.subscribe(self.names)
        self.values: list[tuple[str, bytes]] = []

    def read_until(self, predicate, timeout: float, what: str):
        def poll():
            msg = self.consumer.poll(0.2)
            if msg is not None and not msg.error():
                self.values.append((msg.topic(), msg.value()))
            return predicate(self.records())

        wait_until(poll, timeout, f"{what} (read so far: {[v[:60] for _, v in self.values]})", interval=0)
        return self.records()

    def records(self) -> list:
        return [open_envelope(topic, value, key_for) for topic, value in self.values]

    def close(self) -> None:
        self.consumer.close()


def supply(monitor: FakeMonitor, session_id: str) -> None:
    supr = monitor.ask(Sup(CP, session_id, "D001", Decimal("0.48")), Supr)
    assert supr.ok, supr


def test_an_engine_given_a_key_seals_every_record_and_after_a_crash_waits_for_the_key_again(
        runner, tmp_path, kafka_bootstrap, kafka_topic_prefix):
    cp = EngineUnderTest(runner, tmp_path, kafka_bootstrap, kafka_topic_prefix)
    create_topics(kafka_bootstrap, [cp_topics(cp).cp_telemetry, cp_topics(cp).driver_requests])
    broker = Topic(kafka_bootstrap, cp_topics(cp))
    monitor = None
    try:
        engine = cp.start("--auto", "--auto-seconds", "600", monitor=False)
        monitor = FakeMonitor(cp.port)
        monitor.ask(Key(CP, 5, KEY_TEXT))
        engine.wait_for_output(r"records sealed with key v5", timeout=10)
        supply(monitor, "s-1")
        engine.wait_for_output(r"plugged in: supplying driver D001", timeout=10)
        broker.read_until(lambda rs: sum(isinstance(r, Telemetry) for r in rs) >= 2, 30, "2 telemetry records")
        cp.press("u")
        cp.press("r")
        cp.press("D007\n")  # a request made at the CP
        records = broker.read_until(
            lambda rs: any(isinstance(r, SupplyEnd) for r in rs) and any(isinstance(r, SupplyRequest) for r in rs),
            30, "the supply's end and the request at the CP")
        assert all(json.loads(value)["type"] == "sealed" for _, value in broker.values)  # nothing in clear
        (end,) = [r for r in records if isinstance(r, SupplyEnd)]
        assert (end.session_id, end.reason) == ("s-1", "unplugged")
        (request,) = [r for r in records if isinstance(r, SupplyRequest)]
        assert (request.source, request.driver_id, request.cp_id) == ("cp", "D007", CP)
        mark = json.loads((cp.data_dir / f"ev_cp_engine-{cp.port}.secure.json").read_text())
        assert mark == {"secure": True, "cp_id": CP, "key_version": 5}

        # a crash in the middle of a supply
        mark = engine.mark()
        supply(monitor, "s-2")
        engine.wait_for_output(r"plugged in: supplying driver D001", timeout=10, after=mark)
        broker.read_until(lambda rs: any(isinstance(r, Telemetry) and r.session_id == "s-2" for r in rs), 30,
                          "telemetry of s-2")
        engine.kill()
        monitor.close()
        monitor = None
        engine = cp.start("--auto", "--auto-seconds", "600", monitor=False)
        engine.wait_for_output(r"secure mode \(this CP got a key before\)", timeout=10)
        engine.wait_for_output(r"reported the supply interrupted by the last stop.*waits? for this CP's key", 10)
        monitor = FakeMonitor(cp.port)
        refused = monitor.ask(Sup(CP, "s-3", "D001", Decimal("0.48")), Supr)
        assert not refused.ok and refused.reason == "secure mode: waiting for this CP's key"
        key_given_us = time.time_ns() // 1000
        monitor.ask(Key(CP, 5, KEY_TEXT))
        records = broker.read_until(
            lambda rs: any(isinstance(r, SupplyEnd) and r.session_id == "s-2" for r in rs), 30,
            "the end of the interrupted supply")
        (late,) = [r for r in records if isinstance(r, SupplyEnd) and r.session_id == "s-2"]
        assert late.reason == "engine restarted"
        assert all(json.loads(value)["type"] == "sealed" for _, value in broker.values)
        (sealed,) = [json.loads(v) for t, v in broker.values
                     if isinstance(open_envelope(t, v, key_for), SupplyEnd)
                     and open_envelope(t, v, key_for).session_id == "s-2"]
        assert sealed["ctr"] >= key_given_us  # sealed after the key came, not before
        assert KEY_TEXT not in engine.output()
    finally:
        if monitor is not None:
            monitor.close()
        broker.close()
        cp.close()


def cp_topics(cp: EngineUnderTest) -> Topics:
    return Topics(cp.prefix)
