"""The store's pages for the API: sessions newest first from after a session, drivers and
accounts by id from after one; on both backends."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from ev_central.store import SessionRow
from tests.central.conftest import store  # noqa: F401  (the fixture, on SQLite and MySQL)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def session(n: int, cp: str, driver: str, at: datetime) -> SessionRow:
    return SessionRow(f"s{n:03d}", f"r{n}", cp, driver, Decimal("0.48"), at, at + timedelta(minutes=5),
                      Decimal("1.5"), Decimal("0.72"), "COMPLETED", "unplugged", True, 3)


def test_sessions_page_newest_first_from_after_a_session(store):  # noqa: F811
    same = T0 + timedelta(hours=1)
    rows = [session(n, "CP1" if n % 2 else "CP2", "D1", T0 + timedelta(minutes=n)) for n in range(7)]
    rows += [session(n, "CP1", "D2", same) for n in (10, 11, 12)]  # the same start: by session id
    store.save_sessions(rows)
    first = store.list_sessions_page(limit=4)
    assert [r.session_id for r in first] == ["s012", "s011", "s010", "s006"]
    second = store.list_sessions_page(after=first[-1].session_id, limit=4)
    assert [r.session_id for r in second] == ["s005", "s004", "s003", "s002"]
    third = store.list_sessions_page(after="s011", limit=2)
    assert [r.session_id for r in third] == ["s010", "s006"]
    assert [r.session_id for r in store.list_sessions_page(cp_id="CP1", driver_id="D1")] == ["s005", "s003", "s001"]
    assert [r.session_id for r in store.list_sessions_page(cp_id="CP1", after="s005")] == ["s003", "s001"]
    assert store.list_sessions_page(after="no-such-session") == []
    assert store.list_sessions_page(after="x' OR '1'='1") == []


def test_drivers_and_accounts_pages(store):  # noqa: F811
    for driver in ("D3", "D1", "D2", "D10"):
        store.add_driver(driver, f"name {driver}")
    assert [d.driver_id for d in store.list_drivers_page(limit=2)] == ["D1", "D10"]
    assert [d.driver_id for d in store.list_drivers_page(after="D10", limit=5)] == ["D2", "D3"]
    assert store.list_drivers_page(after="D3") == []
    for account in ("B", "A", "C"):
        store.add_account(account, f"account {account}", "company")
    page = store.list_accounts_page(after="A", limit=1)
    assert [(a.account_id, a.name, a.kind, a.active) for a in page] == [("B", "account B", "company", True)]
    assert [a.account_id for a in store.list_accounts_page()] == ["A", "B", "C"]


def test_audit_entries_before_a_seq_of_an_action_or_a_family(store):  # noqa: F811
    from ev_central.core.entities import AuditEntry

    entries = [AuditEntry(T0 + timedelta(seconds=n), "CP1", "10.0.0.1", action, f"entry {n}", "ok")
               for n, action in enumerate(["cp.fault", "key.issue", "cp.recover", "cp.fault", "key.revoke"])]
    store.append_audit(entries)
    assert [r.entry.details for r in store.list_audit_before(6, limit=2)] == ["entry 3", "entry 4"]
    assert [r.entry.details for r in store.list_audit_before(4, "cp.fault")] == ["entry 0"]
    assert [r.entry.details for r in store.list_audit_before(6, "cp.", limit=2)] == ["entry 2", "entry 3"]
    assert [r.seq for r in store.list_audit_before(6, "key.")] == [2, 5]
    assert store.list_audit_before(1) == [] and store.list_audit_before(6, "x' OR 1=1") == []


def test_the_stores_own_pages_answer_as_the_generic_ones(store):  # noqa: F811
    """Store's generic pages (over the full lists, for stores without SQL) and the SQL ones agree."""
    from ev_central.core.entities import AuditEntry
    from ev_central.store.base import Store

    for driver in ("D2", "D1", "D3"):
        store.add_driver(driver)
    store.add_account("A1", "one", "company")
    store.save_sessions([session(n, "CP1", "D1", T0 + timedelta(minutes=n % 3)) for n in range(6)])
    store.append_audit([AuditEntry(T0, "CP1", "", "cp.fault" if n % 2 else "key.issue", f"e{n}", "ok")
                        for n in range(6)])
    cases = [("list_drivers_page", (None, 2)), ("list_drivers_page", ("D1", 5)), ("list_accounts_page", (None, 5)),
             ("list_sessions_page", ("CP1", "D1", None, 4)), ("list_sessions_page", (None, None, "s004", 3)),
             ("list_audit_before", (6, "cp.", 2)), ("list_audit_before", (4, None, 10))]
    for name, args in cases:
        assert getattr(store, name)(*args) == getattr(Store, name)(store, *args), (name, args)
