"""EV_W as a real process, against the fake OpenWeather (a real HTTP server on 127.0.0.1 whose
temperatures the tests change) and a real Central in this process behind the stand-in for its
API (tests/weather/fake_api.py), with fake Monitors: alert, clear, an operator's stop that
survives a clear, cities added and removed at run time, the source timing out or answering
garbage, Central unreachable, the simulation, and secrets kept out of the output."""

from __future__ import annotations

import os
import signal
from decimal import Decimal

from ev_central.console import execute
from tests.support.services import free_port
from tests.support.waiting import wait_until
from tests.weather.conftest import WAIT, city, send, state, wait_state
from tests.weather.fake_api import TOKEN, FakeCentralAPI
from tests.weather.openweather import KEY

ALICANTE = "CP001 Alicante,ES\nCP002 Alicante,ES\n"


def audited(central, action: str) -> list:
    assert central.audit.wait_idle(WAIT)
    return central.store.list_audit(action=action)


def test_an_alert_below_zero_and_its_clear(central, monitors, api, weather, start_ev_w):
    cps = monitors("CP001", "CP002", "CP003")
    weather.set("Alicante,ES", "12.5")
    ev_w = start_ev_w(api.url, ALICANTE + "# the third CP is elsewhere\nCP003 Madrid,ES\n")
    weather.set("Madrid,ES", "20")
    wait_until(lambda: (c := city(central, "Alicante,ES")) and c.temperature == Decimal("12.5"), WAIT,
               "Alicante reported at Central")
    shown = city(central, "Alicante,ES")
    assert (shown.alert, shown.cp_ids, shown.error, shown.simulated) == (False, ["CP001", "CP002"], None, False)
    assert [state(central, c) for c in cps] == ["ACTIVADO"] * 3

    weather.set("Alicante,ES", "-2.5")
    wait_state(central, "CP001", "PARADO")
    wait_state(central, "CP002", "PARADO")
    assert state(central, "CP003") == "ACTIVADO"
    wait_until(lambda: cps["CP001"].commands() == ["STOP"], WAIT, "STOP at CP001")
    assert central.weather.note_for("CP001") == "weather alert (Alicante,ES)"
    ev_w.wait_for_output(r"ALERT Alicante,ES \(-2\.5 °C\) sent: Central stopped CP001, CP002")
    ev_w.wait_for_output(r"Alicante,ES +-2\.5 °C  ALERT  CP001, CP002")
    (entry,) = audited(central, "weather.alert")
    assert (entry.entry.actor, entry.entry.source_ip) == ("EV_W", "127.0.0.1")
    assert "-2.5 °C" in entry.entry.details and "stopped CP001, CP002" in entry.entry.details

    # a colder reading changes nothing: the alert is in force already
    weather.set("Alicante,ES", "-6")
    wait_until(lambda: city(central, "Alicante,ES").temperature == Decimal("-6"), WAIT, "-6 reported")
    assert len(api.of("PUT")) == 1 and len(audited(central, "weather.alert")) == 1

    weather.set("Alicante,ES", "0")  # at 0 °C the alert clears
    wait_state(central, "CP001", "ACTIVADO")
    wait_state(central, "CP002", "ACTIVADO")
    wait_until(lambda: cps["CP001"].commands() == ["STOP", "RESUME"], WAIT, "RESUME at CP001")
    ev_w.wait_for_output(r"alert Alicante,ES cleared \(0 °C\): Central resumed CP001, CP002")
    (entry,) = audited(central, "weather.clear")
    assert entry.entry.details.startswith("Alicante,ES: 0 °C; resumed CP001, CP002")
    assert central.weather.alerts() == []
    assert ev_w.stop() == 0
    ev_w.wait_for_output("EV_W stopped")


def test_an_operator_stop_survives_the_clear(central, monitors, api, weather, start_ev_w):
    cps = monitors("CP001", "CP002")
    weather.set("Alicante,ES", "-1")
    ev_w = start_ev_w(api.url, ALICANTE)
    wait_state(central, "CP001", "PARADO")
    assert execute(central, "stop CP002") == "stop: CP002 PARADO"
    weather.set("Alicante,ES", "4.2")
    ev_w.wait_for_output(r"alert Alicante,ES cleared \(4\.2 °C\): Central resumed CP001\b")
    assert (state(central, "CP001"), state(central, "CP002")) == ("ACTIVADO", "PARADO")
    assert "RESUME" not in cps["CP002"].commands()
    assert "still stopped by the operator CP002" in audited(central, "weather.clear")[0].entry.details


def test_cities_added_and_removed_while_it_runs(central, monitors, api, weather, start_ev_w, files):
    monitors("CP001", "CP002", "CP003", "CP004")
    weather.set("Alicante,ES", "15")
    weather.set("Madrid,ES", "-3")
    weather.set("Burgos,ES", "-4")
    ev_w = start_ev_w(api.url, ALICANTE)
    wait_until(lambda: city(central, "Alicante,ES"), WAIT, "Alicante reported")
    assert weather.requests("Madrid,ES") == 0

    # by the menu's command (a line on standard input): the file is edited, the next check takes it
    send(ev_w, "a CP003 Madrid,ES")
    ev_w.wait_for_output(r"added CP003 at Madrid,ES to .*locations\.txt")
    wait_state(central, "CP003", "PARADO")
    assert "CP003 Madrid,ES" in (files.folder / "locations.txt").read_text()
    send(ev_w, "a CP003 Burgos,ES")
    ev_w.wait_for_output(r"not done: CP003 is listed already \(at Madrid,ES\)")

    # by editing the file: read again when it changes
    path = files.folder / "locations.txt"
    path.write_text(path.read_text() + "CP004 burgos , es\n")
    wait_state(central, "CP004", "PARADO")
    assert central.weather.note_for("CP004") == "weather alert (burgos,ES)"

    # a city removed while under an alert: nobody watches it any more, so its alert is cleared
    send(ev_w, "r Madrid,ES")
    ev_w.wait_for_output(r"removed CP003 \(Madrid,ES\)")
    wait_state(central, "CP003", "ACTIVADO")
    ev_w.wait_for_output(r"alert Madrid,ES cleared \(removed from the locations\): Central resumed CP003")
    send(ev_w, "r CP004")
    wait_state(central, "CP004", "ACTIVADO")
    assert [a.city for a in central.weather.alerts()] == []
    requests = weather.requests("Madrid,ES")
    wait_until(lambda: city(central, "Madrid,ES") is None, WAIT, "Madrid no longer reported")
    assert weather.requests("Madrid,ES") == requests  # no longer checked
    send(ev_w, "l")
    ev_w.wait_for_output(r"Alicante,ES: CP001, CP002")
    assert path.read_text().splitlines() == ["CP001 Alicante,ES", "CP002 Alicante,ES"]
    send(ev_w, "q")
    assert ev_w.wait_exit(WAIT) == 0


def test_bad_lines_are_reported_and_skipped(central, monitors, api, weather, start_ev_w):
    monitors("CP001")
    weather.set("Alicante,ES", "-1")
    ev_w = start_ev_w(api.url, "CP001 Alicante,ES\nCP/2 Alicante,ES\nCP003 Alicante\nCP001 Elche,ES\n")
    ev_w.wait_for_output(r"line 2: 'CP/2' is not a CP id .*skipped")
    ev_w.wait_for_output(r"line 3: 'Alicante' is not 'City,CC'")
    ev_w.wait_for_output(r"line 4: CP001 is listed at line 1 already \(at Alicante,ES\); skipped")
    wait_state(central, "CP001", "PARADO")
    assert central.weather.alerts()[0].cp_ids == ("CP001",)


def test_the_source_timing_out_or_answering_garbage_decides_nothing(central, monitors, api, weather, start_ev_w):
    monitors("CP001", "CP002")
    weather.set("Alicante,ES", "10")
    ev_w = start_ev_w(api.url, ALICANTE)
    wait_until(lambda: city(central, "Alicante,ES"), WAIT, "Alicante reported")

    weather.set("Alicante,ES", "-5")  # cold, but no answer in time: no alert
    weather.fault("Alicante,ES", delay=3)
    mark = ev_w.mark()
    ev_w.wait_for_output(r"Alicante,ES: no answer within", after=mark)
    wait_until(lambda: (c := city(central, "Alicante,ES")).error is not None and c.temperature is None, WAIT,
               "the error reported to Central")
    assert "no answer within" in city(central, "Alicante,ES").error
    weather.fault("Alicante,ES", drip=True)  # an answer that drips: bounded as well
    ev_w.wait_for_output(r"Alicante,ES: (the answer did not end within|no answer within)", after=mark)
    weather.fault("Alicante,ES", garbage=True)
    ev_w.wait_for_output(r"Alicante,ES: the answer is not JSON", after=mark)
    weather.fault("Alicante,ES", no_temp=True)
    ev_w.wait_for_output(r"Alicante,ES: the answer has no main\.temp", after=mark)
    weather.fault("Alicante,ES", status=500)
    ev_w.wait_for_output(r"Alicante,ES: the weather service refused \(HTTP 500\)", after=mark)
    weather.remove("Alicante,ES")
    weather.heal("Alicante,ES")
    ev_w.wait_for_output(r"Alicante,ES: city not found \(HTTP 404\)", after=mark)
    assert ev_w.proc.poll() is None and api.of("PUT") == []  # still running; no alert from a failed check
    assert state(central, "CP001") == "ACTIVADO"

    weather.set("Alicante,ES", "-5")  # the source answers again: now the alert
    ev_w.wait_for_output(r"Alicante,ES: read again, -5 °C", after=mark)
    wait_state(central, "CP001", "PARADO")


def test_a_wrong_key_is_said_and_never_shown(central, monitors, api, weather, start_ev_w, files):
    monitors("CP001")
    weather.set("Alicante,ES", "-1")
    weather.key = "f" * 32  # OpenWeather does not take EV_W's key
    ev_w = start_ev_w(api.url, "CP001 Alicante,ES\n", "--log-level", "DEBUG")
    ev_w.wait_for_output(r"Alicante,ES: the API key was refused \(HTTP 401\): Invalid API key")
    assert state(central, "CP001") == "ACTIVADO"
    weather.key = KEY
    wait_state(central, "CP001", "PARADO")
    ev_w.stop()
    output = ev_w.output()
    assert KEY not in output and TOKEN not in output
    assert any(q.get("appid") == [KEY] for q in weather.queries)  # the key did travel, to OpenWeather only


def test_central_unreachable_alerts_are_kept_and_sent_when_it_is_back(central, monitors, weather, start_ev_w):
    cps = monitors("CP001", "CP002")
    weather.set("Alicante,ES", "-3")
    port = free_port()
    ev_w = start_ev_w(f"http://127.0.0.1:{port}", ALICANTE)
    ev_w.wait_for_output(r"Central: cannot reach Central at http://127\.0\.0\.1:\d+: .*trying again")
    ev_w.wait_for_output(r"Alicante,ES +-3 °C  ALERT \(waiting for Central\)")
    api = FakeCentralAPI(central.weather, port=port).start()
    try:
        wait_state(central, "CP001", "PARADO")
        wait_state(central, "CP002", "PARADO")
        ev_w.wait_for_output("Central answers again; alerts and clears sent")
        assert ev_w.output().count("trying again (backoff") == 1  # said once, whatever the number of cycles
        assert "STOP" in cps["CP001"].commands()

        api.down = True  # Central answers, but 503: the same backoff; the clear waits
        weather.set("Alicante,ES", "2")
        ev_w.wait_for_output(r"Central: HTTP 503: Central runs no weather office")
        assert state(central, "CP001") == "PARADO"
        api.down = False
        wait_state(central, "CP001", "ACTIVADO")
    finally:
        api.stop()


def test_a_wrong_token_is_said(central, monitors, weather, start_ev_w):
    monitors("CP001")
    api = FakeCentralAPI(central.weather, token="another-token-of-central-0001").start()
    try:
        ev_w = start_ev_w(api.url, "CP001 Alicante,ES\n")
        ev_w.wait_for_output(r"Central: HTTP 401: wrong or missing bearer token \(check EV_W's token")
        assert TOKEN not in ev_w.output()
    finally:
        api.stop()


def test_a_restart_of_ev_w_repeats_the_alert_and_nothing_changes(central, monitors, api, weather, start_ev_w):
    monitors("CP001", "CP002")
    weather.set("Alicante,ES", "-2")
    first = start_ev_w(api.url, ALICANTE)
    wait_state(central, "CP001", "PARADO")
    first.stop()
    second = start_ev_w(api.url)
    second.wait_for_output(r"ALERT Alicante,ES \(-2 °C\): already in force at Central")
    assert len(audited(central, "weather.alert")) == 1
    second.stop()


def test_without_a_key_it_says_so(runner, files, api):
    files("locations.txt", ALICANTE)
    token = files("ev_w.token", TOKEN)
    ev_w = runner.start("EV_W", ["--locations", str(files.folder / "locations.txt"), "--central-api", api.url,
                                 "--token-file", str(token)], package="ev_weather", env={"OPENWEATHER_API_KEY": ""})
    assert ev_w.wait_exit(WAIT) == 2
    assert "no OpenWeather API key" in ev_w.output() and "--simulate FILE" in ev_w.output()


def test_simulated_temperatures_are_labelled(central, monitors, api, start_ev_w, files):
    monitors("CP001", "CP002")
    simulation = files("temperatures.txt", "# City,CC temperature\nAlicante,ES 8\n", 0o644)
    ev_w = start_ev_w(api.url, ALICANTE, "--simulate", str(simulation), key=False)
    ev_w.wait_for_output(r"temperatures are SIMULATED, read from")
    wait_until(lambda: (c := city(central, "Alicante,ES")) and c.temperature == Decimal("8"), WAIT, "8 °C")
    assert city(central, "Alicante,ES").simulated is True
    ev_w.wait_for_output(r"Alicante,ES +8 °C  ok  \[SIMULATED\]  CP001, CP002")
    simulation.write_text("Alicante,ES -1.5\n")
    wait_state(central, "CP001", "PARADO")
    ev_w.wait_for_output(r"ALERT Alicante,ES \(-1\.5 °C\) sent: Central stopped CP001, CP002 \[SIMULATED\]")
    simulation.write_text("Madrid,ES 3\n")  # Alicante no longer in the file: an error, no clear
    ev_w.wait_for_output(r"Alicante,ES: Alicante,ES is not in the simulation file")
    assert state(central, "CP001") == "PARADO"


def test_sigterm_stops_it_at_once(api, start_ev_w, weather):
    weather.set("Alicante,ES", "1")
    ev_w = start_ev_w(api.url, ALICANTE)
    ev_w.wait_for_output(r"Alicante,ES +1 °C  ok")
    assert ev_w.stop(signal.SIGTERM, timeout=5) == 0
    ev_w.wait_for_output(r"EV_W stopped \(SIGTERM\)")
    assert os.path.exists(ev_w.log_path)
