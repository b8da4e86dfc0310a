"""The Kafka-protocol broker the tests use is real: topics, idempotent produce, consumer
groups, synchronous commits, and resuming from the committed offsets."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from tests.support.services import consumer_config, create_topics

PARTITIONS = 3
KEYS = [f"cp-{n}" for n in range(PARTITIONS * 2)]
DEADLINE_S = 30.0


def produce(bootstrap: str, topic: str, records: list[tuple[str, str]]) -> dict[str, int]:
    """Produce keyed records idempotently; return each value's partition."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    partitions: dict[str, int] = {}
    errors: list[KafkaError] = []

    def delivered(err, msg) -> None:
        if err is not None:
            errors.append(err)
        else:
            partitions[msg.value().decode()] = msg.partition()

    for key, value in records:
        producer.produce(topic, key=key.encode(), value=value.encode(), on_delivery=delivered)
    remaining = producer.flush(timeout=DEADLINE_S)
    assert remaining == 0, f"{remaining} records not delivered within {DEADLINE_S} s"
    assert not errors, errors
    assert len(partitions) == len(records)
    return partitions


def consume(consumer: Consumer, wanted: set[str], deadline_s: float = DEADLINE_S) -> list:
    """Poll until every value in ``wanted`` has arrived; return all messages received."""
    received = []
    seen: set[str] = set()
    deadline = time.monotonic() + deadline_s
    while not wanted <= seen:
        assert time.monotonic() < deadline, (
            f"after {deadline_s} s still missing {sorted(wanted - seen)}; got {sorted(seen)}"
        )
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        received.append(msg)
        seen.add(msg.value().decode())
    return received


def test_consumer_group_resumes_from_committed_offsets(
    kafka_bootstrap: str, kafka_topic_prefix: str
) -> None:
    topic = kafka_topic_prefix + "sessions"
    group = kafka_topic_prefix + "central"
    create_topics(kafka_bootstrap, topic, partitions=PARTITIONS)

    first = [(KEYS[n % len(KEYS)], f"first-{n}") for n in range(12)]
    first_partitions = produce(kafka_bootstrap, topic, first)

    consumer = Consumer(consumer_config(kafka_bootstrap, group))
    try:
        consumer.subscribe([topic])
        received = consume(consumer, {value for _, value in first})
        assert len(received) == len(first), "a record was delivered twice"
        for msg in received:
            assert msg.topic() == topic
            assert msg.partition() == first_partitions[msg.value().decode()]
        # Records with the same key keep their order (one key, one partition).
        for key in KEYS:
            values = [m.value().decode() for m in received if m.key().decode() == key]
            assert values == [v for k, v in first if k == key]

        next_offsets: dict[int, int] = {}
        for msg in received:
            next_offsets[msg.partition()] = max(
                next_offsets.get(msg.partition(), 0), msg.offset() + 1
            )
        to_commit = [TopicPartition(topic, p, o) for p, o in sorted(next_offsets.items())]
        committed = consumer.commit(offsets=to_commit, asynchronous=False)
        assert all(tp.error is None for tp in committed), committed
        check = consumer.committed([TopicPartition(topic, p) for p in next_offsets], timeout=10)
        assert {tp.partition: tp.offset for tp in check} == next_offsets
    finally:
        consumer.close()

    # The same keys again: every partition that held first records gets new ones too, so a
    # consumer that started before the committed offset would meet an old record first.
    second = [(key, f"second-{n}") for n, key in enumerate(KEYS)]
    second_partitions = produce(kafka_bootstrap, topic, second)
    key_partition = {key: first_partitions[value] for key, value in first}
    for key, value in second:
        assert second_partitions[value] == key_partition[key]

    resumed = Consumer(consumer_config(kafka_bootstrap, group))
    try:
        resumed.subscribe([topic])
        received = consume(resumed, {value for _, value in second})
    finally:
        resumed.close()
    values = [m.value().decode() for m in received]
    assert sorted(values) == sorted(value for _, value in second), "old records re-delivered"
    first_offsets: dict[int, int] = {}
    for msg in received:
        first_offsets.setdefault(msg.partition(), msg.offset())
    assert first_offsets == next_offsets, "did not resume exactly at the committed offsets"
