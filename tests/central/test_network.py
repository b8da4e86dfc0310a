"""The CP network with an injected clock: registration, reports, sessions, the silence rule."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ev_central.core.network import ChargingNetwork
from ev_central.core.states import Event, IllegalTransition, State
from ev_central.store.base import CPRow
from tests.support.clock import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def clock():
    return FakeClock(1000.0)


@pytest.fixture
def net(clock):
    return ChargingNetwork(clock=clock, utcnow=lambda: T0 + timedelta(seconds=clock.now), silence_timeout=2.5)


def register(net, cp_id="CP1", session="s1", location="C/Mayor, 45", price="0.48"):
    return net.register(cp_id, location, Decimal(price), session)


def state(net, cp_id="CP1"):
    return State(net.get(cp_id).state)


def test_load_marks_every_stored_cp_disconnected(net):
    rows = [CPRow("CP1", "a", Decimal("0.4"), "ACTIVADO", False, T0),
            CPRow("CP2", "b", Decimal("0.5"), "DESCONECTADO", True, T0)]
    changes = net.load(rows)
    assert [c.cp_id for c in changes] == ["CP1"]
    assert changes[0].new is State.DESCONECTADO and "Central started" in changes[0].cause
    assert {r.cp_id: r.state for r in net.snapshot()} == {"CP1": "DESCONECTADO", "CP2": "DESCONECTADO"}
    assert net.get("CP2").stopped  # the stop flag survives a restart


def test_sign_up_then_reregistration_updates_location_and_price(net):
    change, replaced = register(net)
    assert change.old is None and change.new is State.ACTIVADO and replaced is None
    change, replaced = register(net, session="s1", location="Plaza 1", price="0.50")
    assert change.old is State.ACTIVADO and not change.state_changed
    assert change.row.location == "Plaza 1" and change.row.price_eur_kwh == Decimal("0.50")


def test_stopped_cp_registers_as_parado(net):
    net.load([CPRow("CP1", "a", Decimal("0.4"), "DESCONECTADO", True, T0)])
    change, _ = register(net)
    assert change.new is State.PARADO


def test_fault_and_recovery(net):
    register(net)
    change = net.engine_fault("CP1", "s1", "Engine reports KO")
    assert (change.old, change.new) == (State.ACTIVADO, State.AVERIADO)
    assert net.fault_of("CP1") == "Engine reports KO"
    assert net.engine_fault("CP1", "s1", "again") is None  # no change, nothing to persist
    change = net.engine_ok("CP1", "s1")
    assert change.new is State.ACTIVADO and net.fault_of("CP1") is None


def test_newer_session_replaces_older_whose_reports_are_ignored(net):
    register(net, session="old")
    change, replaced = register(net, session="new")
    assert replaced == "old" and "new Monitor session" in change.cause
    assert net.engine_fault("CP1", "old", "stale") is None
    assert not net.heartbeat("CP1", "old")
    assert net.session_ended("CP1", "old", "closed") is None  # the old session's end changes nothing
    assert state(net) is State.ACTIVADO
    assert net.session_ended("CP1", "new", "closed").new is State.DESCONECTADO


def test_silence_rule(net, clock):
    register(net)
    clock.advance(2.4)
    assert net.expire_silent() == []
    assert net.heartbeat("CP1", "s1")
    clock.advance(2.5)
    assert net.expire_silent() == []  # exactly the timeout is still alive
    clock.advance(0.01)
    [(session, change)] = net.expire_silent()
    assert session == "s1" and change.new is State.DESCONECTADO
    assert "no sign of life" in change.cause
    assert net.expire_silent() == []  # once
    assert not net.heartbeat("CP1", "s1")  # the expired session no longer speaks for the CP
    change, _ = register(net, session="s2")
    assert change.new is State.ACTIVADO


def test_reports_count_as_signs_of_life(net, clock):
    register(net)
    clock.advance(2.0)
    net.engine_fault("CP1", "s1", "KO")
    clock.advance(2.0)
    assert net.expire_silent() == []


def test_operator_events_and_illegal_ones(net):
    register(net)
    assert net.apply("CP1", Event.STOP, "operator").new is State.PARADO
    with pytest.raises(IllegalTransition):
        net.apply("CP1", Event.SUPPLY_STARTED, "driver D1")
    with pytest.raises(KeyError):
        net.apply("NOPE", Event.STOP, "operator")


def test_changes_carry_timestamps_from_the_injected_clock(net, clock):
    register(net)
    clock.advance(5)
    change = net.engine_fault("CP1", "s1", "KO")
    assert change.at == T0 + timedelta(seconds=1005) == change.row.updated_at


# -- the weather hold (core/states.py, the weather flag) -------------------------------------


def test_a_weather_hold_stops_a_cp_and_its_end_resumes_it(net):
    register(net)
    change = net.weather_hold("CP1", True, "weather alert at Alicante,ES")
    assert (change.old, change.new, change.weather, change.stopped) == (State.ACTIVADO, State.PARADO, True, False)
    assert change.event is Event.WEATHER_STOP and net.weather_held("CP1")
    with pytest.raises(IllegalTransition):
        net.apply("CP1", Event.SUPPLY_STARTED, "driver D1")
    change = net.weather_hold("CP1", False, "weather alert at Alicante,ES cleared")
    assert (change.new, change.weather) == (State.ACTIVADO, False) and not net.weather_held("CP1")


def test_an_operator_resume_while_held_leaves_the_cp_parado(net):
    register(net)
    net.apply("CP1", Event.STOP, "operator")
    net.weather_hold("CP1", True, "alert")
    change = net.apply("CP1", Event.RESUME, "operator")
    assert (change.new, change.stopped, change.weather) == (State.PARADO, False, True)
    assert net.weather_hold("CP1", False, "cleared").new is State.ACTIVADO


def test_the_end_of_a_hold_leaves_an_operator_stop(net):
    register(net)
    net.weather_hold("CP1", True, "alert")
    net.apply("CP1", Event.STOP, "operator")
    change = net.weather_hold("CP1", False, "cleared")
    assert (change.new, change.stopped, change.weather) == (State.PARADO, True, False)


def test_an_unknown_cp_is_held_from_its_sign_up(net):
    assert net.weather_hold("CP9", True, "alert") is None
    assert net.weather_held("CP9")
    change, _ = register(net, "CP9")
    assert (change.new, change.weather) == (State.PARADO, True)
    assert net.weather_hold("CP8", False, "cleared") is None and not net.weather_held("CP8")


def test_a_held_cp_stays_parado_through_a_fault_and_a_reconnection(net):
    register(net)
    net.weather_hold("CP1", True, "alert")
    net.engine_fault("CP1", "s1", "KO")
    assert state(net) is State.AVERIADO
    assert net.engine_ok("CP1", "s1").new is State.PARADO
    net.session_ended("CP1", "s1", "closed")
    change, _ = register(net, session="s2")
    assert (change.new, change.weather) == (State.PARADO, True)


def test_registrations_at_once_are_what_they_would_be_one_by_one(net, clock):
    net.load([CPRow("CP2", "b", Decimal("0.5"), "DESCONECTADO", True, T0)])
    results = net.register_many([("CP1", "a", Decimal("0.4"), "s1"), ("CP2", "b", Decimal("0.5"), "s2"),
                                 ("CP3", "c", Decimal("0.6"), "s3"), ("CP3", "c", Decimal("0.6"), "s4")])
    changes = [change for change, _ in results]
    assert [(c.cp_id, c.old, c.new) for c in changes] == [
        ("CP1", None, State.ACTIVADO), ("CP2", State.DESCONECTADO, State.PARADO),
        ("CP3", None, State.ACTIVADO), ("CP3", State.ACTIVADO, State.ACTIVADO)]
    assert [replaced for _, replaced in results] == [None, None, None, "s3"]  # the later one wins
    assert net.owner("CP3") == "s4" and not net.heartbeat("CP3", "s3")
    assert changes[3].row.version > changes[2].row.version  # rows keep their order for the writer
    clock.advance(2.0)
    assert net.heartbeat("CP3", "s4")
    clock.advance(0.6)
    assert sorted(c.cp_id for _, c in net.expire_silent()) == ["CP1", "CP2"]  # CP3 spoke just now
