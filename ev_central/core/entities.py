"""Central's entities: a charging point, a driver, a charging session, an account and its RFID
tags, as the domain keeps them.

The domain (``core/``) defines them and owns their rules; the store (``store/``) maps each to
a row of its table (docs/schema.md), and nothing else. The CP states are the ``State`` of
``core/states.py``: ``CP_STATES`` is their names, for the store's constraints and the panel.
Every change of an entity raises its ``version``: a save never replaces a stored row with an
older one.
"""

from __future__ import annotations

import re
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
    account_id: str | None = None  # the account the driver belongs to, if any


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
    tag_uid: str | None = None  # the RFID tag that charged (normalised UID); None for a driver's app
    account_id: str | None = None  # the account the session is booked to; None if none


#: An account's ``kind``: a word such as ``apartment`` or ``company``.
ACCOUNT_KIND_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
DEFAULT_ACCOUNT_KIND = "other"


@dataclass(frozen=True)
class AccountRow:
    """An account (a row of ``accounts``): who pays for the sessions of its tags and drivers."""

    account_id: str
    name: str
    kind: str  # a word matching ACCOUNT_KIND_PATTERN, e.g. apartment, company
    active: bool  # a disabled account keeps its rows; its tags and drivers are not to charge
    created_at: datetime  # timezone-aware, UTC


#: The lengths of an RFID UID: 4, 7, 8 or 10 bytes, as hex digits.
TAG_UID_LENGTHS = (8, 14, 16, 20)
_TAG_SEPARATORS = re.compile(r"[ :-]")
_HEX = re.compile(r"[0-9A-F]+")


def normalise_tag_uid(text: str) -> str:
    """An RFID UID as stored: upper-case hex digits without separators, of 4, 7, 8 or 10
    bytes. ``04:a2-3b 1c`` and ``04A23B1C`` are the same tag. ``ValueError`` otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"a tag UID is text, not {text!r}")
    uid = _TAG_SEPARATORS.sub("", text).upper()
    if not _HEX.fullmatch(uid):
        raise ValueError(
            f"tag UID {text!r} is not hexadecimal (0-9, A-F; ':', '-' or spaces between bytes)"
        )
    if len(uid) not in TAG_UID_LENGTHS:
        raise ValueError(
            f"tag UID {text!r} has {len(uid)} hex digits; a UID has 4, 7, 8 or 10 bytes "
            f"({', '.join(map(str, TAG_UID_LENGTHS))} hex digits)"
        )
    return uid


@dataclass(frozen=True)
class TagRow:
    """An RFID tag (a row of ``rfid_tags``), owned by one account."""

    tag_uid: str  # normalised: see normalise_tag_uid
    account_id: str
    active: bool
    created_at: datetime  # timezone-aware, UTC


@dataclass(frozen=True)
class AccountStatement:
    """The sessions booked to an account that started in ``[start, end)`` (a bound of None
    is open), oldest first, and their totals: exact sums of the sessions' figures."""

    account: AccountRow
    start: datetime | None
    end: datetime | None
    sessions: tuple[SessionRow, ...]

    @property
    def total_kwh(self) -> Decimal:
        return sum((s.kwh for s in self.sessions), Decimal("0.0000"))

    @property
    def total_amount_eur(self) -> Decimal:
        return sum((s.amount_eur for s in self.sessions), Decimal("0.0000"))


# -- security (schema version 5: docs/security.md) ----------------------------------------


@dataclass(frozen=True)
class RegistrationRow:
    """A CP registered at EV_Registry (a row of ``cp_registrations``). Its credential is kept
    only as a slow salted hash, never in clear; a deregistered CP keeps its row (history) but
    no credential, so it cannot authenticate."""

    cp_id: str
    location: str
    price_eur_kwh: Decimal
    credential_hash: str | None  # None once deregistered
    registered_at: datetime  # the last (re)registration, UTC
    deregistered_at: datetime | None = None

    @property
    def registered(self) -> bool:
        return self.credential_hash is not None


@dataclass(frozen=True)
class CPKeyRow:
    """A symmetric key Central issued to a CP (a row of ``cp_keys``): ``key_sealed`` is the
    key encrypted with Central's master key, never the key in clear."""

    cp_id: str
    version: int  # 1, 2, ... per CP; a new key after each revocation
    key_sealed: str
    issued_at: datetime
    revoked_at: datetime | None = None


#: Longest texts of an audit entry (its columns' limits).
AUDIT_ACTOR_MAX, AUDIT_SOURCE_MAX, AUDIT_ACTION_MAX = 100, 64, 64
AUDIT_DETAILS_MAX, AUDIT_OUTCOME_MAX = 1000, 32


@dataclass(frozen=True)
class AuditEntry:
    """What happened, by whom and from where (an entry of ``audit_log`` before it is chained)."""

    at: datetime  # UTC
    actor: str  # "CP001", "driver D001", "operator", "EV_Registry", "central"...
    source_ip: str  # "" when there is none (a command typed at Central)
    action: str  # "auth", "key.issue", "key.revoke", "registry.register", "supply.start"...
    details: str  # parameters or a description; never a secret
    outcome: str  # "ok", "refused", "failed", "dropped"...


@dataclass(frozen=True)
class AuditRow:
    """An audit entry as stored: numbered, and chained to the one before by its hash."""

    seq: int
    entry: AuditEntry
    prev_hash: str  # hex SHA-256; 64 zeros for the first entry
    hash: str  # hex SHA-256 of prev_hash and this entry (ev_central/audit.py)


# -- the weather office (schema version 6: docs/weather.md) ---------------------------------

#: Longest city ("Alicante,ES") and most CPs one weather alert holds (its columns' limits).
WEATHER_CITY_MAX, WEATHER_CPS_MAX = 100, 1000


@dataclass(frozen=True)
class WeatherAlertRow:
    """A weather alert in force (a row of ``weather_alerts``): EV_W found the temperature at
    ``city`` below 0 °C, and Central holds ``cp_ids`` out of service until it clears it."""

    city: str  # "Alicante,ES", as Central keeps it (ev_central/weather.py, city_name)
    cp_ids: tuple[str, ...]  # the CPs at that location, in EV_W's order
    temperature: Decimal  # °C, when the alert was raised
    since: datetime  # when the alert was raised (UTC)
