"""Row versions (schema version 3), refusals that name the refused row, and ``rejected_rows``,
on both backends through the ``store`` fixture of tests/central/conftest.py."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from ev_central.store import CPRow, SessionRow, StoreRefused, StoreUnavailable, open_store
from ev_central.store.sql import LATEST_VERSION, SQLStore
from tests.central.conftest import columns, raw

UTC = timezone.utc
T0 = datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)


def cp(cp_id: str = "CP001", **changes: Any) -> CPRow:
    values: dict[str, Any] = dict(cp_id=cp_id, location="Calle Mayor 1", price_eur_kwh=Decimal("0.3500"),
                                  state="ACTIVADO", stopped=False, updated_at=T0)
    values.update(changes)
    return CPRow(**values)


def session(session_id: str = "S001", **changes: Any) -> SessionRow:
    values: dict[str, Any] = dict(
        session_id=session_id, request_id=f"req-{session_id}", cp_id="CP001", driver_id="D001",
        price_eur_kwh=Decimal("0.3500"), started_at=T0, ended_at=None, kwh=Decimal("0"),
        amount_eur=Decimal("0"), status="AUTHORISED", end_reason=None, ticket_sent=False, last_seq=0,
    )
    values.update(changes)
    return SessionRow(**values)


# -- the new fields ------------------------------------------------------------------------


def test_the_new_fields_come_last_with_their_defaults() -> None:
    assert [f.name for f in dataclasses.fields(CPRow)][-1] == "version"
    assert [f.name for f in dataclasses.fields(SessionRow)][-6:] == [
        "last_seq", "engine_final", "corrected", "version", "tag_uid", "account_id",
    ]  # fmt: skip
    row = session()
    assert (row.engine_final, row.corrected, row.version) == (False, False, 0)
    assert cp().version == 0


def test_versions_and_flags_round_trip(store: SQLStore) -> None:
    big = 2**63 - 1  # BIGINT
    store.save_charging_points([cp(version=big)])
    store.save_sessions([session(engine_final=True, corrected=True, version=7)])
    assert store.load_charging_points() == [cp(version=big)]
    loaded = store.get_session("S001")
    assert loaded == session(engine_final=True, corrected=True, version=7)
    assert loaded is not None and loaded.engine_final is True and loaded.corrected is True


@pytest.mark.parametrize("version", [-1, 2**63, 1.0, True, "3"])
def test_a_bad_version_is_refused(store: SQLStore, version: Any) -> None:
    with pytest.raises(StoreRefused) as caught:
        store.save_sessions([session(version=version)])
    assert caught.value.row_id == "S001"
    with pytest.raises(StoreRefused):
        store.save_charging_points([cp(version=version)])


# -- the version rule ----------------------------------------------------------------------


def test_an_older_session_never_replaces_a_newer_one(store: SQLStore) -> None:
    v2 = session(status="SUPPLYING", kwh=Decimal("2.5000"), last_seq=20, version=2)
    v1 = session(status="SUPPLYING", kwh=Decimal("1.0000"), last_seq=10, version=1)
    store.save_sessions([v2])
    store.save_sessions([v1])
    assert store.get_session("S001") == v2
    # in one batch too, and a newer row of another session goes in beside it
    store.save_sessions([v1, session("S002", version=5), session("S002", version=4)])
    assert store.get_session("S001") == v2
    assert store.get_session("S002") == session("S002", version=5)
    # the same version replaces (the latest save wins, as before versions)
    same = dataclasses.replace(v2, kwh=Decimal("2.6000"), last_seq=21)
    store.save_sessions([same])
    assert store.get_session("S001") == same
    newer = dataclasses.replace(v2, status="COMPLETED", ended_at=T0 + timedelta(hours=1),
                                end_reason="unplugged", engine_final=True, version=3)
    store.save_sessions([newer])
    assert store.get_session("S001") == newer


def test_an_older_cp_row_never_replaces_a_newer_one(store: SQLStore) -> None:
    store.save_charging_points([cp(state="AVERIADO", version=2)])
    store.save_charging_points([cp(state="ACTIVADO", stopped=True, version=1)])
    assert store.load_charging_points() == [cp(state="AVERIADO", version=2)]
    store.save_charging_points([cp(state="PARADO", version=2)])
    assert store.load_charging_points() == [cp(state="PARADO", version=2)]
    # in one batch (one multi-row statement) too, beside a new CP and a newer row of a third
    store.save_charging_points([cp("CP002", version=1), cp("CP003", version=2, state="AVERIADO")])
    store.save_charging_points([cp(state="ACTIVADO", version=1), cp("CP002", state="AVERIADO", version=2),
                                cp("CP003", version=1), cp("CP004", version=7)])
    assert store.load_charging_points() == [cp(state="PARADO", version=2), cp("CP002", state="AVERIADO", version=2),
                                            cp("CP003", version=2, state="AVERIADO"), cp("CP004", version=7)]


def test_mark_all_disconnected_keeps_versions(store: SQLStore) -> None:
    store.save_charging_points([cp("CP1", version=4), cp("CP2", version=9, stopped=True)])
    at = T0 + timedelta(days=1)
    assert store.mark_all_disconnected(at) == 2
    assert store.load_charging_points() == [
        cp("CP1", state="DESCONECTADO", updated_at=at, version=4),
        cp("CP2", state="DESCONECTADO", updated_at=at, version=9, stopped=True),
    ]


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        ({"end_reason": "e" * 300}, "end_reason"),  # refused by the database itself
        ({"cp_id": "C" * 65}, "cp_id"),  # idem
        ({"kwh": Decimal("100000000")}, "kwh"),  # DECIMAL(12,4)
        ({"amount_eur": Decimal("1E+30")}, "amount_eur"),
        ({"last_seq": 2**31}, "last_seq"),
        ({"status": "ENDED"}, "status"),
    ],
)
def test_a_refused_row_is_named_and_nothing_of_its_batch_is_saved(
    store: SQLStore, changes: dict[str, Any], what: str
) -> None:
    with pytest.raises(StoreRefused) as caught:
        store.save_sessions([session("S1"), session("BAD", **changes), session("S3")])
    refused = caught.value
    assert not isinstance(refused, StoreUnavailable)
    assert refused.row_id == "BAD" and "BAD" in str(refused)
    if what not in ("end_reason", "cp_id"):
        assert what in refused.reason
    assert store.list_sessions() == []
    store.save_sessions([session("S1"), session("S3")])  # still usable
    assert len(store.list_sessions()) == 2


def test_mysql_refusals_carry_the_server_errno(fresh_mysql_url: str) -> None:
    store = open_store(fresh_mysql_url)
    try:
        with pytest.raises(StoreRefused) as caught:
            store.save_sessions([session(end_reason="e" * 300)])
        assert caught.value.errno == 1406  # ER_DATA_TOO_LONG
        with pytest.raises(StoreRefused) as caught:
            store.save_charging_points([cp(location="x" * 201)])
        assert caught.value.errno == 1406 and caught.value.row_id == "CP001"
        assert not store.breaker.is_open  # a refusal is no outage
    finally:
        store.close()


def test_a_refused_cp_row_is_named(store: SQLStore) -> None:
    with pytest.raises(StoreRefused) as caught:
        store.save_charging_points([cp("CP1"), cp("CP2", state="ENCENDIDO")])
    assert caught.value.row_id == "CP2"
    with pytest.raises(StoreRefused) as caught:
        store.save_charging_points([cp("CP3", price_eur_kwh=Decimal("1000000"))])
    assert caught.value.row_id == "CP3"


# -- rejected_rows -------------------------------------------------------------------------


def test_rejected_rows_are_kept_newest_first(store: SQLStore) -> None:
    assert store.list_rejected() == []
    store.add_rejected("session", "S1", "data too long", '{"session_id": "S1"}', at=T0)
    store.add_rejected("cp", "CP1", "bad state", '{"cp_id": "CP1"}')
    first, second = store.list_rejected()[::-1]
    assert (first.kind, first.row_id, first.reason, first.at) == ("session", "S1", "data too long", T0)
    assert json.loads(first.row_json) == {"session_id": "S1"}
    assert second.kind == "cp" and second.at.tzinfo == UTC and second.id > first.id
    assert [r.row_id for r in store.list_rejected(limit=1)] == ["CP1"]
    with pytest.raises(ValueError):
        store.add_rejected("driver", "D1", "x", "{}")


def test_anything_refused_can_be_kept_in_rejected_rows(store: SQLStore) -> None:
    """Texts too long for their columns are cut; what UTF-8 cannot encode is escaped."""
    store.add_rejected("session", "S" * 500 + "\ud800", "r\x00" * 2000, "{" + "x" * 70_000 + "}")
    (row,) = store.list_rejected()
    assert len(row.row_id) <= 200 and row.row_id.startswith("SSS")
    assert len(row.reason) <= 1000 and row.reason.startswith("r\x00")
    assert len(row.row_json) <= 60_000


def test_version_3_applied_again_over_its_own_changes_is_harmless(store: SQLStore) -> None:
    """As after a MySQL migration whose DDL ran but whose schema_version row was lost."""
    store.save_sessions([session(version=3)])
    store.add_rejected("cp", "CP1", "x", "{}")
    raw(store, "DELETE FROM schema_version WHERE version = 3")
    assert store.migrate() == LATEST_VERSION == 7
    assert store.schema_versions() == list(range(1, LATEST_VERSION + 1))
    assert {"engine_final", "corrected", "version"} <= columns(store)["charging_sessions"]
    assert store.get_session("S001") == session(version=3)
    assert len(store.list_rejected()) == 1


def test_a_version_2_database_is_upgraded_keeping_its_rows(store: SQLStore) -> None:
    for statement in (
        "DROP TABLE rejected_rows",
        "ALTER TABLE charging_points DROP COLUMN version",
        "ALTER TABLE charging_sessions DROP COLUMN version",
        "ALTER TABLE charging_sessions DROP COLUMN engine_final",
        "ALTER TABLE charging_sessions DROP COLUMN corrected",
        "DELETE FROM schema_version WHERE version >= 3",
    ):
        raw(store, statement)
    raw(store, "INSERT INTO charging_points (cp_id, location, price_eur_kwh) VALUES ('CP9', 'x', '0.3')")
    assert "version" not in columns(store)["charging_points"]
    assert store.migrate() == LATEST_VERSION
    (row,) = store.load_charging_points()
    assert row.cp_id == "CP9" and row.version == 0
    store.save_charging_points([dataclasses.replace(row, state="PARADO", version=1)])
    assert store.load_charging_points()[0].state == "PARADO"
