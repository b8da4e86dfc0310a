"""The API's commands over real HTTP: the operator's (stop, resume, one CP or all, keys revoke)
and EV_W's (reports, alerts, clears), each with its own token; 401, 403, 404, 409, 422 and 429;
each command audited with the caller's address; no token ever in a log."""

from __future__ import annotations

import logging
import socket

import pytest

from ev_common.words import DESCONECTADO, KEYS_REVOKED
from tests.central.test_secure_central import Monitor
from tests.support.waiting import wait_until

from .conftest import OPERATOR_TOKEN, WEATHER_TOKEN, register_cp

COMMANDS = [("POST", "/api/cps/CP1/stop"), ("POST", "/api/cps/CP1/resume"), ("POST", "/api/cps/stop-all"),
            ("POST", "/api/cps/resume-all"), ("POST", "/api/cps/CP1/keys/revoke")]
WEATHER = [("POST", "/api/weather/reports"), ("PUT", "/api/weather/alerts/Teruel,ES"),
           ("DELETE", "/api/weather/alerts/Teruel,ES")]


def test_stop_and_resume_one_cp_or_all_audited_with_the_callers_address(running):
    running.monitor("CP1")
    running.monitor("CP2")
    client = running.operator()
    stopped = client.post("/api/cps/CP1/stop")
    assert stopped.status_code == 200
    assert (stopped.json()["cp_id"], stopped.json()["state"], stopped.json()["stopped"]) == ("CP1", "PARADO", True)
    assert running.state("CP1") == "PARADO"
    resumed = client.post("/api/cps/CP1/resume").json()
    assert (resumed["state"], resumed["stopped"]) == ("ACTIVADO", False)
    everything = client.post("/api/cps/stop-all").json()
    assert [(cp["cp_id"], cp["state"]) for cp in everything["cps"]] == [("CP1", "PARADO"), ("CP2", "PARADO")]
    again = client.post("/api/cps/resume-all").json()
    assert {cp["state"] for cp in again["cps"]} == {"ACTIVADO"}

    commands = running.audit("operator.command")
    assert [(e.actor, e.source_ip, e.outcome) for e in commands] == [("operator", "127.0.0.1", "ok")] * 4
    assert [e.details for e in commands] == ["API stop CP1 -> CP1 PARADO", "API resume CP1 -> CP1 ACTIVADO",
                                             "API stop all -> CP1 PARADO, CP2 PARADO",
                                             "API resume all -> CP1 ACTIVADO, CP2 ACTIVADO"]
    assert [e.action for e in running.audit("cp.")][-2:] == ["cp.resume", "cp.resume"]


def test_unknown_cp_404_open_mode_revoke_409_and_invalid_ids_422(running):
    running.monitor("CP1")
    client = running.operator()
    missing = client.post("/api/cps/CP9/stop")
    assert (missing.status_code, missing.json()["message"]) == (404, "no CP CP9")
    revoke = client.post("/api/cps/CP1/keys/revoke")
    assert revoke.status_code == 409 and "open mode" in revoke.json()["message"]
    for bad in ("CP1'%20OR%20'1'='1", "C" * 65, "CP%201", "%3Cscript%3E"):
        answer = client.post(f"/api/cps/{bad}/stop")
        assert answer.status_code in (404, 422), (bad, answer.status_code)
        if answer.status_code == 422:
            assert answer.json()["fields"][0]["field"] == "cp_id"
    assert client.post("/api/cps/C" + "x" * 64 + "/stop").status_code == 422
    refused = [e for e in running.audit("operator.command") if e.outcome == "refused"]
    assert [e.details for e in refused] == [
        "API stop CP9 -> no CP CP9", "API keys revoke CP1 -> CPs have no keys in open mode (EV_Central --secure)"]
    assert running.state("CP1") == "ACTIVADO"


@pytest.mark.parametrize("method,path", COMMANDS + WEATHER)
def test_every_command_needs_its_token(running, method, path):
    plain = running.http().request(method, path, json={})
    assert plain.status_code == 401
    assert plain.headers["www-authenticate"] == 'Bearer realm="EV_Central"'
    wrong = running.http("not-the-token-at-all-123456").request(method, path, json={})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].endswith('error="invalid_token"')
    other = OPERATOR_TOKEN if path.startswith("/api/weather/") else WEATHER_TOKEN
    crossed = running.http(other).request(method, path, json={})
    assert crossed.status_code == 403 and "this token is not" in crossed.json()["message"]


def test_without_tokens_configured_commands_answer_403_and_reads_still_work(start_api):
    running = start_api(operator_token=None, weather_token=None)
    for method, path in COMMANDS + WEATHER:
        answer = running.http("any-token-0123456789abcdef").request(method, path, json={})
        assert answer.status_code == 403, (method, path)
        assert "is configured at Central" in answer.json()["message"]
    assert running.http().post("/api/cps/CP1/stop").status_code == 403
    assert running.http().get("/api/cps").status_code == 200


def test_failed_tokens_are_audited_rate_limited_and_never_logged(running, caplog):
    caplog.set_level(logging.DEBUG)
    running.monitor("CP1")
    bad = "wrong-token-0123456789abcdef"
    for _ in range(5):
        assert running.http(bad).post("/api/cps/CP1/stop").status_code == 401
    locked = running.operator().post("/api/cps/CP1/stop")  # even the right token, while locked out
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) == 30
    assert running.state("CP1") == "ACTIVADO"
    running.clock.advance(31)
    assert running.operator().post("/api/cps/CP1/stop").status_code == 200

    refused = running.audit("api.auth")
    assert len(refused) == 5 and {(e.source_ip, e.outcome) for e in refused} == {("127.0.0.1", "refused")}
    assert refused[0].details == "wrong bearer token: POST /api/cps/CP1/stop"
    assert "locked out for 30 s" in refused[-1].details
    everything = caplog.text + "".join(m.text for m in running.view.messages(500))
    everything += "".join(e.details for e in running.audit())
    for token in (bad, OPERATOR_TOKEN, WEATHER_TOKEN):
        assert token not in everything


def test_a_token_is_checked_before_the_body_is_read(running):
    answer = running.http().post("/api/weather/reports", content=b"{not json", headers={
        "content-type": "application/json"})
    assert answer.status_code == 401  # not 422: an unauthenticated client learns nothing of its body
    too_long = running.http().post("/api/weather/reports", content=b"x" * 300_000)
    assert too_long.status_code == 401


def test_revoke_keys_in_secure_mode(start_api):
    running = start_api(secure=True)
    credential = register_cp(running.central.store, "CP1")
    running.api.api.registrations.refresh()
    monitor = Monitor(running.central, running.monitor_certificate.fingerprint)
    try:
        auth, key = monitor.register("CP1", credential)
        assert auth.ok and key.version == 1
        before = running.http().get("/api/cps/CP1").json()
        assert before["key"]["version"] == 1 and before["key"]["revoked"] is False
        assert before["key"]["fingerprint"].startswith("SHA256:") and len(before["key"]["fingerprint"]) == 12
        assert before["registration"]["state"] == "registered"
        assert key.key not in running.http().get("/api/cps").text

        answer = running.operator().post("/api/cps/CP1/keys/revoke")
        assert answer.status_code == 200
        cp = answer.json()
        assert (cp["state"], cp["reason"], cp["key"]) == (DESCONECTADO, KEYS_REVOKED,
                                                          {"version": None, "revoked": True, "fingerprint": None})
        wait_until(monitor.closed.is_set, 5, "the Monitor's session closed by Central")
        assert [e.details for e in running.audit("key.revoke")] == ["CP1: 1 key(s) revoked"]
        command = running.audit("operator.command")[-1]
        assert (command.source_ip, command.details) == ("127.0.0.1", "API keys revoke CP1 -> CP1 DESCONECTADO "
                                                                      "(keys revoked)")
    finally:
        monitor.close()


def test_weather_reports_alerts_and_clears(running):
    running.monitor("CP1")
    running.monitor("CP2")
    ev_w = running.http(WEATHER_TOKEN)
    report = ev_w.post("/api/weather/reports", json={"reports": [
        {"city": "Teruel,ES", "temperature": 1.5, "cp_ids": ["CP1", "CP2"], "error": None, "simulated": False},
        {"city": "Alicante,ES", "temperature": None, "cp_ids": [], "error": "OpenWeather: 401", "simulated": True}]})
    assert report.status_code == 204
    cities = {c["city"]: c for c in running.http().get("/api/weather").json()["cities"]}
    assert cities["Teruel,ES"]["temperature"] == "1.5" and cities["Alicante,ES"]["simulated"] is True

    alert = ev_w.put("/api/weather/alerts/Teruel,ES", json={"temperature": -2.5, "cp_ids": ["CP1", "CP2"]})
    assert alert.status_code == 200
    assert alert.json() == {"city": "Teruel,ES", "active": True, "stopped": ["CP1", "CP2"], "resumed": [],
                            "unchanged": False}
    assert running.state("CP1") == running.state("CP2") == "PARADO"
    again = ev_w.put("/api/weather/alerts/Teruel,ES", json={"temperature": "-3", "cp_ids": ["CP1", "CP2"]})
    assert again.json()["unchanged"] is True
    resumed = running.operator().post("/api/cps/CP1/resume").json()  # an operator cannot lift the weather
    assert (resumed["state"], resumed["weather_hold"]) == ("PARADO", True)

    cleared = ev_w.delete("/api/weather/alerts/Teruel,ES")
    assert cleared.status_code == 200 and cleared.json()["resumed"] == ["CP1", "CP2"]
    assert running.state("CP1") == "ACTIVADO"
    none = ev_w.delete("/api/weather/alerts/Teruel,ES")
    assert (none.status_code, none.json()["message"]) == (404, "no weather alert for Teruel,ES")

    audited = running.audit("weather.")
    assert [(e.action, e.actor, e.source_ip) for e in audited] == [("weather.alert", "EV_W", "127.0.0.1"),
                                                                   ("weather.clear", "EV_W", "127.0.0.1")]


@pytest.mark.parametrize("method,path,body,field", [
    ("PUT", "/api/weather/alerts/Teruel,ES", {"temperature": 3, "cp_ids": ["CP1"]}, None),  # not below 0 °C
    ("PUT", "/api/weather/alerts/Teruel,ES", {"temperature": -2.555, "cp_ids": ["CP1"]}, "temperature"),
    ("PUT", "/api/weather/alerts/Teruel,ES", {"temperature": -101, "cp_ids": ["CP1"]}, "temperature"),
    ("PUT", "/api/weather/alerts/Teruel,ES", {"temperature": "NaN", "cp_ids": ["CP1"]}, "temperature"),
    ("PUT", "/api/weather/alerts/Teruel,ES", {"temperature": True, "cp_ids": ["CP1"]}, "temperature"),
    ("PUT", "/api/weather/alerts/Teruel,ES", {"temperature": -2, "cp_ids": ["CP1'; DROP TABLE x;--"]}, "cp_ids"),
    ("PUT", "/api/weather/alerts/Teruel,ES", {"temperature": -2, "cp_ids": ["C" * 65]}, "cp_ids"),
    ("PUT", "/api/weather/alerts/Teruel,ES", {"temperature": -2, "cp_ids": "CP1"}, "cp_ids"),
    ("PUT", "/api/weather/alerts/Teruel,ES", {"temperature": -2, "cp_ids": ["CP1"], "extra": 1}, "extra"),
    ("PUT", "/api/weather/alerts/Teruel,ES", {"cp_ids": ["CP1"]}, "temperature"),
    ("PUT", "/api/weather/alerts/" + "T" * 101 + ",ES", {"temperature": -2, "cp_ids": []}, "city"),
    ("PUT", "/api/weather/alerts/Teruel", {"temperature": -2, "cp_ids": []}, "city"),
    ("PUT", "/api/weather/alerts/Ter%0Auel,ES", {"temperature": -2, "cp_ids": []}, "city"),
    ("DELETE", "/api/weather/alerts/%3Cscript%3E", None, "city"),
    ("POST", "/api/weather/reports", {"reports": [{"city": "A" * 120 + ",ES", "temperature": 1}]}, "reports.0.city"),
    ("POST", "/api/weather/reports", {"reports": [{"city": "Teruel,ES", "error": "e" * 1001}]}, "reports.0.error"),
    ("POST", "/api/weather/reports", {"reports": [{"city": "Teruel,ES", "error": "a\x00b"}]}, "reports.0.error"),
    ("POST", "/api/weather/reports", {"reports": [{"city": "Teruel,ES", "temperature": "1e999"}]},
     "reports.0.temperature"),
    ("POST", "/api/weather/reports", {"reports": [{"city": f"C{n},ES"} for n in range(1001)]}, "reports"),
    ("POST", "/api/weather/reports", {"reports": "everything"}, "reports"),
])
def test_invalid_weather_input_is_refused_422(running, method, path, body, field):
    answer = running.http(WEATHER_TOKEN).request(method, path, json=body)
    assert answer.status_code == 422, answer.text
    if field is not None:
        assert field in {f["field"] for f in answer.json()["fields"]}, answer.json()
    assert running.central.weather.alerts() == []


def test_bodies_are_bounded_in_size_and_time(start_api):
    running = start_api(max_body=2048, body_timeout=0.5)
    ev_w = running.http(WEATHER_TOKEN)
    big = ev_w.post("/api/weather/reports", content=b'{"reports": [' + b" " * 3000 + b"]}",
                    headers={"content-type": "application/json"})
    assert big.status_code == 413 and "2048" in big.json()["message"]
    host, port = running.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"POST /api/weather/reports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WEATHER_TOKEN}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"rep".encode())
        answer = b""
        while chunk := sock.recv(4096):  # to the end: the server closes the connection after a 408
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 408") and "not received within 0.5 s" in answer
    malformed = ev_w.post("/api/weather/reports", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and malformed.json()["fields"][0]["message"] == "the body is not valid JSON"
    assert ev_w.post("/api/weather/reports", json={"reports": []}).status_code == 204
    assert running.central.weather.snapshot().cities == []
