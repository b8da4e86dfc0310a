"""Schema version 6 on both backends: the weather alerts in force (``weather_alerts``)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ev_central.core.entities import WeatherAlertRow
from ev_central.store.base import StoreRefused
from ev_central.store.sql import LATEST_VERSION
from tests.central.conftest import columns, raw, same_kind

T0 = datetime(2026, 1, 15, 6, 30, 0, 250000, tzinfo=timezone.utc)


def alert(city: str = "Alicante,ES", cp_ids=("CP001", "CP002"), temperature="-2.5", since=T0) -> WeatherAlertRow:
    return WeatherAlertRow(city, tuple(cp_ids), Decimal(temperature), since)


def test_the_table_and_its_version(store) -> None:
    assert store.schema_versions()[-1] == LATEST_VERSION == 7
    assert columns(store)["weather_alerts"] == {"city", "cp_ids", "temperature", "since"}
    assert store.load_weather_alerts() == []


def test_save_load_replace_delete(store) -> None:
    store.save_weather_alert(alert())
    store.save_weather_alert(alert("Madrid,ES", ("CP003",), "-0.01", T0 + timedelta(seconds=4)))
    loaded = store.load_weather_alerts()
    assert [a.city for a in loaded] == ["Alicante,ES", "Madrid,ES"]
    assert loaded[0] == alert(temperature="-2.5000")
    assert loaded[0].temperature == Decimal("-2.5") and loaded[0].since == T0
    assert loaded[1].cp_ids == ("CP003",) and loaded[1].temperature == Decimal("-0.01")
    store.save_weather_alert(alert(cp_ids=("CP002", "CP009"), temperature="-4"))  # the same city: replaced
    assert [(a.city, a.cp_ids, a.temperature) for a in store.load_weather_alerts()] == [
        ("Alicante,ES", ("CP002", "CP009"), Decimal("-4")), ("Madrid,ES", ("CP003",), Decimal("-0.01"))]
    assert store.delete_weather_alert("Alicante,ES") is True
    assert store.delete_weather_alert("Alicante,ES") is False
    assert [a.city for a in store.load_weather_alerts()] == ["Madrid,ES"]


def test_an_alert_without_cps_and_one_with_the_most(store) -> None:
    many = tuple(f"CP{n:04d}-{'x' * 57}" for n in range(1000))  # 1000 ids of 64 characters
    store.save_weather_alert(alert("Oslo,NO", ()))
    store.save_weather_alert(alert("Tromso,NO", many))
    assert {a.city: a.cp_ids for a in store.load_weather_alerts()} == {"Oslo,NO": (), "Tromso,NO": many}


@pytest.mark.parametrize("row", [
    alert(city=""),
    alert(city="x" * 101),
    alert(city="Alicante\x00,ES"),
    alert(cp_ids=("CP 1",)),
    alert(cp_ids=("CP1,CP2",)),
    alert(cp_ids=tuple(f"CP{n}" for n in range(1001))),
    WeatherAlertRow("Alicante,ES", ("CP1",), Decimal("NaN"), T0),
    WeatherAlertRow("Alicante,ES", ("CP1",), Decimal("1e9"), T0),
], ids=["empty city", "long city", "unprintable city", "bad id", "comma in an id", "too many CPs", "NaN",
        "too cold"])
def test_what_does_not_fit_is_refused_and_nothing_is_saved(store, row) -> None:
    store.save_weather_alert(alert())
    with pytest.raises(StoreRefused):
        store.save_weather_alert(row)
    assert store.load_weather_alerts() == [alert()]


def test_alerts_survive_a_new_store_on_the_same_database(store) -> None:
    store.save_weather_alert(alert())
    again = same_kind(store)
    try:
        assert again.migrate() == LATEST_VERSION
        assert again.load_weather_alerts() == [alert()]
    finally:
        again.close()


def test_version_6_applied_again_over_its_own_changes_is_harmless(store) -> None:
    """As after a MySQL migration whose DDL ran but whose schema_version row was lost."""
    store.save_weather_alert(alert())
    raw(store, "DELETE FROM schema_version WHERE version = 6")
    assert store.migrate() == LATEST_VERSION
    assert store.schema_versions() == list(range(1, LATEST_VERSION + 1))
    assert store.load_weather_alerts() == [alert()]


def test_a_version_5_database_is_upgraded(store) -> None:
    raw(store, "DROP TABLE weather_alerts")
    raw(store, "DELETE FROM schema_version WHERE version = 6")
    assert store.schema_versions() == [1, 2, 3, 4, 5, 7]
    assert store.migrate() == LATEST_VERSION
    store.save_weather_alert(alert())
    assert store.load_weather_alerts() == [alert()]
