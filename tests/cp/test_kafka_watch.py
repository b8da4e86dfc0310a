"""The Engine's view of its broker (``KafkaWatch``): probes, what they report, and when they run."""

from __future__ import annotations

import logging
import threading

from ev_cp_engine.kafka_watch import KafkaWatch
from tests.support.waiting import wait_until


class Broker:
    """A scripted probe: answers while ``up``; counts the probes."""

    def __init__(self) -> None:
        self.up = True
        self.probes = 0

    def __call__(self) -> None:
        self.probes += 1
        if not self.up:
            raise RuntimeError("Failed to get metadata: Local: Broker transport failure")


def test_each_probe_is_reported_and_a_change_logged_with_the_reason(caplog):
    caplog.set_level(logging.INFO, logger="ev_cp_engine.kafka_watch")
    broker, reports = Broker(), []
    watch = KafkaWatch(broker, reports.append)
    assert watch.check() and watch.ok
    broker.up = False
    assert not watch.check() and watch.ok is False
    broker.up = True
    watch.check()
    watch.check()
    assert reports == [True, False, True, True]
    assert [r.getMessage() for r in caplog.records] == [
        "Kafka probe: the broker answers",
        "Kafka probe: no answer (Failed to get metadata: Local: Broker transport failure)",
        "Kafka probe: the broker answers"]


def test_the_watch_probes_at_once_when_the_publisher_turns_unreachable_and_often_while_down():
    broker, reports = Broker(), []
    watch = KafkaWatch(broker, reports.append, interval_ok=3600, interval_down=0.05)
    watch.check()
    stop = threading.Event()
    thread = threading.Thread(target=watch.run, args=(stop,), daemon=True)
    thread.start()
    try:
        broker.up = False
        watch.publisher_says(True)
        watch.publisher_says(False)  # the publisher saw an error: a probe now, not in an hour
        wait_until(lambda: reports[-1] is False, 5, "the outage to be reported")
        broker.up = True  # nothing is published, yet its return is seen by the probes
        wait_until(lambda: reports[-1] is True, 5, "the broker's return to be reported")
    finally:
        stop.set()
        thread.join(2)
    assert not thread.is_alive()  # stop is seen within a fraction of a second, also in an hour's wait
