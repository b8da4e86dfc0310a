"""OffsetTracker: a consumer commits only past records whose work is done, in order."""

from __future__ import annotations

from ev_common.bus import OffsetTracker


def test_nothing_is_committed_before_its_work_is_done():
    tracker = OffsetTracker()
    done = [tracker.add("t", 0, offset) for offset in (10, 11, 12)]
    assert tracker.commit_points() == []
    done[1]()  # out of order: 11 done, 10 not yet
    assert tracker.commit_points() == []
    done[0]()
    assert tracker.commit_points() == [("t", 0, 12)]  # 10 and 11: read again from 12
    assert tracker.in_flight() == 1
    done[2]()
    done[2]()  # idempotent
    assert tracker.commit_points() == [("t", 0, 13)]
    assert tracker.in_flight() == 0
    assert tracker.commit_points() == []


def test_partitions_move_on_independently():
    tracker = OffsetTracker()
    a = tracker.add("t", 0, 5)
    tracker.add("t", 1, 7)
    a()
    assert tracker.commit_points() == [("t", 0, 6)]


def test_a_rebalance_forgets_what_was_not_done():
    tracker = OffsetTracker()
    late = tracker.add("t", 0, 1)
    tracker.forget()
    late()  # finishing after the partitions were taken away changes nothing
    assert tracker.commit_points() == [] and tracker.in_flight() == 0
