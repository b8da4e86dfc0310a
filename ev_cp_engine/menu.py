"""The CP's menu on a terminal: a Textual app that is always on screen.

Keys (also in the footer): [p] plug in, [u] unplug, [f] fault on/off, [r] request
a supply for a driver (an input line opens: driver id, Enter; Esc cancels), [t] tap
an RFID tag (an input line opens: the tag's UID in hex, Enter presents it to the CP's
reader, ``rfid.py``; Esc cancels), [q] quit. Above them: the status (first the links: every connectivity problem,
Kafka unreachable or no Monitor, in red for as long as it lasts; then the CP id,
Monitor link and state, the supply with its live kWh and EUR, fault and stop
flags) and the last messages.

The app only reads the Engine (``EngineStatus.read``, lock-free) and calls its
inputs; the Engine's 1 s tick and its health server run in their own threads.
While the app runs, the Engine's lines and the log records go to its message
area (through ``Messages``), never to the terminal underneath.
"""

from __future__ import annotations

import logging
import threading

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.widgets import Footer, Header, Input, RichLog, Static

from ev_common.protocol.fields import Identifier
from ev_common.words import ACTIVADO, STATE_COLOURS

from .rfid import NO_MCSP
from .screen import EngineStatus, Messages, MessagesLogHandler, problems, status_lines

log = logging.getLogger(__name__)

REFRESH_SECONDS = 0.25  # the status is read this often (the Engine's figures change every second)


class EngineMenu(App):
    """The Engine's screen; ``stop`` is set when the person quits, and quits the app when set."""

    TITLE = "EV_CP_E"
    AUTO_FOCUS = None  # the letters are the menu's until [r] or [t] opens an input
    CSS = """
    #status { height: auto; padding: 0 1; border: round $accent; border-title-color: $text; }
    #messages { height: 1fr; padding: 0 1; border: round $panel; }
    #driver { display: none; }
    #tag { display: none; }
    """
    BINDINGS = [
        Binding("p", "plug", "Plug in"),
        Binding("u", "unplug", "Unplug"),
        Binding("f", "fault", "Fault on/off"),
        Binding("r", "request", "Request a supply"),
        Binding("t", "tap", "Tap a tag"),
        Binding("q", "quit_engine", "Quit"),
        Binding("ctrl+c", "quit_engine", "Quit", show=False, priority=True),
        Binding("escape", "cancel_request", "Cancel", show=False),
    ]

    def __init__(self, engine, messages: Messages, stop: threading.Event | None = None, *, subtitle: str = "",
                 refresh_every: float = REFRESH_SECONDS, rfid=None) -> None:
        super().__init__()
        self.engine = engine
        self.rfid = rfid  # the CP's RFID reader (rfid.RfidReader), if any
        self.messages = messages
        self.stop = stop or threading.Event()
        self.refresh_every = refresh_every
        self.sub_title = subtitle
        self.status_text = ""  # what the status box shows, as plain text

    def compose(self) -> ComposeResult:
        yield Header()
        status = Static(id="status")
        status.border_title = "Status"
        yield status
        messages = RichLog(id="messages", max_lines=500, wrap=True)
        messages.border_title = "Messages"
        yield messages
        field = Input(placeholder="driver id", id="driver")
        field.border_title = "Request a supply for a driver: its id, Enter sends, Esc cancels"
        yield field
        tag = Input(placeholder="tag UID in hex, e.g. 16AC936B1692E73A", id="tag")
        tag.border_title = "Tap an RFID tag: its UID, Enter presents it, Esc cancels"
        yield tag
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(self.refresh_every, self.refresh_view)
        self.refresh_view()

    # -- what is shown ----------------------------------------------------------------------------------

    def refresh_view(self) -> None:
        """Show new messages and the Engine's status now; leave if asked to stop."""
        if self.stop.is_set():
            self.exit()
            return
        try:
            area = self.query_one("#messages", RichLog)
            box = self.query_one("#status", Static)
        except NoMatches:  # a last refresh while the app closes: its widgets are gone
            return
        for at, text in self.messages.drain():
            area.write(f"{at:%H:%M:%S} {text}")
        status = EngineStatus.read(self.engine)
        lines = status_lines(status)
        self.status_text = "\n".join(lines)
        shown = Text()
        shown.append(lines[0] + "\n", style="bold red" if problems(status) else STATE_COLOURS[ACTIVADO])
        shown.append(lines[1] + "\n", style=f"bold {STATE_COLOURS[status.state]}")
        shown.append(lines[2] + "\n", style="bold" if status.driver_id else "")
        shown.append(lines[3], style="bold red" if status.faulty or status.stopped else "")
        box.update(shown)

    # -- the person's inputs ---------------------------------------------------------------------------

    def _call(self, action, *args) -> None:
        try:
            action(*args)
        except Exception:  # a bug must not close the CP's screen: it is shown and the Engine goes on
            log.exception("%s failed", getattr(action, "__name__", "the action"))
        self.refresh_view()

    def action_plug(self) -> None:
        self._call(self.engine.plug)

    def action_unplug(self) -> None:
        self._call(self.engine.unplug)

    def action_fault(self) -> None:
        self._call(self.engine.toggle_fault)

    def action_request(self) -> None:
        self._open_input("#driver")

    def action_tap(self) -> None:
        if self.rfid is None or self.rfid.client is None:  # no --mcsp: no reader to present it to
            self.messages(NO_MCSP)
            self.refresh_view()
            return
        self._open_input("#tag")

    def _open_input(self, selector: str) -> None:
        for other in self.query(Input):
            other.display = False
        field = self.query_one(selector, Input)
        field.value = ""
        field.display = True
        field.focus()

    def action_cancel_request(self) -> None:
        for field in self.query(Input):
            field.value = ""
            field.display = False
        self.screen.set_focus(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        which = event.input.id
        self.action_cancel_request()
        if not text:
            return
        if which == "tag":
            self._call(self.rfid.tap, text)  # the exchange with Central runs on the reader's thread
            return
        driver_id = text
        try:
            Identifier().check(driver_id)
        except ValueError as exc:
            self.messages(f"cannot request a supply: {exc}")
            self.refresh_view()
            return
        self._call(self.engine.request_supply, driver_id)

    def action_quit_engine(self) -> None:
        self.stop.set()
        self.exit()


def run_menu(engine, messages: Messages, stop: threading.Event, *, subtitle: str = "", rfid=None) -> None:
    """Run the menu until the person quits or ``stop`` is set; then ``stop`` is set.

    Meanwhile the Engine's lines and every log record go to the menu's message area."""
    root = logging.getLogger()
    saved = list(root.handlers)
    for handler in saved:
        root.removeHandler(handler)
    root.addHandler(MessagesLogHandler(messages))
    messages.attach()
    try:
        EngineMenu(engine, messages, stop, subtitle=subtitle, rfid=rfid).run()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        messages.detach()
        stop.set()
