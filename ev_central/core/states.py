"""The CP state machine: one table, every state x every event.

Central shows each CP in one of five states. Besides its state, a CP carries two
sticky flags, two reasons to be out of service that are independent of each other:

* ``stopped``, set by an operator's Stop and cleared by Resume;
* ``weather``, set by a weather alert at the CP's location (WEATHER_STOP) and cleared
  when no alert covers it any more (WEATHER_CLEAR; docs/weather.md).

A CP held by either shows AVERIADO while faulty and returns to PARADO (not ACTIVADO)
when repaired or reconnected. ``REST`` in the table means "the resting state": PARADO
when the CP is stopped or held for the weather, ACTIVADO otherwise. So an operator's
Resume of a CP held for the weather leaves it PARADO until the alert clears, and the
end of an alert leaves an operator's Stop in force.

Events come from what the Monitor reports (registration, engine health, loss of
the Monitor) and from Central itself (Stop, Resume, weather stop and clear, supply
start and end).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ev_common import words


class State(str, Enum):
    """The five states; their names are the shared words of ``ev_common.words`` (one definition)."""

    ACTIVADO = words.ACTIVADO  # working, waiting for a request
    PARADO = words.PARADO  # healthy but stopped by Central ("Out of Order")
    SUMINISTRANDO = words.SUMINISTRANDO  # supplying a vehicle
    AVERIADO = words.AVERIADO  # connected to Central but faulty
    DESCONECTADO = words.DESCONECTADO  # no sign of life from the Monitor

    def __str__(self) -> str:
        return self.value


class Event(str, Enum):
    REGISTERED = "REGISTERED"  # a Monitor opened a session (REG accepted); engine presumed OK
    ENGINE_OK = "ENGINE_OK"  # the Monitor reports its Engine healthy (recovery)
    ENGINE_FAULT = "ENGINE_FAULT"  # the Monitor reports its Engine KO or unreachable
    MONITOR_LOST = "MONITOR_LOST"  # the Monitor's socket closed, or it went silent
    STOP = "STOP"  # operator: out of service
    RESUME = "RESUME"  # operator: back in service
    SUPPLY_STARTED = "SUPPLY_STARTED"  # a supply was authorised and began
    SUPPLY_ENDED = "SUPPLY_ENDED"  # the supply ended normally
    WEATHER_STOP = "WEATHER_STOP"  # a weather alert at the CP's location: out of service
    WEATHER_CLEAR = "WEATHER_CLEAR"  # no weather alert covers the CP any more

    def __str__(self) -> str:
        return self.value


REST = "REST"  # PARADO if stopped or held for the weather, else ACTIVADO
KEEP = None  # the stopped flag is unchanged


class IllegalTransition(Exception):
    """The event cannot happen in this state (for example a supply at a broken CP)."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"{event} is not possible while {state}")
        self.state = state
        self.event = event


S, E = State, Event
# (state, event) -> (target, stopped flag afterwards); a missing pair is illegal. The weather
# flag follows WEATHER_FLAG below: only the weather events change it.
TABLE: dict[tuple[State, Event], tuple[State | str, bool | None]] = {
    (S.DESCONECTADO, E.REGISTERED): (REST, KEEP),
    (S.DESCONECTADO, E.ENGINE_OK): (S.DESCONECTADO, KEEP),
    (S.DESCONECTADO, E.ENGINE_FAULT): (S.DESCONECTADO, KEEP),
    (S.DESCONECTADO, E.MONITOR_LOST): (S.DESCONECTADO, KEEP),
    (S.DESCONECTADO, E.STOP): (S.DESCONECTADO, True),
    (S.DESCONECTADO, E.RESUME): (S.DESCONECTADO, False),
    (S.DESCONECTADO, E.SUPPLY_ENDED): (S.DESCONECTADO, KEEP),
    (S.DESCONECTADO, E.WEATHER_STOP): (S.DESCONECTADO, KEEP),
    (S.DESCONECTADO, E.WEATHER_CLEAR): (S.DESCONECTADO, KEEP),

    (S.ACTIVADO, E.REGISTERED): (REST, KEEP),
    (S.ACTIVADO, E.ENGINE_OK): (S.ACTIVADO, KEEP),
    (S.ACTIVADO, E.ENGINE_FAULT): (S.AVERIADO, KEEP),
    (S.ACTIVADO, E.MONITOR_LOST): (S.DESCONECTADO, KEEP),
    (S.ACTIVADO, E.STOP): (S.PARADO, True),
    (S.ACTIVADO, E.RESUME): (S.ACTIVADO, False),
    (S.ACTIVADO, E.SUPPLY_STARTED): (S.SUMINISTRANDO, KEEP),
    (S.ACTIVADO, E.SUPPLY_ENDED): (S.ACTIVADO, KEEP),
    (S.ACTIVADO, E.WEATHER_STOP): (S.PARADO, KEEP),
    (S.ACTIVADO, E.WEATHER_CLEAR): (S.ACTIVADO, KEEP),

    (S.SUMINISTRANDO, E.REGISTERED): (REST, KEEP),  # a new Monitor session: the old one died
    (S.SUMINISTRANDO, E.ENGINE_OK): (S.SUMINISTRANDO, KEEP),
    (S.SUMINISTRANDO, E.ENGINE_FAULT): (S.AVERIADO, KEEP),
    (S.SUMINISTRANDO, E.MONITOR_LOST): (S.DESCONECTADO, KEEP),
    (S.SUMINISTRANDO, E.STOP): (S.PARADO, True),
    (S.SUMINISTRANDO, E.RESUME): (S.SUMINISTRANDO, False),
    (S.SUMINISTRANDO, E.SUPPLY_ENDED): (REST, KEEP),
    (S.SUMINISTRANDO, E.WEATHER_STOP): (S.PARADO, KEEP),
    (S.SUMINISTRANDO, E.WEATHER_CLEAR): (S.SUMINISTRANDO, KEEP),

    (S.AVERIADO, E.REGISTERED): (REST, KEEP),  # the Monitor reports its Engine right after
    (S.AVERIADO, E.ENGINE_OK): (REST, KEEP),
    (S.AVERIADO, E.ENGINE_FAULT): (S.AVERIADO, KEEP),
    (S.AVERIADO, E.MONITOR_LOST): (S.DESCONECTADO, KEEP),
    (S.AVERIADO, E.STOP): (S.AVERIADO, True),
    (S.AVERIADO, E.RESUME): (S.AVERIADO, False),
    (S.AVERIADO, E.SUPPLY_ENDED): (S.AVERIADO, KEEP),
    (S.AVERIADO, E.WEATHER_STOP): (S.AVERIADO, KEEP),
    (S.AVERIADO, E.WEATHER_CLEAR): (S.AVERIADO, KEEP),

    (S.PARADO, E.REGISTERED): (REST, KEEP),
    (S.PARADO, E.ENGINE_OK): (S.PARADO, KEEP),
    (S.PARADO, E.ENGINE_FAULT): (S.AVERIADO, KEEP),
    (S.PARADO, E.MONITOR_LOST): (S.DESCONECTADO, KEEP),
    (S.PARADO, E.STOP): (S.PARADO, True),
    (S.PARADO, E.RESUME): (REST, False),  # still PARADO while a weather alert holds it
    (S.PARADO, E.SUPPLY_ENDED): (S.PARADO, KEEP),
    (S.PARADO, E.WEATHER_STOP): (S.PARADO, KEEP),
    (S.PARADO, E.WEATHER_CLEAR): (REST, KEEP),  # still PARADO while the operator's Stop holds it
}

#: The weather flag after each weather event; every other event keeps it.
WEATHER_FLAG: dict[Event, bool] = {E.WEATHER_STOP: True, E.WEATHER_CLEAR: False}


@dataclass(frozen=True)
class Outcome:
    state: State
    stopped: bool
    interrupts_supply: bool  # a running supply must end now (not a normal end)
    weather: bool = False  # held out of service by a weather alert


def transition(state: State, stopped: bool, event: Event, weather: bool = False) -> Outcome:
    """Apply ``event`` to a CP in ``state`` with its two flags; raises ``IllegalTransition``
    for a pair the table does not hold."""
    try:
        target, flag = TABLE[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None
    new_stopped = stopped if flag is KEEP else flag
    new_weather = WEATHER_FLAG.get(event, weather)
    if target == REST:
        target = State.PARADO if new_stopped or new_weather else State.ACTIVADO
    interrupts = state is State.SUMINISTRANDO and target is not State.SUMINISTRANDO and event is not Event.SUPPLY_ENDED
    return Outcome(State(target), new_stopped, interrupts, new_weather)
