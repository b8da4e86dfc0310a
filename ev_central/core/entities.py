"""Central's entities: a charging point, a driver, a charging session, as the domain keeps them.

The domain (``core/``) defines them and owns their rules; the store (``store/``) maps each to
a row of its table (docs/schema.md), and nothing else. The CP states are the ``State`` of
``core/states.py``: ``CP_STATES`` is their names, for the store's constraints and the panel.
Every change of an entity raises its ``version``: a save never replaces a stored row with an
older one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from .states import State

CP_STATES = tuple(state.value for state in State)


@dataclass(frozen=True)
class CPRow:
    """A charging point (a row of ``charging_points``)."""

    cp_id: str
    location: str
    price_eur_kwh: Decimal
    state: str  # one of CP_STATES
    stopped: bool  # set by an operator's Stop, cleared by Resume; survives restarts
    updated_at: datetime  # timezone-aware, UTC
    version: int = 0  # a save never replaces a stored row of a higher version


@dataclass(frozen=True)
class DriverRow:
    """A registered driver (a row of ``drivers``)."""

    driver_id: str
    name: str
    registered_at: datetime  # timezone-aware, UTC


SESSION_STATUSES = ("AUTHORISED", "SUPPLYING", "COMPLETED", "INTERRUPTED")
OPEN_STATUSES = ("AUTHORISED", "SUPPLYING")


@dataclass(frozen=True)
class SessionRow:
    """A charging session (a row of ``charging_sessions``): an authorised supply, open or ended (its ticket)."""

    session_id: str
    request_id: str
    cp_id: str
    driver_id: str
    price_eur_kwh: Decimal  # frozen at authorisation
    started_at: datetime  # timezone-aware, UTC: the authorisation
    ended_at: datetime | None  # None while open
    kwh: Decimal
    amount_eur: Decimal
    status: str  # one of SESSION_STATUSES
    end_reason: str | None
    ticket_sent: bool  # the ticket reached the broker
    last_seq: int  # the highest telemetry seq applied
    engine_final: bool = False  # the figures came from the Engine's supply.end
    corrected: bool = False  # a corrected ticket was issued
    version: int = 0  # a save never replaces a stored row of a higher version
