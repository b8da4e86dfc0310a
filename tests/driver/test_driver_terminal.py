"""The driver on a terminal: the log kept off the screen, typing key by key, Kafka reminders."""

from __future__ import annotations

import io
import logging
import os
import threading
from datetime import datetime

import pytest

from ev_driver import cli
from ev_driver.bus import KafkaHealth
from ev_driver.menu import TerminalLineReader, line_reader
from ev_driver.screen import CLEAR_LINE, Screen


@pytest.fixture
def root_logging():
    """Whatever a test does to the root logger is undone after it."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in saved:
            handler.close()
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


def test_on_a_terminal_the_log_goes_to_a_file_and_only_new_warnings_to_the_screen(root_logging, tmp_path, capsys):
    path = cli.configure_logging("EV_Driver D1", "INFO", True, tmp_path / "logs" / "driver.log")
    assert path == tmp_path / "logs" / "driver.log"
    log = logging.getLogger("ev_driver.test")
    log.info("requested a supply at CP1")
    log.error("Kafka unreachable at k:9092; retrying", extra={"shown": True})  # the screen says it
    logging.getLogger("ev_driver.kafka").warning("FAIL|rdkafka#producer-1| Connection refused")
    log.warning("skipped a malformed record")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped a malformed record" in err
    for handler in root_logging.handlers:
        handler.flush()
    text = path.read_text()
    for expected in ("requested a supply at CP1", "Kafka unreachable", "Connection refused", "skipped a malformed"):
        assert expected in text
    assert "EV_Driver D1[" in text  # the program's name, as on stderr


def test_the_default_log_file_is_named_after_the_driver(root_logging, tmp_path, monkeypatch):
    monkeypatch.setenv("EV_DATA_DIR", str(tmp_path))
    assert cli.configure_logging("EV_Driver D7", "INFO", True, None) == tmp_path / "ev_driver-D7.log"


def test_elsewhere_every_record_goes_to_stderr(root_logging, capsys):
    assert cli.configure_logging("EV_Driver D1", "INFO", False, None) is None
    logging.getLogger("ev_driver.test").info("requested a supply at CP1")
    logging.getLogger("ev_driver.test").error("Kafka unreachable", extra={"shown": True})
    err = capsys.readouterr().err
    assert "requested a supply at CP1" in err and "Kafka unreachable" in err


def test_an_unwritable_log_file_leaves_warnings_on_the_terminal(root_logging, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.configure_logging("EV_Driver D1", "INFO", True, blocker / "driver.log") is None
    assert "cannot write the log file" in capsys.readouterr().err


class Said:
    def __init__(self) -> None:
        self.lines: list[tuple] = []

    def kafka_unreachable(self, bootstrap):
        self.lines.append(("down", bootstrap))

    def kafka_still_unreachable(self, bootstrap, seconds):
        self.lines.append(("still", round(seconds)))

    def kafka_reachable(self, bootstrap):
        self.lines.append(("back", bootstrap))


def test_kafka_outage_is_said_at_once_then_again_while_it_lasts():
    now = [0.0]
    screen = Said()
    health = KafkaHealth(screen, "k:9092", remind_every=60, clock=lambda: now[0])
    for moment in (0, 2, 4, 59, 60, 61, 119, 120):  # the watch checks every few seconds
        now[0] = moment
        health.unreachable()
    health.ok()
    health.ok()
    assert screen.lines == [("down", "k:9092"), ("still", 60), ("still", 120), ("back", "k:9092")]


# -- typing on a terminal ------------------------------------------------------------------------------------


@pytest.fixture
def pty():
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def test_keys_are_echoed_through_the_screen_and_lines_handed_over(pty):
    master, slave = pty
    out = io.StringIO()
    screen = Screen(out, now=lambda: datetime(2026, 11, 21, 11, 0, 0), terminal=True)
    screen.prompt()
    reader = TerminalLineReader(slave, screen, tick=0.05)
    stop = threading.Event()
    deadline = threading.Timer(10, stop.set)  # a line that never comes fails the test, not hangs it
    deadline.start()
    try:
        assert reader.keys.wait(10)
        os.write(master, "r CPX\x7f1\x1b[A\r".encode())  # a typo, Backspace, an arrow key, Enter
        assert reader.get(stop) == "r CP1"
        os.write(master, "junk\x15l\n".encode())  # Ctrl+U erases the line
        assert reader.get(stop) == "l"
        os.write(master, b"\x04")  # Ctrl+D on an empty line: the end of input
        assert reader.get(stop) is None
    finally:
        deadline.cancel()
        reader.close()
    text = out.getvalue()
    assert f"{CLEAR_LINE}> r CP1\n> " in text and f"{CLEAR_LINE}> l\n> " in text
    assert text.endswith(CLEAR_LINE)  # closing takes the prompt away


def test_a_pipe_is_read_line_by_line():
    screen = Screen(io.StringIO(), terminal=True)
    reader = line_reader(io.StringIO("l\nq\n"), screen)
    assert not isinstance(reader, TerminalLineReader)
    stop = threading.Event()
    assert [reader.get(stop), reader.get(stop), reader.get(stop)] == ["l", "q", None]
