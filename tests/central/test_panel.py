"""Central's panel, headless (``App.run_test``), on a real Central: SQLite, real sockets, no Kafka.

Fake Monitors are real ``Link`` clients; a reader thread per Monitor reads (and so acknowledges)
every frame Central sends. CPs reach their states as in service (REG, AVR, the operator's Stop,
a closed session); a supply is put straight into Central's domain. Every wait is on a condition
with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator

import pytest

from ev_central.app import Central
from ev_central.cli import build_parser, choose_ui, default_log_file
from ev_central.core.states import Event
from ev_central.panel import CentralPanel
from ev_central.panel.widgets import CPTileWidget, MessageList, OngoingTable, StatusLine, state_class, state_colour
from ev_central.store import open_store
from ev_central.view import CentralView, MessageLog
from ev_common.link import Link, LinkConfig, LinkError
from ev_common.protocol import Auth, Avr, Message, Reg, Resume, Stop
from ev_common.words import (
    ACTIVADO,
    AVERIADO,
    CENTRAL_OK,
    CP_STATES,
    DESCONECTADO,
    OUT_OF_ORDER,
    PARADO,
    SUMINISTRANDO,
)
from tests.support.waiting import wait_until

HOST = "127.0.0.1"
FAST = LinkConfig(connect_timeout=1.0, handshake_timeout=1.0, ack_timeout=0.5, max_retries=3, write_timeout=1.0)
QUIET = 3600.0  # silence timeout: the fake Monitors send no heartbeats
SIZE = (120, 40)
REFRESH = 1.0  # the panel's own refresh interval (the default)
WITHIN_REFRESH = 3 * REFRESH  # deadline for what the next refresh must show
FRAME_TIMEOUT = 3.0


# -- helpers ---------------------------------------------------------------------------------------


class FakeMonitor:
    """A Monitor reduced to its link; its reader thread queues every message Central sends."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.link = Link.connect(address[0], address[1], FAST)
        self.inbox: queue.Queue[Message] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="fake-monitor", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while not self.link.closed:
                message = self.link.recv(timeout=0.1)
                if message is not None:
                    self.inbox.put(message)
        except LinkError:
            pass

    def next(self, kind: type[Message], timeout: float = FRAME_TIMEOUT) -> Message:
        """The next message of type ``kind`` Central sends (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind.__name__} from Central within {timeout:g} s") from None
            if isinstance(message, kind):
                return message

    async def frame(self, pilot, kind: type[Message], timeout: float = FRAME_TIMEOUT) -> Message:
        """``next`` while the panel runs: wait without blocking its event loop."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                if time.monotonic() >= deadline:
                    raise AssertionError(f"no {kind.__name__} from Central within {timeout:g} s") from None
                await pilot.pause(0.02)
                continue
            if isinstance(message, kind):
                return message

    def register(self, cp_id: str, location: str, price: str) -> None:
        self.link.send(Reg(cp_id, location, Decimal(price)))
        answer = self.next(Auth)
        assert answer.ok, answer

    def close(self) -> None:
        self.link.close("test over")
        self._reader.join(2)


def state(central: Central, cp_id: str) -> str | None:
    row = central.network.get(cp_id)
    return row.state if row else None


def wait_state(central: Central, cp_id: str, expected: str, timeout: float = 3.0) -> None:
    wait_until(lambda: state(central, cp_id) == expected, timeout, f"{cp_id} {expected} (is {state(central, cp_id)})")


async def until(pilot, predicate: Callable[[], object], timeout: float, what: str):
    """Let the app run until ``predicate()`` is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await pilot.pause(0.05)


def tiles(app: CentralPanel) -> dict[str, CPTileWidget]:
    return {widget.tile.cp_id: widget for widget in app.query(CPTileWidget)}


def shown_messages(app: CentralPanel) -> list[str]:
    return [message.text for message in app.query_one(MessageList).shown]


def rendered_messages(app: CentralPanel) -> str:
    return "\n".join(strip.text for strip in app.query_one(MessageList).lines)


async def type_command(pilot, text: str) -> None:
    """Open the command line with ':' and type ``text`` and Enter, as an operator does."""
    await pilot.press("colon")
    await pilot.press(*[{" ": "space"}.get(char, char) for char in text])
    await pilot.press("enter")


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture
def messages(caplog: pytest.LogCaptureFixture) -> Iterator[MessageLog]:
    """The MessageLog on the ``ev_central`` logger, as EV_Central attaches it."""
    caplog.set_level(logging.INFO, logger="ev_central")
    handler = MessageLog()
    logger = logging.getLogger("ev_central")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Central]:
    store = open_store(f"sqlite:///{tmp_path / 'central.db'}")
    started = Central(store, HOST, 0, silence_timeout=QUIET, link_config=FAST).start()
    yield started
    started.stop()


@pytest.fixture
def connect(central: Central) -> Iterator[Callable[[], FakeMonitor]]:
    opened: list[FakeMonitor] = []

    def open_one() -> FakeMonitor:
        monitor = FakeMonitor(central.address)
        opened.append(monitor)
        return monitor

    yield open_one
    for monitor in opened:
        monitor.close()


@pytest.fixture
def five_states(central: Central, connect, messages: MessageLog) -> dict[str, FakeMonitor]:
    """CP1 ACTIVADO, CP2 AVERIADO, CP3 PARADO, CP4 SUMINISTRANDO (driver DRV7), CP5 DESCONECTADO."""
    monitors = {}
    for number, location in enumerate(["C/Mayor 45", "Gran Via 2", "Plaza Nueva 1", "C/Serrano 10",
                                       "Museo de las Artes y las Ciencias, Avenida del Saler"], start=1):
        monitor = monitors[f"CP{number}"] = connect()
        monitor.register(f"CP{number}", location, "0.48" if number != 4 else "0.5")
    monitors["CP2"].link.send(Avr("CP2", "Engine answers KO"))
    wait_state(central, "CP2", AVERIADO)
    view = CentralView(central, messages)
    assert view.command("stop CP3") == "stop: CP3 PARADO"
    assert isinstance(monitors["CP3"].next(Stop), Stop)
    central.network.apply("CP4", Event.SUPPLY_STARTED, "test supply started")
    central.book.open("session-4", "request-4", "CP4", "DRV7", Decimal("0.5"))
    central.book.telemetry("session-4", 1, Decimal("1.5"))
    monitors["CP5"].close()
    wait_state(central, "CP5", DESCONECTADO)
    assert {cp: state(central, cp) for cp in monitors} == {
        "CP1": ACTIVADO, "CP2": AVERIADO, "CP3": PARADO, "CP4": SUMINISTRANDO, "CP5": DESCONECTADO}
    return monitors


# -- the panel shows every state ---------------------------------------------------------------------


def test_tiles_show_every_state_with_its_colour(central: Central, five_states, messages: MessageLog) -> None:
    async def scenario() -> None:
        app = CentralPanel(CentralView(central, messages))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: len(tiles(app)) == 5, WITHIN_REFRESH, "five tiles")
            shown = tiles(app)
            assert sorted(shown) == ["CP1", "CP2", "CP3", "CP4", "CP5"]
            expected = {"CP1": ACTIVADO, "CP2": AVERIADO, "CP3": PARADO, "CP4": SUMINISTRANDO, "CP5": DESCONECTADO}
            for cp_id, cp_state in expected.items():
                widget = shown[cp_id]
                lines = widget.text.splitlines()
                assert lines[:4] == [cp_id, widget.tile.location, f"{widget.tile.price_eur_kwh:.2f} EUR/kWh",
                                     cp_state], lines
                assert widget.has_class(state_class(cp_state)), widget.classes
                assert not any(widget.has_class(state_class(other)) for other in CP_STATES if other != cp_state)
                assert widget.styles.background == state_colour(cp_state), cp_id
            # the colours are the assignment's
            assert state_colour(ACTIVADO) == state_colour(SUMINISTRANDO) == state_colour("ACTIVADO")
            assert state_colour(ACTIVADO).rgb == (0, 128, 0)
            assert state_colour(AVERIADO).rgb == (255, 0, 0)
            assert state_colour(PARADO).rgb == (255, 135, 0)  # orange
            assert state_colour(DESCONECTADO).rgb == (128, 128, 128)  # grey

            assert OUT_OF_ORDER in shown["CP3"].text.splitlines()
            assert OUT_OF_ORDER not in shown["CP1"].text
            assert "Engine answers KO" in shown["CP2"].text.splitlines()
            supplying = shown["CP4"].text.splitlines()
            assert supplying[4:] == ["Driver DRV7", "1.500 kWh", "0.75 EUR"]
            assert "0.50 EUR/kWh" in supplying
            idle = shown["CP1"].text.splitlines()
            assert len(idle) == 4 and not any(line.endswith((" kWh", " EUR")) for line in idle)

            status = app.query_one(StatusLine)
            assert status.ok and CENTRAL_OK in status.line and not status.has_class("-problem")
            assert "5 CPs: 1 ACTIVADO, 1 PARADO, 1 SUMINISTRANDO, 1 AVERIADO, 1 DESCONECTADO" in str(
                app.query_one("#tiles").border_title)

    asyncio.run(scenario())


def test_live_figures_ongoing_requests_and_messages(central: Central, five_states, messages: MessageLog) -> None:
    async def scenario() -> None:
        app = CentralPanel(CentralView(central, messages))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: "CP4" in tiles(app), WITHIN_REFRESH, "CP4's tile")
            widget = tiles(app)["CP4"]

            # new telemetry reaches the tile (the same widget, updated in place) within a refresh
            central.book.telemetry("session-4", 2, Decimal("2.75"))
            await until(pilot, lambda: "2.750 kWh" in widget.text, WITHIN_REFRESH, "the new kWh on CP4's tile")
            assert widget.text.splitlines()[4:] == ["Driver DRV7", "2.750 kWh", "1.38 EUR"]
            assert tiles(app)["CP4"] is widget

            # ongoing requests: date, start time, driver, CP, status
            started = central.book.active_for_cp("CP4").started_at.astimezone()
            table = app.query_one(OngoingTable)
            assert [str(c.label) for c in table.columns.values()] == ["Date", "Start", "User", "CP", "Status"]
            await until(pilot, lambda: table.row_count == 1, WITHIN_REFRESH, "one ongoing request")
            assert table.get_row_at(0) == [f"{started:%Y-%m-%d}", f"{started:%H:%M:%S}", "DRV7", "CP4", "supplying"]

            # a second request, authorised but not supplying yet
            central.book.open("session-1", "request-1", "CP1", "DRV8", Decimal("0.48"))
            await until(pilot, lambda: table.row_count == 2, WITHIN_REFRESH, "two ongoing requests")
            rows = [table.get_row_at(i) for i in range(2)]
            assert {tuple(row[2:]) for row in rows} == {("DRV7", "CP4", "supplying"), ("DRV8", "CP1", "authorised")}

            # Central's messages, and new ones as they come; warnings and errors coloured
            assert any("CP2: ACTIVADO -> AVERIADO" in text for text in shown_messages(app)), shown_messages(app)
            assert any("Stop sent to CP3" in text for text in shown_messages(app))
            logging.getLogger("ev_central.test").warning("a warning for the panel")
            logging.getLogger("ev_central.test").error("an error for the panel")
            await until(pilot, lambda: "an error for the panel" in rendered_messages(app), WITHIN_REFRESH,
                        "the new messages on screen")
            lines = {strip.text: strip for strip in app.query_one(MessageList).lines}
            (error,) = [s for text, s in lines.items() if "an error for the panel" in text]
            (warning,) = [s for text, s in lines.items() if "a warning for the panel" in text]
            assert any(seg.style and seg.style.color and seg.style.color.name == "red" for seg in error)
            assert any(seg.style and seg.style.color and seg.style.color.name == "yellow" for seg in warning)
            assert shown_messages(app)[-1] == "an error for the panel"  # newest last, in view
            assert len(shown_messages(app)) == len(set(map(id, app.query_one(MessageList).shown)))  # no repeats

            # a CP that appears later gets a tile; the others are the same widgets
            before = tiles(app)
            central.network.register("CP0", "C/Nueva 1", Decimal("0.3"), session=object())
            await until(pilot, lambda: "CP0" in tiles(app), WITHIN_REFRESH, "CP0's tile")
            after = tiles(app)
            assert all(after[cp] is before[cp] for cp in before)
            assert [w.tile.cp_id for w in app.query(CPTileWidget)][:2] == ["CP0", "CP1"]  # in order

    asyncio.run(scenario())


def test_a_tag_supply_shows_its_account_and_the_tag_masked(central: Central, connect, messages: MessageLog) -> None:
    connect().register("CP7", "C/Mayor 7", "0.48")
    wait_state(central, "CP7", ACTIVADO)
    central.network.apply("CP7", Event.SUPPLY_STARTED, "test supply started")
    central.book.open("session-7", "request-7", "CP7", "", Decimal("0.48"), tag_uid="16AC936B1692E73A",
                      account_id="FLAT3B")
    central.book.telemetry("session-7", 1, Decimal("1.5"))

    async def scenario() -> None:
        app = CentralPanel(CentralView(central, messages))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: "CP7" in tiles(app), WITHIN_REFRESH, "CP7's tile")
            table = app.query_one(OngoingTable)
            await until(pilot, lambda: table.row_count == 1, WITHIN_REFRESH, "one ongoing request")
            assert table.get_row_at(0)[2:] == ["tag ...E73A (FLAT3B)", "CP7", "supplying (MCSP)"]
            lines = tiles(app)["CP7"].text.splitlines()
            assert lines[4:] == ["Account FLAT3B (tag ...E73A)", "1.500 kWh", "0.72 EUR"]
            assert "16AC936B1692E73A" not in tiles(app)["CP7"].text  # the UID is a key: never shown whole

    asyncio.run(scenario())


def test_stop_and_resume_one_cp_from_the_command_line(central: Central, five_states, messages: MessageLog) -> None:
    monitor = five_states["CP1"]

    async def scenario() -> None:
        app = CentralPanel(CentralView(central, messages))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: "CP1" in tiles(app), WITHIN_REFRESH, "CP1's tile")
            tile = tiles(app)["CP1"]

            await type_command(pilot, "stop CP1")
            assert isinstance(await monitor.frame(pilot, Stop), Stop)  # the Monitor got the STOP frame
            await until(pilot, lambda: app.last_answer, WITHIN_REFRESH, "the answer to stop")
            assert state(central, "CP1") == PARADO
            assert app.last_answer == "stop: CP1 PARADO"
            assert str(app.query_one("#answer").content) == "stop: CP1 PARADO"
            await until(pilot, lambda: "stop: CP1 PARADO" in shown_messages(app), WITHIN_REFRESH,
                        "the confirmation among the messages")
            await until(pilot, lambda: tile.tile.state == PARADO, WITHIN_REFRESH, "CP1's tile PARADO")
            assert tile.has_class(state_class(PARADO)) and not tile.has_class(state_class(ACTIVADO))
            assert OUT_OF_ORDER in tile.text

            # 'r' on the focused tile fills in "resume CP1"; Enter runs it
            tile.focus()
            await pilot.press("r")
            assert app.query_one("#command").value == "resume CP1 "
            await pilot.press("enter")
            assert isinstance(await monitor.frame(pilot, Resume), Resume)
            await until(pilot, lambda: app.last_answer == "resume: CP1 ACTIVADO", WITHIN_REFRESH,
                        "the answer to resume")
            assert state(central, "CP1") == ACTIVADO
            await until(pilot, lambda: tile.tile.state == ACTIVADO, WITHIN_REFRESH, "CP1's tile ACTIVADO")
            assert tile.has_class(state_class(ACTIVADO)) and OUT_OF_ORDER not in tile.text

            # a mistake is answered, nothing changes
            await type_command(pilot, "stop CP99")
            await until(pilot, lambda: app.last_answer == "unknown CP CP99", WITHIN_REFRESH, "the refusal")
            assert app.query_one("#answer").has_class("-refused")

    asyncio.run(scenario())


def test_stop_all_and_resume_all(central: Central, connect, messages: MessageLog) -> None:
    monitors = {}
    for cp_id in ("CP1", "CP2"):
        monitors[cp_id] = connect()
        monitors[cp_id].register(cp_id, "C/Mayor 45", "0.48")

    async def scenario() -> None:
        app = CentralPanel(CentralView(central, messages))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: len(tiles(app)) == 2, WITHIN_REFRESH, "two tiles")
            await pilot.press("s")  # no tile focused: "stop " to complete
            assert app.query_one("#command").value == "stop "
            await pilot.press("a", "l", "l", "enter")
            for monitor in monitors.values():
                assert isinstance(await monitor.frame(pilot, Stop), Stop)
            await until(pilot, lambda: app.last_answer == "stop: CP1 PARADO, CP2 PARADO", WITHIN_REFRESH,
                        "the answer to stop all")
            await until(pilot, lambda: all(OUT_OF_ORDER in w.text for w in tiles(app).values()), WITHIN_REFRESH,
                        "both tiles Out of Order")

            await type_command(pilot, "resume all")
            for monitor in monitors.values():
                assert isinstance(await monitor.frame(pilot, Resume), Resume)
            await until(pilot, lambda: app.last_answer == "resume: CP1 ACTIVADO, CP2 ACTIVADO", WITHIN_REFRESH,
                        "the answer to resume all")
            assert {state(central, cp) for cp in monitors} == {ACTIVADO}

    asyncio.run(scenario())


def test_a_failing_command_is_shown_and_the_panel_goes_on(central: Central, messages: MessageLog) -> None:
    class BrokenView(CentralView):
        def command(self, line: str) -> str:
            raise RuntimeError("Monitor link broken")

    async def scenario() -> None:
        app = CentralPanel(BrokenView(central, messages))
        async with app.run_test(size=SIZE) as pilot:
            await type_command(pilot, "stop CP1")
            await until(pilot, lambda: app.last_answer, WITHIN_REFRESH, "the answer")
            assert app.last_answer == "stop CP1: failed (Monitor link broken)"
            assert app.query_one("#answer").has_class("-refused")
            assert app.is_running
            await until(pilot, lambda: any("command 'stop CP1' failed" in text for text in shown_messages(app)),
                        WITHIN_REFRESH, "the failure among the messages")

    asyncio.run(scenario())


# -- quitting ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["q", "ctrl+c"])
def test_quit_keys_end_the_panel(central: Central, messages: MessageLog, key: str) -> None:
    async def scenario() -> CentralPanel:
        app = CentralPanel(CentralView(central, messages))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press(key)
            await until(pilot, lambda: not app.is_running, 2.0, "the panel to exit")
        return app

    app = asyncio.run(scenario())
    assert app.return_code == 0


def test_q_typed_on_the_command_line_is_text_not_quit(central: Central, messages: MessageLog) -> None:
    async def scenario() -> None:
        app = CentralPanel(CentralView(central, messages))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("colon", "q")
            assert app.query_one("#command").value == "q"
            assert app.is_running
            await pilot.press("escape")
            assert app.query_one("#command").value == ""

    asyncio.run(scenario())


def test_stop_event_ends_the_panel(central: Central, messages: MessageLog) -> None:
    stop = threading.Event()

    async def scenario() -> None:
        app = CentralPanel(CentralView(central, messages), refresh_interval=0.1, stop_event=stop)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert app.is_running
            stop.set()  # what SIGTERM does through ev_common.lifecycle.Shutdown
            await until(pilot, lambda: not app.is_running, 2.0, "the panel to exit")

    asyncio.run(scenario())


# -- many CPs ----------------------------------------------------------------------------------------


def test_two_hundred_cps(central: Central, messages: MessageLog) -> None:
    for number in range(200):
        central.network.register(f"CP{number:03d}", f"Calle {number}", Decimal("0.45"), session=object())
    for number in range(0, 200, 7):
        central.network.apply(f"CP{number:03d}", Event.STOP, "test")

    async def scenario() -> None:
        app = CentralPanel(CentralView(central, messages))
        started = time.monotonic()
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: len(tiles(app)) == 200, 10.0, "200 tiles")
            await pilot.pause()
            mounted_in = time.monotonic() - started
            assert mounted_in < 10.0
            widgets = tiles(app)
            assert sum(w.has_class(state_class(PARADO)) for w in widgets.values()) == len(range(0, 200, 7))
            # tiles wrap: several per row, rows below one another, and the area scrolls
            grid_rows = {w.region.y for w in widgets.values()}
            grid_columns = {w.region.x for w in widgets.values()}
            assert len(grid_columns) >= 3 and len(grid_rows) * len(grid_columns) >= 200
            area = app.query_one("#tiles")
            assert area.max_scroll_y > 0
            assert all(w.region.width >= 24 for w in widgets.values())

            # one refresh, with nothing changed and with one change, is quick and in place
            for _ in range(3):
                began = time.perf_counter()
                app.refresh_from_view()
                assert time.perf_counter() - began < 0.5
            central.network.apply("CP150", Event.STOP, "test")
            await until(pilot, lambda: widgets["CP150"].has_class(state_class(PARADO)), WITHIN_REFRESH,
                        "CP150 PARADO")
            assert tiles(app) == widgets

            await pilot.press("end")  # the last tile can be scrolled into view
            await until(pilot, lambda: area.scroll_y == area.max_scroll_y, 2.0, "the end of the tiles")

    asyncio.run(scenario())


# -- --ui ------------------------------------------------------------------------------------------------


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_ui_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert choose_ui("auto", _Stream(True)) == "panel"
    assert choose_ui("auto", _Stream(False)) == "log"
    assert choose_ui("auto", None) == "log"
    assert choose_ui("log", _Stream(True)) == "log"
    assert choose_ui("panel", _Stream(False)) == "panel"

    base = ["--port", "0", "--kafka", "127.0.0.1:9092"]
    assert build_parser().parse_args(base).ui == "auto"
    monkeypatch.setenv("EV_UI", "log")
    assert build_parser().parse_args(base).ui == "log"
    assert build_parser().parse_args(base + ["--ui", "panel"]).ui == "panel"
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + ["--ui", "fancy"])

    monkeypatch.setenv("EV_DATA_DIR", str(tmp_path))
    assert default_log_file() == tmp_path / "ev_central.log"
    assert build_parser().parse_args(base + ["--log-file", "x.log"]).log_file == Path("x.log")
    assert "--log-file" in build_parser().format_help() and "EV_DATA_DIR" in build_parser().format_help()
