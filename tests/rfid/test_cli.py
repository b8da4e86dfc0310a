"""``python -m ev_rfid``: a real process against a fake Central's MCSP port."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal

import pytest

from ev_common.mcsp import EndOk, EndRequest, ErrorAnswer, StartOk, StartRequest
from ev_rfid.cli import main
from tests.rfid.fake_mcsp import HOST, SILENT, FakeMCSP, refused_port

KEY = "16AC936B1692E73A"


def rfid(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "EV_MCSP"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "ev_rfid", *args], capture_output=True, text=True, timeout=30,
                          env=environment)


def central(request, connection, index):
    if isinstance(request, StartRequest):
        return StartOk("23")
    if request.session_id == "23":
        return EndOk(Decimal("2.75"), Decimal("1.32"))
    return ErrorAnswer(404, f"No session {request.session_id} of a tag at station {request.name}")


@pytest.fixture
def server():
    with FakeMCSP(central) as fake:
        yield fake


def test_start_ok_prints_the_answer_as_received(server):
    result = rfid("start", "--central", server.address, "--station", "Tankstelle1", "--key", "16:ac:93:6b:16:92:e7:3a")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["MMETERING/1.0 OK", "Content-Length: 1", "Session-Id: 23"]
    assert [r for _, r in server.requests] == [StartRequest("Tankstelle1", KEY)]
    assert KEY not in result.stderr and "...E73A" in result.stderr  # the log masks the tag


def test_end_ok_prints_the_figures_and_takes_the_address_from_the_environment(server):
    result = rfid("end", "--station", "Tankstelle1", "--key", KEY, "--session", "23", env={"EV_MCSP": server.address})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["MMETERING/1.0 OK", "Content-Length: 2", "Energy-kWh: 2.7500",
                                          "Amount-EUR: 1.32"]
    assert [r for _, r in server.requests] == [EndRequest("Tankstelle1", "23", KEY)]


def test_an_error_answer_exits_1_and_prints_its_headers(server):
    result = rfid("end", "--central", server.address, "--station", "CP001", "--key", KEY, "--session", "99")
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == ["MMETERING/1.0 ERROR", "Content-Length: 2",
                                          "Message: No session 99 of a tag at station CP001", "Code: 404"]


def test_central_unreachable_exits_3_and_says_so():
    result = rfid("start", "--central", f"{HOST}:{refused_port()}", "--station", "CP001", "--key", KEY)
    assert result.returncode == 3
    assert result.stdout == ""
    assert "Central cannot be reached: cannot connect to Central's MCSP port" in result.stderr


def test_no_answer_within_the_timeout_exits_3(capsys):
    with FakeMCSP(lambda request, connection, index: SILENT) as silent:
        assert main(["start", "--central", silent.address, "--station", "CP001", "--key", KEY,
                     "--timeout", "0.5"]) == 3
    assert "did not answer within 0.5 s" in capsys.readouterr().err


@pytest.mark.parametrize("args,complaint", [
    (["end", "--central", "127.0.0.1:1", "--station", "CP001", "--key", KEY], "end needs --session"),
    (["start", "--central", "127.0.0.1:1", "--station", "CP 001", "--key", KEY], "argument --station"),
    (["start", "--central", "127.0.0.1:1", "--station", "CP001", "--key", "16AC93"], "argument --key"),
    (["start", "--central", "127.0.0.1:1", "--station", "CP001", "--key", KEY, "--session", "2"], "end only"),
    (["start", "--central", "nowhere", "--station", "CP001", "--key", KEY], "not host:port"),
    (["stop", "--central", "127.0.0.1:1", "--station", "CP001", "--key", KEY], "invalid choice"),
    (["start", "--station", "CP001", "--key", KEY], "--central"),
    (["start", "--central", "127.0.0.1:1", "--station", "CP001", "--key", KEY, "--timeout", "0"], "above 0"),
], ids=["end without session", "station", "key", "session with start", "central", "action", "no central",
        "timeout"])
def test_usage_errors_exit_2(args, complaint, capsys, monkeypatch):
    monkeypatch.delenv("EV_MCSP", raising=False)
    with pytest.raises(SystemExit) as raised:
        main(args)
    assert raised.value.code == 2
    assert complaint in capsys.readouterr().err
