"""Schema version 5 on both backends: CP registrations, CP keys and the chained audit log."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ev_central.core.audit import GENESIS, ChainVerifier, entry_hash
from ev_central.core.entities import AuditEntry
from ev_central.store.base import StoreRefused
from tests.central.conftest import raw, same_kind

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def entry(n: int, action: str = "auth", **changes) -> AuditEntry:
    fields = dict(at=T0 + timedelta(seconds=n), actor=f"CP{n:03d}", source_ip="10.0.0.7", action=action,
                  details=f"attempt {n}", outcome="ok")
    fields.update(changes)
    return AuditEntry(**fields)


def verify(store):
    verifier = ChainVerifier()
    after = 0
    while rows := store.list_audit(after_seq=after, limit=7):
        verifier.feed(rows)
        after = rows[-1].seq
    return verifier.finish(store.audit_head())


def test_register_again_and_deregister(store):
    assert store.get_registration("CP001") is None
    assert store.register_cp("CP001", "C/Mayor 45", Decimal("0.48"), "scrypt$a") is True
    assert store.register_cp("CP001", "C/Mayor 47", "0.5", "scrypt$b") is False  # a new credential
    row = store.get_registration("CP001")
    assert (row.location, row.price_eur_kwh, row.credential_hash, row.registered) == (
        "C/Mayor 47", Decimal("0.5000"), "scrypt$b", True)
    assert store.deregister_cp("CP001") is True and store.deregister_cp("CP001") is False
    gone = store.get_registration("CP001")
    assert gone.credential_hash is None and not gone.registered and gone.deregistered_at is not None
    assert store.register_cp("CP001", "C/Mayor 47", "0.5", "scrypt$c") is False
    assert store.get_registration("CP001").deregistered_at is None
    assert [r.cp_id for r in store.list_registrations()] == ["CP001"]


def test_registrations_are_read_many_at_once(store, monkeypatch):
    import ev_central.store.sql as sql

    monkeypatch.setattr(sql, "REGISTRATIONS_PER_READ", 2)  # three reads for five ids
    for n in range(1, 5):
        store.register_cp(f"CP{n:03d}", f"Calle {n}", "0.40", f"scrypt${n}")
    store.deregister_cp("CP004")
    found = store.get_registrations(["CP003", "CP001", "CP004", "CP009", "cp001", "CP001"])
    assert sorted(found) == ["CP001", "CP003", "CP004"]  # ids are exact: cp001 is not CP001
    assert found["CP003"] == store.get_registration("CP003") and found["CP004"].credential_hash is None
    assert store.get_registrations([]) == {}


@pytest.mark.parametrize("field, value", [("cp_id", "CP 1"), ("cp_id", "x" * 65), ("location", "x" * 201),
                                          ("location", "bad\x00"), ("price", "abc"), ("price", "1e9"),
                                          ("credential_hash", "h" * 256)])
def test_registration_fields_are_checked_against_the_columns(store, field, value):
    args = {"cp_id": "CP001", "location": "C/Mayor 45", "price": "0.48", "credential_hash": "scrypt$a"}
    args[field] = value
    with pytest.raises(StoreRefused):
        store.register_cp(args["cp_id"], args["location"], args["price"], args["credential_hash"])
    assert store.list_registrations() == []


def test_keys_are_numbered_per_cp_and_revoked(store):
    assert store.current_cp_key("CP001") is None
    first = store.issue_cp_key("CP001", lambda version: f"sealed-{version}")
    assert (first.version, first.key_sealed, first.revoked_at) == (1, "sealed-1", None)
    store.issue_cp_key("CP002", lambda version: "sealed-x")
    assert store.current_cp_key("CP001").version == 1
    assert store.revoke_cp_keys("CP001") == 1 and store.revoke_cp_keys("CP001") == 0
    assert store.current_cp_key("CP001") is None
    second = store.issue_cp_key("CP001", lambda version: f"sealed-{version}")
    assert (second.version, second.key_sealed) == (2, "sealed-2")  # never reuses a revoked number
    assert [(k.cp_id, k.version) for k in store.load_cp_keys()] == [("CP001", 2), ("CP002", 1)]


def test_keep_current_returns_the_key_in_force_and_seals_nothing(store):
    def never(version):
        raise AssertionError("sealed a key although one is in force")

    first = store.issue_cp_key("CP001", lambda version: f"sealed-{version}", keep_current=True)
    assert store.issue_cp_key("CP001", never, keep_current=True) == first
    store.revoke_cp_keys("CP001")
    assert store.issue_cp_key("CP001", lambda version: f"sealed-{version}", keep_current=True).version == 2


def test_two_gateways_issuing_a_cps_first_key_at_once_agree_on_one(store):
    """Two processes' shared KeyRings (the core's gateways) authenticate the same CPs at the same
    moment: each CP gets one key version, and both hand out the same key."""
    from ev_central.keys import KeyRing

    other = same_kind(store)
    master = bytes(range(32))
    rings = [KeyRing(store, master, shared=True), KeyRing(other, master, shared=True)]
    cp_ids = [f"CP{n:03d}" for n in range(1, 31)]
    got: list[dict] = [{}, {}]
    start = threading.Barrier(2)

    def issue(index):
        start.wait()
        for cp_id in cp_ids:
            got[index][cp_id] = rings[index].issue(cp_id)[:2]

    try:
        threads = [threading.Thread(target=issue, args=(index,)) for index in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert got[0] == got[1] and len(got[0]) == len(cp_ids)
        assert [(k.cp_id, k.version) for k in store.load_cp_keys()] == [(cp_id, 1) for cp_id in cp_ids]
    finally:
        other.close()


def test_a_shared_ring_replaces_a_key_in_force_it_cannot_open(store):
    """A key in force sealed with another master key (a gateway given the wrong file): the ring
    says so and issues the next version, which it can open."""
    from ev_central.keys import KeyRing

    KeyRing(store, bytes(range(1, 33)), shared=True).issue("CP001")
    ring = KeyRing(store, bytes(range(32)), shared=True)
    version, key, new = ring.issue("CP001")
    assert (version, new) == (2, True) and ring.key_for("CP001", 2) == key
    assert store.current_cp_key("CP001").version == 2


def test_audit_entries_are_chained_and_filtered(store):
    rows = store.append_audit([entry(1), entry(2, "key.issue"), entry(3, "key.revoke")])
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[0].prev_hash == GENESIS and rows[1].prev_hash == rows[0].hash
    assert rows[2].hash == entry_hash(rows[1].hash, 3, rows[2].entry)
    assert store.audit_head() == (3, rows[2].hash)
    stored = store.list_audit()
    assert stored == rows  # every field read back as hashed (microseconds included)
    assert [r.seq for r in store.list_audit(action="key.")] == [2, 3]
    assert [r.seq for r in store.list_audit(action="auth")] == [1]
    assert [r.seq for r in store.list_audit(since=T0 + timedelta(seconds=2))] == [2, 3]
    assert verify(store).ok


def test_texts_too_long_or_not_printable_are_cut_and_still_verify(store):
    [row] = store.append_audit([entry(1, details="d" * 5000 + "\x00", actor="a\nb")])
    assert len(row.entry.details) == 1000 and row.entry.details.endswith("...") and row.entry.actor == "a?b"
    assert store.list_audit() == [row] and verify(store).ok


def test_two_programs_appending_at_once_keep_one_chain(store):
    other = same_kind(store)  # EV_Registry's connection beside Central's
    try:
        def append(target, base):
            for n in range(10):
                target.append_audit([entry(base + n), entry(base + n, "supply.start")])

        threads = [threading.Thread(target=append, args=(target, base)) for target, base in ((store, 0), (other, 100))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert store.audit_head()[0] == 40
        check = verify(store)
        assert check.ok and check.checked == 40, check
    finally:
        other.close()


@pytest.mark.parametrize("tamper, problem", [
    ("UPDATE audit_log SET details = 'nothing happened' WHERE seq = 2", "entry 2 was changed"),
    ("DELETE FROM audit_log WHERE seq = 2", "entry 2 is missing"),
    ("DELETE FROM audit_log WHERE seq = 3", "entries were removed from its end"),
    ("UPDATE audit_log SET outcome = 'ok', hash = prev_hash WHERE seq = 1", "entry 1 was changed"),
])
def test_a_chain_changed_by_hand_is_detected(store, tamper, problem):
    store.append_audit([entry(1), entry(2), entry(3)])
    raw(store, tamper)
    check = verify(store)
    assert not check.ok and problem in check.problem, check
