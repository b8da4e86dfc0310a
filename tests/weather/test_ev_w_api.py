"""The whole chain: EV_W as a real process -> Central's real API (ev_central/api, uvicorn on
127.0.0.1, EV_W's own bearer token) -> Central's weather office -> the CPs (fake Monitors on
real sockets). Over plain HTTP and over HTTPS, Central's certificate verified by a CA file or
by its pinned fingerprint; a wrong token or certificate said by EV_W; EV_W's silence on the
page's data (``GET /api/weather``, ``/api/health``) and the panel's status line."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from ev_central.api import ApiServer
from ev_central.console import execute
from ev_central.view import CentralView, MessageLog
from ev_common.tls import ensure_certificate
from tests.support.waiting import wait_until
from tests.weather.conftest import WAIT, city, state, wait_state
from tests.weather.fake_api import TOKEN

OPERATOR_TOKEN = "operator-token-0123456789abcdef"
ALICANTE = "CP001 Alicante,ES\nCP002 Alicante,ES\n"


@pytest.fixture
def start_api(central, tmp_path: Path) -> Iterator[Callable[..., ApiServer]]:
    """``start_api(tls=False, weather_token=TOKEN)``: Central's API in front of ``central``."""
    started: list[ApiServer] = []

    def start(*, tls: bool = False, weather_token: str = TOKEN) -> ApiServer:
        options = {}
        if tls:
            certificate = ensure_certificate(tmp_path / "api-tls", "ev_central_api", ["127.0.0.1"])
            options = {"cert": certificate.cert_path, "key": certificate.key_path}
            start.certificate = certificate
        api = ApiServer(central, CentralView(central, MessageLog()), "127.0.0.1", 0, operator_token=OPERATOR_TOKEN,
                        weather_token=weather_token, **options).start()
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


def page(api: ApiServer, path: str) -> dict:
    """What the page reads (no token needed for reading)."""
    with httpx.Client(base_url=api.url, verify=False, timeout=10, trust_env=False) as client:
        answer = client.get(path)
        assert answer.status_code == 200, answer.text
        return answer.json()


def test_the_chain_alert_clear_and_an_operator_stop(central, monitors, weather, start_api, start_ev_w):
    cps = monitors("CP001", "CP002", "CP003")
    api = start_api()
    weather.set("Alicante,ES", "9.5")
    weather.set("Madrid,ES", "21")
    ev_w = start_ev_w(api.url, ALICANTE + "CP003 Madrid,ES\n")
    wait_until(lambda: (c := city(central, "Alicante,ES")) and c.temperature == Decimal("9.5"), WAIT,
               "Alicante reported through the API")
    shown = {c["city"]: c for c in page(api, "/api/weather")["cities"]}
    assert shown["Alicante,ES"]["alert"] is False and shown["Alicante,ES"]["cp_ids"] == ["CP001", "CP002"]
    assert shown["Madrid,ES"]["simulated"] is False

    weather.set("Alicante,ES", "-3.25")
    wait_state(central, "CP001", "PARADO")
    wait_state(central, "CP002", "PARADO")
    assert state(central, "CP003") == "ACTIVADO"
    ev_w.wait_for_output(r"ALERT Alicante,ES \(-3\.25 °C\) sent: Central stopped CP001, CP002")
    wait_until(lambda: "STOP" in cps["CP001"].commands(), WAIT, "STOP at CP001")
    wait_until(lambda: {c["city"]: c for c in page(api, "/api/weather")["cities"]}["Alicante,ES"]["alert"], WAIT,
               "the alert on the page's data")
    assert central.audit.wait_idle(WAIT)
    (entry,) = [row.entry for row in central.store.list_audit(action="weather.alert")]
    assert (entry.actor, entry.source_ip) == ("EV_W", "127.0.0.1") and "-3.25 °C" in entry.details

    assert execute(central, "stop CP002") == "stop: CP002 PARADO"
    weather.set("Alicante,ES", "1")
    ev_w.wait_for_output(r"alert Alicante,ES cleared \(1 °C\): Central resumed CP001\b")
    assert (state(central, "CP001"), state(central, "CP002")) == ("ACTIVADO", "PARADO")
    assert cps["CP001"].commands() == ["STOP", "RESUME"] and "RESUME" not in cps["CP002"].commands()
    assert ev_w.stop() == 0


def test_a_simulated_reading_with_3_decimal_places_is_sent_rounded(central, monitors, start_api, start_ev_w, files):
    """Central's API takes at most 2 decimal places: EV_W rounds half up (-2.555 -> -2.56) rather
    than lose the whole report, and the alert goes through."""
    monitors("CP001", "CP002")
    api = start_api()
    simulation = files("temperatures.txt", "Alicante,ES -2.555\n", 0o644)
    ev_w = start_ev_w(api.url, ALICANTE, "--simulate", str(simulation), key=False)
    wait_until(lambda: (c := city(central, "Alicante,ES")) and c.temperature == Decimal("-2.56"), WAIT,
               "-2.56 reported through the API")
    wait_state(central, "CP001", "PARADO")
    wait_state(central, "CP002", "PARADO")
    ev_w.wait_for_output(r"ALERT Alicante,ES \(-2\.56 °C\) sent: Central stopped CP001, CP002 \[SIMULATED\]")
    shown = {c["city"]: c for c in page(api, "/api/weather")["cities"]}
    assert shown["Alicante,ES"]["temperature"] == "-2.56" and shown["Alicante,ES"]["simulated"] is True
    assert "refused" not in ev_w.output()
    assert ev_w.stop() == 0


def test_over_https_with_a_pinned_fingerprint_or_a_ca_file(central, monitors, weather, start_api, start_ev_w):
    monitors("CP001", "CP002")
    api = start_api(tls=True)
    certificate = start_api.certificate
    weather.set("Alicante,ES", "-1")
    pinned = start_ev_w(api.url, ALICANTE, "--central-fingerprint", certificate.fingerprint)
    wait_state(central, "CP001", "PARADO")
    pinned.wait_for_output(r"reporting to Central's API at https://127\.0\.0\.1:\d+ \(certificate pinned\)")
    pinned.stop()

    weather.set("Alicante,ES", "2")
    by_ca = start_ev_w(api.url, None, "--central-ca", str(certificate.cert_path))
    wait_state(central, "CP001", "ACTIVADO")
    by_ca.stop()

    wrong = "SHA256:" + ":".join(["AB"] * 32)
    refused = start_ev_w(api.url, None, "--central-fingerprint", wrong)
    refused.wait_for_output(r"Central: Central's certificate SHA256:[0-9A-F:]+ does not match the pinned fingerprint")
    unverified = start_ev_w(api.url, None)  # https, neither: the system's CAs, which do not know this one
    unverified.wait_for_output(r"Central: Central's certificate at https://127\.0\.0\.1:\d+ was not accepted")


def test_a_wrong_token_is_refused_and_audited(central, monitors, weather, start_api, start_ev_w):
    monitors("CP001")
    api = start_api(weather_token="the-token-central-expects-0001")
    weather.set("Alicante,ES", "-1")
    ev_w = start_ev_w(api.url, "CP001 Alicante,ES\n")
    ev_w.wait_for_output(r"Central: HTTP 401: .*\(check EV_W's token")
    assert state(central, "CP001") == "ACTIVADO"
    assert central.audit.wait_idle(WAIT)
    assert central.store.list_audit(action="api.auth")
    assert TOKEN not in ev_w.output()


def test_ev_w_silent_is_shown_on_the_page_and_the_status_line(central, weather, start_api, start_ev_w):
    central.weather.silence = 1.0
    api = start_api()
    weather.set("Alicante,ES", "5")
    ev_w = start_ev_w(api.url, ALICANTE)
    wait_until(lambda: page(api, "/api/weather")["ev_w"]["last_seen"] is not None, WAIT, "EV_W seen")
    assert page(api, "/api/weather")["ev_w"]["silent"] is False
    ev_w.stop()
    wait_until(lambda: page(api, "/api/weather")["ev_w"]["silent"] is True, WAIT, "EV_W silent on the page")
    health = page(api, "/api/health")
    assert health["ev_w"]["silent"] is True and any(part["part"] == "ev_w" for part in health["failing"])
    assert "EV_W silent since" in CentralView(central, MessageLog()).health().text
