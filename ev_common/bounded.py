"""Bounded memories: the newest entries of an ordered mapping, the oldest forgotten first."""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def keep_newest(memory: "OrderedDict[K, V]", key: K, value: V, limit: int) -> None:
    """Remember ``key`` (as the newest) with ``value``; forget the oldest past ``limit`` entries.
    Not thread-safe: the caller holds its own lock."""
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > limit:
        memory.popitem(last=False)
