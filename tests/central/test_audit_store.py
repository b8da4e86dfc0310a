"""AuditLog on the real stores (SQLite and MySQL): what it records is what the log keeps, the
chain verifies, and a spool replayed over entries already appended doubles none of them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from ev_central.audit import AuditLog, Spool, default_spool_path, stored_form, verify
from ev_central.core.entities import AuditEntry
from ev_central.store.sqlite import SQLiteStore
from tests.central.conftest import raw

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
WAIT = 10.0

ODD = [  # what the store cuts or rewrites: the spool and the lookups must agree with it
    AuditEntry(T0, "a\nb", "10.0.0.7", "supply.start", "d" * 5000, "ok"),
    AuditEntry(T0 + timedelta(microseconds=1), "CP\x00001", "::1", "cp.fault", "Engine fault: \u00e9\u00e8 \U0001F50C",
               "ok"),
    AuditEntry(T0 + timedelta(seconds=1), "x" * 300, "", "a" * 80, "", "o" * 50),
    AuditEntry(T0 + timedelta(seconds=2), "operator", "", "operator.command", "bad \udcff surrogate", "ok"),
]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1001)
        return self.now


def test_the_stored_form_is_what_the_store_keeps(store):
    rows = store.append_audit(ODD)
    assert [row.entry for row in rows] == [stored_form(entry) for entry in ODD]
    assert [row.entry for row in store.list_audit()] == [stored_form(entry) for entry in ODD]
    assert all(stored_form(stored_form(entry)) == stored_form(entry) for entry in ODD)


def test_recorded_entries_are_appended_in_order_and_verify(store, tmp_path):
    audit = AuditLog(store, tmp_path / "spool.jsonl", clock=Clock(), batch_size=7).start()
    try:
        for n in range(40):
            audit.record("supply.start" if n % 2 else "cp.fault", f"CP{n:03d}", f"n {n}", "ok", "10.0.0.7")
        for entry in ODD:
            audit.record(entry.action, entry.actor, entry.details, entry.outcome, entry.source_ip)
        assert audit.wait_idle(WAIT)
    finally:
        audit.stop()
    rows = store.list_audit(limit=100)
    assert [row.entry.details for row in rows[:40]] == [f"n {n}" for n in range(40)]
    assert [row.entry.at for row in rows] == sorted(row.entry.at for row in rows)
    assert len(rows) == 44 and audit.stats().written == 44
    check = verify(store, batch=9)
    assert check.ok and check.checked == 44


def test_a_spool_over_entries_already_appended_doubles_none(store, tmp_path):
    path = tmp_path / "spool.jsonl"
    spooled = ODD + [AuditEntry(T0 + timedelta(seconds=3 + n), "CP001", "", "cp.disconnect", f"n {n}", "ok")
                     for n in range(5)]
    assert Spool(path).append([stored_form(entry) for entry in spooled]) == len(spooled)
    store.append_audit(spooled[:6])  # appended before Central died, still in the spool
    audit = AuditLog(store, path, lookup_batch=2).start()
    try:
        assert audit.wait_idle(WAIT)
    finally:
        audit.stop()
    assert [row.entry for row in store.list_audit()] == [stored_form(entry) for entry in spooled]
    assert verify(store).ok and not path.exists()


def test_verify_reads_up_to_the_head_it_read_first(store):
    store.append_audit(ODD)
    check = verify(store, batch=1)
    assert check.ok and check.checked == len(ODD)
    raw(store, "UPDATE audit_log SET actor = 'someone else' WHERE seq = 3")
    check = verify(store, batch=1)
    assert not check.ok and check.bad_seq == 3 and check.checked == 2


def test_the_spool_lives_next_to_the_sqlite_file_or_in_the_data_directory(store, tmp_path, monkeypatch):
    monkeypatch.setenv("EV_DATA_DIR", str(tmp_path / "data"))
    path = default_spool_path(store)
    if isinstance(store, SQLiteStore):
        assert path == Path(store.path).with_name(Path(store.path).name + ".audit-spool.jsonl")
    else:
        assert path.parent == tmp_path / "data" and path.name.endswith(".audit-spool.jsonl")
        assert "@" not in path.name and "/" not in path.name and ":" not in path.name
