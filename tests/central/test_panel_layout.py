"""The panel at 80x24 and at 200x50 (``App.run_test`` on a real Central, as in test_panel.py):
the requests table keeps its Status column, the command hint and the newest message are in
view (also after a resize), a long fault reason is read in full in its tile, and no
notification covers the messages or the command line.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from textual.widget import Widget
from textual.widgets import Input

from ev_central.panel import CentralPanel
from ev_central.panel.app import COMMAND_HINT
from ev_central.panel.widgets import MessageList, OngoingTable
from ev_central.view import CentralView, MessageLog
from ev_common.protocol import Avr
from ev_common.words import AVERIADO
from tests.central.test_panel import (  # noqa: F401  (fixtures)
    WITHIN_REFRESH,
    central,
    connect,
    five_states,
    messages,
    tiles,
    until,
    wait_state,
)

SIZES = [(80, 24), (200, 50)]
LONG_FAULT = "Engine does not answer on 127.0.0.1:5001 within 1 s: connection refused, retrying every second"


def visible_text(widget: Widget) -> list[str]:
    """The lines ``widget`` draws now (what is scrolled into its view)."""
    return [widget.render_line(y).text for y in range(widget.size.height)]


def squeezed(text: str) -> str:
    """``text`` without white space: wrapped text compares equal to the one-line original."""
    return "".join(text.split())


def on_screen(app: CentralPanel, widget: Widget) -> bool:
    region, screen = widget.region, app.screen.region
    return region.width > 0 and region.height > 0 and screen.contains_region(region)


def newest_in_view(app: CentralPanel, text: str) -> bool:
    log = app.query_one(MessageList)
    return log.scroll_y >= log.max_scroll_y and squeezed(text) in squeezed("".join(visible_text(log)))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_status_column_hint_newest_message_and_long_fault(central, five_states, messages: MessageLog,
                                                          size: tuple[int, int]) -> None:
    five_states["CP1"].link.send(Avr("CP1", LONG_FAULT))
    wait_state(central, "CP1", AVERIADO)
    central.book.open("session-1", "request-1", "CP3", "DRV8", central.network.get("CP3").price_eur_kwh)

    async def scenario() -> None:
        app = CentralPanel(CentralView(central, messages))
        async with app.run_test(size=size) as pilot:
            table = app.query_one(OngoingTable)
            await until(pilot, lambda: table.row_count == 2, WITHIN_REFRESH, "two ongoing requests")
            await pilot.pause()

            # the requests table shows all its columns, Status included, with the statuses
            assert on_screen(app, table)
            shown = visible_text(table)
            assert "Status" in shown[0] and "Date" in shown[0], shown
            assert any("supplying" in line for line in shown) and any("authorised" in line for line in shown)

            # the command hint in full, on screen
            line = app.query_one("#command", Input)
            assert on_screen(app, line)
            assert COMMAND_HINT in line.render_line(0).text

            # a long fault reason is read in full in its tile
            tile = tiles(app)["CP1"]
            await until(pilot, lambda: tile.tile.fault == LONG_FAULT, WITHIN_REFRESH, "CP1's fault on its tile")
            await pilot.pause()
            assert squeezed(LONG_FAULT) in squeezed("".join(visible_text(tile))), visible_text(tile)

            # the newest message is in view
            newest = "the newest message, long enough to wrap on a narrow screen: " + "x" * 40 + " end"
            logging.getLogger("ev_central.test").warning("%s", newest)
            await until(pilot, lambda: newest_in_view(app, newest), WITHIN_REFRESH, "the newest message in view")

            # a command's answer: beside the command line, among the messages; no toast covers anything
            await pilot.press("colon", *"list", "enter")
            await until(pilot, lambda: app.last_answer, WITHIN_REFRESH, "the answer to list")
            answer = app.query_one("#answer")
            await until(pilot, lambda: on_screen(app, answer), WITHIN_REFRESH, "the answer beside the command line")
            assert not app.screen.query("Toast")
            await until(pilot, lambda: newest_in_view(app, app.last_answer), WITHIN_REFRESH, "the answer in view")
            await pilot.pause()
            assert COMMAND_HINT in line.render_line(0).text  # the hint beside the answer
            await pilot.press("colon")  # typing again: the whole line is the command line's
            assert not answer.display or not on_screen(app, answer)
            assert COMMAND_HINT in line.render_line(0).text

    asyncio.run(scenario())


def test_newest_message_in_view_after_resizes(central, five_states, messages: MessageLog) -> None:
    async def scenario() -> None:
        app = CentralPanel(CentralView(central, messages))
        async with app.run_test(size=(200, 50)) as pilot:
            for number in range(60):  # more than the message list holds on screen
                logging.getLogger("ev_central.test").info("message %d of a long run, with some words to wrap", number)
            await until(pilot, lambda: newest_in_view(app, "message 59 of a long run"), WITHIN_REFRESH,
                        "the newest message in view")
            for size in [(80, 24), (200, 50), (80, 24)]:
                await pilot.resize_terminal(*size)
                await until(pilot, lambda: newest_in_view(app, "message 59 of a long run, with some words to wrap"),
                            WITHIN_REFRESH, f"the newest message in view at {size[0]}x{size[1]}")
                log = app.query_one(MessageList)
                assert all(len(text.rstrip()) <= log.scrollable_content_region.width for text in visible_text(log))
                table = app.query_one(OngoingTable)
                assert "Status" in visible_text(table)[0]

    asyncio.run(scenario())
