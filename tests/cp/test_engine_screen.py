"""The Engine's screen: the status lines for each phase and flag, the plain lines and the
message queue, and the Textual menu driven headless by a Pilot (no terminal needed)."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from datetime import datetime
from decimal import Decimal

import pytest

from ev_common.records import SupplyRequest
from ev_common.words import ACTIVADO, AVERIADO, DESCONECTADO, OUT_OF_ORDER, PARADO, SUMINISTRANDO
from ev_cp_engine.cli import use_menu
from ev_cp_engine.engine import Engine, Phase
from ev_cp_engine.screen import (
    EngineStatus,
    Messages,
    MessagesLogHandler,
    PlainScreen,
    Reminder,
    cp_line,
    flags_line,
    links_line,
    number,
    status_lines,
    supply_line,
)

NOON = datetime(2026, 11, 21, 12, 0, 5)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def emitted():
    return []


@pytest.fixture
def said():
    return []


def make(clock, emitted, said, monitor=True, **kwargs):
    engine = Engine(lambda record, on_delivery=None: emitted.append(record), power_kw=Decimal("36"), clock=clock,
                    say=said.append, **kwargs)
    if monitor:
        engine.monitor_connected("127.0.0.1:5555")
        engine.health("CP001")
    return engine


# -- status lines ---------------------------------------------------------------------------------------


def test_without_a_monitor_the_cp_is_disconnected(clock, emitted, said):
    status = EngineStatus.read(make(clock, emitted, said, monitor=False))
    assert status.state == DESCONECTADO
    assert cp_line(status) == "CP ? (its Monitor has not said it yet) | Monitor: none | DESCONECTADO (disconnected)"
    assert supply_line(status) == "Supply: none (waiting for a request)"
    assert flags_line(status) == "Fault: off | Central: in service"


def test_idle_with_its_monitor(clock, emitted, said):
    status = EngineStatus.read(make(clock, emitted, said))
    assert (status.state, status.phase) == (ACTIVADO, Phase.IDLE)
    assert cp_line(status) == "CP CP001 | Monitor: connected from 127.0.0.1:5555 | ACTIVADO (available)"


def test_authorised_then_supplying_with_live_figures(clock, emitted, said):
    engine = make(clock, emitted, said)
    engine.authorise("s1", "D001", Decimal("0.4800"))
    status = EngineStatus.read(engine)
    assert (status.state, status.phase) == (SUMINISTRANDO, Phase.AUTHORISED)  # as Central shows it
    assert supply_line(status) == "Supply: AUTHORISED for driver D001 at 0.48 EUR/kWh; plug in the vehicle [p]"
    engine.plug()
    clock.now += 10
    engine.tick()  # 36 kW for 10 s: 0.1 kWh
    status = EngineStatus.read(engine)
    assert (status.state, status.kwh, status.amount) == (SUMINISTRANDO, Decimal("0.1"), Decimal("0.0480"))
    assert supply_line(status) == "Supply: driver D001: 0.100 kWh, 0.05 EUR (36.00 kW, 0.48 EUR/kWh)"


def test_auto_mode_says_it_plugs_by_itself(clock, emitted, said):
    engine = make(clock, emitted, said, auto_seconds=5)
    engine.authorise("s1", "D001", Decimal("0.5"))
    assert supply_line(EngineStatus.read(engine)).endswith("plugging in shortly (auto)")


def test_fault_and_stop_flags(clock, emitted, said):
    engine = make(clock, emitted, said)
    engine.toggle_fault()
    status = EngineStatus.read(engine)
    assert status.state == AVERIADO
    assert flags_line(status) == "Fault: ON (answering KO to the Monitor) | Central: in service"
    engine.toggle_fault()
    engine.stop()
    status = EngineStatus.read(engine)
    assert status.state == PARADO and OUT_OF_ORDER in cp_line(status)
    assert flags_line(status) == f"Fault: off | stopped by Central: {OUT_OF_ORDER}"
    engine.toggle_fault()  # faulty wins over stopped, no Monitor wins over both
    assert EngineStatus.read(engine).state == AVERIADO
    engine.monitor_lost("gone")
    assert EngineStatus.read(engine).state == DESCONECTADO
    assert len(status_lines(EngineStatus.read(engine))) == 4


def test_the_links_line_names_every_connectivity_problem_for_as_long_as_it_lasts(clock, emitted, said):
    engine = make(clock, emitted, said)
    assert status_lines(EngineStatus.read(engine))[0] == links_line(EngineStatus.read(engine))
    assert links_line(EngineStatus.read(engine)) == "Links: Kafka OK | Monitor OK"
    engine.kafka_ok(False)
    assert links_line(EngineStatus.read(engine)) == (
        "Links: PROBLEM: Kafka UNREACHABLE: this CP cannot report supplies")
    engine.monitor_lost("closed")
    assert links_line(EngineStatus.read(engine)) == (
        "Links: PROBLEM: Kafka UNREACHABLE: this CP cannot report supplies"
        " | Monitor NOT CONNECTED: the CP cannot reach Central")
    engine.kafka_ok(True)
    assert links_line(EngineStatus.read(engine)) == "Links: PROBLEM: Monitor NOT CONNECTED: the CP cannot reach Central"
    engine.monitor_connected("127.0.0.1:5555")
    engine.authorise("s1", "D001", Decimal("0.48"))
    engine.plug()
    engine.kafka_ok(False)  # a supply in course goes on
    assert links_line(EngineStatus.read(engine)) == (
        "Links: PROBLEM: Kafka UNREACHABLE: the supply goes on; its figures wait for Kafka")


def test_where_nothing_stays_on_screen_a_problem_is_repeated_every_10_s_while_it_lasts(clock, emitted, said):
    engine = make(clock, emitted, said)
    lines = []
    remind = Reminder(lines.append, clock=clock)
    for _ in range(3):  # no problem: nothing to say
        clock.now += 1
        remind(EngineStatus.read(engine))
    assert lines == []
    engine.kafka_ok(False)
    for _ in range(25):  # at once, then every 10 s
        remind(EngineStatus.read(engine))
        clock.now += 1
    down = "Links: PROBLEM: Kafka UNREACHABLE: this CP cannot report supplies"
    assert lines == [down] * 3
    engine.monitor_lost("closed")  # another problem: at once
    remind(EngineStatus.read(engine))
    assert lines[-1] == down + " | Monitor NOT CONNECTED: the CP cannot reach Central"
    engine.kafka_ok(True)
    engine.monitor_connected("127.0.0.1:5555")
    remind(EngineStatus.read(engine))  # the end of the problems is said once
    for _ in range(25):
        clock.now += 1
        remind(EngineStatus.read(engine))
    assert lines[-1] == "Links: Kafka OK | Monitor OK" and len(lines) == 5


@pytest.mark.parametrize("value,text", [("0.4800", "0.48"), ("0.475", "0.475"), ("11", "11.00"), ("7.2", "7.20")])
def test_numbers(value, text):
    assert number(Decimal(value)) == text


# -- plain lines and the message queue ----------------------------------------------------------------------


def test_plain_lines_and_the_queue_of_the_menu():
    out = io.StringIO()
    messages = Messages(PlainScreen(out, now=lambda: NOON), now=lambda: NOON)
    messages("plugged in: supplying driver D001 at 11 kW")
    assert out.getvalue() == "12:00:05 plugged in: supplying driver D001 at 11 kW\n"
    messages.attach()
    messages("one")
    messages("two")
    assert messages.drain() == [(NOON, "one"), (NOON, "two")]
    messages("three")
    messages.detach()  # not shown by the menu: printed when it ends
    messages("four")
    assert out.getvalue().splitlines()[1:] == ["12:00:05 three", "12:00:05 four"]


def test_log_records_become_messages():
    messages = Messages(PlainScreen(io.StringIO()))
    messages.attach()
    logger = logging.getLogger("test.engine.screen")
    handler = MessagesLogHandler(messages)
    logger.addHandler(handler)
    try:
        logger.warning("Kafka %s", "unreachable")
    finally:
        logger.removeHandler(handler)
    assert [text for _, text in messages.drain()] == ["WARNING test.engine.screen: Kafka unreachable"]


class FakeStream:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


def test_the_menu_only_for_a_person_at_a_terminal():
    tty, pipe = FakeStream(True), FakeStream(False)
    assert use_menu(False, tty, tty)
    assert not use_menu(True, tty, tty)  # --auto
    assert not use_menu(False, pipe, tty) and not use_menu(False, tty, pipe)


# -- the Textual menu, headless ------------------------------------------------------------------------------


async def until(pilot, condition, what: str, timeout: float = 5.0) -> None:
    """Let the app run until ``condition()`` holds, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; status:\n"
                                 f"{pilot.app.status_text}")
        await pilot.pause(0.02)


def test_the_menu_drives_the_engine_and_shows_live_figures(clock, emitted, said):
    from textual.widgets import Input, RichLog

    from ev_cp_engine.menu import EngineMenu

    messages = Messages(PlainScreen(io.StringIO()))
    messages.attach()
    engine = Engine(lambda record, on_delivery=None: emitted.append(record), power_kw=Decimal("36"), clock=clock,
                    say=messages)
    engine.monitor_connected("127.0.0.1:5555")
    engine.health("CP001")
    stop = threading.Event()
    app = EngineMenu(engine, messages, stop, subtitle="test", refresh_every=0.05)

    async def scenario():
        async with app.run_test(size=(110, 30)) as pilot:
            await until(pilot, lambda: "CP CP001" in app.status_text, "the status")
            assert "ACTIVADO" in app.status_text and "Supply: none" in app.status_text

            # [r] opens the driver id input; Enter sends the request to Central
            await pilot.press("r")
            await until(pilot, lambda: app.focused is app.query_one("#driver", Input), "the driver id input")
            await pilot.press("D", "0", "0", "1", "p", "enter")  # "p" is typed, it does not plug
            assert [r.driver_id for r in emitted if isinstance(r, SupplyRequest)] == ["D001p"]
            assert app.focused is None and not app.query_one("#driver", Input).display
            area = app.query_one("#messages", RichLog)
            await pilot.press("r")
            await until(pilot, lambda: app.focused is app.query_one("#driver", Input), "the driver id input")
            await pilot.press("x", "space", "y", "enter")
            assert len([r for r in emitted if isinstance(r, SupplyRequest)]) == 1  # not an id: refused
            await until(pilot, lambda: any("'x y' is not an id" in line.text for line in area.lines),
                        "the refusal in the messages")
            await pilot.press("r", "escape")  # Esc closes the input
            await until(pilot, lambda: app.focused is None, "the input to close")

            # Central authorises; [p] plugs in; each tick, the live figures
            engine.authorise("s1", "D001", Decimal("0.48"))
            await until(pilot, lambda: "AUTHORISED for driver D001" in app.status_text, "the authorisation")
            await pilot.press("p")
            assert engine.phase is Phase.SUPPLYING
            await until(pilot, lambda: SUMINISTRANDO in app.status_text, "SUMINISTRANDO")
            clock.now += 10
            engine.tick()
            await until(pilot, lambda: "0.100 kWh, 0.05 EUR" in app.status_text, "the live kWh and EUR")
            clock.now += 10
            engine.tick()
            await until(pilot, lambda: "0.200 kWh, 0.10 EUR" in app.status_text, "the next second's figures")

            # [u] unplugs: the supply ends; [f] toggles the fault
            await pilot.press("u")
            assert engine.phase is Phase.IDLE
            await until(pilot, lambda: "Supply: none" in app.status_text, "the end of the supply")
            await pilot.press("f")
            assert engine.faulty
            await until(pilot, lambda: "Fault: ON" in app.status_text and AVERIADO in app.status_text, "the fault")
            await pilot.press("f")
            assert not engine.faulty

            # Kafka unreachable: in the status box, at once and for as long as it lasts
            assert "Links: Kafka OK | Monitor OK" in app.status_text
            engine.kafka_ok(False)
            await until(pilot, lambda: app.status_text.startswith(
                "Links: PROBLEM: Kafka UNREACHABLE: this CP cannot report supplies"), "the Kafka problem")
            for _ in range(3):  # still there after the messages moved on
                messages("another message")
                await pilot.pause(0.1)
                assert "Kafka UNREACHABLE" in app.status_text
            engine.kafka_ok(True)
            await until(pilot, lambda: app.status_text.startswith("Links: Kafka OK"), "Kafka back")

            # the Engine's lines are in the message area
            await until(pilot, lambda: any("ended (unplugged)" in line.text for line in area.lines),
                        "the end of the supply in the messages")

            # [q] quits and asks the Engine to stop
            await pilot.press("q")
            assert stop.is_set()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert app.return_code == 0


def test_the_menu_leaves_when_the_engine_is_asked_to_stop(clock, emitted, said):
    from ev_cp_engine.menu import EngineMenu

    messages = Messages(PlainScreen(io.StringIO()))
    stop = threading.Event()
    app = EngineMenu(make(clock, emitted, said), messages, stop, refresh_every=0.05)

    async def scenario():
        async with app.run_test() as pilot:
            stop.set()  # SIGTERM, for example
            await until(pilot, lambda: not app.is_running, "the app to exit")

    asyncio.run(asyncio.wait_for(scenario(), 30))
