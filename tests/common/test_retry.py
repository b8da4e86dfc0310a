import random

import pytest

from ev_common.retry import Backoff


def test_delays_grow_to_the_cap_with_jitter_inside_bounds():
    backoff = Backoff(initial=0.5, cap=4.0, floor=0.0, rng=random.Random(7))
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for ceiling in ceilings:
        assert 0.0 <= backoff.next() <= ceiling
    backoff.reset()
    assert backoff.attempts == 0 and backoff.next() <= 0.5


def test_jitter_spreads_delays():
    backoff = Backoff(initial=8, cap=8, rng=random.Random(1))
    delays = {round(backoff.next(), 3) for _ in range(20)}
    assert len(delays) > 10


def test_floor_and_validation():
    assert Backoff(initial=1, cap=1, floor=0.2, rng=random.Random(0)).next() >= 0.2
    with pytest.raises(ValueError):
        Backoff(initial=0, cap=1)
