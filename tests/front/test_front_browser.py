"""EV_Front in a real browser (Debian's Chromium, driven by Playwright) against a real Central
process with real Engines, Monitors and drivers on the real broker and MySQL: the tiles and
their colours, a fault seen live, Stop and Resume from the page, a supply's kWh growing,
Central restarted, a phone's screen; and never a request to another machine."""

from __future__ import annotations

import re
import time

import pytest

from ev_common.words import STATE_COLOURS
from tests.support.services import services_required

from .frontsys import OPERATOR_TOKEN, PHONE

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture says why: skipped here, a failure in CI
    if services_required():
        raise
    pytest.skip("Playwright for Python is not installed (pip install -r requirements-dev.txt)",
                allow_module_level=True)

pytestmark = pytest.mark.e2e

FAULT_SECONDS = 2.5  # "within about 2 s": the Monitor checks its Engine every second


def rgb(hex_colour: str) -> str:
    """``#ff8700`` as the browser's computed style says it: ``rgb(255, 135, 0)``."""
    value = hex_colour.lstrip("#")
    return "rgb({}, {}, {})".format(*(int(value[i:i + 2], 16) for i in (0, 2, 4)))


def kwh(browsing, cp_id: str) -> float:
    text = browsing.tile(cp_id).locator(".kwh").inner_text()
    match = re.fullmatch(r"(\d+\.\d{3}) kWh", text.strip())
    assert match, f"kWh shown as {text!r}"
    return float(match.group(1))


def test_the_page_shows_every_cp_in_its_state_colour(front, open_page):
    for cp_id in ("CP001", "CP002", "CP003", "CP004"):
        front.start_cp(cp_id, "--auto", "--auto-seconds", "120", location=f"Calle {cp_id}", price="0.48")
    front.start_driver("D001", "--cp", "CP002")
    front.system.wait_cp_state("CP002", "SUMINISTRANDO", 20)
    front.central.proc.stdin.write(b"stop CP003\n")  # the console's Stop (the page's is tested below)
    front.central.proc.stdin.flush()
    front.fault("CP004")
    front.start_cp("CP005", location="Calle CP005", price="0.48")
    front.system.cps["CP005"].monitor.kill()  # no Monitor: DESCONECTADO
    front.system.wait_cp_state("CP005", "DESCONECTADO", 10)
    browsing = open_page()
    page = browsing.page
    wanted = {"CP001": "ACTIVADO", "CP002": "SUMINISTRANDO", "CP003": "PARADO", "CP004": "AVERIADO",
              "CP005": "DESCONECTADO"}
    expect(page.locator("article.tile")).to_have_count(len(wanted))
    for cp_id, state in wanted.items():
        tile = browsing.tile(cp_id)
        expect(tile).to_have_attribute("data-state", state, timeout=10_000)
        expect(tile).to_have_css("background-color", rgb(STATE_COLOURS[state]))
        expect(tile.locator(".state")).to_contain_text(state)  # colour plus text
        expect(tile).to_contain_text(f"Calle {cp_id}")
        expect(tile).to_contain_text("0.48 EUR/kWh")
    expect(browsing.tile("CP003").locator(".state")).to_have_text("PARADO · Out of Order")
    expect(browsing.tile("CP003")).to_contain_text("stopped by the operator")
    expect(browsing.tile("CP002").locator(".who")).to_have_text("Driver D001")
    expect(browsing.tile("CP004")).to_contain_text("Engine fault")
    expect(browsing.tile("CP001").locator(".key")).to_have_text("open mode (no keys)")
    expect(browsing.tile("CP001").locator(".registration")).to_have_text("not registered")
    # the banner of what fails: CP005's Monitor and CP004's Engine
    problems = page.locator("#problems")
    expect(problems).to_be_visible()
    expect(problems).to_contain_text("CP005's Monitor: not connected")
    expect(problems).to_contain_text("CP004's Engine")
    expect(page.locator("#status-line")).to_contain_text("Kafka OK")
    # the request in course, the drivers, the messages
    expect(page.locator("#requests tbody tr", has_text="CP002")).to_contain_text("D001")
    expect(page.locator("#drivers tbody tr")).to_have_count(2)
    expect(page.locator("#drivers tbody tr", has_text="D001")).to_contain_text("CP002")
    expect(page.locator("#tickets tbody tr", has_text="CP002")).to_contain_text("in course")
    expect(page.locator("#messages")).to_contain_text("CP003")
    browsing.assert_no_page_errors()
    browsing.assert_local()


def test_an_engine_fault_turns_its_tile_red_without_a_reload(front, open_page):
    front.start_cp("CP001")
    front.start_cp("CP002")
    browsing = open_page()
    tile = browsing.tile("CP001")
    expect(tile).to_have_attribute("data-state", "ACTIVADO")
    expect(tile).to_have_css("background-color", rgb(STATE_COLOURS["ACTIVADO"]))
    browsing.mark()
    started = time.monotonic()
    front.fault("CP001")  # 'f' at the Engine
    expect(tile).to_have_attribute("data-state", "AVERIADO", timeout=FAULT_SECONDS * 1000)
    took = time.monotonic() - started
    assert took <= FAULT_SECONDS, f"the tile turned red after {took:.2f} s"
    expect(tile).to_have_css("background-color", rgb(STATE_COLOURS["AVERIADO"]))
    expect(tile.locator(".reason")).to_contain_text("Engine fault")
    expect(browsing.page.locator("#problems")).to_contain_text("CP001's Engine")
    expect(browsing.page.locator("#alerts")).to_contain_text("CP001")
    expect(browsing.tile("CP002")).to_have_attribute("data-state", "ACTIVADO")
    front.fault("CP001")  # the same key again: it recovers
    expect(tile).to_have_attribute("data-state", "ACTIVADO", timeout=FAULT_SECONDS * 1000)
    expect(browsing.page.locator("#problems")).to_be_hidden()
    browsing.assert_not_reloaded()
    browsing.assert_no_page_errors()
    browsing.assert_local()


def test_stop_and_resume_from_the_page_with_the_token(front, open_page):
    front.start_cp("CP001", "--auto", "--auto-seconds", "2")
    front.start_cp("CP002")
    browsing = open_page()
    page = browsing.page
    stop = page.get_by_role("button", name="Stop CP001")
    resume = page.get_by_role("button", name="Resume CP001")
    expect(stop).to_be_disabled()  # no token yet
    expect(page.get_by_role("button", name="Stop all")).to_be_disabled()
    browsing.mark()
    # a wrong token is refused, and said
    browsing.enter_token("not-the-operator-token-at-all")
    expect(stop).to_be_enabled()
    stop.click()
    result = page.locator("#command-result")
    expect(result).to_contain_text("refused (401)")
    expect(result).to_contain_text("Stop CP001")
    expect(browsing.tile("CP001")).to_have_attribute("data-state", "ACTIVADO")
    # the right one: the tile turns orange, "Out of Order", and a driver is denied there
    page.get_by_role("button", name="Forget token").click()
    expect(stop).to_be_disabled()
    browsing.enter_token(OPERATOR_TOKEN)
    stop.click()
    tile = browsing.tile("CP001")
    expect(tile).to_have_attribute("data-state", "PARADO", timeout=5_000)
    expect(tile).to_have_css("background-color", rgb(STATE_COLOURS["PARADO"]))
    expect(tile.locator(".state")).to_have_text("PARADO · Out of Order")
    expect(result).to_contain_text("Stop CP001: done: CP001 PARADO (Out of Order)")
    front.system.wait_cp_state("CP001", "PARADO", 5)
    denied = front.start_driver("D001", "--cp", "CP001")
    assert denied.wait_exit(60) == 1, denied.output()
    assert re.search(r"DENIED at CP001: .*Out of Order", denied.output()), denied.output()
    # Resume from the page: green again, and a supply goes through
    resume.click()
    expect(tile).to_have_attribute("data-state", "ACTIVADO", timeout=5_000)
    expect(tile).to_have_css("background-color", rgb(STATE_COLOURS["ACTIVADO"]))
    served = front.start_driver("D002", "--cp", "CP001")
    assert served.wait_exit(60) == 0, served.output()
    expect(page.locator("#tickets tbody tr", has_text="D002")).to_contain_text("COMPLETED", timeout=10_000)
    # the token stays in this tab's sessionStorage: never localStorage, a cookie or the URL
    stored = page.evaluate("[sessionStorage.getItem('evFront.operatorToken'), localStorage.length, document.cookie]")
    assert stored == [OPERATOR_TOKEN, 0, ""]
    assert all(OPERATOR_TOKEN not in url for url in browsing.requests + browsing.navigations)
    browsing.assert_not_reloaded()
    browsing.assert_no_page_errors()
    browsing.assert_local()


def test_a_supplys_kwh_grows_on_its_tile(front, open_page):
    front.start_cp("CP001", "--auto", "--auto-seconds", "60", price="0.50")
    browsing = open_page()
    browsing.mark()
    front.start_driver("D001", "--cp", "CP001")
    tile = browsing.tile("CP001")
    expect(tile).to_have_attribute("data-state", "SUMINISTRANDO", timeout=20_000)
    expect(tile.locator(".who")).to_have_text("Driver D001")
    expect(tile.locator(".kwh")).not_to_have_text(re.compile(r"^0\.000 kWh$"), timeout=10_000)
    first = kwh(browsing, "CP001")
    assert first > 0
    browsing.page.wait_for_function(
        "([selector, before]) => parseFloat(document.querySelector(selector).textContent) > before",
        arg=['article.tile[data-cp-id="CP001"] .kwh', first], timeout=10_000)
    second = kwh(browsing, "CP001")
    assert second > first, (first, second)
    expect(tile.locator(".eur")).to_have_text(re.compile(r"^\d+\.\d{2} EUR$"))
    expect(browsing.page.locator("#requests tbody tr", has_text="CP001")).to_contain_text("supplying")
    browsing.assert_not_reloaded()
    browsing.assert_no_page_errors()
    browsing.assert_local()


def test_central_restarted_the_page_reconnects_by_itself(front, open_page):
    front.start_cp("CP001")
    front.start_cp("CP002")
    browsing = open_page()
    page = browsing.page
    expect(page.locator("article.tile")).to_have_count(2)
    browsing.mark()
    banner = page.locator("#connection")
    expect(banner).to_be_hidden()
    front.kill_central()
    expect(banner).to_be_visible(timeout=5_000)
    expect(banner).to_contain_text("reconnecting")
    expect(page.locator("body")).to_have_attribute("data-connection", "reconnecting")
    expect(page.locator("article.tile")).to_have_count(2)  # the last state known stays shown meanwhile
    front.start_central()
    expect(banner).to_be_hidden(timeout=20_000)
    expect(page.locator("body")).to_have_attribute("data-connection", "live")
    for cp_id in ("CP001", "CP002"):  # the Monitors come back to the new Central
        expect(browsing.tile(cp_id)).to_have_attribute("data-state", "ACTIVADO", timeout=20_000)
    front.fault("CP002")  # the new stream is live
    expect(browsing.tile("CP002")).to_have_attribute("data-state", "AVERIADO", timeout=FAULT_SECONDS * 1000)
    browsing.assert_not_reloaded()
    browsing.assert_local()


def test_a_phone_sized_screen_shows_the_tiles_without_sideways_scrolling(front, open_page):
    for cp_id in ("CP001", "CP002", "CP003"):
        front.start_cp(cp_id, location="Avenida de la Constitución, 123, Sevilla")
    front.start_driver("D001", "--cp", "CP002")
    browsing = open_page(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    page = browsing.page
    expect(page.locator("article.tile")).to_have_count(3)
    expect(page.locator("#requests tbody tr")).to_have_count(1, timeout=20_000)
    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth,"
                           " document.body.scrollWidth]")
    assert widths[0] <= widths[1] and widths[2] <= widths[1], f"the page scrolls sideways: {widths}"
    for index in range(3):
        box = page.locator("article.tile").nth(index).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
    # the tiles come first on a phone, before the operator's part
    tiles_top = page.locator("#cps").bounding_box()["y"]
    assert tiles_top < page.locator(".operator").bounding_box()["y"]
    # wide tables scroll inside their own box, not the page
    for table in ("#tickets", "#requests"):
        box = page.locator(table).locator("xpath=..").bounding_box()
        assert box["x"] + box["width"] <= PHONE["width"] + 0.5, (table, box)
    page.get_by_label("Operator token").fill(OPERATOR_TOKEN)
    page.get_by_role("button", name="Use token").click()
    expect(page.get_by_role("button", name="Stop CP001")).to_be_enabled()
    browsing.assert_no_page_errors()
    browsing.assert_local()


def test_the_weather_and_failing_modules_in_the_banner(runner, tansu_factory, kafka_topic_prefix, fresh_mysql_url,
                                                       browser):
    """On a broker of its own (killed here): EV_W's weather on the tiles and its table, a weather
    alert's CP out of order; EV_W gone silent and Kafka down, each in the banner, and back."""
    from .conftest import open_browsing
    from .frontsys import FrontSystem

    broker = tansu_factory()
    front = FrontSystem(runner, broker.bootstrap, fresh_mysql_url, kafka_topic_prefix)
    try:
        front.start_central()
        front.start_cp("CP001")
        front.start_cp("CP002")
        ev_w = front.start_ev_w({"CP001": "Alicante,ES", "CP002": "Teruel,ES"}, {"Alicante,ES": 17.5, "Teruel,ES": -2.5})
        browsing = open_browsing(browser, front)
        page = browsing.page
        browsing.mark()
        teruel = browsing.tile("CP002")
        expect(teruel).to_have_attribute("data-state", "PARADO", timeout=15_000)
        expect(teruel.locator(".reason")).to_contain_text("weather alert")
        expect(teruel.locator(".weather")).to_have_text("Teruel,ES: -2.5 °C · weather alert")
        expect(browsing.tile("CP001").locator(".weather")).to_have_text("Alicante,ES: 17.5 °C")
        expect(page.locator('#weather tr[data-city="Teruel,ES"]')).to_contain_text("ALERT")
        expect(page.locator("#ev-w-status")).to_contain_text("EV_W OK")
        expect(page.locator("#problems")).to_be_hidden()
        # the temperature rises: the alert clears, live
        (runner.log_dir / "temperatures.txt").write_text("Alicante,ES 17.5\nTeruel,ES 3\n")
        expect(teruel).to_have_attribute("data-state", "ACTIVADO", timeout=15_000)
        expect(teruel.locator(".weather")).to_have_text("Teruel,ES: 3 °C")
        expect(page.locator("#alerts")).to_contain_text("weather alert at Teruel,ES cleared")
        # EV_W stops: silent after 3 of its cycles, said in the banner and in the weather part
        ev_w.kill()
        problems = page.locator("#problems")
        expect(problems).to_contain_text("EV_W silent", timeout=30_000)
        expect(page.locator("#ev-w-status")).to_contain_text("EV_W silent")
        # Kafka down: in the banner, the status line red
        broker.kill()
        expect(problems.locator('li[data-part="kafka"]')).to_contain_text("Kafka unreachable", timeout=30_000)
        expect(page.locator("#status-line")).to_have_class(re.compile(r"\blevel-error\b"))
        broker.start()
        expect(problems.locator('li[data-part="kafka"]')).to_have_count(0, timeout=30_000)
        browsing.assert_not_reloaded()
        browsing.assert_no_page_errors()
        browsing.assert_local()
        browsing.context.close()
    finally:
        front.close()


def test_secure_mode_keys_revoke_and_stop_all_from_the_page(runner, kafka_bootstrap, kafka_topic_prefix,
                                                             fresh_mysql_url, browser):
    """Secure mode: each tile shows its key masked; Revoke keys (confirmed) from the page; a
    confirmation dismissed does nothing; Stop all and Resume all."""
    from .conftest import open_browsing
    from .frontsys import FrontSystem

    front = FrontSystem(runner, kafka_bootstrap, fresh_mysql_url, kafka_topic_prefix, secure=True)
    try:
        front.start_central()
        front.start_cp("CP001")
        front.start_cp("CP002")
        browsing = open_browsing(browser, front)
        page = browsing.page
        browsing.mark()
        for cp_id in ("CP001", "CP002"):
            expect(browsing.tile(cp_id).locator(".key")).to_have_text(re.compile(r"^v\d+ SHA256:[0-9a-f]{4}…$"))
        browsing.enter_token(OPERATOR_TOKEN)
        result = page.locator("#command-result")
        revoke = page.get_by_role("button", name="Revoke the keys of CP001")
        page.once("dialog", lambda dialog: dialog.dismiss())
        revoke.click()
        expect(result).to_have_text("Token entered. Central checks it at the first command.")  # dismissed: not sent
        page.once("dialog", lambda dialog: dialog.accept())
        revoke.click()
        expect(result).to_contain_text("Revoke keys CP001: done: CP001 DESCONECTADO")
        front.central.wait_for_output(r"API command from 127\.0\.0\.1: keys revoke CP001 -> CP001 DESCONECTADO")
        assert front.central.output().count("API command from 127.0.0.1: keys revoke CP001") == 1
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Stop all").click()
        expect(result).to_contain_text("Stop all: done")
        expect(browsing.tile("CP002")).to_have_attribute("data-state", "PARADO", timeout=5_000)
        page.get_by_role("button", name="Resume all").click()
        expect(result).to_contain_text("Resume all: done")
        expect(browsing.tile("CP002")).to_have_attribute("data-state", "ACTIVADO", timeout=5_000)
        browsing.assert_not_reloaded()
        browsing.assert_no_page_errors()
        browsing.assert_local()
        browsing.context.close()
    finally:
        front.close()
