"""The driver's screen: the CPs available now (shown once known and on every change, a burst
shown once), and the live figures of a supply (in place on a terminal, a line each otherwise)."""

from __future__ import annotations

import io
import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from ev_common.records import CPStatus, Ticket
from ev_driver.driver import CPDirectory
from ev_driver.screen import CLEAR_LINE, LINE_UP, Screen, available_text, live_text

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)


def status(cp: str, state: str, location: str = "C/Mayor, 45", price: str = "0.4800") -> CPStatus:
    return CPStatus(cp_id=cp, state=state, location=location, price_eur_kwh=Decimal(price))


def screen_on(out: io.StringIO, terminal: bool = False) -> Screen:
    return Screen(out, now=lambda: datetime(2026, 11, 21, 11, 0, 0), terminal=terminal)


def lines(out: io.StringIO) -> list[str]:
    return [line[9:] for line in out.getvalue().splitlines()]  # without "HH:MM:SS "


# -- the CPs available now ------------------------------------------------------------------------------


def test_available_text_is_a_count_and_the_cheapest():
    assert available_text([status("CP001", "ACTIVADO"), status("CP002", "ACTIVADO", "Gran Via 2", "0.475")]) == (
        "Available CPs: 2: CP002 0.475 EUR/kWh (Gran Via 2), CP001 0.48 EUR/kWh (C/Mayor, 45)")
    assert available_text([]) == "Available CPs: none right now"
    many = [status(f"CP{n:03d}", "ACTIVADO", "A very long location name, street 123", f"0.{900 - n}")
            for n in range(1, 301)]
    text = available_text(many)
    assert text == ("Available CPs: 300; the 5 cheapest: " + ", ".join(
        f"CP{n} {p} EUR/kWh (A very long location ...)"
        for n, p in ((300, "0.60"), (299, "0.601"), (298, "0.602"), (297, "0.603"), (296, "0.604"))) + "; l lists all")


def test_shown_once_known_and_when_the_line_changes():
    out = io.StringIO()
    cps = CPDirectory(screen_on(out), settle=0)
    cps.handle("CP001", status("CP001", "DESCONECTADO"))
    cps.handle("CP001", status("CP001", "ACTIVADO"))
    cps.handle("CP002", status("CP002", "ACTIVADO", "Gran Via 2"))
    cps.handle("CP002", status("CP002", "ACTIVADO", "Gran Via 2"))  # the same again: nothing new
    cps.handle("CP001", status("CP001", "SUMINISTRANDO"))
    cps.handle("CP003", status("CP003", "AVERIADO"))  # not available: the line is the same
    cps.handle("CP001", status("CP001", "ACTIVADO", price="0.50"))  # back, at another price
    assert lines(out) == [
        "Available CPs: none right now",
        "Available CPs: 1: CP001 0.48 EUR/kWh (C/Mayor, 45)",
        "Available CPs: 2: CP001 0.48 EUR/kWh (C/Mayor, 45), CP002 0.48 EUR/kWh (Gran Via 2)",
        "Available CPs: 1: CP002 0.48 EUR/kWh (Gran Via 2)",
        "Available CPs: 2: CP002 0.48 EUR/kWh (Gran Via 2), CP001 0.50 EUR/kWh (C/Mayor, 45)",
    ]


def test_with_many_cps_a_change_past_the_cheapest_only_changes_the_count():
    out = io.StringIO()
    cps = CPDirectory(screen_on(out), settle=0)
    for n in range(1, 8):
        cps.handle(f"CP{n}", status(f"CP{n}", "ACTIVADO", price=f"0.{30 + n}"))
    cps.handle("CP7", status("CP7", "ACTIVADO", price="0.99"))  # the 7th dearer: nothing shown changes
    assert len(lines(out)) == 7
    assert lines(out)[-1].startswith("Available CPs: 7; the 5 cheapest: CP1 0.31 EUR/kWh")
    cps.handle("CP7", status("CP7", "SUMINISTRANDO"))
    assert lines(out)[-1].startswith("Available CPs: 6; the 5 cheapest: CP1 0.31 EUR/kWh")


def test_a_burst_of_statuses_is_shown_once_it_settles():
    out = io.StringIO()
    scheduled = []
    cps = CPDirectory(screen_on(out), settle=1.0, schedule=lambda seconds, action: scheduled.append((seconds, action)))
    for state in ("DESCONECTADO", "ACTIVADO", "SUMINISTRANDO", "ACTIVADO"):  # the topic read from its beginning
        cps.handle("CP001", status("CP001", state))
    cps.handle("CP002", status("CP002", "AVERIADO"))
    assert [seconds for seconds, _ in scheduled] == [1.0] and out.getvalue() == ""
    scheduled.pop()[1]()
    assert lines(out) == ["Available CPs: 1: CP001 0.48 EUR/kWh (C/Mayor, 45)"]
    cps.handle("CP001", status("CP001", "SUMINISTRANDO"))
    cps.handle("CP001", status("CP001", "ACTIVADO"))  # changed and changed back before it settled
    scheduled.pop()[1]()
    assert len(lines(out)) == 1 and scheduled == []


# -- the live figures --------------------------------------------------------------------------------------


def ticket(session: str = "S1") -> Ticket:
    return Ticket(session_id=session, request_id="r1", driver_id="D1", cp_id="CP001", started_at=T0,
                  ended_at=T0 + timedelta(seconds=30), kwh=Decimal("0.2"), price_eur_kwh=Decimal("0.48"),
                  amount_eur=Decimal("0.10"), status="COMPLETED", end_reason="unplugged")


def test_live_text():
    assert live_text("CP001", Decimal("1.23456"), Decimal("0.5926"), Decimal("11")) == (
        "Charging at CP001: 1.235 kWh, 0.59 EUR (11.00 kW)")
    assert live_text("CP002", Decimal(0), Decimal(0), Decimal("7.2"), "earlier supply at CP002") == (
        "[earlier supply at CP002] Charging at CP002: 0.000 kWh, 0.00 EUR (7.20 kW)")


def test_plain_mode_prints_a_line_per_update():
    out = io.StringIO()
    screen = screen_on(out)
    screen.progress("CP001", Decimal("0.1"), Decimal("0.05"), Decimal("11"))
    screen.progress("CP001", Decimal("0.2"), Decimal("0.10"), Decimal("11"))
    screen.ticket(ticket())
    assert lines(out)[:3] == ["Charging at CP001: 0.100 kWh, 0.05 EUR (11.00 kW)",
                              "Charging at CP001: 0.200 kWh, 0.10 EUR (11.00 kW)",
                              "===== TICKET of your supply at CP001: COMPLETED ====="]
    assert CLEAR_LINE not in out.getvalue()


def test_terminal_mode_updates_one_line_in_place():
    out = io.StringIO()
    screen = screen_on(out, terminal=True)
    screen.progress("CP001", Decimal("0.1"), Decimal("0.05"), Decimal("11"))
    screen.progress("CP001", Decimal("0.2"), Decimal("0.10"), Decimal("11"))
    assert out.getvalue() == (f"{CLEAR_LINE}11:00:00 Charging at CP001: 0.100 kWh, 0.05 EUR (11.00 kW)"
                              f"{CLEAR_LINE}11:00:00 Charging at CP001: 0.200 kWh, 0.10 EUR (11.00 kW)")
    screen.progress("CP002", Decimal("1"), Decimal("0.5"), Decimal("7.2"), "earlier supply at CP002")
    assert out.getvalue().endswith(f"(11.00 kW)\n{CLEAR_LINE}11:00:00 [earlier supply at CP002] Charging at CP002: "
                                   "1.000 kWh, 0.50 EUR (7.20 kW)")  # another supply: a live line of its own
    screen.ticket(ticket())  # the last figures stay, the ticket comes below
    assert "(7.20 kW)\n11:00:00 ===== TICKET of your supply at CP001: COMPLETED =====\n" in out.getvalue()
    screen.line("Next request in 4 s (1 left)...")
    assert out.getvalue().endswith("=\n11:00:00 Next request in 4 s (1 left)...\n")


def test_terminal_mode_log_records_end_the_live_line():
    out, err = io.StringIO(), io.StringIO()
    screen = screen_on(out, terminal=True)
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    for handler in saved:
        root.removeHandler(handler)
    root.addHandler(logging.StreamHandler(err))
    root.setLevel(logging.INFO)
    try:
        screen.guard_logging()
        screen.progress("CP001", Decimal("0.1"), Decimal("0.05"), Decimal("11"))
        logging.getLogger("ev_driver.test").warning("Kafka unreachable")
        screen.progress("CP001", Decimal("0.2"), Decimal("0.10"), Decimal("11"))
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)
    assert err.getvalue() == "Kafka unreachable\n"
    assert out.getvalue() == (f"{CLEAR_LINE}11:00:00 Charging at CP001: 0.100 kWh, 0.05 EUR (11.00 kW)\n"
                              f"{CLEAR_LINE}11:00:00 Charging at CP001: 0.200 kWh, 0.10 EUR (11.00 kW)")


# -- the prompt on a terminal -------------------------------------------------------------------------------


def test_terminal_lines_come_above_the_prompt_and_what_is_typed():
    out = io.StringIO()
    screen = screen_on(out, terminal=True)
    screen.prompt()
    screen.typed("r CP0")
    out.truncate(0), out.seek(0)
    screen.line("Available CPs: none right now")
    assert out.getvalue() == f"{CLEAR_LINE}11:00:00 Available CPs: none right now\n> r CP0"
    screen.typed("r CP01")
    screen.entered()  # the line stays as typed; a new prompt below
    assert out.getvalue().endswith(f"{CLEAR_LINE}> r CP01\n> ")


def test_terminal_live_line_is_updated_above_the_prompt():
    out = io.StringIO()
    screen = screen_on(out, terminal=True)
    screen.prompt()
    screen.typed("c")
    out.truncate(0), out.seek(0)
    screen.progress("CP001", Decimal("0.1"), Decimal("0.05"), Decimal("11"))
    screen.progress("CP001", Decimal("0.2"), Decimal("0.10"), Decimal("11"))
    assert out.getvalue() == (f"{CLEAR_LINE}11:00:00 Charging at CP001: 0.100 kWh, 0.05 EUR (11.00 kW)\n> c"
                              f"{CLEAR_LINE}{LINE_UP}{CLEAR_LINE}11:00:00 Charging at CP001: 0.200 kWh, 0.10 EUR "
                              "(11.00 kW)\n> c")
    screen.ticket(ticket())  # the live line stays as it was; the ticket below it, then the prompt
    assert f"(11.00 kW)\n> c{CLEAR_LINE}11:00:00 ===== TICKET of your supply at CP001: COMPLETED =====\n" \
        in out.getvalue()
    assert out.getvalue().endswith("=\n> c")


def test_terminal_live_line_becomes_the_line_above_a_new_prompt():
    out = io.StringIO()
    screen = screen_on(out, terminal=True)
    screen.progress("CP001", Decimal("0.1"), Decimal("0.05"), Decimal("11"))
    screen.prompt()
    screen.progress("CP001", Decimal("0.2"), Decimal("0.10"), Decimal("11"))
    assert out.getvalue() == (f"{CLEAR_LINE}11:00:00 Charging at CP001: 0.100 kWh, 0.05 EUR (11.00 kW)\n> "
                              f"{CLEAR_LINE}{LINE_UP}{CLEAR_LINE}11:00:00 Charging at CP001: 0.200 kWh, 0.10 EUR "
                              "(11.00 kW)\n> ")


def test_terminal_live_line_is_cut_to_the_width():
    out = io.StringIO()
    screen = Screen(out, now=lambda: datetime(2026, 11, 21, 11, 0, 0), terminal=True, width=lambda: 30)
    screen.progress("CP001", Decimal("0.1"), Decimal("0.05"), Decimal("11"))
    assert out.getvalue() == f"{CLEAR_LINE}11:00:00 Charging at CP001: 0"  # 29 characters


def test_terminal_log_records_come_above_the_prompt():
    out, err = io.StringIO(), io.StringIO()
    screen = screen_on(out, terminal=True)
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    for handler in saved:
        root.removeHandler(handler)
    root.addHandler(logging.StreamHandler(err))
    root.setLevel(logging.INFO)
    try:
        screen.guard_logging()
        screen.prompt()
        screen.typed("r")
        logging.getLogger("ev_driver.test").warning("skipped a malformed record")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)
    assert err.getvalue() == "skipped a malformed record\n"
    assert out.getvalue().endswith(f"> r{CLEAR_LINE}> r")  # erased before the record, drawn again after it


def test_terminal_prompt_says_kafka_is_unreachable_while_it_lasts():
    out = io.StringIO()
    screen = screen_on(out, terminal=True)
    screen.prompt()
    screen.kafka_unreachable("k:9092")
    assert out.getvalue().endswith("Retrying in the background...\n> " + CLEAR_LINE + "[Kafka unreachable] > ")
    screen.line("x")
    assert out.getvalue().endswith("x\n[Kafka unreachable] > ")
    screen.kafka_still_unreachable("k:9092", 75)
    assert "Kafka still unreachable at k:9092 (for 1 min 15 s); retrying...\n[Kafka unreachable] > " in out.getvalue()
    screen.kafka_reachable("k:9092")
    assert out.getvalue().endswith("Kafka reachable at k:9092 again\n> ")
    screen.prompt_done()
    screen.line("Bye")
    assert out.getvalue().endswith(f"again\n> {CLEAR_LINE}11:00:00 Bye\n")


def test_plain_prompt_is_written_as_it_is():
    out = io.StringIO()
    screen = screen_on(out)
    screen.prompt()
    screen.line("x")
    assert out.getvalue() == "> 11:00:00 x\n"


# -- the list of every CP -------------------------------------------------------------------------------------


def test_list_of_many_cps_in_columns_cheapest_first_and_the_others_by_state():
    out = io.StringIO()
    screen = Screen(out, now=lambda: datetime(2026, 11, 21, 11, 0, 0), width=lambda: 60)
    available = [status(f"CP{n:03d}", "ACTIVADO", price=f"0.{600 - n}") for n in range(1, 31)]
    others = ([status(f"CP{n:03d}", "SUMINISTRANDO") for n in range(31, 41)]
              + [status("CP041", "AVERIADO")])
    screen.cps(available, others)
    rows = out.getvalue().splitlines()
    assert rows[0] == "11:00:00 Available CPs: 30, cheapest first (CP EUR/kWh)"
    assert rows[1].split() == ["CP030", "0.57", "CP020", "0.58", "CP010", "0.59"]  # 3 columns of 10
    assert all(len(row) <= 60 for row in rows)
    rest = " ".join(row.strip() for row in rows[11:])
    assert rest == ("not available: SUMINISTRANDO (10): CP031, CP032, CP033, CP034, CP035, CP036, CP037, "
                    "CP038, CP039, CP040; CP041 (AVERIADO)")
