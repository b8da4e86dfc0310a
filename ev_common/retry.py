"""Capped exponential backoff with full jitter, for every reconnect and retry loop."""

from __future__ import annotations

import random


class Backoff:
    """Delays for successive retries: random in [0, min(cap, initial * factor**n)].

    ``next()`` returns the delay before the next attempt; ``reset()`` after a success.
    The randomness is injectable (``rng``) so tests can check the bounds exactly.
    """

    def __init__(self, initial: float = 0.5, cap: float = 10.0, factor: float = 2.0,
                 floor: float = 0.05, rng: random.Random | None = None) -> None:
        if not 0 < initial <= cap:
            raise ValueError("need 0 < initial <= cap")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.floor = floor
        self.attempts = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap, self.initial * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return max(self.floor, self._rng.uniform(0, ceiling))

    def reset(self) -> None:
        self.attempts = 0
