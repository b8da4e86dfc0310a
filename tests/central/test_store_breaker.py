"""The store's circuit breaker, on a clock the test moves."""

from __future__ import annotations

import random

import pytest

from ev_central.store import StoreUnavailable
from ev_central.store.breaker import CircuitBreaker
from ev_common.retry import Backoff
from tests.support.clock import FakeClock


def breaker(clock: FakeClock) -> CircuitBreaker:
    # no jitter below the ceiling: floor == ceiling for the first two periods
    return CircuitBreaker("db", Backoff(initial=1.0, cap=2.0, floor=1.0, rng=random.Random(0)), clock=clock)


def test_closed_lets_every_call_through() -> None:
    b = breaker(FakeClock())
    for _ in range(3):
        b.before()
        b.succeeded()
    assert not b.is_open


def test_a_failure_opens_it_then_one_probe_at_a_time_goes_through() -> None:
    clock = FakeClock()
    b = breaker(clock)
    b.before()
    b.failed(StoreUnavailable("lost the database"))
    assert b.is_open
    with pytest.raises(StoreUnavailable, match="retrying in .*lost the database"):
        b.before()
    clock.advance(2.0)  # past the period (at most the cap)
    b.before()  # the probe
    with pytest.raises(StoreUnavailable, match="another call is checking"):
        b.before()
    b.failed(StoreUnavailable("still lost"))  # open again
    with pytest.raises(StoreUnavailable, match="still lost"):
        b.before()
    clock.advance(2.0)
    b.before()
    b.succeeded()
    assert not b.is_open
    b.before()


def test_a_probe_that_tells_nothing_lets_another_probe() -> None:
    clock = FakeClock()
    b = breaker(clock)
    b.failed(StoreUnavailable("x"))
    clock.advance(2.0)
    b.before()
    b.released()
    b.before()  # the next probe
    assert b.is_open
