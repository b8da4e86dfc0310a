"""EV_W's decisions, cycle by cycle, with a fake source and a fake Central (no sockets): a failed
check decides nothing, the first reading after a start tells Central (an alert, or a clear of
one EV_W may have left), an alert follows its city's CPs, a removed city's alert is cleared,
Central's outage is said once and what was decided is sent when it answers, a refused call is
not sent again as it is, and a slow check is never asked twice at once."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from ev_weather.central import CentralError
from ev_weather.locations import LocationsFile
from ev_weather.office import WeatherWatch
from ev_weather.source import SourceError
from tests.support.clock import FakeClock
from tests.support.waiting import wait_until


class Source:
    simulated = False
    timeout = 0.05

    def __init__(self) -> None:
        self.readings: dict[str, object] = {}  # city -> Decimal, or an exception to raise
        self.asked: list[str] = []
        self.gate: threading.Event | None = None  # set: checks wait for it

    def describe(self) -> str:
        return "the fake source"

    def check(self, city: str) -> Decimal:
        self.asked.append(city)
        if self.gate is not None:
            self.gate.wait(5)
        reading = self.readings.get(city, SourceError(f"{city}: no reading"))
        if isinstance(reading, Exception):
            raise reading
        return Decimal(str(reading))


class Central:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.alerts: dict[str, list[str]] = {}
        self.failure: CentralError | None = None  # every call fails so
        self.refuse_alerts: CentralError | None = None

    def report(self, reports) -> None:
        self._fail()
        self.calls.append(("report", [(r["city"], r["temperature"], r["error"]) for r in reports]))

    def alert(self, city, temperature, cp_ids) -> dict:
        self._fail()
        if self.refuse_alerts is not None:
            raise self.refuse_alerts
        self.calls.append(("alert", city, temperature, tuple(cp_ids)))
        unchanged = set(self.alerts.get(city, ())) == set(cp_ids) and city in self.alerts
        self.alerts[city] = list(cp_ids)
        return {"city": city, "active": True, "stopped": [] if unchanged else list(cp_ids), "resumed": [],
                "unchanged": unchanged}

    def clear(self, city) -> dict | None:
        self._fail()
        self.calls.append(("clear", city))
        cps = self.alerts.pop(city, None)
        return None if cps is None else {"city": city, "active": False, "stopped": [], "resumed": cps,
                                         "unchanged": False}

    def sent(self) -> list[tuple]:
        """The alerts and clears, in order (not the reports)."""
        return [c for c in self.calls if c[0] != "report"]

    def _fail(self) -> None:
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def setup(tmp_path):
    path = tmp_path / "locations.txt"
    path.write_text("CP001 Alicante,ES\nCP002 Alicante,ES\nCP003 Madrid,ES\n")
    source, central, said, clock = Source(), Central(), [], FakeClock(100.0)
    watch = WeatherWatch(LocationsFile(path), source, central, every=4, say=said.append, clock=clock)
    yield watch, source, central, said, path, clock
    if source.gate is not None:
        source.gate.set()
    watch.close()


def test_the_first_readings_tell_central_and_a_repeat_sends_nothing(setup):
    watch, source, central, said, path, clock = setup
    source.readings = {"Alicante,ES": "-2.5", "Madrid,ES": "14"}
    watch.cycle()
    # after a start EV_W does not know what Central holds: the cold city's alert, the warm city's clear
    assert central.sent() == [("alert", "Alicante,ES", Decimal("-2.5"), ("CP001", "CP002")), ("clear", "Madrid,ES")]
    assert central.calls[0] == ("report", [("Alicante,ES", Decimal("-2.5"), None), ("Madrid,ES", Decimal("14"), None)])
    watch.cycle()
    source.readings["Alicante,ES"] = "-9"
    watch.cycle()
    assert len(central.sent()) == 2  # nothing new to say: only reports
    assert [c[0] for c in central.calls].count("report") == 3
    assert not any("Central had no alert" in s for s in said)  # the start's clear of nothing is not news
    source.readings["Alicante,ES"] = "0"
    watch.cycle()
    assert central.sent()[-1] == ("clear", "Alicante,ES")
    lines = {line.city: line for line in watch.view().cities}
    assert not lines["Alicante,ES"].alert and lines["Alicante,ES"].sent


def test_a_failed_check_decides_nothing(setup):
    watch, source, central, said, path, clock = setup
    source.readings = {"Alicante,ES": "5", "Madrid,ES": "5"}
    watch.cycle()
    sent = len(central.sent())
    source.readings["Alicante,ES"] = SourceError("no answer within 3 s")
    source.readings["Madrid,ES"] = SourceError("the answer is not JSON")
    for _ in range(3):
        watch.cycle()
    assert len(central.sent()) == sent
    assert sum("Alicante,ES: no answer within 3 s" in s for s in said) == 1  # said once, not each cycle
    report = [c for c in central.calls if c[0] == "report"][-1][1]
    assert report == [("Alicante,ES", None, "no answer within 3 s"), ("Madrid,ES", None, "the answer is not JSON")]
    line = {line.city: line for line in watch.view().cities}["Alicante,ES"]
    assert line.temperature == Decimal("5") and line.error == "no answer within 3 s"  # the last good reading kept
    assert "error: no answer within 3 s" in line.text()

    # cold, then failing: the alert (decided from the good reading) goes; failures never clear it
    source.readings["Alicante,ES"] = "-1"
    watch.cycle()
    source.readings["Alicante,ES"] = SourceError("HTTP 500")
    watch.cycle()
    watch.cycle()
    assert [c[0] for c in central.sent()[sent:]] == ["alert"]
    assert any(s == "Alicante,ES: read again, -1 °C" for s in said)


def test_an_alert_follows_its_citys_cps_and_a_removed_city_is_cleared(setup):
    watch, source, central, said, path, clock = setup
    source.readings = {"Alicante,ES": "-3", "Madrid,ES": "-4", "Elche,ES": "-5"}
    watch.cycle()
    path.write_text("CP001 Alicante,ES\nCP004 Alicante,ES\nCP005 Elche,ES\n")  # CP002 moved away, Madrid gone
    watch.cycle()
    assert central.sent()[2:] == [("alert", "Alicante,ES", Decimal("-3"), ("CP001", "CP004")),
                                  ("alert", "Elche,ES", Decimal("-5"), ("CP005",)), ("clear", "Madrid,ES")]
    assert any("removed Madrid,ES (their alerts at Central will be cleared)" in s for s in said)
    assert any("alert Madrid,ES cleared (removed from the locations): Central resumed CP003" in s for s in said)
    watch.cycle()
    assert len(central.sent()) == 5 and "Madrid,ES" not in central.alerts
    assert source.asked.count("Madrid,ES") == 1  # no longer checked


def test_a_city_removed_before_any_reading_is_left_alone(setup):
    watch, source, central, said, path, clock = setup
    source.readings = {"Alicante,ES": "3"}  # Madrid fails: nothing known of it
    watch.cycle()
    path.write_text("CP001 Alicante,ES\n")
    watch.cycle()
    assert ("clear", "Madrid,ES") not in central.sent()


def test_central_unreachable_is_said_once_and_the_decisions_wait(setup):
    watch, source, central, said, path, clock = setup
    central.failure = CentralError(None, "cannot reach Central at http://central:8000: refused")
    source.readings = {"Alicante,ES": "-3", "Madrid,ES": "8"}
    watch.cycle()
    assert any(s.startswith("Central: cannot reach Central at http://central:8000: refused; trying again")
               for s in said)
    view = watch.view()
    assert not view.central_ok and view.waiting == 2 and "cannot reach" in view.central
    assert "ALERT (waiting for Central)" in view.cities[0].text()
    for _ in range(5):
        clock.advance(4)
        watch.cycle()
    assert sum("trying again" in s for s in said) == 1
    central.failure = None
    clock.advance(60)  # past the backoff
    watch.cycle()
    assert central.sent() == [("alert", "Alicante,ES", Decimal("-3"), ("CP001", "CP002")), ("clear", "Madrid,ES")]
    assert said[-1] == "Central answers again; alerts and clears sent"
    assert watch.view().central_ok and watch.view().waiting == 0


def test_the_backoff_between_tries(setup):
    watch, source, central, said, path, clock = setup
    central.failure = CentralError(503, "Central runs no weather office")
    source.readings = {"Alicante,ES": "1", "Madrid,ES": "1"}
    watch.cycle()
    tries = len(central.calls)
    central.failure = None
    watch.cycle()  # at once: within the backoff, Central is not asked
    assert len(central.calls) == tries
    clock.advance(31)  # the cap
    watch.cycle()
    assert len(central.calls) > tries


def test_a_refused_alert_is_not_sent_again_as_it_is(setup):
    watch, source, central, said, path, clock = setup
    central.refuse_alerts = CentralError(422, "a CP id is 1-64 characters")
    source.readings = {"Alicante,ES": "-3", "Madrid,ES": "5"}
    watch.cycle()
    watch.cycle()
    assert sum(s.startswith("Central refused the alert for Alicante,ES") for s in said) == 1
    assert watch.view().central_ok  # the call's fault, not Central's
    central.refuse_alerts = None
    source.readings["Alicante,ES"] = "-4"  # what it carries changed: tried again
    watch.cycle()
    assert ("alert", "Alicante,ES", Decimal("-4"), ("CP001", "CP002")) in central.sent()


def test_a_slow_check_is_not_asked_twice(setup):
    watch, source, central, said, path, clock = setup
    source.readings = {"Alicante,ES": "1", "Madrid,ES": "1"}
    source.gate = threading.Event()  # no answer until set
    watch.cycle()
    watch.cycle()
    assert sorted(source.asked) == ["Alicante,ES", "Madrid,ES"]  # each asked once, still out
    assert any("no answer within" in s for s in said)
    assert all(line.error and "no answer within" in line.error for line in watch.view().cities)
    source.gate.set()

    def answered() -> bool:
        watch.cycle()
        return all(line.error is None for line in watch.view().cities)

    wait_until(answered, 10, "the checks to be answered once the source answers", interval=0.05)
    assert all(line.temperature == Decimal("1") for line in watch.view().cities)


def test_run_goes_on_after_a_failing_cycle(setup, monkeypatch):
    watch, source, central, said, path, clock = setup
    watch.every = 0.01
    calls = []

    def boom() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        if len(calls) >= 3:
            stop.set()

    stop = threading.Event()
    monkeypatch.setattr(watch, "cycle", boom)
    worker = threading.Thread(target=watch.run, args=(stop,))
    worker.start()
    worker.join(5)
    assert not worker.is_alive() and len(calls) >= 3
