"""The TansuBroker helper: private brokers that tests can stop, kill and restart."""

from __future__ import annotations

from tests.support.services import kafka_answers


def test_broker_restarts_on_the_same_address(tansu_factory) -> None:
    broker = tansu_factory()
    address = broker.bootstrap
    assert broker.is_running()
    assert kafka_answers(address, timeout=5) is None

    broker.kill()
    assert not broker.is_running()
    assert kafka_answers(address, timeout=0.5) is not None

    broker.start()
    assert broker.bootstrap == address
    assert kafka_answers(address, timeout=5) is None

    broker.restart()
    assert broker.bootstrap == address
    assert kafka_answers(address, timeout=5) is None


def test_several_brokers_at_once(tansu_factory) -> None:
    brokers = [tansu_factory() for _ in range(3)]
    assert len({b.bootstrap for b in brokers}) == 3
    for broker in brokers:
        assert kafka_answers(broker.bootstrap, timeout=5) is None
