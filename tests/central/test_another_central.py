"""A second Central on the same broker and topic prefix: refused when the broker names the
first one's consumers, waited for while a crashed one may still be listed, warned about when
the broker cannot name anyone (an injected broker view and clock: no Kafka needed)."""

from __future__ import annotations

import logging

import pytest

from ev_central.app import AnotherCentral, Central
from ev_central.store import open_store
from ev_common.bus import GroupMembers, Topics
from tests.support.clock import FakeClock


@pytest.fixture
def central(tmp_path):
    central = Central(open_store(f"sqlite:///{tmp_path / 'c.db'}"), "127.0.0.1", 0, kafka="127.0.0.1:1",
                      topics=Topics("sys1-"))
    yield central
    central.store.close()


class Broker:
    """What the broker says of the group, answer after answer; the clock moves a second per look."""

    def __init__(self, clock: FakeClock, *answers: GroupMembers) -> None:
        self.clock, self.answers, self.asked = clock, list(answers), []

    def __call__(self, bootstrap: str, group: str) -> GroupMembers:
        self.asked.append(group)
        self.clock.now += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def refuse(central, broker, clock, wait=3.0):
    central._stop.wait = lambda timeout: False  # the clock is the broker's: no real waiting
    central._refuse_if_another_central(wait=wait, clock=clock, describe=broker)


def test_a_live_central_named_by_the_broker_is_refused(central):
    clock = FakeClock(0.0)
    broker = Broker(clock, GroupMembers(True, ("ev-central@10.0.0.5",)))
    with pytest.raises(AnotherCentral, match=r"another Central is running on Kafka 127.0.0.1:1 with topic prefix "
                                             r"'sys1-' \(ev-central@10.0.0.5 in group sys1-ev-central-requests\)"):
        refuse(central, broker, clock)
    assert len(broker.asked) >= 3  # it waited for a crashed one to leave first


def test_a_crashed_central_that_leaves_within_the_wait_lets_this_one_start(central):
    clock = FakeClock(0.0)
    broker = Broker(clock, GroupMembers(True, ("ev-central@10.0.0.5",)), GroupMembers(False))
    refuse(central, broker, clock)
    assert broker.asked == ["sys1-ev-central-requests"] * 2


def test_nobody_there_starts_at_once(central):
    clock = FakeClock(0.0)
    broker = Broker(clock, GroupMembers(False))
    refuse(central, broker, clock)
    assert len(broker.asked) == 1


def test_a_broker_that_names_nobody_gets_a_loud_warning_and_a_start(central, caplog):
    clock = FakeClock(0.0)
    broker = Broker(clock, GroupMembers(True, ()))
    with caplog.at_level(logging.ERROR):
        refuse(central, broker, clock)
    assert "another Central may be running" in caplog.text and "--topic-prefix" in caplog.text


def test_a_broker_that_cannot_say_lets_this_one_start(central, caplog):
    def down(bootstrap, group):
        raise TimeoutError()

    refuse(central, down, FakeClock(0.0))
    assert "cannot tell whether another Central uses Kafka" in caplog.text
