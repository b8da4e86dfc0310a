"""ev_common.bus.Publisher against a real broker behind a proxy that a test cuts."""

from __future__ import annotations

from confluent_kafka import Consumer

from ev_common.bus import Publisher
from ev_common.records import RequestReceived, decode
from tests.support.proxy import CuttableProxy
from tests.support.services import consumer_config, create_topics, free_port
from tests.support.waiting import wait_until


def _received(n: int) -> RequestReceived:
    return RequestReceived(f"req-{n}", "D001", "CP001")


def _read_all(bootstrap: str, topic: str, count: int = 8, timeout: float = 30.0) -> list[str]:
    consumer = Consumer(consumer_config(bootstrap, f"{topic}-reader"))
    consumer.subscribe([topic])
    seen: list[str] = []
    try:
        def got_all() -> bool:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                seen.append(decode(msg.value()).request_id)
            return len(seen) >= count

        wait_until(got_all, timeout, f"{count} records on {topic}", interval=0)
    finally:
        consumer.close()
    return seen


def test_records_published_during_a_broker_outage_arrive_once_it_is_back(tansu_factory, kafka_topic_prefix):
    """A real outage (every connection to the broker cut, new ones refused; the broker keeps
    its data, as Apache Kafka does): records published meanwhile are delivered afterwards,
    in order, and none is reported failed."""
    port = free_port()
    proxy = CuttableProxy("127.0.0.1", port)
    try:
        tansu_factory(port=port, advertised_port=proxy.port)
        bootstrap = f"127.0.0.1:{proxy.port}"
        topic = kafka_topic_prefix + "bus-outage"
        create_topics(bootstrap, topic)
        publisher = Publisher(bootstrap, "bus-test")
        outcomes: dict[int, bool] = {}

        def publish(n: int) -> None:
            publisher.publish(topic, "D001", _received(n), lambda ok, n=n: outcomes.__setitem__(n, ok))

        for n in range(3):
            publish(n)
        assert publisher.flush(10) == 0 and outcomes == {0: True, 1: True, 2: True}
        proxy.cut()
        for n in range(3, 8):
            publish(n)
        wait_until(lambda: (publisher.poll(0.1), not publisher.reachable)[1], 20, "the outage to be noticed",
                   interval=0)
        assert len(outcomes) == 3  # held, neither delivered nor failed
        proxy.restore()
        wait_until(lambda: (publisher.poll(0.1), len(outcomes) == 8)[1], 30, "the held records delivered",
                   interval=0)
        assert all(outcomes.values()) and publisher.failed == 0 and publisher.replaced == 0
        assert _read_all(bootstrap, topic) == [f"req-{n}" for n in range(8)]
    finally:
        proxy.close()
