"""EV_W's sources: OpenWeather (here the fake on 127.0.0.1, answering in its format) with every
failure bounded and said without the key, and the simulation file."""

from __future__ import annotations

import logging
import time
from decimal import Decimal

import pytest

from ev_weather.source import OpenWeather, Simulation, SourceError
from tests.support.services import free_port
from tests.weather.openweather import KEY, FakeOpenWeather


@pytest.fixture
def source(weather: FakeOpenWeather):
    opened = OpenWeather(weather.url, KEY, timeout=0.5)
    yield opened
    opened.close()


def test_the_temperature_in_main_temp(weather, source):
    weather.set("Alicante,ES", "12.34")
    weather.set("Oslo,NO", "-7")
    assert source.check("Alicante,ES") == Decimal("12.34")
    assert source.check("Oslo,NO") == Decimal("-7")
    (query,) = weather.queries[:1]
    assert query == {"q": ["Alicante,ES"], "appid": [KEY], "units": ["metric"]}


@pytest.mark.parametrize("fault, said", [
    (dict(garbage=True), "the answer is not JSON"),
    (dict(no_temp=True), "the answer has no main.temp"),
    (dict(status=500), "the weather service refused (HTTP 500): something failed"),
    (dict(status=429), "too many requests for this key (HTTP 429)"),
])
def test_a_bad_answer_is_an_error(weather, source, fault, said):
    weather.set("Alicante,ES", "12")
    weather.fault("Alicante,ES", **fault)
    with pytest.raises(SourceError) as caught:
        source.check("Alicante,ES")
    assert str(caught.value).startswith(said)


def test_an_unknown_city_and_a_wrong_key(weather, source):
    with pytest.raises(SourceError, match=r"city not found \(HTTP 404\)"):
        source.check("Atlantis,XX")
    weather.key = "another-key-0123456789abcdef0123"
    weather.set("Alicante,ES", "12")
    with pytest.raises(SourceError, match=r"the API key was refused \(HTTP 401\): Invalid API key") as caught:
        source.check("Alicante,ES")
    assert KEY not in str(caught.value)


def test_every_request_is_bounded(weather, source):
    weather.set("Alicante,ES", "12")
    weather.fault("Alicante,ES", delay=3)
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"no answer within 0\.5 s"):
        source.check("Alicante,ES")
    weather.fault("Alicante,ES", drip=True)  # a byte every 0.2 s: each read is in time, the whole is not
    with pytest.raises(SourceError, match=r"the answer did not end within 1 s"):
        source.check("Alicante,ES")
    assert time.monotonic() - started < 4


def test_nothing_listens():
    source = OpenWeather(f"http://127.0.0.1:{free_port()}/data/2.5/weather", KEY, timeout=0.5)
    try:
        with pytest.raises(SourceError, match="cannot reach the weather service") as caught:
            source.check("Alicante,ES")
        assert KEY not in str(caught.value)
    finally:
        source.close()


@pytest.mark.parametrize("value", ["NaN", "1e999", "150", '"hot"', "true", "null"])
def test_a_value_that_is_not_a_temperature(value):
    from ev_weather.source import temperature

    with pytest.raises(SourceError):
        temperature({"NaN": float("nan"), "1e999": float("inf"), "150": 150, '"hot"': "hot", "true": True,
                     "null": None}[value])


def test_the_key_never_reaches_the_log(weather, source, caplog):
    caplog.set_level(logging.DEBUG)
    weather.set("Alicante,ES", "12")
    source.check("Alicante,ES")
    weather.key = "x"
    with pytest.raises(SourceError):
        source.check("Alicante,ES")
    assert KEY not in caplog.text and KEY not in repr(source)


def test_the_simulation_file(tmp_path):
    path = tmp_path / "temperatures.txt"
    said: list[str] = []
    simulation = Simulation(path, say=said.append)
    with pytest.raises(SourceError, match="cannot be read"):
        simulation.check("Alicante,ES")
    path.write_text("# City,CC temperature\nAlicante,ES -2.5\nsan vicente del raspeig , es 3\nMadrid 4\nOslo,NO cold\n")
    assert simulation.check("alicante,es") == Decimal("-2.5")
    assert simulation.check("San Vicente del Raspeig,ES") == Decimal("3")
    assert len(said) == 2 and "line 4" in said[0] and "line 5" in said[1]
    with pytest.raises(SourceError, match="Elche,ES is not in the simulation file"):
        simulation.check("Elche,ES")
    path.write_text("Alicante,ES 1\n")
    assert simulation.check("Alicante,ES") == Decimal("1")
    assert simulation.simulated and "SIMULATED" in simulation.describe()


def test_a_reading_is_kept_to_a_hundredth_of_a_degree_rounded_half_up(tmp_path):
    path = tmp_path / "temperatures.txt"
    path.write_text("Alicante,ES -2.555\nMadrid,ES 12.345\nElche,ES -0.004\nTeruel,ES -2.5\nOslo,NO -2.5549\n")
    simulation = Simulation(path, say=lambda _: None)
    read = {city: simulation.check(city) for city in ("Alicante,ES", "Madrid,ES", "Elche,ES", "Teruel,ES", "Oslo,NO")}
    assert read == {"Alicante,ES": Decimal("-2.56"), "Madrid,ES": Decimal("12.35"), "Elche,ES": Decimal("0"),
                    "Teruel,ES": Decimal("-2.5"), "Oslo,NO": Decimal("-2.55")}
    assert [str(read[c]) for c in ("Alicante,ES", "Elche,ES", "Teruel,ES")] == ["-2.56", "0.00", "-2.5"]
    assert not read["Elche,ES"] < 0  # rounds to 0 °C: no alert


def test_what_is_sent_to_central_has_at_most_2_decimal_places():
    from ev_weather.central import _number

    assert [_number(Decimal(v)) for v in ("-2.555", "-3", "-2.5", "0.005", "-0.004")] == [-2.56, -3, -2.5, 0.01, 0]
    assert _number(None) is None
