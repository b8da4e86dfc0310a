"""The Monitor's screen: the status line, in place on a terminal, changes plus a heartbeat
line at most every 10 s otherwise; and the Monitor loop feeding it (fake probe and Central)."""

from __future__ import annotations

import io
import logging
import threading
from datetime import datetime

import pytest

from ev_common.words import ACTIVADO, AVERIADO, CANNOT_CONNECT, OUT_OF_ORDER, STATE_COLOURS
from ev_cp_monitor.central_client import REFUSED, REVOKED, CentralStatus, Halt
from ev_cp_monitor.engine_probe import Verdict
from ev_cp_monitor.monitor import Monitor
from ev_cp_monitor.screen import (
    CONNECTING,
    MENU_KEYS,
    REGISTERED,
    MonitorScreen,
    ansi,
    coloured,
    duration,
    halted_text,
    status_parts,
    status_report,
    status_text,
)

GREEN = f"\x1b[{ansi(STATE_COLOURS[ACTIVADO])}m"  # the colours of words.py, on a terminal
RED = f"\x1b[{ansi(STATE_COLOURS[AVERIADO])}m"
OK = Verdict(True, "OK")
KO = Verdict(False, "Engine answers KO (simulated fault)")
GONE = Verdict(False, "Engine unreachable: connection refused")
NOON = datetime(2026, 11, 21, 12, 0, 0)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def plain(clock, out, **kwargs):
    return MonitorScreen("CP001", out=out, terminal=False, clock=clock, now=lambda: NOON, **kwargs)


# -- the status line ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,text", [
    ((REGISTERED, OK, 35), "CP001 | Central: registered | Engine: OK for 35 s"),
    ((CANNOT_CONNECT, KO, 65), "CP001 | Central: Cannot connect to CENTRAL | "
                               "Engine: FAULT for 1 min 05 s: Engine answers KO (simulated fault)"),
    ((CONNECTING, None, None), "CP001 | Central: connecting... | Engine: not checked yet"),
])
def test_status_text(args, text):
    assert status_text("CP001", *args) == text


def test_stopped_by_central_shows_out_of_order():
    assert status_text("CP001", REGISTERED, OK, 3, stopped=True).endswith(f"| {OUT_OF_ORDER}")


def test_colours_and_width_on_a_terminal():
    parts = status_parts("CP001", REGISTERED, KO, 2)
    assert [colour for _, colour in parts] == [None, STATE_COLOURS[ACTIVADO], STATE_COLOURS[AVERIADO]]
    text = coloured(parts, 40)
    assert text.startswith(f"CP001 | {GREEN}Central: registered\x1b[0m | {RED}")
    assert len(text.replace(GREEN, "").replace(RED, "").replace("\x1b[0m", "")) <= 40
    assert text.endswith("...\x1b[0m")
    assert ansi("green") == "32" and ansi("#ff0000") and ansi("no such colour") is None


@pytest.mark.parametrize("seconds,text", [(0, "0 s"), (59.9, "59 s"), (61, "1 min 01 s"), (3725, "1 h 02 min")])
def test_duration(seconds, text):
    assert duration(seconds) == text


# -- plain mode: changes, and a heartbeat at most every 10 s -------------------------------------------------


def test_plain_mode_prints_changes_and_a_heartbeat_every_10_s(clock):
    out = io.StringIO()
    registered = threading.Event()
    screen = plain(clock, out, registered=registered)
    screen.started("127.0.0.1:7000", "127.0.0.1:5001")
    screen.central_said(f"{CANNOT_CONNECT} at 127.0.0.1:7000 (refused); retrying")
    for second in range(1, 26):  # a check every second; nothing changes
        clock.now = second
        screen.checked(OK)
        if second == 15:
            registered.set()
            screen.central_said("Registered at Central as CP001: Autenticacion exitosa")
    lines = out.getvalue().splitlines()
    assert lines == [
        "12:00:00 Monitor of CP001: Central 127.0.0.1:7000, Engine 127.0.0.1:5001; a health check every second "
        "(Ctrl+C stops)",
        f"12:00:00 {CANNOT_CONNECT} at 127.0.0.1:7000 (refused); retrying",
        f"12:00:00 status: CP001 | Central: {CANNOT_CONNECT} | Engine: OK for 9 s",  # at 10 s
        "12:00:00 Registered at Central as CP001: Autenticacion exitosa",  # at 15 s: a change
        "12:00:00 status: CP001 | Central: registered | Engine: OK for 24 s",  # 10 s after the last line
    ]


KAFKA = Verdict(False, "Engine answers KO (Kafka unreachable: this CP cannot report supplies)")


def test_plain_mode_repeats_the_status_every_10_s_while_a_problem_lasts_whatever_else_is_printed(clock):
    out = io.StringIO()
    registered = threading.Event()
    registered.set()
    screen = plain(clock, out, registered=registered)
    screen.checked(OK)
    for second in range(1, 31):  # Central's requests print a line every 3 s; the Engine cannot reach Kafka
        clock.now = second
        if second % 3 == 0:
            screen.message("Central asks to authorise a supply for driver D001 (session s1)")
        screen.checked(KAFKA if second < 25 else OK)
    statuses = [line[9:] for line in out.getvalue().splitlines() if line[9:].startswith("status:")]
    assert statuses == [f"status: CP001 | Central: registered | Engine: FAULT for {s} s: {KAFKA.reason}"
                        for s in (9, 19)]  # at 10 and 20 s; none once it is over and lines keep coming


def test_terminal_mode_shows_every_problem_at_once_and_keeps_it_below_the_messages(clock):
    out = io.StringIO()
    screen = MonitorScreen("CP001", out=out, terminal=True, clock=clock, now=lambda: NOON, width=lambda: 300)
    screen.central_said(f"{CANNOT_CONNECT} at 127.0.0.1:5000 (refused); retrying")
    screen.checked(KAFKA)
    both = f"Central: {CANNOT_CONNECT}\x1b[0m | {RED}Engine: FAULT for 0 s: {KAFKA.reason}\x1b[0m"
    assert out.getvalue().endswith(both)
    for n in range(5):  # messages scroll above it; the status line is drawn again below each one
        screen.message(f"message {n}")
        assert out.getvalue().endswith(both)
    assert screen.problem()


def test_plain_mode_through_the_monitor_loop(clock):
    """The Monitor says each change once; the screen adds nothing while they come often."""
    verdicts = [OK, OK, KO, KO, GONE, OK, OK]
    stop = threading.Event()
    out = io.StringIO()
    screen = plain(clock, out)

    class Probe:
        stopped = False

        def check(self):
            clock.now += 1
            verdict = verdicts.pop(0)
            if not verdicts:
                stop.set()
            return verdict

        def close(self):
            pass

    class Central:
        refused = None
        registered = threading.Event()

        def __init__(self):
            self.health = []

        def run(self, stop):
            pass

        def set_health(self, verdict):
            self.health.append(verdict)

    central = Central()
    checked = []
    monitor = Monitor(Probe(), central, interval=0, say=screen.message,
                      on_check=lambda v: (checked.append(v), screen.checked(v)))
    assert monitor.run(stop) == 0
    assert len(checked) == len(central.health) == 7
    assert [line[9:] for line in out.getvalue().splitlines()] == [
        "Engine OK", f"Engine FAULT: {KO.reason}", f"Engine FAULT: {GONE.reason}", "Engine OK"]


# -- terminal mode: one status line in place -----------------------------------------------------------------


def test_terminal_mode_redraws_the_status_line_in_place(clock):
    out = io.StringIO()
    registered = threading.Event()
    registered.set()
    screen = MonitorScreen("CP001", out=out, terminal=True, registered=registered, clock=clock,
                           now=lambda: NOON, width=lambda: 200)
    screen.checked(OK)
    clock.now = 2
    screen.checked(OK)
    assert out.getvalue().count("\r\x1b[2K") == 2 and "\n" not in out.getvalue()
    assert out.getvalue().endswith(f"12:00:00 CP001 | {GREEN}Central: registered\x1b[0m | "
                                   f"{GREEN}Engine: OK for 2 s\x1b[0m")
    mark = len(out.getvalue())
    clock.now = 3
    screen.checked(KO)
    screen.message(f"Engine FAULT: {KO.reason}")  # above the status line, which comes back below it
    after = out.getvalue()[mark:]
    assert f"\r\x1b[2K12:00:00 Engine FAULT: {KO.reason}\n\r\x1b[2K12:00:00 CP001" in after
    assert after.endswith(f"{RED}Engine: FAULT for 0 s: {KO.reason}\x1b[0m")
    screen.closing("Monitor stopped")
    assert out.getvalue().endswith("\x1b[0m\n12:00:00 Monitor stopped\n")


def test_terminal_mode_prints_log_records_above_the_status_line(clock):
    out, err = io.StringIO(), io.StringIO()
    screen = MonitorScreen("CP001", out=out, terminal=True, clock=clock, now=lambda: NOON, width=lambda: 200)
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    for handler in saved:
        root.removeHandler(handler)
    handler = logging.StreamHandler(err)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        screen.guard_logging()
        screen.checked(OK)
        drawn = out.getvalue()
        logging.getLogger("ev_cp_monitor.test").warning("Engine link lost")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)
    assert err.getvalue() == "Engine link lost\n"
    assert out.getvalue() == drawn + "\r\x1b[2K" + drawn  # cleared before the record, drawn again after


def test_central_link_as_the_client_tells_it(clock):
    registered = threading.Event()
    screen = plain(clock, io.StringIO(), registered=registered)
    assert screen.central() == CONNECTING
    screen.central_said(f"{CANNOT_CONNECT}: session lost (EOT); reconnecting")
    assert screen.central() == CANNOT_CONNECT
    registered.set()
    screen.central_said("Registered at Central as CP001: ok")
    assert screen.central() == REGISTERED
    registered.clear()
    assert screen.central() == CONNECTING


# -- secure mode and the menu ---------------------------------------------------------------------------------


def test_with_the_menu_the_status_line_ends_with_its_keys_when_there_is_room(clock):
    out = io.StringIO()
    width = [200]
    screen = MonitorScreen("CP001", out=out, terminal=True, menu=True, clock=clock, now=lambda: NOON,
                           width=lambda: width[0])
    screen.checked(OK)
    assert out.getvalue().endswith(f"Engine: OK for 0 s\x1b[0m | {MENU_KEYS}")
    width[0] = 70  # too narrow for both: the status first
    screen.checked(OK)
    assert not out.getvalue().endswith(MENU_KEYS) and out.getvalue().endswith("\x1b[0m")


def test_a_client_waiting_for_a_person_is_shown_in_red_as_a_problem(clock):
    halt = [Halt(REVOKED, "suspected breach")]
    out = io.StringIO()
    screen = MonitorScreen("CP001", out=out, terminal=True, menu=True, halted=lambda: halt[0], clock=clock,
                           now=lambda: NOON, width=lambda: 200)
    screen.checked(OK)
    assert screen.central() == "keys revoked, press [a]" and screen.problem()
    assert f"{RED}Central: keys revoked, press [a]\x1b[0m" in out.getvalue()
    halt[0] = None
    assert screen.central() == CONNECTING and not screen.problem()
    assert halted_text(Halt(REFUSED, "wrong credential"), menu=False) == "refused"


def test_the_status_report_in_open_mode_and_while_waiting_for_a():
    open_mode = CentralStatus("127.0.0.1:5000", tls=False, tls_version=None, fingerprint=None, verified_by=None,
                              registered_since=datetime(2026, 11, 21, 11, 58, 55), key_version=0, credential=False,
                              halted=None)
    assert status_report("CP001", open_mode, "127.0.0.1:5001", OK, 35, True, NOON) == [
        "status of CP001:",
        "  Central 127.0.0.1:5000: TLS off (plain TCP)",
        "  registered since 2026-11-21 11:58:55 (for 1 min 05 s)",
        "  key: version 0, none (open mode: the Engine's records travel in clear)",
        "  Engine 127.0.0.1:5001: OK for 35 s",
        f"  {OUT_OF_ORDER}: stopped by Central",
    ]
    waiting = CentralStatus("central:5000", tls=True, tls_version=None, fingerprint="SHA256:AB", verified_by="CA file",
                            registered_since=None, key_version=None, credential=True,
                            halted=Halt(REFUSED, "wrong credential"))
    assert status_report("CP001", waiting, "127.0.0.1:5001", None, None, False, NOON)[1:4] == [
        "  Central central:5000: TLS on, certificate SHA256:AB (verified by CA file)",
        "  not registered: refused (wrong credential); press [a] to authenticate again",
        "  key: none held",
    ]
