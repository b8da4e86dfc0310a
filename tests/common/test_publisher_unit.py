"""ev_common.bus.Publisher with a fake producer: a dead producer is replaced and nothing is lost."""

from __future__ import annotations

from confluent_kafka import KafkaError

from ev_common.bus import Publisher
from ev_common.records import RequestReceived, decode


class FakeProducer:
    """Holds produced records until ``poll``; the first ``die_with`` answers a delivery with it."""

    def __init__(self, die_with: KafkaError | None, log: list) -> None:
        self.die_with = die_with
        self.queue: list = []
        self.log = log

    def produce(self, topic, value, key, on_delivery):
        self.queue.append((topic, value, on_delivery))

    def poll(self, _timeout=0):
        queue, self.queue = self.queue, []
        for topic, value, on_delivery in queue:
            if self.die_with is not None:
                on_delivery(self.die_with, None)
            else:
                self.log.append(decode(value).request_id)
                on_delivery(None, None)
        return len(queue)

    def purge(self):
        queue, self.queue = self.queue, []
        for _topic, _value, on_delivery in queue:
            on_delivery(KafkaError(KafkaError._PURGE_QUEUE), None)

    def flush(self, timeout=0):
        self.poll()
        return 0


def make_publisher(first_error: KafkaError | None, delivered: list) -> tuple[Publisher, list]:
    producers: list[FakeProducer] = []

    def factory(_config):
        producers.append(FakeProducer(first_error if not producers else None, delivered))
        return producers[-1]

    return Publisher("unused:9092", "test", producer_factory=factory), producers


def received(n: int) -> RequestReceived:
    return RequestReceived(f"req-{n}", "D001", "CP001")


def test_records_a_dead_producer_failed_are_sent_again_by_its_replacement():
    delivered: list[str] = []
    outcomes: list[bool] = []
    publisher, producers = make_publisher(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, fatal=True), delivered)
    producers[0].poll = lambda _t=0: None  # the first producer holds the records until it dies
    for n in range(3):
        publisher.publish("topic", "D001", received(n), outcomes.append)
    # it answers the first record with the fatal error and still holds the other two
    topic, value, callback = producers[0].queue.pop(0)
    callback(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, fatal=True), None)
    publisher.poll()  # replaces the producer: the failed record and the two purged ones go out again
    publisher.poll()
    assert len(producers) == 2 and publisher.replaced == 1
    assert delivered == ["req-0", "req-1", "req-2"]  # in their original order
    assert outcomes == [True, True, True] and publisher.failed == 0 and publisher.resent == 3


def test_an_ordinary_delivery_error_is_reported_not_resent():
    delivered: list[str] = []
    outcomes: list[bool] = []
    publisher, producers = make_publisher(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), delivered)
    publisher.publish("topic", "D001", received(0), outcomes.append)
    publisher.poll()
    assert outcomes == [False] and publisher.failed == 1 and len(producers) == 1 and delivered == []


def test_a_record_is_resent_a_bounded_number_of_times():
    outcomes: list[bool] = []
    dead = KafkaError(KafkaError.UNKNOWN_PRODUCER_ID)

    class AlwaysDead(FakeProducer):
        def __init__(self, _config):
            super().__init__(dead, [])

    publisher = Publisher("unused:9092", "test", producer_factory=AlwaysDead)
    publisher.publish("topic", "D001", received(0), outcomes.append)
    for _ in range(Publisher.MAX_RESENDS + 2):
        publisher.poll()
    assert outcomes == [False]  # given up after MAX_RESENDS new producers, and said so once
    assert publisher.resent == Publisher.MAX_RESENDS and publisher.failed == 1
