"""EV_Central's command line around its screens: the error for a missing --kafka, the quiet
MySQL connector, and the seed command with Kafka down in ``--ui log`` mode (run as users run
it, from ev_central/): start-up says it waits for the topics, the outage is said once, the
status line tells the truth, and ``help`` is answered once."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from ev_central.cli import main
from ev_central.console import HELP
from ev_common.log import setup_logging
from ev_common.words import CENTRAL_OK, KAFKA_UNREACHABLE
from tests.support.processes import ProgramRunner


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_missing_kafka_names_the_flag_and_ev_kafka(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("EV_KAFKA", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["--port", "5000"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "--kafka" in error and "$EV_KAFKA" in error


def test_the_mysql_connector_says_only_warnings() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        setup_logging("EV_Central", "DEBUG")
        connector = logging.getLogger("mysql.connector")
        assert not connector.isEnabledFor(logging.INFO)
        assert connector.isEnabledFor(logging.WARNING)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def test_seed_command_with_kafka_down_in_log_mode(runner: ProgramRunner, tmp_path: Path) -> None:
    central = runner.start("central", ["--port", "0", "--kafka", closed_port(), "--db",
                                       f"sqlite:///{tmp_path / 'central.db'}", "--ui", "log"],
                           script="ev_central/EV_Central.py")
    central.wait_for_output(r"creating the Kafka topics", timeout=15)
    started = central.wait_for_output(r"Central running with problems: .*", timeout=20).group(0)
    assert f"{KAFKA_UNREACHABLE} since" in started and "database OK" in started
    central.proc.stdin.write(b"help\nlist\n")
    central.proc.stdin.flush()
    central.wait_for_output(r"no CPs yet", timeout=10)  # answered in order: help was answered before
    assert central.stop() == 0
    output = central.output()
    assert output.count(HELP) == 1, output
    assert output.index("creating the Kafka topics") < output.index(KAFKA_UNREACHABLE)
    assert output.count(KAFKA_UNREACHABLE) == 2, output  # said once, and named once in the status line
    assert CENTRAL_OK not in output
