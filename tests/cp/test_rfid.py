"""The Engine's RFID reader: its decisions with a fake station client (a fake Central that
authorises and ends supplies at the Engine as the real one does, over SUP and FIN), the
--auto tag with an injected clock, the real StationClient against a fake MCSP port, the
[t] key of the menu and the Engine's flags."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from decimal import Decimal

import pytest

from ev_common.mcsp import EndOk, ErrorAnswer, StartOk, StartRequest
from ev_common.records import SupplyEnd
from ev_cp_engine.engine import Engine, Phase
from ev_cp_engine.rfid import NO_MCSP, RfidReader
from ev_cp_engine.screen import EngineStatus, Messages, PlainScreen, supply_line
from ev_rfid.client import CentralUnreachable, StationClient
from tests.rfid.fake_mcsp import HOST, FakeMCSP
from tests.support.clock import FakeClock
from tests.support.waiting import wait_until

KEY = "16AC936B1692E73A"
OTHER = "04A1B2C3"
PRICE = Decimal("0.48")


class Emitted(list):
    def __call__(self, record, on_delivery=None) -> None:
        self.append(record)

    def ends(self) -> list[SupplyEnd]:
        return [r for r in self if isinstance(r, SupplyEnd)]


class FakeCentral:
    """A station client whose Central authorises START at the Engine (SUP) and ends END there
    (FIN), answering as Central's MCSP port does. ``answers`` scripts other outcomes, in turn:
    an ErrorAnswer, or an exception to raise. ``gate``, when given, holds each exchange until set."""

    def __init__(self, engine: Engine, account: str = "FLAT3B") -> None:
        self.engine, self.account = engine, account
        self.calls: list[tuple] = []
        self.answers: list[object] = []
        self.gate: threading.Event | None = None
        self.closed = False
        self.sessions = 0

    def _scripted(self):
        if self.gate is not None:
            assert self.gate.wait(10), "the test never let the exchange go on"
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer
        return None

    def start(self, station: str, key: str):
        StartRequest(station, key)  # the codec's checks, as the real client
        self.calls.append(("START", station, key))
        scripted = self._scripted()
        if scripted is not None:
            return scripted
        self.sessions += 1
        session_id = f"S{self.sessions}"
        accepted, why = self.engine.authorise(session_id, self.account, PRICE)
        return StartOk(session_id) if accepted else ErrorAnswer(409, f"CP refused: {why}")

    def end(self, station: str, session_id: str, key: str):
        self.calls.append(("END", station, session_id, key))
        scripted = self._scripted()
        if scripted is not None:
            return scripted
        self.engine.finish(session_id)
        end = next(e for e in reversed(self.engine_ends()) if e.session_id == session_id)
        return EndOk.rounded(end.kwh, end.amount_eur)

    def engine_ends(self) -> list[SupplyEnd]:
        return self.engine._emit.ends()

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def clock():
    return FakeClock(100.0)


@pytest.fixture
def said():
    return []


def make_engine(clock, said, *, auto_seconds=None, cp_id="CP001"):
    engine = Engine(Emitted(), power_kw=Decimal("36"), clock=clock, say=said.append, auto_seconds=auto_seconds)
    engine.monitor_connected("127.0.0.1:1")
    if cp_id:
        engine.health(cp_id)
    return engine


class MaxRng:
    """Backoff's randomness at its ceiling, so that the waits are exact."""

    def uniform(self, low, high):
        return high


def make_reader(engine, said, clock, **kwargs):
    central = FakeCentral(engine)
    reader = RfidReader(engine, central, say=said.append, clock=clock, rng=MaxRng(), **kwargs)
    return reader, central


def settled(reader):
    wait_until(lambda: not reader.busy, 5, "the reader's exchange to end")


# -- a person presents a tag ------------------------------------------------------------------------------


def test_start_then_the_same_tag_ends_it(clock, said):
    engine = make_engine(clock, said)
    reader, central = make_reader(engine, said, clock)
    try:
        assert reader.tap("16:ac:93:6b:16:92:e7:3a") == "tag ...E73A presented: asking Central to open a session at CP001"
        settled(reader)
        assert central.calls == [("START", "CP001", KEY)]
        assert "tag ...E73A: session S1 opened" in said
        assert engine.supply.session_id == "S1" and engine.tag_session == "S1"
        assert said[-2] == "supply AUTHORISED for driver FLAT3B at 0.48 EUR/kWh: plug in the vehicle [p]"
        engine.plug()
        assert said[-1] == "plugged in: supplying account FLAT3B at 36 kW"
        assert supply_line(EngineStatus.read(engine)).startswith("Supply: account FLAT3B (RFID tag): 0.000 kWh")
        clock.advance(100)
        engine.tick()

        reader.tap(KEY)
        settled(reader)
        assert central.calls[-1] == ("END", "CP001", "S1", KEY)
        assert engine.phase is Phase.IDLE and reader.held is None
        end = engine._emit.ends()[-1]
        assert end.reason == "unplugged" and end.kwh == Decimal("1.0000") and end.amount_eur == Decimal("0.4800")
        assert "supply of account FLAT3B ended (unplugged): 1.000 kWh, 0.48 EUR" in said
        assert said[-1] == "tag ...E73A: session S1 ended: 1.0000 kWh, 0.48 EUR"
    finally:
        reader.close()


def test_a_bad_uid_or_no_cp_id_sends_nothing(clock, said):
    engine = make_engine(clock, said, cp_id=None)
    reader, central = make_reader(engine, said, clock)
    assert reader.tap("16AC93") == ("not a tag UID (4, 7, 8 or 10 bytes in hex, e.g. 16AC936B1692E73A): "
                                    "nothing sent")
    assert reader.tap("0x16AC936B") .startswith("not a tag UID")
    assert reader.tap(KEY) == "tag ...E73A not read: this Engine does not know its CP id yet"
    assert central.calls == [] and not reader.busy
    reader.close()


def test_without_an_mcsp_address(clock, said):
    engine = make_engine(clock, said)
    reader = RfidReader(engine, None, say=said.append, clock=clock)
    assert reader.tap(KEY) == NO_MCSP == "no MCSP address: start the Engine with --mcsp HOST:PORT"
    reader.tick()
    reader.close()


def test_refusals_and_an_unreachable_central_are_said(clock, said):
    engine = make_engine(clock, said)
    reader, central = make_reader(engine, said, clock)
    try:
        central.answers = [ErrorAnswer.for_code(401),
                           CentralUnreachable("cannot connect to Central's MCSP port at 127.0.0.1:5050: "
                                              "Connection refused")]
        reader.tap(KEY)
        settled(reader)
        assert said[-1] == "tag ...E73A refused: Key is not registered (401)"
        reader.tap(KEY)
        settled(reader)
        assert said[-1] == ("Central's MCSP port cannot be reached: cannot connect to Central's MCSP port at "
                            "127.0.0.1:5050: Connection refused")
        assert engine.phase is Phase.IDLE and reader.held is None
    finally:
        reader.close()


def test_another_tag_while_one_is_held_asks_central_which_refuses(clock, said):
    engine = make_engine(clock, said)
    reader, central = make_reader(engine, said, clock)
    try:
        reader.tap(KEY)
        settled(reader)
        reader.tap(OTHER)  # not the tag that opened the session: a START, Central decides
        settled(reader)
        assert central.calls[-1] == ("START", "CP001", OTHER)
        assert said[-1] == "tag ...B2C3 refused: CP refused: busy with the supply of account FLAT3B (409)"
        assert reader.held.session_id == "S1" and engine.supply.session_id == "S1"
    finally:
        reader.close()


def test_a_tap_while_an_exchange_is_in_flight_is_refused_not_queued(clock, said):
    engine = make_engine(clock, said)
    reader, central = make_reader(engine, said, clock)
    central.gate = threading.Event()
    try:
        reader.tap(KEY)
        wait_until(lambda: central.calls, 5, "the START")
        assert reader.busy
        assert reader.tap(KEY) == ("tag ...E73A not read: the last tag's exchange with Central is still in course; "
                                   "present it again when it is answered")
        assert reader.tap(OTHER).startswith("tag ...B2C3 not read:")
        central.gate.set()
        settled(reader)
        assert len(central.calls) == 1
    finally:
        reader.close()


def test_a_tag_supply_ended_at_the_cp_is_forgotten(clock, said):
    engine = make_engine(clock, said)
    reader, central = make_reader(engine, said, clock)
    try:
        reader.tap(KEY)
        settled(reader)
        engine.plug()
        engine.unplug()  # [u]: its supply.end reaches Central over Kafka
        reader.tap(KEY)  # the same tag again: a new session, not an END
        settled(reader)
        assert [c[0] for c in central.calls] == ["START", "START"]
        assert reader.held.session_id == "S2"
    finally:
        reader.close()


def test_an_end_not_answered_leaves_the_supply_to_the_person(clock, said):
    engine = make_engine(clock, said)
    reader, central = make_reader(engine, said, clock)
    try:
        reader.tap(KEY)
        settled(reader)
        central.answers = [CentralUnreachable("Central at 127.0.0.1:5050 did not answer within 20 s")]
        reader.tap(KEY)
        settled(reader)
        assert said[-1] == ("Central's MCSP port cannot be reached: Central at 127.0.0.1:5050 did not answer within "
                            "20 s; the supply goes on: present the tag again, or unplug [u]")
        assert engine.supply.session_id == "S1"
        reader.tap(KEY)
        settled(reader)
        assert central.calls[-1][0] == "END" and engine.phase is Phase.IDLE
    finally:
        reader.close()


def test_logs_and_lines_show_only_the_last_four_hex_digits(clock, said, caplog):
    caplog.set_level(logging.DEBUG)
    engine = make_engine(clock, said)
    reader, central = make_reader(engine, said, clock)
    try:
        central.answers = [CentralUnreachable("no")]
        for _ in range(2):
            reader.tap(KEY)
            settled(reader)
        reader.tap(KEY)
        settled(reader)
    finally:
        reader.close()
    assert all(KEY not in line for line in said)
    assert all(KEY not in record.getMessage() for record in caplog.records)


def test_close_stops_the_worker_and_the_client(clock, said):
    engine = make_engine(clock, said)
    reader, central = make_reader(engine, said, clock)
    reader.tap(KEY)
    settled(reader)
    reader.close()
    assert central.closed and not reader._thread.is_alive()
    assert reader.tap(KEY) == "tag ...E73A not read: the Engine is stopping"


# -- --auto and --rfid-tag, with an injected clock -----------------------------------------------------------


def tick(engine, reader, clock, seconds=1.0):
    clock.advance(seconds)
    engine.tick()
    reader.tick()
    settled(reader)


def test_under_auto_the_reader_ends_a_tag_supply_with_end_not_the_engine(clock, said):
    engine = make_engine(clock, said, auto_seconds=10)
    reader, central = make_reader(engine, said, clock)
    try:
        reader.tap(KEY)  # presented by a person ([t]) under --auto
        settled(reader)
        tick(engine, reader, clock)  # plugged in after 1 s
        assert engine.phase is Phase.SUPPLYING
        for _ in range(9):
            tick(engine, reader, clock)
        assert [c[0] for c in central.calls] == ["START"]
        tick(engine, reader, clock)  # --auto-seconds plugged in: the Engine leaves it, the reader sends END
        assert [c[0] for c in central.calls] == ["START", "END"]
        assert engine.phase is Phase.IDLE and said[-1].startswith("tag ...E73A: session S1 ended: ")
        for _ in range(30):
            tick(engine, reader, clock)
        assert len(central.calls) == 2  # no --rfid-tag: nothing is presented by itself
    finally:
        reader.close()


def test_the_auto_tag_starts_when_the_cp_is_free_and_every_seconds_after_each_supply(clock, said):
    engine = make_engine(clock, said, auto_seconds=10)
    reader, central = make_reader(engine, said, clock, auto_key="16ac936b1692e73a", every=15)
    try:
        reader.tick()
        settled(reader)
        assert central.calls == [("START", "CP001", KEY)] and engine.supply.session_id == "S1"
        tick(engine, reader, clock)  # plugs in
        plugged = clock.now
        while engine.supply is not None:
            tick(engine, reader, clock)
        assert clock.now - plugged == 10
        assert [c[0] for c in central.calls] == ["START", "END"]
        ended = clock.now
        while len(central.calls) < 3:
            tick(engine, reader, clock)
        assert clock.now - ended == 15
        assert central.calls[-1] == ("START", "CP001", KEY) and engine.supply.session_id == "S2"
    finally:
        reader.close()


@pytest.mark.parametrize("unavailable", ["fault", "stop", "monitor", "kafka", "driver", "no cp id"])
def test_the_auto_tag_waits_while_the_cp_is_not_free(clock, said, unavailable):
    engine = make_engine(clock, said, auto_seconds=10, cp_id=None if unavailable == "no cp id" else "CP001")
    undo = {
        "fault": (engine.toggle_fault, engine.toggle_fault),
        "stop": (engine.stop, engine.resume),
        "monitor": (lambda: engine.monitor_lost("test"), lambda: engine.monitor_connected("127.0.0.1:1")),
        "kafka": (lambda: engine.kafka_ok(False), lambda: engine.kafka_ok(True)),
        "driver": (lambda: engine.authorise("D-1", "D001", PRICE), lambda: engine.cancel("D-1", "test")),
        "no cp id": (lambda: None, lambda: engine.health("CP001")),
    }[unavailable]
    reader, central = make_reader(engine, said, clock, auto_key=KEY, every=15)
    try:
        undo[0]()
        for _ in range(5):
            reader.tick()
            clock.advance(1)
        assert central.calls == []
        undo[1]()
        reader.tick()
        settled(reader)
        assert [c[0] for c in central.calls] == ["START"]
    finally:
        reader.close()


def test_refused_starts_back_off_with_a_cap(clock, said):
    engine = make_engine(clock, said, auto_seconds=10)
    reader, central = make_reader(engine, said, clock, auto_key=KEY, every=15)
    central.answers = [ErrorAnswer.for_code(404)] * 4 + [CentralUnreachable("refused")] * 2
    try:
        times = []
        while len(central.calls) < 7:
            before = len(central.calls)
            reader.tick()
            settled(reader)
            if len(central.calls) > before:
                times.append(clock.now)
            clock.advance(1)
        waits = [b - a for a, b in zip(times, times[1:])]
        # every + the backoff's ceiling (MaxRng): 15 + 15, 15 + 30, 15 + 60, 15 + 120, then capped at 120
        assert waits == [30, 45, 75, 135, 135, 135]
        assert said.count("tag ...E73A refused: Unknown station or session (404)") == 4
        assert engine.supply.session_id == "S1"  # a success resets the backoff
    finally:
        reader.close()


def test_an_end_that_cannot_reach_central_for_30_s_unplugs_here(clock, said):
    engine = make_engine(clock, said, auto_seconds=10)
    reader, central = make_reader(engine, said, clock, auto_key=KEY, every=15)
    try:
        reader.tick()
        settled(reader)
        tick(engine, reader, clock, 1)  # plugged in
        central.answers = [CentralUnreachable("Central at 127.0.0.1:5050 did not answer within 20 s")] * 100
        for _ in range(9):
            tick(engine, reader, clock)
        due = clock.now + 1
        while engine.supply is not None:
            tick(engine, reader, clock)
        assert clock.now - due == 30
        ends = [c for c in central.calls if c[0] == "END"]
        assert 6 <= len(ends) <= 31  # tried again every 1 to 5 s meanwhile
        assert any(line.endswith("; trying again (the supply goes on; unplugged here after 30 s)") for line in said)
        assert said[-2] == ("tag ...E73A: Central did not end session S1 within 30 s: unplugged here; "
                            "its end reaches Central over Kafka")
        assert said[-1].startswith("supply of account FLAT3B ended (unplugged): ")
        assert engine._emit.ends()[-1].reason == "unplugged"
        central.answers = []
        calls = len(central.calls)
        for _ in range(14):
            tick(engine, reader, clock)
        assert len(central.calls) == calls
        tick(engine, reader, clock)
        assert central.calls[-1][0] == "START"  # --rfid-every after that end
    finally:
        reader.close()


def test_a_supply_nobody_marked_as_a_tags_is_still_unplugged_by_auto(clock, said):
    engine = make_engine(clock, said, auto_seconds=3)
    engine.authorise("S9", "D001", PRICE)
    for _ in range(5):
        clock.advance(1)
        engine.tick()
    assert engine.phase is Phase.IDLE and engine._emit.ends()[-1].reason == "unplugged"
    assert engine.held_by_tag("S9") is False


# -- the real client against a fake MCSP port --------------------------------------------------------------


def test_the_reader_with_the_real_station_client(clock, said):
    engine = make_engine(clock, said)

    def central(request, connection, index):  # Central's MCSP port: SUP and FIN at the Engine, then the answer
        if isinstance(request, StartRequest):
            accepted, why = engine.authorise(f"T{index}", "FLAT3B", PRICE)
            return StartOk(f"T{index}") if accepted else ErrorAnswer(409, why)
        engine.finish(request.session_id)
        end = engine._emit.ends()[-1]
        return EndOk.rounded(end.kwh, end.amount_eur)

    with FakeMCSP(central) as server:
        reader = RfidReader(engine, StationClient(HOST, server.port, timeout=5), say=said.append, clock=clock)
        try:
            reader.tap(KEY)
            settled(reader)
            assert "tag ...E73A: session T1 opened" in said
            engine.plug()
            clock.advance(100)
            engine.tick()
            reader.tap(KEY)
            settled(reader)
            assert said[-1] == "tag ...E73A: session T1 ended: 1.0000 kWh, 0.48 EUR"
            assert server.connections == 1 and len(server.requests) == 2
        finally:
            reader.close()
    reader = RfidReader(engine, StationClient(HOST, server.port, timeout=1, connect_timeout=1), say=said.append)
    reader.tap(KEY)
    settled(reader)
    reader.close()
    assert said[-1].startswith("Central's MCSP port cannot be reached: cannot connect to Central's MCSP port at ")


# -- the menu's [t] and the Engine's flags -------------------------------------------------------------------


class TapRecorder:
    client = object()

    def __init__(self):
        self.taps = []

    def tap(self, uid):
        self.taps.append(uid)


def test_t_in_the_menu_presents_a_tag_to_the_reader(clock, said):
    from textual.widgets import Input, RichLog

    from ev_cp_engine.menu import EngineMenu
    from tests.cp.test_engine_screen import until

    messages = Messages(PlainScreen(io.StringIO()))
    messages.attach()
    engine = make_engine(clock, said)
    reader = TapRecorder()
    app = EngineMenu(engine, messages, threading.Event(), refresh_every=0.05, rfid=reader)
    bare = EngineMenu(engine, messages, threading.Event(), refresh_every=0.05)

    async def scenario():
        async with app.run_test(size=(110, 30)) as pilot:
            await pilot.press("t")
            await until(pilot, lambda: app.focused is app.query_one("#tag", Input), "the tag input")
            await pilot.press(*"16AC936Bpu", "enter")  # "p" and "u" are typed: they neither plug nor unplug
            assert reader.taps == ["16AC936Bpu"]
            assert app.focused is None and not app.query_one("#tag", Input).display
            await pilot.press("t", "escape")
            await until(pilot, lambda: app.focused is None, "the input to close")
            await pilot.press("t", "enter")  # nothing typed: nothing presented
            assert reader.taps == ["16AC936Bpu"]
            await pilot.press("r", "t")  # [t] typed into the driver id input stays there
            assert app.query_one("#driver", Input).value == "t" and reader.taps == ["16AC936Bpu"]
        async with bare.run_test(size=(110, 30)) as pilot:
            await pilot.press("t")
            area = bare.query_one("#messages", RichLog)
            await until(pilot, lambda: any(NO_MCSP in line.text for line in area.lines), "no MCSP address")
            assert not bare.query_one("#tag", Input).display

    asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.mark.parametrize("args,complaint", [
    (["--port", "0", "--rfid-tag", KEY, "--mcsp", "127.0.0.1:5050"], "under --auto only"),
    (["--port", "0", "--auto", "--rfid-tag", KEY], "--rfid-tag needs --mcsp"),
    (["--port", "0", "--auto", "--rfid-tag", "16AC93", "--mcsp", "127.0.0.1:5050"], "not a tag UID"),
    (["--port", "0", "--mcsp", "nowhere"], "not host:port"),
    (["--port", "0", "--rfid-every", "0"], "above 0"),
])
def test_the_engine_refuses_bad_rfid_flags(args, complaint, capsys, monkeypatch):
    from ev_cp_engine.cli import main

    monkeypatch.delenv("EV_MCSP", raising=False)
    with pytest.raises(SystemExit) as raised:
        main(args)
    assert raised.value.code == 2
    assert complaint in capsys.readouterr().err


def test_the_engine_flags_default_and_from_the_environment(monkeypatch):
    from ev_cp_engine.cli import build_parser

    monkeypatch.delenv("EV_MCSP", raising=False)
    args = build_parser().parse_args(["--port", "5001"])
    assert args.mcsp is None and args.rfid_tag is None and args.rfid_every == 15
    monkeypatch.setenv("EV_MCSP", "central:5050")
    args = build_parser().parse_args(["--port", "5001", "--auto", "--rfid-tag", "16:ac:93:6b", "--rfid-every", "5"])
    assert args.mcsp == ("central", 5050) and args.rfid_tag == "16AC936B" and args.rfid_every == 5
