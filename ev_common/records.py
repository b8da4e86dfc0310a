"""Kafka records: one frozen dataclass per record type, JSON on the wire.

Every record value is a JSON object::

    {"type": "supply.request", "v": 1, "ts": "2026-11-21T10:00:00.123456+00:00", ...fields}

``encode(record)`` gives the bytes; ``decode(bytes)`` gives the record or raises
``BadRecord`` (malformed JSON, unknown type, newer schema version, missing,
mistyped or out-of-range field), which consumers log and skip.

Every record checks its fields when it is built (so also when it is decoded), against
what the protocol and the database take (docs/schema.md): ids are
``[A-Za-z0-9_-]{1,64}``; texts have no control characters and fit their column
(reasons 200 characters); energy and money are finite, >= 0, with at most 4 decimal
places and below 10^8 (``DECIMAL(12,4)``); prices are 0 to 1000 with 4 places; ``seq``
is 0 to 2^31-1; ``power_kw`` 0 to 1000. A field out of range raises ``ValueError``
naming it. Decimals travel as strings
("0.4800") so that no amount is rounded through a float. docs/topics.md lists
every topic, type and field; keep it in step with this file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, get_type_hints

SCHEMA_VERSION = 1


class BadRecord(ValueError):
    """A record value that cannot be understood; ``raw`` keeps (up to 200 bytes of) it."""

    def __init__(self, reason: str, raw: bytes | None = b"") -> None:
        super().__init__(reason)
        self.raw = (raw or b"")[:200]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_TYPES: dict[str, type["Record"]] = {}


def record_type(name: str):
    """Class decorator: register a record dataclass under its wire ``type``."""

    def register(cls):
        if name in _TYPES:
            raise ValueError(f"record type {name} registered twice")
        cls.TYPE = name
        _TYPES[name] = cls
        return cls

    return register


# -- field rules, by field name (the same name means the same thing in every record) --------

ID_FIELDS = frozenset({"driver_id", "cp_id", "session_id", "request_id"})
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Free text and its longest length: the database column's (docs/schema.md).
TEXT_LIMITS = {"reason": 200, "end_reason": 200, "location": 200, "state": 16, "status": 16,
               "source": 16}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
ENERGY_FIELDS = frozenset({"kwh", "amount_eur"})  # DECIMAL(12,4)
ENERGY_LIMIT = Decimal(10) ** 8
PRICE_MAX = Decimal(1000)  # the protocol's price (ev_common/protocol/messages.py)
POWER_MAX = Decimal(1000)
SEQ_MAX = 2**31 - 1  # INTEGER
PLACES = 4


def _check_field(name: str, value: Any) -> None:
    """Raise ValueError (what is wrong) unless ``value`` is allowed in field ``name``."""
    if name in ID_FIELDS:
        if value is None and name == "driver_id":  # CPStatus: no driver
            return
        if not isinstance(value, str) or not _ID.fullmatch(value):
            raise ValueError(f"{value!r:.80} is not an id of 1-64 characters from A-Z a-z 0-9 _ -")
    elif name in TEXT_LIMITS:
        if value is None:
            return
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        if len(value) > TEXT_LIMITS[name]:
            raise ValueError(f"longer than {TEXT_LIMITS[name]} characters ({len(value)})")
        if _CONTROL.search(value):
            raise ValueError(f"{value!r:.80} contains a control character")
    elif name in ENERGY_FIELDS:
        _check_number(value, Decimal(0), ENERGY_LIMIT, PLACES, below=True)
    elif name == "price_eur_kwh":
        _check_number(value, Decimal(0), PRICE_MAX, PLACES)
    elif name == "power_kw":
        _check_number(value, Decimal(0), POWER_MAX, None)
    elif name == "seq":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEQ_MAX:
            raise ValueError(f"{value!r:.40} is not an integer from 0 to {SEQ_MAX}")
    elif isinstance(value, datetime) and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{value!r} has no time zone")


def _check_number(value: Any, low: Decimal, high: Decimal, places: int | None, *,
                  below: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, float)):
        raise ValueError(f"expected a decimal number, got {type(value).__name__}")
    number = value if isinstance(value, Decimal) else Decimal(str(value))
    if not number.is_finite():
        raise ValueError(f"{value!r:.40} is not finite")
    if number < low or number > high or (below and number >= high):
        bound = f"below {high}" if below else f"at most {high}"
        raise ValueError(f"{value!r:.40} is out of range (from {low}, {bound})")
    if places is not None and number != number.quantize(Decimal(1).scaleb(-places)):
        raise ValueError(f"{value!r:.40} has more than {places} decimal places")


@dataclass(frozen=True)
class Record:
    TYPE: ClassVar[str] = ""
    ts: datetime = field(default_factory=utcnow, kw_only=True)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            try:
                _check_field(f.name, getattr(self, f.name))
            except ValueError as exc:
                raise ValueError(f"{self.TYPE}.{f.name}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE, "v": SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            out[f.name] = _to_wire(getattr(self, f.name))
        return out


def _to_wire(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def encode(record: Record) -> bytes:
    return json.dumps(record.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """The field types of a record class (resolved once: ``get_type_hints`` is slow)."""
    return get_type_hints(cls)


def decode(raw: bytes | None) -> Record:
    try:
        data = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRecord(f"not JSON: {exc}", raw) from None
    if not isinstance(data, dict):
        raise BadRecord("not a JSON object", raw)
    cls = _TYPES.get(data.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise BadRecord(f"unknown record type {data.get('type')!r}", raw)
    version = data.get("v")
    if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
        raise BadRecord(f"unsupported schema version {version!r} of {cls.TYPE}", raw)
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise BadRecord(f"{cls.TYPE} lacks field {f.name!r}", raw)
        try:
            values[f.name] = _from_wire(hints[f.name], data[f.name])
        except (TypeError, ValueError, InvalidOperation) as exc:
            raise BadRecord(f"{cls.TYPE}.{f.name}: {exc}", raw) from None
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # a field out of range: the message names it
        raise BadRecord(str(exc), raw) from None


def _from_wire(hint: Any, value: Any) -> Any:
    if hint is Decimal:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise TypeError(f"expected a decimal string, got {value!r}")
        number = Decimal(value)
        if not number.is_finite():
            raise ValueError(f"{value!r} is not finite")
        return number
    if hint is datetime:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone")
        return moment
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true/false, got {value!r}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    if hint == (str | None):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"expected a string or null, got {value!r}")
        return value
    raise TypeError(f"unsupported field type {hint}")


# --- ev.driver.requests (key: driver_id) --------------------------------------------------


@record_type("supply.request")
@dataclass(frozen=True)
class SupplyRequest(Record):
    """A driver (or a CP's own menu, source "cp") asks Central for a supply at ``cp_id``."""

    request_id: str
    driver_id: str
    cp_id: str
    source: str = "driver"  # "driver" | "cp"


# --- ev.driver.notifications (key: driver_id) ---------------------------------------------


@record_type("request.received")
@dataclass(frozen=True)
class RequestReceived(Record):
    request_id: str
    driver_id: str
    cp_id: str


@record_type("request.authorised")
@dataclass(frozen=True)
class RequestAuthorised(Record):
    request_id: str
    driver_id: str
    cp_id: str
    session_id: str
    price_eur_kwh: Decimal


@record_type("request.denied")
@dataclass(frozen=True)
class RequestDenied(Record):
    request_id: str
    driver_id: str
    cp_id: str
    reason: str


@record_type("supply.progress")
@dataclass(frozen=True)
class SupplyProgress(Record):
    session_id: str
    driver_id: str
    cp_id: str
    seq: int
    kwh: Decimal
    amount_eur: Decimal
    power_kw: Decimal


@record_type("supply.alert")
@dataclass(frozen=True)
class SupplyAlert(Record):
    """Something happened to the CP serving the driver (fault, stop, lost Monitor); the ticket follows."""

    session_id: str
    driver_id: str
    cp_id: str
    state: str
    reason: str


@record_type("supply.ticket")
@dataclass(frozen=True)
class Ticket(Record):
    session_id: str
    request_id: str
    driver_id: str
    cp_id: str
    started_at: datetime
    ended_at: datetime
    kwh: Decimal
    price_eur_kwh: Decimal
    amount_eur: Decimal
    status: str  # COMPLETED | INTERRUPTED
    end_reason: str
    corrected: bool = False  # replaces an earlier ticket of this session: the Engine's final figures came late


# --- ev.cp.telemetry (key: cp_id) -----------------------------------------------------------


@record_type("telemetry")
@dataclass(frozen=True)
class Telemetry(Record):
    """The Engine, every second while supplying: cumulative figures of the session."""

    cp_id: str
    session_id: str
    driver_id: str
    seq: int
    kwh: Decimal
    amount_eur: Decimal
    power_kw: Decimal


@record_type("supply.end")
@dataclass(frozen=True)
class SupplyEnd(Record):
    """The Engine: the supply is over (``reason`` "unplugged" is a normal end)."""

    cp_id: str
    session_id: str
    driver_id: str
    seq: int
    kwh: Decimal
    amount_eur: Decimal
    reason: str


# --- ev.cp.status (key: cp_id) ----------------------------------------------------------------


@record_type("cp.status")
@dataclass(frozen=True)
class CPStatus(Record):
    """Central: the state of one CP, published on every change and on Central's start."""

    cp_id: str
    state: str
    location: str
    price_eur_kwh: Decimal
    driver_id: str | None = None
