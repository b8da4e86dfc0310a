"""The Engine's state machine with an injected clock: what it emits and when."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ev_common.records import SupplyEnd, SupplyRequest, Telemetry
from ev_cp_engine.engine import Engine, Phase
from tests.support.clock import FakeClock


@pytest.fixture
def clock():
    return FakeClock(100.0)


@pytest.fixture
def emitted():
    return []


def make(clock, emitted, **kwargs):
    engine = Engine(emitted.append, power_kw=Decimal("36"), clock=clock, **kwargs)
    engine.monitor_connected("127.0.0.1:1")
    engine.health("CP1")
    return engine


def test_authorise_plug_tick_unplug(clock, emitted):
    engine = make(clock, emitted)
    assert engine.authorise("s1", "D1", Decimal("0.50")) == (True, "")
    assert engine.phase is Phase.AUTHORISED
    engine.plug()
    assert engine.phase is Phase.SUPPLYING
    for _ in range(3):
        clock.now += 1
        engine.tick()
    telemetry = [r for r in emitted if isinstance(r, Telemetry)]
    assert [t.seq for t in telemetry] == [1, 2, 3]
    assert telemetry[-1].kwh == Decimal("0.0300")  # 36 kW for 3 s
    assert telemetry[-1].amount_eur == Decimal("0.0150")
    clock.now += 0.5
    engine.unplug()
    end = emitted[-1]
    assert isinstance(end, SupplyEnd) and (end.reason, end.seq, end.kwh) == ("unplugged", 4, Decimal("0.0350"))
    assert engine.phase is Phase.IDLE


@pytest.mark.parametrize("setup,reason", [
    (lambda e: setattr(e, "faulty", True), "the CP is faulty"),
    (lambda e: setattr(e, "stopped", True), "stopped by Central"),
    (lambda e: e.monitor_lost("gone"), "no Monitor connected"),
    (lambda e: e.authorise("s0", "D0", Decimal(1)), "busy"),
])
def test_refusals(clock, emitted, setup, reason):
    engine = make(clock, emitted)
    setup(engine)
    ok, why = engine.authorise("s1", "D1", Decimal("0.5"))
    assert not ok and reason in why


@pytest.mark.parametrize("event,reason", [
    (lambda e: e.toggle_fault(), "fault"),
    (lambda e: e.stop(), "stopped"),
    (lambda e: e.monitor_lost("closed"), "monitor lost"),
])
def test_a_supply_ends_at_once_on_fault_stop_or_lost_monitor(clock, emitted, event, reason):
    engine = make(clock, emitted)
    engine.authorise("s1", "D1", Decimal("0.5"))
    engine.plug()
    clock.now += 1
    engine.tick()
    event(engine)
    assert isinstance(emitted[-1], SupplyEnd) and emitted[-1].reason == reason
    assert engine.phase is Phase.IDLE


def test_auto_mode_plugs_and_unplugs_by_itself(clock, emitted):
    engine = make(clock, emitted, auto_seconds=3)
    engine.authorise("s1", "D1", Decimal("0.5"))
    for _ in range(6):
        clock.now += 1
        engine.tick()
    ends = [r for r in emitted if isinstance(r, SupplyEnd)]
    assert len(ends) == 1 and ends[0].reason == "unplugged"


def test_plug_timeout_cancels(clock, emitted):
    engine = make(clock, emitted, plug_timeout=10)
    engine.authorise("s1", "D1", Decimal("0.5"))
    clock.now += 11
    engine.tick()
    assert emitted[-1].reason == "not plugged in" and engine.phase is Phase.IDLE


def test_request_at_the_cp(clock, emitted):
    engine = make(clock, emitted)
    engine.request_supply("D7")
    assert isinstance(emitted[-1], SupplyRequest) and emitted[-1].source == "cp" and emitted[-1].cp_id == "CP1"
    engine.monitor_lost("gone")
    assert "no Monitor" in engine.request_supply("D7")
    assert len([r for r in emitted if isinstance(r, SupplyRequest)]) == 1


def test_stop_then_resume(clock, emitted):
    engine = make(clock, emitted)
    engine.stop()
    assert not engine.authorise("s1", "D1", Decimal(1))[0]
    engine.resume()
    assert engine.authorise("s1", "D1", Decimal(1))[0]


def test_journal_survives_a_crash_and_is_reported_once(clock, emitted, tmp_path):
    from ev_cp_engine.journal import SupplyJournal

    journal = SupplyJournal(tmp_path / "engine.journal.json")
    engine = make(clock, emitted, journal=journal)
    engine.authorise("s1", "D1", Decimal("0.50"))
    engine.plug()
    for _ in range(2):
        clock.now += 1
        engine.tick()
    last = [r for r in emitted if isinstance(r, Telemetry)][-1]
    assert journal.read()["seq"] == 2  # written every second
    # the process dies here: a new Engine with the same journal reports the supply
    after = []
    restarted = Engine(after.append, clock=clock, journal=SupplyJournal(tmp_path / "engine.journal.json"))
    assert "reported the supply" in restarted.recover()
    [end] = after
    assert isinstance(end, SupplyEnd) and end.reason == "engine restarted"
    assert (end.session_id, end.seq, end.kwh) == ("s1", 3, last.kwh)
    assert restarted.recover() is None and not (tmp_path / "engine.journal.json").exists()


def test_journal_is_removed_when_the_supply_ends(clock, emitted, tmp_path):
    from ev_cp_engine.journal import SupplyJournal

    journal = SupplyJournal(tmp_path / "j.json")
    engine = make(clock, emitted, journal=journal)
    engine.authorise("s1", "D1", Decimal("0.50"))
    assert journal.read()["session_id"] == "s1"
    engine.plug()
    engine.unplug()
    assert journal.read() is None


def test_damaged_journal_is_set_aside(tmp_path, caplog):
    from ev_cp_engine.journal import SupplyJournal

    path = tmp_path / "j.json"
    path.write_text("{not json")
    assert SupplyJournal(path).read() is None
    assert (tmp_path / "j.json.damaged").exists() and "damaged" in caplog.text
