"""AuditLog, Central's audit writer, with a fake store: order, batches, an outage and back
(nothing lost, nothing doubled), the spool written at stop and replayed at the next start,
refused entries, the bounds. Every wait is on a condition with a deadline."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ev_central.audit import AUDIT_LOST, NO_AUDIT, AuditLog, AuditStats, NoAudit, Spool, source_host, verify
from ev_central.core.audit import GENESIS, entry_hash
from ev_central.core.entities import AuditEntry, AuditRow
from ev_central.store.base import StoreRefused, StoreUnavailable
from ev_common.retry import Backoff
from tests.support.waiting import wait_until

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
WAIT = 5.0


class Clock:
    """UTC time advancing a millisecond at each reading."""

    def __init__(self) -> None:
        self.now = T0
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.now += timedelta(milliseconds=1)
            return self.now


class FakeStore:
    """The audit part of a Store, in memory: a chain of rows, and switchable failures."""

    def __init__(self) -> None:
        self.rows: list[AuditRow] = []
        self.down = False  # every call raises StoreUnavailable
        self.refuse: set[str] = set()  # an append holding an entry with these details is refused
        self.fail_after_commit = 0  # the next appends commit, then raise StoreUnavailable (a timeout)
        self.hold: threading.Event | None = None  # appends wait for it (a hanging database)
        self.batches: list[int] = []
        self.tries = 0  # calls of append_audit and list_audit
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def append_audit(self, entries) -> list[AuditRow]:
        entries = list(entries)
        if self.hold is not None:
            self.hold.wait(WAIT)
        with self.lock:
            self.batches.append(len(entries))
            self.tries += 1
            self.changed.notify_all()
            if self.down:
                raise StoreUnavailable("the database is down (test)")
            if any(entry.details in self.refuse for entry in entries):
                raise StoreRefused("refused (test)")
            appended = []
            for entry in entries:
                seq, prev = (self.rows[-1].seq, self.rows[-1].hash) if self.rows else (0, GENESIS)
                row = AuditRow(seq + 1, entry, prev, entry_hash(prev, seq + 1, entry))
                self.rows.append(row)
                appended.append(row)
            self.changed.notify_all()
            if self.fail_after_commit:
                self.fail_after_commit -= 1
                raise StoreUnavailable("no answer within 5 s (test): committed all the same")
            return appended

    def list_audit(self, since=None, action=None, after_seq=0, limit=1000) -> list[AuditRow]:
        with self.lock:
            self.tries += 1
            self.changed.notify_all()
            if self.down:
                raise StoreUnavailable("the database is down (test)")
            rows = [r for r in self.rows if r.seq > after_seq and (since is None or r.entry.at >= since)
                    and (not action or r.entry.action == action)]
            return rows[:limit]

    def audit_head(self) -> tuple[int, str]:
        with self.lock:
            return (self.rows[-1].seq, self.rows[-1].hash) if self.rows else (0, GENESIS)

    def details(self) -> list[str]:
        with self.lock:
            return [row.entry.details for row in self.rows]


def fast() -> Backoff:
    return Backoff(initial=0.01, cap=0.05)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def made(tmp_path: Path):
    """``made(store, **options)``: an AuditLog spooling in tmp_path; every one stopped after the test."""
    logs: list[AuditLog] = []

    def make(store: FakeStore, **options) -> AuditLog:
        options.setdefault("clock", Clock())
        options.setdefault("backoff", fast())
        audit = AuditLog(store, options.pop("spool_path", tmp_path / "ev.db.audit-spool.jsonl"), **options)
        logs.append(audit)
        return audit

    yield make
    for audit in logs:
        audit.stop(1)


def record(audit: AuditLog, first: int, last: int, action: str = "supply.start") -> None:
    for n in range(first, last + 1):
        audit.record(action, f"driver D{n}", f"entry {n}", source_ip="10.0.0.7")


def names(first: int, last: int) -> list[str]:
    return [f"entry {n}" for n in range(first, last + 1)]


def spool_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# -- order and batches -----------------------------------------------------------------------------


def test_entries_are_appended_in_order_in_batches_with_their_time(store, made):
    clock = Clock()
    audit = made(store, clock=clock, batch_size=500)
    record(audit, 1, 1200)  # queued before the writer starts: three batches
    assert audit.stats() == AuditStats(queued=1200, written=0, spooled=0, failed=0)
    audit.start()
    assert audit.wait_idle(WAIT)
    assert store.details() == names(1, 1200)
    assert store.batches == [500, 500, 200]
    first = store.rows[0].entry
    assert first == AuditEntry(T0 + timedelta(milliseconds=1), "driver D1", "10.0.0.7", "supply.start", "entry 1", "ok")
    assert audit.stats() == AuditStats(queued=0, written=1200, spooled=0, failed=0)
    assert verify(store).ok and verify(store).checked == 1200


def test_texts_are_cut_to_their_columns_when_recorded(store, made):
    audit = made(store).start()
    audit.record("x" * 100, "a\nb", "d" * 5000, "ok", "10.0.0.7")
    assert audit.wait_idle(WAIT)
    entry = store.rows[0].entry
    assert (len(entry.action), entry.actor, len(entry.details)) == (64, "a?b", 1000)
    assert entry.details.endswith("...")


def test_record_never_raises(store, made, caplog):
    def broken() -> datetime:
        raise RuntimeError("no clock")

    audit = made(store, clock=broken)
    audit.record("supply.start", "driver D1")
    assert audit.stats().failed == 1
    assert "could not be made" in caplog.text


def test_no_audit_records_nothing():
    assert isinstance(NO_AUDIT, NoAudit)
    NO_AUDIT.record("supply.start", "driver D1", "anything", "ok", "10.0.0.1")
    assert NO_AUDIT.start() is NO_AUDIT and NO_AUDIT.wait_idle(0)
    assert NO_AUDIT.stats() == AuditStats(0, 0, 0, 0)
    NO_AUDIT.stop()


@pytest.mark.parametrize("peer, host", [("10.0.0.7:5123", "10.0.0.7"), ("[::1]:5000", "::1"),
                                        ("::1:5000", "::1"), ("station", "station")])
def test_source_host(peer, host):
    assert source_host(peer) == host


# -- an outage --------------------------------------------------------------------------------------


def test_a_database_down_then_back_loses_nothing_and_doubles_nothing(store, made, caplog):
    caplog.set_level(logging.INFO)
    store.down = True
    audit = made(store).start()
    record(audit, 1, 30)
    with store.changed:
        assert store.changed.wait_for(lambda: store.tries >= 3, WAIT)  # tried, and tried again
    assert not audit.stats().db_ok and audit.stats().queued == 30
    record(audit, 31, 40)
    with store.lock:
        store.down = False
    assert audit.wait_idle(WAIT)
    assert store.details() == names(1, 40)
    assert audit.stats() == AuditStats(0, 40, 0, 0, True)
    said = [r.getMessage() for r in caplog.records if r.name == "ev_central.audit"]
    assert sum("database is unreachable" in line for line in said) == 1
    assert sum("database is back" in line for line in said) == 1


def test_an_append_that_committed_but_timed_out_is_not_appended_again(store, made):
    store.fail_after_commit = 1
    audit = made(store).start()
    record(audit, 1, 10)
    assert audit.wait_idle(WAIT)
    assert store.details() == names(1, 10)  # the retry found them in the log
    assert audit.stats() == AuditStats(0, 10, 0, 0, True)
    record(audit, 11, 12)
    assert audit.wait_idle(WAIT)
    assert store.details() == names(1, 12)


def test_past_the_high_water_the_oldest_go_to_the_spool_and_come_back_first(store, made, tmp_path):
    store.down = True
    audit = made(store, high_water=10, max_queued=1000).start()
    record(audit, 1, 40)
    wait_until(lambda: audit.stats().spooled >= 30, WAIT, "the oldest entries spooled")
    stats = audit.stats()
    assert stats.queued <= 10 and stats.queued + stats.spooled == 40
    spooled = spool_lines(audit.spool.path) + spool_lines(audit.spool.replay_path)
    assert [line["details"] for line in spooled] == names(1, stats.spooled)
    record(audit, 41, 45)
    with store.lock:
        store.down = False
    assert audit.wait_idle(WAIT)
    assert store.details() == names(1, 45)  # the spool first, then memory: in order, once each
    assert audit.stats() == AuditStats(0, 45, 0, 0, True)
    assert not audit.spool.path.exists() and not audit.spool.replay_path.exists()


def test_a_hanging_database_at_stop_spools_and_nothing_is_doubled_at_the_next_start(store, made, tmp_path):
    store.hold = threading.Event()
    audit = made(store).start()
    record(audit, 1, 5)
    wait_until(lambda: audit.stats().queued == 5 and audit._busy, WAIT, "the writer stuck in the database")
    started = time.monotonic()
    record(audit, 6, 2005)  # the callers never wait for the database
    assert time.monotonic() - started < 1.0
    audit.stop(timeout=0.2)
    assert [line["details"] for line in spool_lines(audit.spool.path)] == names(1, 2005)
    store.hold.set()  # the database answers at last: entries 1-5 are committed after all
    wait_until(lambda: store.details() == names(1, 5), WAIT, "the late append")
    store.hold = None

    again = made(store).start()
    record(again, 2006, 2006)
    assert again.wait_idle(WAIT)
    assert store.details() == names(1, 2006)  # looked up before replaying: not doubled


# -- the spool at stop and at the next start ---------------------------------------------------------


def test_stop_spools_what_the_database_did_not_take_and_the_next_start_replays_it_first(store, made, caplog):
    store.down = True
    clock = Clock()
    audit = made(store, clock=clock).start()
    record(audit, 1, 30)
    with store.changed:
        assert store.changed.wait_for(lambda: len(store.batches) >= 1, WAIT)
    audit.stop(timeout=0.5)
    lines = spool_lines(audit.spool.path)
    assert [line["details"] for line in lines] == names(1, 30)
    assert set(lines[0]) == {"at", "actor", "source_ip", "action", "details", "outcome"}
    assert lines[0]["at"] == "2026-03-01T12:00:00.001000Z"
    assert audit.stats().spooled == 30
    assert "kept in" in caplog.text

    with store.lock:
        store.down = False
    again = made(store, clock=clock)
    record(again, 31, 35)  # new entries, recorded before the spool is replayed
    again.start()
    assert again.stats().spooled in (0, 30)
    assert again.wait_idle(WAIT)
    assert store.details() == names(1, 35)
    assert store.rows[0].entry.at == T0 + timedelta(milliseconds=1)  # the time it happened
    assert again.stats() == AuditStats(0, 35, 0, 0, True)
    assert not again.spool.path.exists() and not again.spool.replay_path.exists()
    assert verify(store).ok


def test_an_unfinished_replay_is_finished_without_doubling(store, made, tmp_path):
    path = tmp_path / "ev.db.audit-spool.jsonl"
    spool = Spool(path)
    clock = Clock()
    entries = [AuditEntry(clock(), f"driver D{n}", "", "supply.start", f"entry {n}", "ok") for n in range(1, 11)]
    assert spool.append(entries) == 10
    assert spool.begin_replay() is True  # a replay began...
    store.append_audit(entries[:4])  # ...appended four, and Central died
    assert spool.append([AuditEntry(clock(), "driver D11", "", "supply.start", "entry 11", "ok")]) == 1  # spooled later
    audit = made(store, spool_path=path).start()
    assert audit.wait_idle(WAIT)
    assert store.details() == names(1, 11)
    assert not spool.replay_path.exists() and not path.exists()


def test_a_cut_line_in_the_spool_is_skipped_loudly(store, made, tmp_path, caplog):
    path = tmp_path / "ev.db.audit-spool.jsonl"
    good = AuditEntry(T0, "operator", "", "operator.command", "list -> no CPs yet", "ok")
    Spool(path).append([good])
    with open(path, "ab") as f:
        f.write(b'{"at":"2026-03-01T12:00:00.000000Z","actor":"CP0')  # a crash while writing
    Spool(path).append([good.__class__(T0, "operator", "", "operator.command", "help -> commands", "ok")])
    audit = made(store, spool_path=path).start()
    assert audit.wait_idle(WAIT)
    assert store.details() == ["list -> no CPs yet", "help -> commands"]
    assert audit.stats().failed == 1
    assert "not an entry was skipped" in caplog.text


def test_record_after_stop_goes_straight_to_the_spool(store, made):
    audit = made(store).start()
    audit.stop(1)
    audit.record("operator.command", "operator", "quit -> bye")
    assert [line["details"] for line in spool_lines(audit.spool.path)] == ["quit -> bye"]


# -- refused entries ------------------------------------------------------------------------------------


def test_a_refused_entry_does_not_block_the_others_and_is_kept(store, made, caplog):
    store.refuse = {"entry 3"}
    audit = made(store).start()
    record(audit, 1, 5)
    assert audit.wait_idle(WAIT)
    assert store.details() == ["entry 1", "entry 2", "entry 4", "entry 5"]
    assert audit.stats() == AuditStats(0, 4, 0, 1, True)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("refused an entry" in line and "entry 3" in line for line in errors), errors
    (kept,) = spool_lines(audit.spool.refused_path)
    assert (kept["details"], kept["refused"]) == ("entry 3", "refused (test)")
    assert not audit.spool.path.exists()  # never replayed: it would be refused again


# -- bounds ---------------------------------------------------------------------------------------------


def test_the_queue_is_bounded_and_a_lost_entry_is_loud_and_counted(store, made, caplog):
    audit = made(store, spool_path=None, max_queued=5, high_water=2)
    record(audit, 1, 7)  # not started: the queue fills up
    assert audit.stats() == AuditStats(queued=5, written=0, spooled=0, failed=2)
    lost = [r.getMessage() for r in caplog.records if "audit entry lost" in r.getMessage()]
    assert len(lost) == 2 and "entry 6" in lost[0] and "entry 7" in lost[1]
    audit.start()
    wait_until(lambda: len(store.rows) == 6, WAIT, "five entries and the loss")
    assert store.details()[:5] == names(1, 5)
    assert store.rows[5].entry.action == AUDIT_LOST and store.rows[5].entry.outcome == "failed"
    assert store.rows[5].entry.details.startswith("2 audit entries could not be kept")


def test_the_spool_is_bounded_and_what_does_not_fit_at_stop_is_lost_loudly(store, made, caplog):
    store.down = True
    audit = made(store, spool_max_bytes=1000).start()
    record(audit, 1, 20)
    audit.stop(0.5)
    kept = spool_lines(audit.spool.path)
    assert 0 < len(kept) < 20 and audit.spool.path.stat().st_size <= 1000
    assert [line["details"] for line in kept] == names(1, len(kept))
    stats = audit.stats()
    assert stats.spooled == len(kept) and stats.failed == 20 - len(kept)
    assert "is full" in caplog.text
    assert sum("audit entry lost" in r.getMessage() for r in caplog.records) == 20 - len(kept)


def test_a_full_spool_during_an_outage_keeps_entries_in_memory(store, made, caplog):
    store.down = True
    audit = made(store, spool_max_bytes=1000, high_water=4, max_queued=50).start()
    record(audit, 1, 30)
    wait_until(lambda: "is full" in caplog.text, WAIT, "the spool full")
    stats = audit.stats()
    assert stats.failed == 0 and stats.queued + stats.spooled == 30
    with store.lock:
        store.down = False
    assert audit.wait_idle(WAIT)
    assert store.details() == names(1, 30)
