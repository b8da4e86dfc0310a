"""The argparse types every program shares (ev_common/config.py)."""

from __future__ import annotations

import argparse

import pytest

from ev_common.config import seconds


@pytest.mark.parametrize("text, value", [("0.5", 0.5), ("3600", 3600.0), ("2", 2.0)])
def test_seconds_in_range_are_taken(text: str, value: float) -> None:
    assert seconds(0.5, 3600)(text) == value


@pytest.mark.parametrize("text", ["0.4", "3600.1", "abc", "", "nan", "inf", "-1"])
def test_seconds_out_of_range_or_not_a_number_are_refused_by_name(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"is not a number of seconds from 0.5 to 3600"):
        seconds(0.5, 3600)(text)
