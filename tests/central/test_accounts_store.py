"""Accounts, RFID tags, drivers' accounts and the sessions booked to an account (schema
version 4), on both backends through the ``store`` fixture of tests/central/conftest.py."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from ev_central.core.entities import TAG_UID_LENGTHS, normalise_tag_uid
from ev_central.store import (
    AccountDisabled,
    SessionRow,
    StoreRefused,
    UnknownAccount,
)
from ev_central.store.sql import LATEST_VERSION, SQLStore
from tests.central.conftest import columns, indexes, raw

UTC = timezone.utc
T0 = datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)


def session(session_id: str = "S001", **changes: Any) -> SessionRow:
    values: dict[str, Any] = dict(
        session_id=session_id, request_id=f"req-{session_id}", cp_id="CP001", driver_id="D001",
        price_eur_kwh=Decimal("0.3500"), started_at=T0, ended_at=None, kwh=Decimal("0"),
        amount_eur=Decimal("0"), status="AUTHORISED", end_reason=None, ticket_sent=False, last_seq=0,
    )
    values.update(changes)
    return SessionRow(**values)


# -- tag UIDs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,uid",
    [
        ("04a23b1c", "04A23B1C"),  # 4 bytes
        ("04:A2:3B:1C:5D:6E:80", "04A23B1C5D6E80"),  # 7 bytes
        ("16AC936B1692E73A", "16AC936B1692E73A"),  # 8 bytes
        ("16-ac-93-6b-16-92-e7-3a", "16AC936B1692E73A"),
        ("01 23 45 67 89 ab cd ef 01 23", "0123456789ABCDEF0123"),  # 10 bytes
    ],
)
def test_a_uid_is_normalised(text: str, uid: str) -> None:
    assert normalise_tag_uid(text) == uid
    assert len(uid) in TAG_UID_LENGTHS


@pytest.mark.parametrize(
    "text", ["", "04A23B", "04A23B1C5D", "0123456789ABCDEF012345", "04A23B1G", "04_A2_3B_1C",
             "04A23B1C\n", "０４A23B1C", 1234],
)
def test_a_malformed_uid_is_refused(text: Any) -> None:
    with pytest.raises(ValueError):
        normalise_tag_uid(text)


# -- schema ------------------------------------------------------------------------------------


def test_version_4_tables_columns_and_indexes(store: SQLStore) -> None:
    assert store.schema_versions()[-1] == LATEST_VERSION == 7
    found = columns(store)
    assert found["accounts"] == {"account_id", "name", "kind", "active", "created_at"}
    assert found["rfid_tags"] == {"tag_uid", "account_id", "active", "created_at"}
    assert "account_id" in found["drivers"]
    assert {"tag_uid", "account_id"} <= found["charging_sessions"]
    assert indexes(store, "charging_sessions")["ix_charging_sessions_account_id"] == (
        "account_id", "started_at",
    )  # fmt: skip


def test_a_version_3_database_is_upgraded_keeping_its_rows(store: SQLStore) -> None:
    store.add_driver("D001", "Ana")
    store.save_sessions([session()])
    for statement in (
        "DROP TABLE accounts",
        "DROP TABLE rfid_tags",
        "DROP INDEX ix_drivers_account_id" + (" ON drivers" if _mysql(store) else ""),
        "DROP INDEX ix_charging_sessions_account_id" + (" ON charging_sessions" if _mysql(store) else ""),
        "ALTER TABLE drivers DROP COLUMN account_id",
        "ALTER TABLE charging_sessions DROP COLUMN tag_uid",
        "ALTER TABLE charging_sessions DROP COLUMN account_id",
        "DELETE FROM schema_version WHERE version = 4",
    ):
        raw(store, statement)
    assert store.schema_versions() == [1, 2, 3, 5, 6, 7]
    assert store.migrate() == LATEST_VERSION
    assert store.schema_versions() == list(range(1, LATEST_VERSION + 1))
    assert store.get_session("S001") == session()
    (driver,) = store.list_drivers()
    assert (driver.driver_id, driver.name, driver.account_id) == ("D001", "Ana", None)
    assert store.account_of_driver("D001") is None


def test_version_4_applied_again_over_its_own_changes_is_harmless(store: SQLStore) -> None:
    """As after a MySQL migration whose DDL ran but whose schema_version row was lost."""
    store.add_account("FLAT3B", "Flat 3B", "apartment")
    store.add_tag("04A23B1C", "FLAT3B")
    store.save_sessions([session(account_id="FLAT3B", tag_uid="04A23B1C", driver_id="")])
    raw(store, "DELETE FROM schema_version WHERE version = 4")
    assert store.migrate() == LATEST_VERSION
    assert store.schema_versions() == list(range(1, LATEST_VERSION + 1))
    assert [t.tag_uid for t in store.list_tags("FLAT3B")] == ["04A23B1C"]
    assert store.sessions_of_account("FLAT3B")[0].tag_uid == "04A23B1C"


def _mysql(store: SQLStore) -> bool:
    return type(store).__name__ == "MySQLStore"


# -- accounts ----------------------------------------------------------------------------------


def test_accounts_are_added_listed_disabled_and_enabled(store: SQLStore) -> None:
    assert store.add_account("FLAT3B", "Flat 3B", "apartment") is True
    assert store.add_account("ACME", "Acme S.L.", "company") is True
    assert store.add_account("FLAT3B", "Another name", "company") is False  # nothing changes
    flat = store.get_account("FLAT3B")
    assert flat is not None
    assert (flat.account_id, flat.name, flat.kind, flat.active) == ("FLAT3B", "Flat 3B", "apartment", True)
    assert flat.created_at.tzinfo is not None
    assert [a.account_id for a in store.list_accounts()] == ["ACME", "FLAT3B"]
    assert store.add_account("SOLO") is True
    solo = store.get_account("SOLO")
    assert solo is not None and (solo.name, solo.kind) == ("", "other")

    assert store.set_account_active("FLAT3B", False) is True
    assert store.get_account("FLAT3B") == dataclasses.replace(flat, active=False)
    assert store.set_account_active("FLAT3B", False) is True  # already disabled: still there
    assert store.set_account_active("FLAT3B", True) is True
    assert store.get_account("FLAT3B") == flat
    assert store.set_account_active("NOPE", False) is False
    assert store.get_account("NOPE") is None


def test_account_ids_are_case_sensitive(store: SQLStore) -> None:
    assert store.add_account("flat3b") and store.add_account("FLAT3B")
    assert [a.account_id for a in store.list_accounts()] == ["FLAT3B", "flat3b"]


@pytest.mark.parametrize(
    "args",
    [
        ("",), ("A" * 65,), ("FLAT 3B",), ("FLAT/3B",), ("FLAT3B\n",), (None,),
        ("FLAT3B", "x" * 101), ("FLAT3B", "Flat\n3B"), ("FLAT3B", "Flat\x1b[31m"),
        ("FLAT3B", "", ""), ("FLAT3B", "", "Apartment"), ("FLAT3B", "", "flat 3"),
        ("FLAT3B", "", "a" * 33), ("FLAT3B", "", "3rd"),
    ],
)
def test_an_account_that_does_not_fit_is_refused(store: SQLStore, args: tuple) -> None:
    with pytest.raises(StoreRefused):
        store.add_account(*args)
    assert store.list_accounts() == []


def test_the_limits_themselves_are_taken(store: SQLStore) -> None:
    assert store.add_account("A" * 64, "ñ" * 100, "k" + "-_9" * 10 + "x")
    (account,) = store.list_accounts()
    assert (account.account_id, account.name, account.kind) == ("A" * 64, "ñ" * 100, "k" + "-_9" * 10 + "x")


# -- tags --------------------------------------------------------------------------------------


def test_tags_are_added_normalised_listed_looked_up_and_disabled(store: SQLStore) -> None:
    store.add_account("FLAT3B", "Flat 3B", "apartment")
    store.add_account("ACME", "Acme", "company")
    assert store.add_tag("16:ac:93:6b:16:92:e7:3a", "FLAT3B") is True
    assert store.add_tag("04a23b1c", "ACME") is True
    assert store.add_tag("0123456789ABCDEF0123", "FLAT3B") is True
    assert store.add_tag("16AC936B1692E73A", "ACME") is False  # already stored, for FLAT3B
    assert [(t.tag_uid, t.account_id) for t in store.list_tags()] == [
        ("0123456789ABCDEF0123", "FLAT3B"), ("04A23B1C", "ACME"), ("16AC936B1692E73A", "FLAT3B"),
    ]  # fmt: skip
    assert [t.tag_uid for t in store.list_tags("FLAT3B")] == ["0123456789ABCDEF0123", "16AC936B1692E73A"]
    assert store.list_tags("NOPE") == []

    tag = store.get_tag("16-ac-93-6b-16-92-e7-3a")
    assert tag is not None and tag.tag_uid == "16AC936B1692E73A" and tag.active
    found = store.find_tag("16 AC 93 6B 16 92 E7 3A")
    assert found is not None
    assert found[0] == tag and found[1] == store.get_account("FLAT3B")
    assert store.find_tag("DEADBEEF") is None
    assert store.find_tag("not a uid") is None and store.get_tag("") is None

    assert store.set_tag_active("16ac936b1692e73a", False) is True
    assert store.get_tag("16AC936B1692E73A") == dataclasses.replace(tag, active=False)
    assert store.set_tag_active("16AC936B1692E73A", True) is True
    assert store.set_tag_active("DEADBEEF", False) is False
    assert store.set_tag_active("xyz", False) is False

    store.set_account_active("FLAT3B", False)
    found = store.find_tag("16AC936B1692E73A")
    assert found is not None and found[0].active and not found[1].active  # the caller decides


def test_a_tag_needs_an_active_account_and_a_well_formed_uid(store: SQLStore) -> None:
    with pytest.raises(UnknownAccount) as unknown:
        store.add_tag("04A23B1C", "NOPE")
    assert unknown.value.account_id == "NOPE" and "does not exist" in str(unknown.value)
    store.add_account("OLD")
    store.set_account_active("OLD", False)
    with pytest.raises(AccountDisabled):
        store.add_tag("04A23B1C", "OLD")
    store.add_account("FLAT3B")
    for bad in ("04A23B", "04A23B1G", "", "04A23B1C" * 3):
        with pytest.raises(StoreRefused):
            store.add_tag(bad, "FLAT3B")
    assert store.list_tags() == []


def test_the_database_itself_refuses_a_malformed_uid(store: SQLStore) -> None:
    """A tool writing rfid_tags directly cannot store a UID the store would not find."""
    for uid in ("04a23b1c", "04A23B", "04:A2:3B:1C", "04A23B1G"):
        with pytest.raises(Exception):
            raw(store, f"INSERT INTO rfid_tags (tag_uid, account_id) VALUES ('{uid}', 'X')")
    raw(store, "INSERT INTO rfid_tags (tag_uid, account_id) VALUES ('04A23B1C', 'X')")
    tag = store.get_tag("04a23b1c")
    assert tag is not None and tag.active and tag.account_id == "X"


# -- drivers' accounts -------------------------------------------------------------------------


def test_a_driver_belongs_to_at_most_one_account(store: SQLStore) -> None:
    store.add_account("FLAT3B", "Flat 3B", "apartment")
    store.add_account("ACME", "Acme", "company")
    store.add_driver("D001", "Ana")
    store.add_driver("D002")
    assert store.account_of_driver("D001") is None
    assert store.set_driver_account("D001", "FLAT3B") is True
    assert store.set_driver_account("D001", "FLAT3B") is True  # the same again
    assert store.account_of_driver("D001") == store.get_account("FLAT3B")
    assert store.set_driver_account("D001", "ACME") is True  # moved: one account only
    assert store.account_of_driver("D001") == store.get_account("ACME")
    assert [(d.driver_id, d.account_id) for d in store.list_drivers()] == [("D001", "ACME"), ("D002", None)]
    assert store.set_driver_account("D001", None) is True
    assert store.account_of_driver("D001") is None
    assert store.set_driver_account("D999", "ACME") is False
    assert store.account_of_driver("D999") is None

    store.set_driver_account("D002", "ACME")
    store.set_account_active("ACME", False)
    disabled = store.account_of_driver("D002")
    assert disabled is not None and disabled.account_id == "ACME" and not disabled.active


def test_a_driver_needs_an_active_account(store: SQLStore) -> None:
    store.add_driver("D001")
    with pytest.raises(UnknownAccount):
        store.set_driver_account("D001", "NOPE")
    store.add_account("OLD")
    store.set_account_active("OLD", False)
    with pytest.raises(AccountDisabled):
        store.set_driver_account("D001", "OLD")
    with pytest.raises(StoreRefused):
        store.set_driver_account("D001", "bad id")
    assert store.account_of_driver("D001") is None
    assert store.list_drivers()[0].account_id is None


def test_removing_a_driver_keeps_its_account(store: SQLStore) -> None:
    store.add_account("FLAT3B")
    store.add_driver("D001")
    store.set_driver_account("D001", "FLAT3B")
    assert store.remove_driver("D001")
    assert store.get_account("FLAT3B") is not None
    store.add_driver("D001")
    assert store.account_of_driver("D001") is None  # registered again: no account


# -- sessions: who charged, and the account -------------------------------------------------------


def test_a_session_keeps_its_tag_and_account(store: SQLStore) -> None:
    by_tag = session("S1", driver_id="", tag_uid="16AC936B1692E73A", account_id="FLAT3B")
    by_driver = session("S2", account_id="FLAT3B")
    alone = session("S3")
    store.save_sessions([by_tag, by_driver, alone])
    assert store.get_session("S1") == by_tag
    assert store.get_session("S2") == by_driver
    assert store.get_session("S3") == alone
    assert alone.tag_uid is None and alone.account_id is None
    # and an update changes them, as every other column
    store.save_sessions([dataclasses.replace(by_driver, account_id=None, version=1)])
    assert store.get_session("S2") == dataclasses.replace(by_driver, account_id=None, version=1)


@pytest.mark.parametrize(
    "changes",
    [{"tag_uid": "16ac936b1692e73a"}, {"tag_uid": "16:AC:93:6B:16:92:E7:3A"}, {"tag_uid": "04A23B"},
     {"tag_uid": ""}, {"account_id": ""}, {"account_id": "A" * 65}, {"account_id": "FLAT 3B"}],
)
def test_a_session_with_a_bad_tag_or_account_is_refused(store: SQLStore, changes: dict) -> None:
    with pytest.raises(StoreRefused) as refused:
        store.save_sessions([session("S1"), session("S2", **changes)])
    assert refused.value.row_id == "S2"
    assert store.list_sessions() == []


def test_sessions_of_an_account_in_a_period(store: SQLStore) -> None:
    day = timedelta(days=1)
    rows = [
        session("S1", started_at=T0, account_id="FLAT3B"),
        session("S2", started_at=T0 + day, account_id="FLAT3B", tag_uid="04A23B1C", driver_id=""),
        session("S3", started_at=T0 + 2 * day, account_id="FLAT3B", status="SUPPLYING"),
        session("S0", started_at=T0 + day, account_id="FLAT3B"),  # same start as S2: by id
        session("X1", started_at=T0 + day, account_id="ACME"),
        session("X2", started_at=T0 + day),
    ]
    store.save_sessions(rows)
    ids = lambda found: [s.session_id for s in found]  # noqa: E731
    assert ids(store.sessions_of_account("FLAT3B")) == ["S1", "S0", "S2", "S3"]
    assert ids(store.sessions_of_account("FLAT3B", start=T0 + day)) == ["S0", "S2", "S3"]
    assert ids(store.sessions_of_account("FLAT3B", end=T0 + day)) == ["S1"]  # end excluded
    assert ids(store.sessions_of_account("FLAT3B", T0 + day, T0 + 2 * day)) == ["S0", "S2"]
    # bounds in another time zone mean the same instants
    cet = timezone(timedelta(hours=1))
    assert ids(store.sessions_of_account("FLAT3B", (T0 + day).astimezone(cet))) == ["S0", "S2", "S3"]
    assert store.sessions_of_account("ACME") == [rows[4]]
    assert store.sessions_of_account("NOPE") == []
