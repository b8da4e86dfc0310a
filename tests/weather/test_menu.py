"""EV_W's screens: the menu on a terminal (Textual, driven by its pilot: [a] add, [r] remove,
[l] list, [q] quit, the cities' box) and the plain lines."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from datetime import datetime
from decimal import Decimal

from ev_weather.cli import command
from ev_weather.locations import LocationsFile
from ev_weather.menu import WeatherMenu
from ev_weather.office import CityLine, WatchView
from ev_weather.screen import Messages, PlainScreen

AT = datetime(2026, 1, 15, 7, 30, 5)


def view(*cities: CityLine, central: str = "Central OK", ok: bool = True) -> WatchView:
    return WatchView("SIMULATED temperatures from t.txt", central, ok, list(cities), 0, 3)


ALICANTE = CityLine("Alicante,ES", ("CP001", "CP002"), Decimal("-2.5"), None, True, True, True, AT)
MADRID = CityLine("Madrid,ES", ("CP003",), Decimal("14"), "no answer within 3 s", False, True, False, AT)


async def until(pilot, condition, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; shown:\n{pilot.app.shown_text}")
        await pilot.pause(0.02)


def test_city_lines():
    assert ALICANTE.text() == "Alicante,ES               -2.5 °C  ALERT  [SIMULATED]  CP001, CP002"
    assert MADRID.text() == "Madrid,ES                   14 °C (07:30:05)  ok; now error: no answer within 3 s  CP003"
    failing = CityLine("Elche,ES", ("CP4",), None, "city not found (HTTP 404)", False, True, False, None)
    assert failing.text().split()[1:] == ["?", "error:", "city", "not", "found", "(HTTP", "404)", "CP4"]
    waiting = CityLine("Elche,ES", (), None, None, False, False, False, None)
    assert waiting.text().split() == ["Elche,ES", "?", "not", "checked", "yet", "(no", "CP)"]
    unsent = CityLine("Oslo,NO", ("CP9",), Decimal("-1"), None, True, False, False, AT)
    assert "ALERT (waiting for Central)" in unsent.text()


def test_the_menu_adds_removes_lists_and_quits(tmp_path):
    from textual.widgets import Input, RichLog

    path = tmp_path / "locations.txt"
    path.write_text("CP001 Alicante,ES\nCP002 Alicante,ES\n")
    locations = LocationsFile(path)
    locations.reload_if_changed()
    messages = Messages(PlainScreen(io.StringIO()))
    messages.attach()
    shown = [view(ALICANTE, MADRID)]
    stop = threading.Event()
    app = WeatherMenu(lambda: shown[0], locations, messages, stop, refresh_every=0.05)

    async def scenario():
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: "Alicante,ES" in app.shown_text, "the cities")
            assert "SIMULATED" in app.shown_text and "ALERT" in app.shown_text and "Central OK" in app.shown_text
            assert "error: no answer within 3 s" in app.shown_text
            area = app.query_one("#messages", RichLog)

            await pilot.press("a")
            field = app.query_one("#entry", Input)
            await until(pilot, lambda: app.focused is field, "the input")
            await pilot.press(*"CP003 Madrid,ES", "enter")  # "r", "l", "q" typed into it do nothing else
            await until(pilot, lambda: any("added CP003 at Madrid,ES" in line.text for line in area.lines), "added")
            assert path.read_text().splitlines()[-1] == "CP003 Madrid,ES"
            assert not field.display and app.focused is None and not stop.is_set()

            await pilot.press("a", *"CP003 Elche,ES", "enter")
            await until(pilot, lambda: any("not added: CP003 is listed already" in line.text for line in area.lines),
                        "refused")
            await pilot.press("r", *"Alicante,ES", "enter")
            await until(pilot, lambda: any("removed CP001, CP002" in line.text for line in area.lines), "removed")
            assert path.read_text() == "CP003 Madrid,ES\n"
            await pilot.press("r", "escape")
            await until(pilot, lambda: not field.display, "the input to close")
            locations.reload_if_changed()
            await pilot.press("l")
            await until(pilot, lambda: any("Madrid,ES: CP003" in line.text for line in area.lines), "listed")

            shown[0] = view(central="Central: cannot reach Central at http://c:8000", ok=False)
            await until(pilot, lambda: "cannot reach Central" in app.shown_text and "no locations yet" in
                        app.shown_text, "the new view")
            await pilot.press("q")
        assert stop.is_set()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_the_plain_screen_prints_only_what_changed():
    out = io.StringIO()
    screen = PlainScreen(out, now=lambda: AT)
    screen.show(view(ALICANTE, MADRID))
    screen.show(view(ALICANTE, MADRID))
    warmer = CityLine("Alicante,ES", ("CP001", "CP002"), Decimal("1"), None, False, True, True, AT)
    screen.show(view(warmer, MADRID))
    lines = out.getvalue().splitlines()
    assert lines[0] == "07:30:05 SIMULATED temperatures from t.txt | Central OK"
    assert [line.split()[1] for line in lines[1:]] == ["Alicante,ES", "Madrid,ES", "Alicante,ES"]
    assert "1 °C  ok" in lines[-1]


def test_command_lines(tmp_path):
    locations = LocationsFile(tmp_path / "locations.txt")
    said: list[str] = []
    assert command("a CP001 Alicante,ES", locations, said.append)
    assert command("add CP002 Alicante,ES", locations, said.append)
    assert command("a nonsense", locations, said.append)
    assert command("", locations, said.append)
    locations.reload_if_changed()
    assert command("l", locations, said.append)
    assert command("r CP002", locations, said.append)
    assert command("help", locations, said.append)
    assert not command("q", locations, said.append)
    assert said[0].startswith("added CP001 at Alicante,ES") and said[2].startswith("not done: ")
    assert said[3] == "Alicante,ES: CP001, CP002" and said[4].startswith("removed CP002")
    assert said[5].startswith("commands: a CP_ID City,CC")
