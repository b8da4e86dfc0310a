"""The CP state table: every state x every event, with and without the sticky stop flag, and with
and without the weather flag."""

from __future__ import annotations

import pytest

from ev_central.core.states import TABLE, Event, IllegalTransition, State, transition

A, P, S, F, D = State.ACTIVADO, State.PARADO, State.SUMINISTRANDO, State.AVERIADO, State.DESCONECTADO
E = Event
ILLEGAL = "illegal"

# EXPECTED[state][event] = (target when not stopped, target when stopped); flags checked separately
EXPECTED = {
    D: {E.REGISTERED: (A, P), E.ENGINE_OK: (D, D), E.ENGINE_FAULT: (D, D), E.MONITOR_LOST: (D, D),
        E.STOP: (D, D), E.RESUME: (D, D), E.SUPPLY_STARTED: ILLEGAL, E.SUPPLY_ENDED: (D, D),
        E.WEATHER_STOP: (D, D), E.WEATHER_CLEAR: (D, D)},
    A: {E.REGISTERED: (A, None), E.ENGINE_OK: (A, None), E.ENGINE_FAULT: (F, None), E.MONITOR_LOST: (D, None),
        E.STOP: (P, None), E.RESUME: (A, None), E.SUPPLY_STARTED: (S, None), E.SUPPLY_ENDED: (A, None),
        E.WEATHER_STOP: (P, None), E.WEATHER_CLEAR: (A, None)},
    S: {E.REGISTERED: (A, P), E.ENGINE_OK: (S, S), E.ENGINE_FAULT: (F, F), E.MONITOR_LOST: (D, D),
        E.STOP: (P, P), E.RESUME: (S, S), E.SUPPLY_STARTED: ILLEGAL, E.SUPPLY_ENDED: (A, P),
        E.WEATHER_STOP: (P, P), E.WEATHER_CLEAR: (S, S)},
    F: {E.REGISTERED: (A, P), E.ENGINE_OK: (A, P), E.ENGINE_FAULT: (F, F), E.MONITOR_LOST: (D, D),
        E.STOP: (F, F), E.RESUME: (F, F), E.SUPPLY_STARTED: ILLEGAL, E.SUPPLY_ENDED: (F, F),
        E.WEATHER_STOP: (F, F), E.WEATHER_CLEAR: (F, F)},
    P: {E.REGISTERED: (None, P), E.ENGINE_OK: (None, P), E.ENGINE_FAULT: (None, F), E.MONITOR_LOST: (None, D),
        E.STOP: (None, P), E.RESUME: (None, A), E.SUPPLY_STARTED: ILLEGAL, E.SUPPLY_ENDED: (None, P),
        E.WEATHER_STOP: (None, P), E.WEATHER_CLEAR: (None, P)},
}
# ACTIVADO never carries the stop flag and PARADO always does: None marks a combination that cannot exist

CASES = [(state, event, stopped) for state in State for event in Event for stopped in (False, True)
         if not (EXPECTED[state][event] != ILLEGAL and EXPECTED[state][event][stopped] is None)]


def test_expected_table_covers_every_pair():
    assert {(s, e) for s in EXPECTED for e in EXPECTED[s]} == {(s, e) for s in State for e in Event}


@pytest.mark.parametrize("state,event,stopped", CASES, ids=[f"{s}-{e}-{'stopped' if st else 'running'}" for s, e, st in CASES])
def test_every_state_and_event(state, event, stopped):
    expected = EXPECTED[state][event]
    if expected == ILLEGAL:
        with pytest.raises(IllegalTransition, match=f"{event} is not possible while {state}"):
            transition(state, stopped, event)
        assert (state, event) not in TABLE
        return
    outcome = transition(state, stopped, event)
    assert outcome.state is expected[stopped]
    flag = {E.STOP: True, E.RESUME: False}.get(event, stopped)
    assert outcome.stopped is flag
    assert outcome.weather is (event is E.WEATHER_STOP)
    assert outcome.interrupts_supply is ((state, event) in INTERRUPTING)


# The events that end a running supply abnormally (written out, not derived from the table).
INTERRUPTING = {(S, E.REGISTERED), (S, E.ENGINE_FAULT), (S, E.MONITOR_LOST), (S, E.STOP), (S, E.WEATHER_STOP)}

# A CP held for the weather (the flag set): EXPECTED_HELD[state][event] = (target when not stopped,
# target when stopped). It is never ACTIVADO nor SUMINISTRANDO: the weather stop took it to PARADO.
EXPECTED_HELD = {
    D: {E.REGISTERED: (P, P), E.ENGINE_OK: (D, D), E.ENGINE_FAULT: (D, D), E.MONITOR_LOST: (D, D),
        E.STOP: (D, D), E.RESUME: (D, D), E.SUPPLY_STARTED: ILLEGAL, E.SUPPLY_ENDED: (D, D),
        E.WEATHER_STOP: (D, D), E.WEATHER_CLEAR: (D, D)},
    F: {E.REGISTERED: (P, P), E.ENGINE_OK: (P, P), E.ENGINE_FAULT: (F, F), E.MONITOR_LOST: (D, D),
        E.STOP: (F, F), E.RESUME: (F, F), E.SUPPLY_STARTED: ILLEGAL, E.SUPPLY_ENDED: (F, F),
        E.WEATHER_STOP: (F, F), E.WEATHER_CLEAR: (F, F)},
    P: {E.REGISTERED: (P, P), E.ENGINE_OK: (P, P), E.ENGINE_FAULT: (F, F), E.MONITOR_LOST: (D, D),
        E.STOP: (P, P), E.RESUME: (P, P), E.SUPPLY_STARTED: ILLEGAL, E.SUPPLY_ENDED: (P, P),
        E.WEATHER_STOP: (P, P), E.WEATHER_CLEAR: (A, P)},
}
HELD_CASES = [(state, event, stopped) for state in EXPECTED_HELD for event in Event for stopped in (False, True)]


@pytest.mark.parametrize("state,event,stopped", HELD_CASES,
                         ids=[f"{s}-{e}-{'stopped' if st else 'running'}-held" for s, e, st in HELD_CASES])
def test_every_state_and_event_while_held_for_the_weather(state, event, stopped):
    expected = EXPECTED_HELD[state][event]
    if expected == ILLEGAL:
        with pytest.raises(IllegalTransition):
            transition(state, stopped, event, weather=True)
        return
    outcome = transition(state, stopped, event, weather=True)
    assert outcome.state is expected[stopped]
    assert outcome.stopped is {E.STOP: True, E.RESUME: False}.get(event, stopped)
    assert outcome.weather is (event is not E.WEATHER_CLEAR)
    assert not outcome.interrupts_supply


def test_the_two_reasons_are_independent():
    # an operator's Resume of a CP held for the weather clears only the operator's stop
    o = transition(A, False, E.STOP)
    o = transition(o.state, o.stopped, E.WEATHER_STOP, o.weather)
    assert (o.state, o.stopped, o.weather) == (P, True, True)
    o = transition(o.state, o.stopped, E.RESUME, o.weather)
    assert (o.state, o.stopped, o.weather) == (P, False, True)
    o = transition(o.state, o.stopped, E.WEATHER_CLEAR, o.weather)
    assert (o.state, o.stopped, o.weather) == (A, False, False)
    # the end of the alert leaves the operator's stop in force
    o = transition(A, False, E.WEATHER_STOP)
    o = transition(o.state, o.stopped, E.STOP, o.weather)
    o = transition(o.state, o.stopped, E.WEATHER_CLEAR, o.weather)
    assert (o.state, o.stopped, o.weather) == (P, True, False)
    o = transition(o.state, o.stopped, E.RESUME, o.weather)
    assert (o.state, o.stopped, o.weather) == (A, False, False)


def test_a_weather_stop_during_a_supply_interrupts_it_and_is_sticky():
    o = transition(S, False, E.WEATHER_STOP)
    assert (o.state, o.weather, o.interrupts_supply) == (P, True, True)
    o = transition(o.state, o.stopped, E.ENGINE_FAULT, o.weather)
    o = transition(o.state, o.stopped, E.ENGINE_OK, o.weather)
    assert (o.state, o.weather) == (P, True)  # repaired while the alert lasts: PARADO
    o = transition(o.state, o.stopped, E.MONITOR_LOST, o.weather)
    o = transition(o.state, o.stopped, E.REGISTERED, o.weather)
    assert (o.state, o.weather) == (P, True)  # reconnected: still PARADO
    with pytest.raises(IllegalTransition):
        transition(o.state, o.stopped, E.SUPPLY_STARTED, o.weather)


def test_stop_is_sticky_through_fault_and_reconnection():
    o = transition(A, False, E.STOP)
    assert (o.state, o.stopped) == (P, True)
    o = transition(o.state, o.stopped, E.ENGINE_FAULT)
    assert (o.state, o.stopped) == (F, True)
    o = transition(o.state, o.stopped, E.ENGINE_OK)
    assert (o.state, o.stopped) == (P, True)  # repaired: back to PARADO, not ACTIVADO
    o = transition(o.state, o.stopped, E.MONITOR_LOST)
    o = transition(o.state, o.stopped, E.REGISTERED)
    assert (o.state, o.stopped) == (P, True)  # reconnected: still PARADO
    o = transition(o.state, o.stopped, E.RESUME)
    assert (o.state, o.stopped) == (A, False)


def test_a_fault_during_a_supply_interrupts_it():
    assert transition(S, False, E.ENGINE_FAULT).interrupts_supply
    assert transition(S, False, E.MONITOR_LOST).interrupts_supply
    assert transition(S, False, E.STOP).interrupts_supply
    assert not transition(S, False, E.SUPPLY_ENDED).interrupts_supply


def test_one_definition_of_the_cp_states():
    from ev_central.core.entities import CP_STATES
    from ev_central.store.base import CP_STATES as STORED
    from ev_common import words

    assert CP_STATES == STORED == words.CP_STATES == tuple(state.value for state in State)
