"""Charging sessions in Central's store (``charging_sessions``), on both backends through the
``store`` fixture of tests/central/conftest.py; schema version 2, which added ``request_id``
and ``ix_charging_sessions_status``; and schema version 7, which added
``ix_charging_sessions_started`` for the API's pages of sessions, newest first."""

from __future__ import annotations

import dataclasses
import random
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from ev_central.store import (
    OPEN_STATUSES,
    SESSION_STATUSES,
    SessionRow,
    StoreError,
    StoreUnavailable,
)
from ev_central.store.sql import LATEST_VERSION, MIGRATIONS, SQLStore
from tests.central.conftest import columns, indexes, migrate_at_once, raw, same_kind

UTC = timezone.utc
T0 = datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)


def session(session_id: str = "S001", **changes: Any) -> SessionRow:
    """An open (AUTHORISED) session; ``changes`` override any column."""
    values: dict[str, Any] = dict(
        session_id=session_id,
        request_id=f"req-{session_id}",
        cp_id="CP001",
        driver_id="D001",
        price_eur_kwh=Decimal("0.3500"),
        started_at=T0,
        ended_at=None,
        kwh=Decimal("0.0000"),
        amount_eur=Decimal("0.0000"),
        status="AUTHORISED",
        end_reason=None,
        ticket_sent=False,
        last_seq=0,
    )
    values.update(changes)
    return SessionRow(**values)


def ended(session_id: str = "S001", **changes: Any) -> SessionRow:
    """A COMPLETED session whose ticket is not sent yet."""
    values: dict[str, Any] = dict(
        ended_at=T0 + timedelta(minutes=30),
        kwh=Decimal("12.3456"),
        amount_eur=Decimal("4.3210"),
        status="COMPLETED",
        end_reason="unplugged",
        last_seq=1800,
    )
    values.update(changes)
    return session(session_id, **values)


def ids(rows: list[SessionRow]) -> list[str]:
    return [row.session_id for row in rows]


# -- round trips --------------------------------------------------------------------------


def test_an_open_session_round_trips(store: SQLStore) -> None:
    local = timezone(timedelta(hours=2))
    row = session(
        request_id="3f1c1b9e-8a55-4c1e-9d6f-0a4b2c1d7e88",
        cp_id="CP-ñ-😀",
        price_eur_kwh=Decimal("123456.7891"),
        started_at=datetime(2025, 1, 1, 0, 59, 59, 999999, tzinfo=local),
        status="SUPPLYING",
        kwh=Decimal("0.0001"),
        amount_eur=Decimal("0.0000"),
        last_seq=7,
    )
    store.save_sessions([row])
    loaded = store.get_session("S001")
    assert loaded == row
    assert loaded is not None
    assert loaded.started_at == datetime(2024, 12, 31, 22, 59, 59, 999999, tzinfo=UTC)
    assert loaded.started_at.tzinfo == UTC
    assert loaded.ended_at is None and loaded.end_reason is None
    assert [type(v) for v in (loaded.price_eur_kwh, loaded.kwh, loaded.amount_eur)] == [Decimal] * 3
    assert str(loaded.price_eur_kwh) == "123456.7891"
    assert str(loaded.kwh) == "0.0001"
    assert loaded.ticket_sent is False
    assert type(loaded.last_seq) is int and loaded.last_seq == 7


def test_an_ended_session_round_trips(store: SQLStore) -> None:
    row = ended(
        kwh=Decimal("99999999.9999"),  # the largest DECIMAL(12,4)
        amount_eur=Decimal("-0.5000"),
        status="INTERRUPTED",
        end_reason="Engine fault: ñ" + "x" * 185,  # 200 characters
        ticket_sent=True,
        last_seq=2**31 - 1,
    )
    store.save_sessions([row])
    (loaded,) = store.list_sessions()
    assert loaded == row
    assert loaded.ended_at == T0 + timedelta(minutes=30)
    assert loaded.ended_at is not None and loaded.ended_at.tzinfo == UTC
    assert str(loaded.kwh) == "99999999.9999" and str(loaded.amount_eur) == "-0.5000"
    assert loaded.ticket_sent is True


@pytest.mark.parametrize(
    ("field", "given", "stored"),
    [
        ("price_eur_kwh", Decimal("0.12345"), "0.1235"),  # half away from zero, as CP prices
        ("price_eur_kwh", "0.35", "0.3500"),
        ("kwh", Decimal("1.00005"), "1.0001"),
        ("kwh", 0.3, "0.3000"),
        ("amount_eur", Decimal("-0.00005"), "-0.0001"),
        ("amount_eur", 7, "7.0000"),
    ],
)
def test_decimals_are_kept_with_four_places(
    store: SQLStore, field: str, given: Any, stored: str
) -> None:
    store.save_sessions([session(**{field: given})])
    loaded = store.get_session("S001")
    assert loaded is not None
    value = getattr(loaded, field)
    assert isinstance(value, Decimal) and str(value) == stored


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("price_eur_kwh", Decimal("1000000")),  # DECIMAL(10,4)
        ("kwh", Decimal("100000000")),  # DECIMAL(12,4)
        ("amount_eur", Decimal("NaN")),
        ("kwh", "abc"),
        ("last_seq", -1),
        ("last_seq", 2**31),
        ("last_seq", 1.5),
        ("session_id", "S" * 65),
        ("request_id", "r" * 65),
        ("cp_id", "C" * 65),
        ("driver_id", "D" * 65),
        ("end_reason", "e" * 201),
    ],
)
def test_values_that_do_not_fit_are_refused(store: SQLStore, field: str, value: Any) -> None:
    with pytest.raises(StoreError) as caught:
        store.save_sessions([session(**{field: value})])
    assert not isinstance(caught.value, StoreUnavailable)
    assert store.list_sessions() == []
    longest = session("S" * 64, request_id="r" * 64, cp_id="C" * 64, driver_id="D" * 64,
                      end_reason="e" * 200)  # fmt: skip
    store.save_sessions([longest])
    assert store.list_sessions() == [longest]


def test_naive_datetimes_are_refused(store: SQLStore) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.save_sessions([session(started_at=datetime(2025, 1, 1))])
    with pytest.raises(ValueError, match="naive"):
        store.save_sessions([ended(ended_at=datetime(2025, 1, 1))])
    assert store.list_sessions() == []


def test_get_session_of_an_unknown_id_is_none(store: SQLStore) -> None:
    assert store.get_session("S001") is None
    store.save_sessions([session("S001")])
    assert store.get_session("S002") is None
    assert store.get_session("s001") is None  # ids are case-sensitive on both backends
    assert store.get_session("S001") == session("S001")


def test_upsert_updates_every_column(store: SQLStore) -> None:
    original = session()
    store.save_sessions([original])
    changed = SessionRow(
        session_id="S001",
        request_id="another-request",
        cp_id="CP777",
        driver_id="D777",
        price_eur_kwh=Decimal("0.4199"),
        started_at=T0 + timedelta(seconds=1, microseconds=1),
        ended_at=T0 + timedelta(hours=2, microseconds=7),
        kwh=Decimal("3.1416"),
        amount_eur=Decimal("1.3191"),
        status="INTERRUPTED",
        end_reason="Monitor lost",
        ticket_sent=True,
        last_seq=42,
        engine_final=True,
        corrected=True,
        version=1,
        tag_uid="04A23B1C",
        account_id="FLAT3B",
    )
    assert all(
        getattr(changed, f.name) != getattr(original, f.name)
        for f in dataclasses.fields(SessionRow)
        if f.name != "session_id"
    )
    store.save_sessions([changed])
    assert store.list_sessions() == [changed]
    back = dataclasses.replace(original, version=2)
    store.save_sessions([back])  # and back, NULLs included
    assert store.list_sessions() == [back]


def test_save_many_in_one_call(store: SQLStore) -> None:
    rows = [session(f"S{n:03d}", started_at=T0 + timedelta(seconds=n)) for n in range(60)]
    store.save_sessions(rows)
    assert store.list_sessions(limit=1000) == rows[::-1]
    store.save_sessions([])  # nothing to do
    store.save_sessions(iter([]))


# -- queries ------------------------------------------------------------------------------


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_load_open_sessions_returns_only_open_ones_oldest_first(store: SQLStore) -> None:
    assert store.load_open_sessions() == []
    rows = [
        session("A", status="SUPPLYING", started_at=at(5)),
        session("B", status="AUTHORISED", started_at=at(1)),
        ended("C", started_at=at(0)),
        ended("D", status="INTERRUPTED", started_at=at(0), end_reason="fault"),
        session("E", status="AUTHORISED", started_at=at(3)),
        session("F", status="SUPPLYING", started_at=at(1)),  # ties ordered by session_id
        ended("G", started_at=at(2), ticket_sent=True),
    ]
    random.Random(7).shuffle(rows)
    store.save_sessions(rows)
    opened = store.load_open_sessions()
    assert ids(opened) == ["B", "F", "E", "A"]
    assert all(row.status in OPEN_STATUSES for row in opened)
    assert opened == sorted(
        (row for row in rows if row.status in OPEN_STATUSES),
        key=lambda r: (r.started_at, r.session_id),
    )
    store.save_sessions([ended("A", started_at=at(5))])  # A ends
    assert ids(store.load_open_sessions()) == ["B", "F", "E"]


def test_load_unsent_tickets_returns_ended_sessions_whose_ticket_is_unsent(
    store: SQLStore,
) -> None:
    assert store.load_unsent_tickets() == []
    store.save_sessions(
        [
            ended("A", started_at=at(4)),
            ended("B", status="INTERRUPTED", end_reason="stopped by Central", started_at=at(1)),
            ended("C", started_at=at(0), ticket_sent=True),
            session("D", status="SUPPLYING", started_at=at(0)),  # open: no ticket yet
            session("E", status="AUTHORISED", started_at=at(0)),
            ended("F", started_at=at(1)),
        ]
    )
    unsent = store.load_unsent_tickets()
    assert ids(unsent) == ["B", "F", "A"]
    assert all(r.status in ("COMPLETED", "INTERRUPTED") and not r.ticket_sent for r in unsent)
    store.save_sessions([dataclasses.replace(unsent[0], ticket_sent=True)])  # B's ticket sent
    assert ids(store.load_unsent_tickets()) == ["F", "A"]


def test_list_sessions_filters_orders_newest_first_and_limits(store: SQLStore) -> None:
    rows = [
        session("S1", cp_id="CP1", driver_id="D1", started_at=at(1)),
        ended("S2", cp_id="CP1", driver_id="D2", started_at=at(2)),
        session("S3", cp_id="CP2", driver_id="D1", started_at=at(3), status="SUPPLYING"),
        ended("S4", cp_id="CP2", driver_id="D2", started_at=at(4), ticket_sent=True),
        session("S5", cp_id="CP1", driver_id="D1", started_at=at(5)),
        session("S0", cp_id="CP1", driver_id="D1", started_at=at(5)),  # tie: by id, desc
    ]
    store.save_sessions(rows)
    assert ids(store.list_sessions()) == ["S5", "S0", "S4", "S3", "S2", "S1"]
    assert ids(store.list_sessions(cp_id="CP1")) == ["S5", "S0", "S2", "S1"]
    assert ids(store.list_sessions(driver_id="D2")) == ["S4", "S2"]
    assert ids(store.list_sessions(cp_id="CP1", driver_id="D1")) == ["S5", "S0", "S1"]
    assert ids(store.list_sessions("CP2", "D1")) == ["S3"]
    assert store.list_sessions(cp_id="CP9") == []
    assert store.list_sessions(cp_id="cp1") == []  # case-sensitive
    assert ids(store.list_sessions(limit=2)) == ["S5", "S0"]
    assert ids(store.list_sessions(driver_id="D1", limit=2)) == ["S5", "S0"]
    assert store.list_sessions(limit=0) == []
    assert store.list_sessions(cp_id="CP2") == [rows[3], rows[2]]  # whole rows


def test_list_sessions_limit_defaults_to_100(store: SQLStore) -> None:
    store.save_sessions(
        [session(f"S{n:03d}", started_at=T0 + timedelta(seconds=n)) for n in range(101)]
    )
    listed = store.list_sessions()
    assert len(listed) == 100
    assert listed[0].session_id == "S100" and listed[-1].session_id == "S001"


@pytest.mark.parametrize("limit", [-1, 1.5, "10", True, None])
def test_list_sessions_refuses_a_bad_limit(store: SQLStore, limit: Any) -> None:
    with pytest.raises(ValueError, match="limit"):
        store.list_sessions(limit=limit)


# -- status and atomicity -----------------------------------------------------------------


@pytest.mark.parametrize("status", ["ENDED", "completed", "", "AUTHORISED "])
def test_an_unknown_status_is_refused(store: SQLStore, status: str) -> None:
    with pytest.raises(StoreError, match="status") as caught:
        store.save_sessions([session(status=status)])
    assert not isinstance(caught.value, StoreUnavailable)
    assert store.list_sessions() == []
    store.save_sessions([session()])  # the store is still usable
    assert ids(store.list_sessions()) == ["S001"]


def test_the_database_itself_refuses_an_unknown_status(store: SQLStore) -> None:
    """ck_charging_sessions_status guards the table against other writers too."""
    insert = (
        "INSERT INTO charging_sessions (session_id, cp_id, driver_id, price_eur_kwh,"
        " started_at, status) VALUES ('S1', 'CP1', 'D1', '0.35', '2025-03-01 12:00:00', '{}')"
    )
    with pytest.raises(Exception, match="(?i)check|constraint"):
        raw(store, insert.format("BOGUS"))
    for status in SESSION_STATUSES:
        raw(store, insert.format(status).replace("'S1'", f"'{status}'"))
    assert sorted(r.status for r in store.list_sessions()) == sorted(SESSION_STATUSES)


def test_a_raw_insert_takes_the_column_defaults(store: SQLStore) -> None:
    raw(
        store,
        "INSERT INTO charging_sessions (session_id, cp_id, driver_id, price_eur_kwh,"
        " started_at, status) VALUES ('S1', 'CP1', 'D1', '0.35', '2025-03-01 12:00:00',"
        " 'AUTHORISED')",
    )
    assert store.get_session("S1") == SessionRow(
        session_id="S1",
        request_id="",
        cp_id="CP1",
        driver_id="D1",
        price_eur_kwh=Decimal("0.35"),
        started_at=datetime(2025, 3, 1, 12, tzinfo=UTC),
        ended_at=None,
        kwh=Decimal("0"),
        amount_eur=Decimal("0"),
        status="AUTHORISED",
        end_reason=None,
        ticket_sent=False,
        last_seq=0,
    )


def test_save_sessions_is_all_or_nothing(store: SQLStore) -> None:
    before = session("S0", kwh=Decimal("1.0000"))
    store.save_sessions([before])
    # refused before reaching the database
    with pytest.raises(StoreError):
        store.save_sessions(
            [session("S1"), dataclasses.replace(before, kwh=Decimal(2)), session("S2", status="X")]
        )
    # refused by the database in the middle of the batch
    with pytest.raises(StoreError) as caught:
        store.save_sessions(
            [
                session("S1"),
                dataclasses.replace(before, kwh=Decimal("2")),
                session("S2", end_reason="e" * 201),
                session("S3"),
            ]
        )
    assert not isinstance(caught.value, StoreUnavailable)
    assert store.list_sessions() == [before]
    store.save_sessions([session("S1"), session("S2")])  # still usable
    assert sorted(ids(store.list_sessions())) == ["S0", "S1", "S2"]


# -- threads ------------------------------------------------------------------------------


def test_eight_threads_saving_at_once_stay_consistent(store: SQLStore) -> None:
    threads_n, per_thread, steps = 8, 6, 4
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_n)

    def work(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            for i in range(per_thread):
                sid = f"T{n}-{i}"
                start = T0 + timedelta(minutes=n, seconds=i)
                store.save_sessions([session(sid, cp_id=f"CP{n}", driver_id=f"D{n}",
                                             started_at=start)])  # fmt: skip
                for seq in range(1, steps + 1):
                    kwh = Decimal(seq) / 10
                    store.save_sessions(
                        [
                            session(sid, cp_id=f"CP{n}", driver_id=f"D{n}", started_at=start,
                                    status="SUPPLYING", kwh=kwh, amount_eur=kwh * 2,
                                    last_seq=seq),
                            session("SHARED", request_id=f"thread {n}", last_seq=seq),
                        ]
                    )  # fmt: skip
                    got = store.get_session(sid)
                    assert got is not None and got.last_seq == seq
                    assert sid in ids(store.load_open_sessions())
                store.save_sessions(
                    [ended(sid, cp_id=f"CP{n}", driver_id=f"D{n}", started_at=start)]
                )
                assert sid in ids(store.load_unsent_tickets())
                assert len(store.list_sessions(cp_id=f"CP{n}")) == i + 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    everything = store.list_sessions(limit=1000)
    assert len(everything) == threads_n * per_thread + 1
    assert ids(store.load_open_sessions()) == ["SHARED"]
    shared = store.get_session("SHARED")
    assert shared is not None and shared.request_id.startswith("thread ")
    unsent = store.load_unsent_tickets()
    assert len(unsent) == threads_n * per_thread
    for row in unsent:
        n = int(row.session_id[1:].split("-")[0])
        assert row == ended(row.session_id, cp_id=f"CP{n}", driver_id=f"D{n}",
                            started_at=row.started_at)  # fmt: skip


# -- schema version 2 ---------------------------------------------------------------------

V1_COLUMNS = {
    "session_id", "cp_id", "driver_id", "price_eur_kwh", "started_at", "ended_at", "kwh",
    "amount_eur", "status", "end_reason", "ticket_sent", "last_seq",
}  # fmt: skip
V3_COLUMNS = {"engine_final", "corrected", "version"}
LATEST_COLUMNS = V1_COLUMNS | {"request_id"} | V3_COLUMNS | {"tag_uid", "account_id"}


def rebuild_at_version_1(store: SQLStore) -> SQLStore:
    """Empty the store's database and build it as a version-1 program did; returns a new,
    unmigrated store object on it."""
    for table in ("schema_version", "charging_points", "drivers", "charging_sessions",
                  "rejected_rows", "accounts", "rfid_tags"):  # fmt: skip
        raw(store, f"DROP TABLE IF EXISTS {table}")
    old = same_kind(store)
    old._run(lambda cur: cur.execute(old.SCHEMA_VERSION_DDL))
    old._run(lambda cur: old._apply(cur, 1, MIGRATIONS[1]))
    return old


def test_a_version_1_database_is_upgraded_in_place(store: SQLStore) -> None:
    old = rebuild_at_version_1(store)
    try:
        assert old.schema_versions() == [1]
        assert columns(store)["charging_sessions"] == V1_COLUMNS
        assert "ix_charging_sessions_status" not in indexes(store, "charging_sessions")
        raw(
            store,
            "INSERT INTO charging_sessions (session_id, cp_id, driver_id, price_eur_kwh,"
            " started_at, ended_at, kwh, amount_eur, status, end_reason, ticket_sent, last_seq)"
            " VALUES ('S1', 'CP1', 'D1', '0.3500', '2025-03-01 12:00:00',"
            " '2025-03-01 12:30:00', '1.5000', '0.5250', 'COMPLETED', 'unplugged', 1, 30)",
        )
        raw(store, "INSERT INTO drivers (driver_id) VALUES ('D1')")
    finally:
        old.close()

    upgraded = same_kind(store)  # what open_store does: a new store, then migrate()
    try:
        assert upgraded.migrate() == LATEST_VERSION == 7
        assert upgraded.schema_versions() == list(range(1, LATEST_VERSION + 1))
        assert columns(store)["charging_sessions"] == LATEST_COLUMNS
        assert indexes(store, "charging_sessions")["ix_charging_sessions_status"] == (
            "status", "ticket_sent", "started_at",
        )  # fmt: skip
        # existing rows are kept, with request_id ''
        assert upgraded.get_session("S1") == ended(
            "S1", request_id="", cp_id="CP1", driver_id="D1",
            started_at=datetime(2025, 3, 1, 12, tzinfo=UTC),
            ended_at=datetime(2025, 3, 1, 12, 30, tzinfo=UTC),
            kwh=Decimal("1.5"), amount_eur=Decimal("0.525"), ticket_sent=True, last_seq=30,
        )  # fmt: skip
        assert upgraded.driver_exists("D1")
        # and the new column works like the others
        upgraded.save_sessions([session("S2", request_id="r" * 64)])
        assert upgraded.get_session("S2") == session("S2", request_id="r" * 64)
        with pytest.raises(StoreError):
            upgraded.save_sessions([session("S3", request_id="r" * 65)])
        assert upgraded.migrate() == LATEST_VERSION  # idempotent
        assert upgraded.schema_versions() == list(range(1, LATEST_VERSION + 1))
    finally:
        upgraded.close()


def test_version_2_applied_again_over_its_own_changes_is_harmless(store: SQLStore) -> None:
    """As after a MySQL migration whose DDL ran but whose schema_version row was lost."""
    store.save_sessions([session()])
    raw(store, "DELETE FROM schema_version WHERE version >= 2")
    assert store.schema_versions() == [1]
    assert store.migrate() == LATEST_VERSION
    assert store.schema_versions() == list(range(1, LATEST_VERSION + 1))
    assert columns(store)["charging_sessions"] == LATEST_COLUMNS
    assert list(indexes(store, "charging_sessions")).count("ix_charging_sessions_status") == 1
    assert store.list_sessions() == [session()]


def test_concurrent_upgrades_from_version_1_apply_version_2_once(store: SQLStore) -> None:
    rebuild_at_version_1(store).close()
    results = migrate_at_once(store, 4)
    assert results == [LATEST_VERSION] * 4
    assert raw(store, "SELECT version FROM schema_version ORDER BY version") == [
        (v,) for v in range(1, LATEST_VERSION + 1)
    ]
    assert columns(store)["charging_sessions"] == LATEST_COLUMNS


# -- schema version 7: the index of the pages of sessions -------------------------------------------


def _drop_started_index(store: SQLStore) -> None:
    on = "" if type(store).__name__ == "SQLiteStore" else " ON charging_sessions"
    raw(store, f"DROP INDEX ix_charging_sessions_started{on}")


def test_a_version_6_database_gets_the_index_of_the_pages_of_sessions(store: SQLStore) -> None:
    store.save_sessions([session("S1"), session("S2", started_at=T0 + timedelta(minutes=1))])
    _drop_started_index(store)
    raw(store, "DELETE FROM schema_version WHERE version = 7")
    assert store.schema_versions() == [1, 2, 3, 4, 5, 6]
    assert "ix_charging_sessions_started" not in indexes(store, "charging_sessions")
    assert store.migrate() == LATEST_VERSION == 7
    assert store.schema_versions() == list(range(1, LATEST_VERSION + 1))
    assert indexes(store, "charging_sessions")["ix_charging_sessions_started"] == ("started_at", "session_id")
    assert [row.session_id for row in store.list_sessions_page(None, None, None, 10)] == ["S2", "S1"]


def test_version_7_applied_again_over_its_own_index_is_harmless(store: SQLStore) -> None:
    """As after a MySQL migration whose DDL ran but whose schema_version row was lost."""
    raw(store, "DELETE FROM schema_version WHERE version = 7")
    assert store.migrate() == LATEST_VERSION
    assert store.schema_versions() == list(range(1, LATEST_VERSION + 1))
    assert list(indexes(store, "charging_sessions")).count("ix_charging_sessions_started") == 1


def test_the_newest_page_of_sessions_is_read_by_the_index(store: SQLStore) -> None:
    if type(store).__name__ != "SQLiteStore":
        pytest.skip("MySQL's plan depends on the table's statistics; SQLite's is fixed")
    plan = " ".join(str(row[-1]) for row in raw(
        store, "EXPLAIN QUERY PLAN SELECT session_id FROM charging_sessions"
               " ORDER BY started_at DESC, session_id DESC LIMIT 50"))
    assert "ix_charging_sessions_started" in plan and "TEMP B-TREE" not in plan

