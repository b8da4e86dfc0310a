"""The panel's widgets: status line, CP tiles in a wrapping grid, ongoing requests, messages.

Each widget has a ``sync(...)`` method taking what ``CentralView`` returns; it changes
only what differs from what it already shows, so refreshing every second is cheap
even with hundreds of CPs.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Iterable, Sequence

from rich.color import Color as RichColor
from rich.console import Group
from rich.text import Text
from textual.color import Color, ColorParseError
from textual.events import Resize
from textual.widget import Widget
from textual.widgets import DataTable, RichLog, Static

from ev_common.words import (
    AVERIADO,
    CP_STATES,
    OUT_OF_ORDER,
    PARADO,
    STATE_COLOURS,
    STOPPED_BY_CENTRAL,
    SUMINISTRANDO,
)

from ..view import MAX_MESSAGES, CentralStatus, CPTile, OngoingRequest, PanelMessage

TILE_WIDTH = 24  # narrowest tile, in cells; the grid fits as many columns as the width allows
TILE_HEIGHT = 7  # lowest tile; a long location or fault wraps and makes its row taller
MESSAGE_STYLES = {"error": "bold red", "warning": "yellow", "info": ""}
WRAPPED_LINES = (1,)  # the location wraps (the fault too, see _tile_content); the others are cut with "…"


def state_colour(state: str) -> Color:
    """The tile background of ``state``, from ``STATE_COLOURS`` (a Textual or a Rich colour)."""
    name = STATE_COLOURS.get(state, "#808080")
    try:
        return Color.parse(name)
    except ColorParseError:  # Rich names such as dark_orange and grey50
        return Color.from_rich_color(RichColor.parse(name))


def state_class(state: str) -> str:
    """The CSS class a tile carries in ``state``: ``-activado``, ``-parado``..."""
    return "-" + state.lower()


def price_text(price: Decimal) -> str:
    """At least two decimals, never rounding a price away."""
    places = max(2, -min(0, int(price.normalize().as_tuple().exponent)))
    return f"{price:.{places}f} EUR/kWh"


def local_time(at: datetime) -> datetime:
    return at.astimezone()


def tile_lines(tile: CPTile) -> list[str]:
    """What a tile says, line by line (only the driver's id: no personal data)."""
    lines = [tile.cp_id, tile.location, price_text(tile.price_eur_kwh), tile.state]
    if tile.state == PARADO:
        lines.append(OUT_OF_ORDER)
        if tile.note:  # why, when not (only) the operator's stop: "weather alert (Alicante,ES)"
            lines.append(tile.note)
    elif tile.state == SUMINISTRANDO:
        if tile.tag:
            lines.append(f"Account {tile.account_id} (tag {tile.tag})" if tile.account_id else f"Tag {tile.tag}")
        elif tile.driver_id:
            lines.append(f"Driver {tile.driver_id}")
        if tile.kwh is not None:
            lines.append(f"{tile.kwh:.3f} kWh")
        if tile.amount_eur is not None:
            lines.append(f"{tile.amount_eur:.2f} EUR")
    elif tile.state == AVERIADO and tile.fault:
        lines.append(tile.fault)
    elif tile.note:
        lines.append(tile.note)
    if tile.stopped and tile.state != PARADO:
        lines.append(f"({STOPPED_BY_CENTRAL})")
    return lines


def _tile_content(tile: CPTile) -> Group:
    """One Rich line per ``tile_lines`` entry: the location and the fault wrap (read in full),
    the others end in "…" when the tile is too narrow."""
    parts = []
    for number, line in enumerate(tile_lines(tile)):
        style = "bold" if number in (0, 3) or line == OUT_OF_ORDER else ""
        wraps = number in WRAPPED_LINES or (tile.state == AVERIADO and line == tile.fault)
        parts.append(Text(line, style=style, no_wrap=not wraps, overflow="fold" if wraps else "ellipsis"))
    return Group(*parts)


class CPTileWidget(Static, can_focus=True):
    """One CP: its id, location, price and state, on the state's colour."""

    DEFAULT_CSS = f"""
    CPTileWidget {{
        height: auto;
        min-height: {TILE_HEIGHT};
        padding: 0 1;
        background: $panel;
        color: auto 90%;
    }}
    CPTileWidget:focus {{
        background-tint: $foreground 25%;
        text-style: underline;
    }}
    """ + "\n".join(
        f"CPTileWidget.{state_class(state)} {{ background: {state_colour(state).hex}; }}" for state in CP_STATES
    )

    def __init__(self, tile: CPTile) -> None:
        super().__init__(_tile_content(tile), classes=state_class(tile.state))
        self.tile = tile

    @property
    def text(self) -> str:
        return "\n".join(tile_lines(self.tile))

    def show(self, tile: CPTile) -> None:
        if tile == self.tile:
            return
        if tile.state != self.tile.state:
            self.remove_class(state_class(self.tile.state))
            self.add_class(state_class(tile.state))
        self.tile = tile
        self.update(_tile_content(tile))


class TileGrid(Widget):
    """Every CP's tile; as many columns as the width allows, so tiles wrap (the parent scrolls)."""

    DEFAULT_CSS = f"""
    TileGrid {{
        layout: grid;
        grid-size: 4;
        grid-columns: 1fr;
        grid-rows: auto;
        grid-gutter: 1 1;
        height: auto;
    }}
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tiles: dict[str, CPTileWidget] = {}

    def on_resize(self, event: Resize) -> None:
        columns = max(1, (event.size.width + 1) // (TILE_WIDTH + 1))
        if columns != self.styles.grid_size_columns:
            self.styles.grid_size_columns = columns

    def sync(self, tiles: Sequence[CPTile]) -> None:
        """Update tiles in place; mount and remove only when the set of CPs changes."""
        wanted = {tile.cp_id for tile in tiles}
        gone = [cp_id for cp_id in self.tiles if cp_id not in wanted]
        for cp_id in gone:
            self.tiles.pop(cp_id).remove()
        appended: list[CPTileWidget] = []
        for index, tile in enumerate(tiles):
            widget = self.tiles.get(tile.cp_id)
            if widget is not None:
                widget.show(tile)
                continue
            widget = self.tiles[tile.cp_id] = CPTileWidget(tile)
            following = next((self.tiles[t.cp_id] for t in tiles[index + 1:]
                              if t.cp_id in self.tiles and self.tiles[t.cp_id].is_mounted), None)
            if following is None:
                appended.append(widget)
            else:
                self.mount(widget, before=following)
        if appended:
            self.mount(*appended)


class StatusLine(Static):
    """The title: Central's status (``CentralStatus``): green when all is well, yellow when CPs
    miss their Monitor, red when Kafka or the database fails; it wraps on a narrow screen."""

    DEFAULT_CSS = """
    StatusLine {
        height: auto;
        padding: 0 1;
        text-style: bold;
        color: white;
        background: green;
    }
    StatusLine.-warning { background: $warning; color: black; }
    StatusLine.-problem { background: red; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.ok = True
        self.level = "ok"
        self.line = ""

    def sync(self, status: CentralStatus) -> None:
        line = f"EVCharging Central  |  {status.text}"
        self.ok, self.level = status.ok, status.level
        self.set_class(status.level == "error", "-problem")
        self.set_class(status.level == "warning", "-warning")
        if line != self.line:
            self.line = line
            self.update(Text(line))


def state_counts(tiles: Iterable[CPTile]) -> str:
    """``10 CPs: 4 ACTIVADO, 1 PARADO, ...`` (states in the usual order)."""
    counts: dict[str, int] = {}
    total = 0
    for tile in tiles:
        counts[tile.state] = counts.get(tile.state, 0) + 1
        total += 1
    summary = ", ".join(f"{counts[state]} {state}" for state in CP_STATES if counts.get(state))
    return f"{total} CP{'' if total == 1 else 's'}" + (f": {summary}" if summary else "")


class OngoingTable(DataTable):
    """Requests being decided, authorised or supplied: drivers' (over Kafka) and RFID tags'
    (over MCSP, their status says so)."""

    COLUMNS = ("Date", "Start", "User", "CP", "Status")

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="none", zebra_stripes=True, **kwargs)
        self.rows_shown: list[tuple[str, ...]] = []

    def on_mount(self) -> None:
        self.add_columns(*self.COLUMNS)

    @staticmethod
    def row_of(request: OngoingRequest) -> tuple[str, ...]:
        at = local_time(request.started_at)
        status = request.status + (" (MCSP)" if request.via == "MCSP" else "")
        return (f"{at:%Y-%m-%d}", f"{at:%H:%M:%S}", request.who, request.cp_id, status)

    def sync(self, requests: Iterable[OngoingRequest]) -> None:
        rows = [self.row_of(r) for r in requests]
        if rows == self.rows_shown:
            return
        self.rows_shown = rows
        self.clear()
        self.add_rows(rows)


class MessageList(RichLog):
    """The program's messages, oldest first; the newest stays in view, also after a resize (the
    lines are wrapped again to the new width). Errors red, warnings yellow."""

    def __init__(self, **kwargs) -> None:
        super().__init__(max_lines=MAX_MESSAGES, min_width=20, wrap=True, markup=False, auto_scroll=True,
                         **kwargs)
        self.shown: list[PanelMessage] = []
        self._wrapped_at = 0  # the width the lines were wrapped to

    @staticmethod
    def line_of(message: PanelMessage) -> Text:
        return Text(f"{local_time(message.at):%H:%M:%S} {message.text}", style=MESSAGE_STYLES.get(message.level, ""))

    def sync(self, messages: Sequence[PanelMessage]) -> None:
        """Append what arrived since the last call (``messages`` are the log's newest, in order)."""
        start = 0
        if self.shown:
            last = self.shown[-1]
            start = next((i + 1 for i in range(len(messages) - 1, -1, -1) if messages[i] is last), 0)
        for message in messages[start:]:
            self.write(self.line_of(message))
            self.shown.append(message)
        del self.shown[:-MAX_MESSAGES]

    def on_resize(self, event: Resize) -> None:
        width = self.scrollable_content_region.width
        if self._wrapped_at and width != self._wrapped_at:
            self.call_after_refresh(self._wrap_again)
        else:
            self.call_after_refresh(self.scroll_end, animate=False)
        self._wrapped_at = width

    def _wrap_again(self) -> None:
        self.clear()
        for message in self.shown:
            self.write(self.line_of(message), scroll_end=False)
        self.scroll_end(animate=False)
