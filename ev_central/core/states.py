"""The CP state machine: one table, every state x every event.

Central shows each CP in one of five states. Besides its state, a CP carries one
sticky flag, ``stopped``, set by an operator's Stop and cleared by Resume: a
stopped CP shows AVERIADO while faulty and returns to PARADO (not ACTIVADO) when
repaired or reconnected. ``REST`` in the table means "the resting state":
PARADO when the CP is stopped, ACTIVADO otherwise.

Events come from what the Monitor reports (registration, engine health, loss of
the Monitor) and from Central itself (Stop, Resume, supply start and end).
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

    def __str__(self) -> str:
        return self.value


REST = "REST"  # PARADO if stopped else ACTIVADO
KEEP = None  # the stopped flag is unchanged


class IllegalTransition(Exception):
    """The event cannot happen in this state (for example a supply at a broken CP)."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"{event} is not possible while {state}")
        self.state = state
        self.event = event


S, E = State, Event
# (state, event) -> (target, stopped flag afterwards); a missing pair is illegal
TABLE: dict[tuple[State, Event], tuple[State | str, bool | None]] = {
    (S.DESCONECTADO, E.REGISTERED): (REST, KEEP),
    (S.DESCONECTADO, E.ENGINE_OK): (S.DESCONECTADO, KEEP),
    (S.DESCONECTADO, E.ENGINE_FAULT): (S.DESCONECTADO, KEEP),
    (S.DESCONECTADO, E.MONITOR_LOST): (S.DESCONECTADO, KEEP),
    (S.DESCONECTADO, E.STOP): (S.DESCONECTADO, True),
    (S.DESCONECTADO, E.RESUME): (S.DESCONECTADO, False),
    (S.DESCONECTADO, E.SUPPLY_ENDED): (S.DESCONECTADO, KEEP),

    (S.ACTIVADO, E.REGISTERED): (REST, KEEP),
    (S.ACTIVADO, E.ENGINE_OK): (S.ACTIVADO, KEEP),
    (S.ACTIVADO, E.ENGINE_FAULT): (S.AVERIADO, KEEP),
    (S.ACTIVADO, E.MONITOR_LOST): (S.DESCONECTADO, KEEP),
    (S.ACTIVADO, E.STOP): (S.PARADO, True),
    (S.ACTIVADO, E.RESUME): (S.ACTIVADO, False),
    (S.ACTIVADO, E.SUPPLY_STARTED): (S.SUMINISTRANDO, KEEP),
    (S.ACTIVADO, E.SUPPLY_ENDED): (S.ACTIVADO, KEEP),

    (S.SUMINISTRANDO, E.REGISTERED): (REST, KEEP),  # a new Monitor session: the old one died
    (S.SUMINISTRANDO, E.ENGINE_OK): (S.SUMINISTRANDO, KEEP),
    (S.SUMINISTRANDO, E.ENGINE_FAULT): (S.AVERIADO, KEEP),
    (S.SUMINISTRANDO, E.MONITOR_LOST): (S.DESCONECTADO, KEEP),
    (S.SUMINISTRANDO, E.STOP): (S.PARADO, True),
    (S.SUMINISTRANDO, E.RESUME): (S.SUMINISTRANDO, False),
    (S.SUMINISTRANDO, E.SUPPLY_ENDED): (REST, KEEP),

    (S.AVERIADO, E.REGISTERED): (REST, KEEP),  # the Monitor reports its Engine right after
    (S.AVERIADO, E.ENGINE_OK): (REST, KEEP),
    (S.AVERIADO, E.ENGINE_FAULT): (S.AVERIADO, KEEP),
    (S.AVERIADO, E.MONITOR_LOST): (S.DESCONECTADO, KEEP),
    (S.AVERIADO, E.STOP): (S.AVERIADO, True),
    (S.AVERIADO, E.RESUME): (S.AVERIADO, False),
    (S.AVERIADO, E.SUPPLY_ENDED): (S.AVERIADO, KEEP),

    (S.PARADO, E.REGISTERED): (REST, KEEP),
    (S.PARADO, E.ENGINE_OK): (S.PARADO, KEEP),
    (S.PARADO, E.ENGINE_FAULT): (S.AVERIADO, KEEP),
    (S.PARADO, E.MONITOR_LOST): (S.DESCONECTADO, KEEP),
    (S.PARADO, E.STOP): (S.PARADO, True),
    (S.PARADO, E.RESUME): (S.ACTIVADO, False),
    (S.PARADO, E.SUPPLY_ENDED): (S.PARADO, KEEP),
}


@dataclass(frozen=True)
class Outcome:
    state: State
    stopped: bool
    interrupts_supply: bool  # a running supply must end now (not a normal end)


def transition(state: State, stopped: bool, event: Event) -> Outcome:
    """Apply ``event``; raises ``IllegalTransition`` for a pair the table does not hold."""
    try:
        target, flag = TABLE[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None
    new_stopped = stopped if flag is KEEP else flag
    if target == REST:
        target = State.PARADO if new_stopped else State.ACTIVADO
    interrupts = state is State.SUMINISTRANDO and target is not State.SUMINISTRANDO and event is not Event.SUPPLY_ENDED
    return Outcome(State(target), new_stopped, interrupts)
