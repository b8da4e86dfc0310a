"""CentralPanel: Central's monitoring panel, a Textual app reading a ``CentralView``.

    +-----------------------------------------------------------------------+
    | EVCharging Central | Central system status OK · Kafka OK · ...        |  status line
    | +-- Charging points  (12 CPs: 9 ACTIVADO, ...) -------------------+   |
    | | [CP001] [CP002] [CP003] [CP004] ...   (wrap to the width, scroll)|   |  tiles
    | +------------------------------------------------------------------+  |
    | +-- Ongoing driver requests --+ +-- Application messages ---------+  |
    | | Date Start Driver CP Status | | 12:00:01 CP001: ... -> ACTIVADO  |  |
    | +-----------------------------+ +----------------------------------+  |
    | Command > stop CP001                           stop: CP001 PARADO    |  command line, answer
    | s Stop  r Resume  : Command  q Quit                                   |  footer
    +-----------------------------------------------------------------------+

Every ``refresh_interval`` seconds the widgets are synced with the view (in place).
Commands typed on the command line go to ``view.command`` in a worker thread; the
answer is shown next to the command line (until the command line is opened again) and in
the messages (it is logged to ``ev_central.operator``, as on the plain console). No
notification pops up: nothing covers the messages or the command line.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Footer, Input, Static

from ..view import MAX_MESSAGES, CentralView
from .widgets import CPTileWidget, MessageList, OngoingTable, StatusLine, TileGrid, state_counts

log = logging.getLogger("ev_central.operator")  # answers are logged where the console logs them
panel_log = logging.getLogger(__name__)

REFRESH_INTERVAL = 1.0  # seconds between two reads of the view

CSS = """
Screen { layout: vertical; }
#tiles {
    height: 1fr;
    border: round $primary;
    border-title-style: bold;
    padding: 0 1;
}
#lower { height: 35%; min-height: 7; }
#ongoing {
    width: auto;
    height: 100%;
    border: round $primary;
    border-title-style: bold;
    overflow-x: hidden;
}
#messages {
    width: 1fr;
    min-width: 24;
    border: round $primary;
    border-title-style: bold;
}
#command-row { height: 1; }
#prompt { width: auto; padding: 0 1; text-style: bold; }
#command { width: 1fr; }
#answer {
    width: auto; height: 1; padding: 0 1; color: $text-success; display: none;
    text-wrap: nowrap; text-overflow: ellipsis;  /* in full among the messages */
}
#answer.-shown { display: block; }
#answer.-refused { color: $text-warning; }
"""
COMMAND_HINT = "stop|resume <CP|all>, list, help; Esc cancels"  # fits beside an answer at 80 columns


class CentralPanel(App[None]):
    """The panel. ``stop_event`` (optional): when set (Ctrl+C, SIGTERM elsewhere), the panel exits."""

    TITLE = "EVCharging Central"
    CSS = CSS
    AUTO_FOCUS = "#tiles"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("s", "command('stop')", "Stop CP"),
        Binding("r", "command('resume')", "Resume CP"),
        Binding("colon", "command('')", "Command", key_display=":"),
        Binding("escape", "cancel", "Cancel", show=False),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(self, view: CentralView, *, refresh_interval: float = REFRESH_INTERVAL,
                 stop_event: threading.Event | None = None) -> None:
        super().__init__()
        self.view = view
        self.refresh_interval = refresh_interval
        self.stop_event = stop_event
        self.last_answer = ""
        self._last_error = ""

    # -- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        with VerticalScroll(id="tiles") as tiles:
            tiles.border_title = "Charging points"
            yield TileGrid(id="grid")
        with Horizontal(id="lower"):
            ongoing = OngoingTable(id="ongoing")
            ongoing.border_title = "Ongoing driver requests"
            yield ongoing
            messages = MessageList(id="messages")
            messages.border_title = "Application messages"
            yield messages
        with Horizontal(id="command-row"):
            yield Static("Command >", id="prompt")
            yield Input(placeholder=COMMAND_HINT, id="command", compact=True, select_on_focus=False)
            yield Static("", id="answer")
        yield Footer()

    def on_mount(self) -> None:
        self._fit_answer()
        self.refresh_from_view()
        self.set_interval(self.refresh_interval, self.refresh_from_view)

    def on_resize(self) -> None:
        self._fit_answer()

    def _fit_answer(self) -> None:
        """The answer takes what the command hint leaves of the command row (its end is cut
        with "…" if it must; it is in full among the messages)."""
        prompt = self.query_one("#prompt", Static)
        room = self.size.width - (len(str(prompt.content)) + 2) - (len(COMMAND_HINT) + 2)
        self.query_one("#answer", Static).styles.max_width = max(room, 12)

    # -- refresh ------------------------------------------------------------------------------

    def refresh_from_view(self) -> None:
        """Read the view once and bring every widget up to date."""
        if self.stop_event is not None and self.stop_event.is_set():
            self.exit()
            return
        try:
            tiles = self.view.tiles()
            self.query_one(StatusLine).sync(self.view.health())
            self.query_one("#tiles").border_title = f"Charging points  ({state_counts(tiles)})"
            self.query_one(TileGrid).sync(tiles)
            self.query_one(OngoingTable).sync(self.view.ongoing())
            self.query_one(MessageList).sync(self.view.messages(limit=MAX_MESSAGES))
        except Exception as exc:  # a bad read must not take Central down with the panel
            if repr(exc) != self._last_error:
                panel_log.exception("the panel could not refresh; it will try again")
            self._last_error = repr(exc)
        else:
            self._last_error = ""

    # -- commands -----------------------------------------------------------------------------

    def action_command(self, verb: str) -> None:
        """Open the command line with ``verb`` and the focused tile's CP (if any) filled in."""
        words = [verb] if verb else []
        if words and isinstance(self.focused, CPTileWidget):
            words.append(self.focused.tile.cp_id)
        line = self.query_one("#command", Input)
        self.query_one("#answer", Static).remove_class("-shown")  # the hint in full while typing
        line.value = " ".join(words) + (" " if words else "")
        line.focus()
        line.cursor_position = len(line.value)

    def action_cancel(self) -> None:
        line = self.query_one("#command", Input)
        line.value = ""
        self.query_one("#tiles").focus()

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        event.input.value = ""
        self.query_one("#tiles").focus()
        if text:
            await self.run_command(text)

    async def run_command(self, text: str) -> str:
        """Run one operator command off the UI thread; show and log its answer."""
        try:
            answer = await asyncio.to_thread(self.view.command, text)
            refused = answer.startswith("unknown") or " is not possible " in answer
        except Exception as exc:  # shown and logged; the panel (and Central) go on
            panel_log.exception("command %r failed", text)
            answer, refused = f"{text}: failed ({exc})", True
        log.log(logging.WARNING if refused else logging.INFO, "%s", answer)
        self.last_answer = answer
        shown = self.query_one("#answer", Static)
        shown.set_class(refused, "-refused")
        shown.update(answer)
        shown.add_class("-shown")
        self.refresh_from_view()
        return answer
