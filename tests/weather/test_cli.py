"""EV_W's command line: the flags it refuses (before starting anything), its secrets read from
files and kept out of every log record."""

from __future__ import annotations

import logging

import pytest

from ev_weather.central import CentralAPI, check_token
from ev_weather.cli import Redact, main, read_secret
from tests.weather.fake_api import TOKEN
from tests.weather.openweather import KEY


@pytest.fixture
def paths(tmp_path, monkeypatch):
    for name in ("EV_CENTRAL_API", "EV_WEATHER_TOKEN", "OPENWEATHER_API_KEY", "EV_CENTRAL_API_CA",
                 "EV_CENTRAL_API_FINGERPRINT", "EV_UI"):
        monkeypatch.delenv(name, raising=False)
    token = tmp_path / "ev_w.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    key = tmp_path / "openweather.key"
    key.write_text(KEY)
    key.chmod(0o600)
    return {"locations": str(tmp_path / "locations.txt"), "token": str(token), "key": str(key)}


@pytest.mark.parametrize("extra, complaint", [
    ([], "--central-api URL is required"),
    (["--central-api", "ftp://central"], "--central-api: Central's API is http://HOST:PORT"),
    (["--central-api", "http://central:8000", "--central-fingerprint", "SHA256:" + ":".join(["AB"] * 32)],
     "a CA file or a fingerprint verifies an https:// API"),
    (["--central-api", "https://central:8000", "--central-ca", "x.pem", "--central-fingerprint", "SHA256:AB"],
     "give only one of --central-ca and --central-fingerprint"),
    (["--central-api", "https://central:8000", "--central-fingerprint", "SHA256:AB"], "--central-api: "),
    (["--central-api", "https://central:8000", "--central-ca", "/nowhere.pem"], "CA file /nowhere.pem not found"),
    (["--central-api", "http://central:8000", "--every", "0"], "not a number of seconds from 0 to 3600"),
    (["--central-api", "http://central:8000", "--weather-url", "central:80"], "--weather-url: the weather URL"),
])
def test_refused_flags(paths, capsys, extra, complaint):
    with pytest.raises(SystemExit) as exited:
        main(["--locations", paths["locations"], "--token-file", paths["token"], "--api-key-file", paths["key"],
              *extra])
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


def test_the_token_is_required_and_checked(paths, capsys, tmp_path, monkeypatch):
    args = ["--locations", paths["locations"], "--central-api", "http://central:8000", "--api-key-file", paths["key"]]
    with pytest.raises(SystemExit):
        main(args)
    assert "EV_W's token is required" in capsys.readouterr().err
    short = tmp_path / "short.token"
    short.write_text("abc")
    with pytest.raises(SystemExit):
        main([*args, "--token-file", str(short)])
    assert "16 to 512 printable ASCII" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--token-file", str(tmp_path / "missing")])
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("EV_WEATHER_TOKEN", "   ")
    with pytest.raises(SystemExit):
        main(args)


def test_without_a_key_nor_a_simulation(paths, capsys):
    code = main(["--locations", paths["locations"], "--central-api", "http://central:8000",
                 "--token-file", paths["token"]])
    assert code == 2
    err = capsys.readouterr().err
    assert "no OpenWeather API key" in err and "--simulate FILE" in err and "$OPENWEATHER_API_KEY" in err


def test_secrets_from_files(tmp_path):
    path = tmp_path / "key"
    path.write_text("\n  the-key  \nsecond line\n")
    path.chmod(0o644)
    said: list[str] = []
    assert read_secret(str(path), "the key", said.append) == "the-key"
    assert said == [f"the key file {path} may be read by others: chmod 600 {path}"]
    path.write_text("   \n")
    with pytest.raises(ValueError, match="is empty"):
        read_secret(str(path), "the key")
    assert check_token(f"  {TOKEN}\n", "x") == TOKEN
    with pytest.raises(ValueError):
        check_token("has a space in it 0123456789", "x")


def test_secrets_never_reach_a_log_record(caplog):
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    handler.addFilter(Redact([TOKEN, KEY]))
    logger = logging.getLogger("ev_weather.test")
    logger.addHandler(handler)
    try:
        logger.warning("GET http://x/?appid=%s with Bearer %s", KEY, TOKEN)
        logger.warning("nothing secret")
    finally:
        logger.removeHandler(handler)
    assert records == ["GET http://x/?appid=*** with Bearer ***", "nothing secret"]
    assert TOKEN not in repr(CentralAPI("http://central:8000", TOKEN))
