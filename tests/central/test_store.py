"""Central's store: every behaviour test runs on both backends through the ``store`` fixture
(tests/central/conftest.py: SQLite in tmp_path, and a new empty database on the real
MySQL/MariaDB server). Sessions are tested in test_store_sessions.py."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ev_central.store import (
    CPRow,
    DriverRow,
    Store,
    StoreError,
    StoreUnavailable,
    open_store,
    parse_db_url,
)
from ev_central.store.mysql import MySQLStore
from ev_central.store.sql import LATEST_VERSION, SQLStore
from ev_central.store.sqlite import SQLiteStore
from tests.central.conftest import columns, index_columns, indexes, migrate_at_once, raw, same_kind
from tests.support.services import mysql_connect

UTC = timezone.utc
T0 = datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)


# -- raw access to the store's database, outside the store ----------------------------------


def foreign_keys(store: SQLStore) -> list[tuple[Any, ...]]:
    if isinstance(store, SQLiteStore):
        return [r for t in columns(store) for r in raw(store, f"PRAGMA foreign_key_list({t})")]
    return raw(
        store,
        "SELECT constraint_name FROM information_schema.referential_constraints"
        " WHERE constraint_schema = DATABASE()",
    )


def cp(cp_id: str = "CP001", **changes: Any) -> CPRow:
    values = dict(
        cp_id=cp_id,
        location="Calle Mayor 1, Alicante",
        price_eur_kwh=Decimal("0.3500"),
        state="ACTIVADO",
        stopped=False,
        updated_at=T0,
    )
    values.update(changes)
    return CPRow(**values)


# -- schema ---------------------------------------------------------------------------------

EXPECTED_COLUMNS = {
    "schema_version": {"version", "description", "applied_at"},
    "charging_points": {
        "cp_id", "location", "price_eur_kwh", "state", "stopped", "updated_at", "created_at",
        "version",
    },
    "drivers": {"driver_id", "name", "registered_at", "account_id"},
    "charging_sessions": {
        "session_id", "request_id", "cp_id", "driver_id", "price_eur_kwh", "started_at",
        "ended_at", "kwh", "amount_eur", "status", "end_reason", "ticket_sent", "last_seq",
        "engine_final", "corrected", "version", "tag_uid", "account_id",
    },
    "rejected_rows": {"id", "at", "kind", "row_id", "reason", "row_json"},
    "accounts": {"account_id", "name", "kind", "active", "created_at"},
    "rfid_tags": {"tag_uid", "account_id", "active", "created_at"},
    "cp_registrations": {
        "cp_id", "location", "price_eur_kwh", "credential_hash", "registered_at", "deregistered_at",
    },
    "cp_keys": {"cp_id", "version", "key_sealed", "issued_at", "revoked_at"},
    "audit_log": {
        "seq", "at", "actor", "source_ip", "action", "details", "outcome", "prev_hash", "hash",
    },
    "audit_head": {"id", "last_seq", "last_hash"},
    "weather_alerts": {"city", "cp_ids", "temperature", "since"},
}  # fmt: skip


def test_schema_has_the_documented_tables_columns_and_indexes(store: SQLStore) -> None:
    assert columns(store) == EXPECTED_COLUMNS
    assert index_columns(store, "charging_sessions") == {
        "cp_id", "driver_id", "status", "account_id", "started_at",
    }  # fmt: skip
    assert indexes(store, "charging_sessions") == {
        "ix_charging_sessions_cp_id": ("cp_id",),
        "ix_charging_sessions_driver_id": ("driver_id",),
        "ix_charging_sessions_status": ("status", "ticket_sent", "started_at"),
        "ix_charging_sessions_account_id": ("account_id", "started_at"),
        "ix_charging_sessions_started": ("started_at", "session_id"),
    }
    assert indexes(store, "drivers") == {"ix_drivers_account_id": ("account_id",)}
    assert indexes(store, "rfid_tags") == {"ix_rfid_tags_account_id": ("account_id", "tag_uid")}
    assert indexes(store, "audit_log") == {"ix_audit_log_at": ("at",), "ix_audit_log_action": ("action", "seq")}
    assert foreign_keys(store) == []


def test_migrate_is_idempotent(store: SQLStore) -> None:
    assert store.migrate() == LATEST_VERSION == 7
    assert store.migrate() == LATEST_VERSION
    again = same_kind(store)
    try:
        assert again.migrate() == LATEST_VERSION
    finally:
        again.close()
    assert store.schema_versions() == list(range(1, LATEST_VERSION + 1))
    assert raw(store, "SELECT version, description FROM schema_version ORDER BY version") == [
        (1, "charging_points, drivers and charging_sessions"),
        (2, "charging_sessions.request_id and index ix_charging_sessions_status"),
        (3, "row versions, charging_sessions.engine_final and .corrected, table rejected_rows"),
        (4, "accounts, rfid_tags, drivers.account_id, charging_sessions.tag_uid and .account_id"),
        (5, "cp_registrations, cp_keys, audit_log and audit_head"),
        (6, "weather_alerts"),
        (7, "index ix_charging_sessions_started (started_at, session_id)"),
    ]
    assert columns(store) == EXPECTED_COLUMNS


def test_concurrent_migrations_apply_each_version_once(store: SQLStore) -> None:
    for table in ("schema_version", "charging_points", "drivers", "charging_sessions",
                  "rejected_rows", "accounts", "rfid_tags", "cp_registrations", "cp_keys", "audit_log",
                  "audit_head", "weather_alerts"):  # fmt: skip
        raw(store, f"DROP TABLE {table}")
    results = migrate_at_once(store, 4)
    assert results == [LATEST_VERSION] * 4
    assert raw(store, "SELECT version FROM schema_version ORDER BY version") == [
        (1,), (2,), (3,), (4,), (5,), (6,), (7,)
    ]
    assert raw(store, "SELECT id, last_seq FROM audit_head") == [(1, 0)]  # one head, whoever made it
    assert columns(store) == EXPECTED_COLUMNS


def test_a_newer_schema_is_refused(store: SQLStore) -> None:
    raw(store, "INSERT INTO schema_version (version, description) VALUES (99, 'future')")
    with pytest.raises(StoreError, match="version 99") as caught:
        store.migrate()
    assert not isinstance(caught.value, StoreUnavailable)


# -- charging points ------------------------------------------------------------------------


def test_charging_point_round_trip_keeps_decimals_times_and_flags(store: SQLStore) -> None:
    local = timezone(timedelta(hours=-5))
    row = cp(
        location="Avenida 5 ñ 😀",
        price_eur_kwh=Decimal("123456.7891"),
        state="PARADO",
        stopped=True,
        updated_at=datetime(2025, 1, 31, 23, 59, 59, 999999, tzinfo=local),
    )
    store.save_charging_points([row])
    (loaded,) = store.load_charging_points()
    assert loaded == row
    assert isinstance(loaded.price_eur_kwh, Decimal)
    assert str(loaded.price_eur_kwh) == "123456.7891"
    assert loaded.updated_at.tzinfo == UTC
    assert loaded.updated_at == datetime(2025, 2, 1, 4, 59, 59, 999999, tzinfo=UTC)
    assert loaded.stopped is True


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (Decimal("0.1"), "0.1000"),
        (Decimal("0.12345"), "0.1235"),  # rounded half away from zero, as MySQL does
        (Decimal("0.12344"), "0.1234"),
        ("0.35", "0.3500"),
        (0.3, "0.3000"),
        (Decimal("999999.9999"), "999999.9999"),
    ],
)
def test_prices_are_decimal_with_four_places(store: SQLStore, given: Any, stored: str) -> None:
    store.save_charging_points([cp(price_eur_kwh=given)])
    (loaded,) = store.load_charging_points()
    assert isinstance(loaded.price_eur_kwh, Decimal)
    assert str(loaded.price_eur_kwh) == stored


@pytest.mark.parametrize("price", [Decimal("1000000"), Decimal("NaN"), "abc"])
def test_a_price_that_does_not_fit_is_refused(store: SQLStore, price: Any) -> None:
    with pytest.raises(StoreError):
        store.save_charging_points([cp(price_eur_kwh=price)])
    assert store.load_charging_points() == []


def test_upsert_updates_every_column(store: SQLStore) -> None:
    store.save_charging_points([cp()])
    changed = CPRow(
        cp_id="CP001",
        location="Plaza Nueva 3",
        price_eur_kwh=Decimal("0.4199"),
        state="AVERIADO",
        stopped=True,
        updated_at=T0 + timedelta(hours=1, microseconds=7),
    )
    store.save_charging_points([changed])
    assert store.load_charging_points() == [changed]
    store.save_charging_points([cp()])
    assert store.load_charging_points() == [cp()]


def test_save_many_in_one_call_and_load_ordered_by_id(store: SQLStore) -> None:
    rows = [cp(f"CP{n:03d}", price_eur_kwh=Decimal(n) / 100) for n in range(60, 0, -1)]
    store.save_charging_points(rows)
    assert store.load_charging_points() == sorted(rows, key=lambda r: r.cp_id)
    store.save_charging_points([])  # nothing to do


def test_save_is_one_transaction(store: SQLStore) -> None:
    with pytest.raises(StoreError):
        store.save_charging_points([cp("CP001"), cp("CP002", state="ENCENDIDO")])
    assert store.load_charging_points() == []


@pytest.mark.parametrize("state", ["ENCENDIDO", "activado", ""])
def test_check_constraint_refuses_an_unknown_state(store: SQLStore, state: str) -> None:
    with pytest.raises(StoreError) as caught:
        store.save_charging_points([cp(state=state)])
    assert not isinstance(caught.value, StoreUnavailable)
    store.save_charging_points([cp()])  # the store is still usable
    assert [r.state for r in store.load_charging_points()] == ["ACTIVADO"]


def test_values_longer_than_their_column_are_refused(store: SQLStore) -> None:
    with pytest.raises(StoreError):
        store.save_charging_points([cp("C" * 65)])
    with pytest.raises(StoreError):
        store.save_charging_points([cp(location="x" * 201)])
    with pytest.raises(StoreError):
        store.add_driver("D" * 65)
    store.save_charging_points([cp("C" * 64, location="x" * 200)])
    assert store.add_driver("D" * 64, "n" * 100) is True


def test_naive_datetimes_are_refused(store: SQLStore) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.save_charging_points([cp(updated_at=datetime(2025, 1, 1))])


def test_mark_all_disconnected(store: SQLStore) -> None:
    assert store.mark_all_disconnected(T0) == 0
    store.save_charging_points(
        [
            cp("CP1", state="ACTIVADO"),
            cp("CP2", state="SUMINISTRANDO", stopped=True),
            cp("CP3", state="DESCONECTADO"),
        ]
    )
    at = T0 + timedelta(days=1)
    assert store.mark_all_disconnected(at) == 3
    loaded = store.load_charging_points()
    assert [(r.cp_id, r.state, r.updated_at) for r in loaded] == [
        ("CP1", "DESCONECTADO", at),
        ("CP2", "DESCONECTADO", at),
        ("CP3", "DESCONECTADO", at),
    ]
    assert [r.stopped for r in loaded] == [False, True, False]  # Stop survives a restart
    assert store.mark_all_disconnected(at) == 3  # the count does not depend on changes


def test_raw_cp_insert_takes_the_column_defaults(store: SQLStore) -> None:
    raw(
        store,
        "INSERT INTO charging_points (cp_id, location, price_eur_kwh)"
        " VALUES ('CP9', 'Muelle 2', '0.3')",
    )
    (row,) = store.load_charging_points()
    assert (row.cp_id, row.price_eur_kwh, row.state, row.stopped) == (
        "CP9",
        Decimal("0.3"),
        "DESCONECTADO",
        False,
    )
    assert row.updated_at.tzinfo == UTC


# -- drivers --------------------------------------------------------------------------------


def test_drivers_add_remove_list_exists(store: SQLStore) -> None:
    before = datetime.now(UTC)
    assert store.list_drivers() == []
    assert store.driver_exists("D002") is False
    assert store.add_driver("D002", "Ana") is True
    assert store.add_driver("D001") is True
    assert store.add_driver("D002", "Other") is False  # nothing changes
    drivers = store.list_drivers()
    assert [(d.driver_id, d.name) for d in drivers] == [("D001", ""), ("D002", "Ana")]
    assert all(isinstance(d, DriverRow) and d.registered_at.tzinfo == UTC for d in drivers)
    assert all(before <= d.registered_at <= datetime.now(UTC) for d in drivers)
    assert store.driver_exists("D002") is True
    assert store.driver_exists("d002") is False  # ids are case-sensitive on both backends
    assert store.remove_driver("D002") is True
    assert store.remove_driver("D002") is False
    assert store.driver_exists("D002") is False
    assert [d.driver_id for d in store.list_drivers()] == ["D001"]


def test_raw_insert_of_only_a_driver_id_registers_a_driver(store: SQLStore) -> None:
    raw(store, "INSERT INTO drivers (driver_id) VALUES ('D001')")
    assert store.driver_exists("D001")
    (driver,) = store.list_drivers()
    assert (driver.driver_id, driver.name) == ("D001", "")
    assert driver.registered_at.tzinfo == UTC
    assert abs(driver.registered_at - datetime.now(UTC)) < timedelta(days=1)
    assert store.add_driver("D001", "again") is False


# -- threads, lifecycle ---------------------------------------------------------------------


def test_one_store_used_from_eight_threads_stays_consistent(store: SQLStore) -> None:
    threads_n, per_thread = 8, 15
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_n)

    def work(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(per_thread):
                driver = f"T{n}-{i:02d}"
                assert store.add_driver(driver, f"thread {n}") is True
                assert store.driver_exists(driver)
                store.save_charging_points([cp(f"CP{n}", price_eur_kwh=Decimal(i))])
                store.save_charging_points([cp("SHARED", location=f"thread {n}")])
                assert len(store.list_drivers()) >= i + 1
                assert store.add_driver(driver) is False
                if i % 5 == 0:
                    store.mark_all_disconnected(T0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert len(store.list_drivers()) == threads_n * per_thread
    rows = {r.cp_id: r for r in store.load_charging_points()}
    assert set(rows) == {f"CP{n}" for n in range(threads_n)} | {"SHARED"}
    assert all(rows[f"CP{n}"].price_eur_kwh == per_thread - 1 for n in range(threads_n))


def test_ping_description_and_close(store: SQLStore) -> None:
    store.ping()
    assert isinstance(store, Store)
    assert store.description.startswith(("SQLite /", "MySQL root@"))
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.load_charging_points()


# -- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "mysql://ev:secret@db.example:3307/evcharging",
            dict(user="ev", password="secret", host="db.example", port=3307, database="evcharging"),
        ),
        ("mysql://root@127.0.0.1/test", dict(user="root", password=None, port=3306)),
        ("mysql://u%40x:p%3Aw%2F%40d%20@h/db", dict(user="u@x", password="p:w/@d ")),
        ("mysql://ev:@h:3306/db", dict(password="")),
        ("MySQL://ev@H/db", dict(scheme="mysql", host="h")),
        ("mysql://ev@[::1]:3306/db", dict(host="::1")),
        ("  mysql://ev@h/ev%2Dx  ", dict(database="ev-x")),
        ("sqlite:///data/ev.db", dict(scheme="sqlite", path="data/ev.db")),
        ("sqlite:////var/lib/ev/ev.db", dict(path="/var/lib/ev/ev.db")),
        ("sqlite:///my%20file.db", dict(path="my file.db")),
    ],
)
def test_parse_good_urls(url: str, expected: dict[str, Any]) -> None:
    parsed = parse_db_url(url)
    assert {key: getattr(parsed, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("ev_central.db", "no scheme"),
        ("postgres://u@h/db", "unknown database URL scheme 'postgres'"),
        ("mysql://ev@h", "names no database"),
        ("mysql://ev@h/", "names no database"),
        ("mysql://ev@h:port/db", "bad port"),
        ("mysql://ev@h:70000/db", "bad port"),
        ("mysql://ev@h:0/db", "bad port"),
        ("mysql://h/db", "no user"),
        ("mysql://:pw@h/db", "empty user"),
        ("mysql://ev@/db", "no host"),
        ("mysql://ev@h/db?ssl=1", "query"),
        ("mysql://ev@h/a/b", "bad database name"),
        ("sqlite://host/x.db", "names a host"),
        ("sqlite:///", "names no file"),
        ("sqlite:///x.db?mode=ro", "query"),
    ],
)
def test_parse_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_db_url(url)


def test_bad_url_messages_hide_the_password() -> None:
    with pytest.raises(ValueError) as caught:
        parse_db_url("mysql://ev:topsecret@h:nope/db")
    assert "topsecret" not in str(caught.value)
    assert "***" in str(caught.value)


def test_redacted_urls_hide_the_password() -> None:
    url = parse_db_url("mysql://ev:p%40ss@db:3306/evcharging")
    assert url.redacted() == "mysql://ev:***@db:3306/evcharging"
    assert str(url) == url.redacted()
    assert "p@ss" not in repr(url) and "p@ss" not in url.describe()
    assert url.describe() == "MySQL ev@db:3306/evcharging"
    assert parse_db_url("mysql://ev@db/x").redacted() == "mysql://ev@db:3306/x"
    assert parse_db_url("sqlite:////srv/ev.db").redacted() == "sqlite:////srv/ev.db"


# -- open_store -----------------------------------------------------------------------------


def test_open_store_default_file_in_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet"
    store = open_store(None, data_dir=data_dir)
    try:
        assert (data_dir / "ev_central.db").is_file()
        assert store.description == f"SQLite {data_dir / 'ev_central.db'}"
        store.save_charging_points([cp()])
    finally:
        store.close()
    reopened = open_store(None, data_dir=str(data_dir))
    try:
        assert reopened.load_charging_points() == [cp()]
    finally:
        reopened.close()


def test_open_store_honours_ev_data_dir_then_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EV_DATA_DIR", str(tmp_path / "env"))
    open_store(None).close()
    assert (tmp_path / "env" / "ev_central.db").is_file()
    open_store(None, data_dir=tmp_path / "arg").close()  # the argument wins
    assert (tmp_path / "arg" / "ev_central.db").is_file()
    monkeypatch.delenv("EV_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    open_store(None).close()
    assert (tmp_path / "ev_central.db").is_file()


def test_open_store_with_a_sqlite_url(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/sub/central.db")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == tmp_path / "sub" / "central.db"
        assert store.path.is_file()
    finally:
        store.close()


def test_open_store_on_an_unreachable_mysql_fails_fast_and_clearly() -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        open_store("mysql://root:s3cret@127.0.0.1:1/x")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "mysql://root:***@127.0.0.1:1/x" in message
    assert "s3cret" not in message
    assert "Can't connect" in message or "refused" in message


def test_open_store_refuses_a_malformed_url() -> None:
    with pytest.raises(ValueError, match="unknown database URL scheme"):
        open_store("postgresql://ev@db/evcharging")


# -- MySQL connection recovery --------------------------------------------------------------


def test_mysql_store_recovers_after_its_connection_is_killed(fresh_mysql_url: str) -> None:
    store = open_store(fresh_mysql_url)
    assert isinstance(store, MySQLStore)
    killer = mysql_connect(fresh_mysql_url, autocommit=True)
    try:
        assert store.add_driver("D001")
        victim = store.connection_id()
        cur = killer.cursor()
        cur.execute(f"KILL {victim}")
        deadline = time.monotonic() + 10
        while True:  # until the server has let the connection go
            cur.execute(f"SELECT COUNT(*) FROM information_schema.processlist WHERE id = {victim}")
            if cur.fetchall()[0][0] == 0:
                break
            assert time.monotonic() < deadline, "the killed connection is still listed"
            time.sleep(0.01)

        unavailable = 0
        deadline = time.monotonic() + 10
        while True:
            try:
                assert store.driver_exists("D001")
                break
            except StoreUnavailable as exc:
                unavailable += 1
                assert "root@127.0.0.1" in str(exc) or "mysql://root" in str(exc)
                assert time.monotonic() < deadline
        assert unavailable <= 1
        assert store.connection_id() not in (None, victim)
        assert store.add_driver("D002") is True
        store.ping()
        assert [d.driver_id for d in store.list_drivers()] == ["D001", "D002"]
    finally:
        killer.close()
        store.close()


def test_mysql_session_is_utc_and_strict(fresh_mysql_url: str) -> None:
    store = open_store(fresh_mysql_url)
    assert isinstance(store, MySQLStore)
    try:
        def settings(cur: Any) -> list[Any]:
            cur.execute("SELECT @@session.time_zone, @@session.sql_mode")
            return cur.fetchall()

        ((time_zone, sql_mode),) = store._run(settings)
        assert time_zone == "+00:00"
        assert "STRICT_ALL_TABLES" in sql_mode
    finally:
        store.close()
