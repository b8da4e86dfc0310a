"""EV_W's menu on a terminal: a Textual app that is always on screen.

Above, the source (OpenWeather, or SIMULATED) and Central's link; then a line per city: its
temperature, ALERT in red (or ok), a failed check's error, the simulated label, its CPs. Below,
the messages. Keys (also in the footer): [a] add a location (an input line opens: ``CP_ID
City,CC``, Enter adds it to the locations file; Esc cancels), [r] remove one (a CP id, or a city
for all its CPs), [l] list the locations file, [q] quit. Whatever is added or removed is written
to the locations file, so a restart keeps it; the watch reads it again at its next cycle.

The app only reads the watch (``WeatherWatch.view``) and edits the file; the cycles run in their
own thread. While the app runs, log records go to its message area, not to the terminal.
"""

from __future__ import annotations

import logging
import threading

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.widgets import Footer, Header, Input, RichLog, Static

from ev_common.words import STATE_COLOURS, ACTIVADO, AVERIADO, PARADO

from .locations import LocationsFile
from .office import WatchView
from .screen import Messages, MessagesLogHandler

log = logging.getLogger(__name__)

REFRESH_SECONDS = 0.5


def view_text(view: WatchView) -> Text:
    """The box's content: a header line, then a line per city."""
    shown = Text()
    shown.append(f"{view.source}\n", style="bold magenta" if "SIMULATED" in view.source else "bold")
    shown.append(f"{view.central}", style=STATE_COLOURS[ACTIVADO] if view.central_ok else f"bold {STATE_COLOURS[AVERIADO]}")
    if view.waiting:
        shown.append(f" · {view.waiting} alert(s)/clear(s) waiting for Central", style=STATE_COLOURS[PARADO])
    if not view.cities:
        shown.append("\nno locations yet: [a] adds one (CP_ID City,CC)")
    for city in view.cities:
        style = f"bold {STATE_COLOURS[AVERIADO]}" if city.alert else (STATE_COLOURS[PARADO] if city.error else "")
        shown.append("\n" + city.text(), style=style)
    return shown


class WeatherMenu(App):
    """EV_W's screen; ``stop`` is set when the person quits, and quits the app when set."""

    TITLE = "EV_W"
    AUTO_FOCUS = None  # the letters are the menu's until [a] or [r] opens the input
    CSS = """
    #cities { height: auto; padding: 0 1; border: round $accent; border-title-color: $text; }
    #messages { height: 1fr; padding: 0 1; border: round $panel; }
    #entry { display: none; }
    """
    BINDINGS = [
        Binding("a", "add", "Add a location"),
        Binding("r", "remove", "Remove"),
        Binding("l", "list", "List"),
        Binding("q", "quit_weather", "Quit"),
        Binding("ctrl+c", "quit_weather", "Quit", show=False, priority=True),
        Binding("escape", "cancel", "Cancel", show=False),
    ]

    def __init__(self, view, locations: LocationsFile, messages: Messages, stop: threading.Event | None = None, *,
                 subtitle: str = "", refresh_every: float = REFRESH_SECONDS) -> None:
        super().__init__()
        self.read_view = view  # () -> WatchView
        self.locations = locations
        self.messages = messages
        self.stop = stop or threading.Event()
        self.refresh_every = refresh_every
        self.sub_title = subtitle
        self.mode: str | None = None  # "add" or "remove" while the input is open
        self.shown_text = ""  # the box's content, as plain text

    def compose(self) -> ComposeResult:
        yield Header()
        box = Static(id="cities")
        box.border_title = "Weather by location"
        yield box
        messages = RichLog(id="messages", max_lines=500, wrap=True)
        messages.border_title = "Messages"
        yield messages
        yield Input(id="entry")
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(self.refresh_every, self.refresh_view)
        self.refresh_view()

    def refresh_view(self) -> None:
        if self.stop.is_set():
            self.exit()
            return
        try:
            area = self.query_one("#messages", RichLog)
            box = self.query_one("#cities", Static)
        except NoMatches:  # a last refresh while the app closes
            return
        for at, text in self.messages.drain():
            area.write(f"{at:%H:%M:%S} {text}")
        shown = view_text(self.read_view())
        self.shown_text = shown.plain
        box.update(shown)

    # -- the person's inputs

    def action_add(self) -> None:
        self._open("add", "CP_ID City,CC, e.g. CP001 Alicante,ES",
                   "Add a location: CP id and city, Enter adds it, Esc cancels")

    def action_remove(self) -> None:
        self._open("remove", "CP001, or Alicante,ES for all its CPs",
                   "Remove a CP, or a city with all its CPs: Enter removes, Esc cancels")

    def _open(self, mode: str, placeholder: str, title: str) -> None:
        field = self.query_one("#entry", Input)
        self.mode = mode
        field.placeholder = placeholder
        field.border_title = title
        field.value = ""
        field.display = True
        field.focus()

    def action_cancel(self) -> None:
        field = self.query_one("#entry", Input)
        field.value = ""
        field.display = False
        self.mode = None
        self.screen.set_focus(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text, mode = event.value.strip(), self.mode
        self.action_cancel()
        if not text or mode is None:
            return
        try:
            said = self.locations.add(text) if mode == "add" else self.locations.remove(text)
        except (ValueError, OSError) as exc:
            said = f"not {'added' if mode == 'add' else 'removed'}: {exc}"
        self.messages(said + ("" if said.startswith("not ") else "; the next check takes it"))
        self.refresh_view()

    def action_list(self) -> None:
        for line in self.locations.lines():
            self.messages(line)
        self.refresh_view()

    def action_quit_weather(self) -> None:
        self.stop.set()
        self.exit()


def run_menu(view, locations: LocationsFile, messages: Messages, stop: threading.Event, *,
             subtitle: str = "", filters: tuple[logging.Filter, ...] = ()) -> None:
    """Run the menu until the person quits or ``stop`` is set; then ``stop`` is set. Meanwhile
    log records (WARNING and up, through ``filters``: the secrets' redaction) go to its messages."""
    root = logging.getLogger()
    saved = list(root.handlers)
    for handler in saved:
        root.removeHandler(handler)
    handler = MessagesLogHandler(messages, logging.WARNING)
    for log_filter in filters:
        handler.addFilter(log_filter)
    root.addHandler(handler)
    messages.attach()
    try:
        WeatherMenu(view, locations, messages, stop, subtitle=subtitle).run()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        messages.detach()
        stop.set()
