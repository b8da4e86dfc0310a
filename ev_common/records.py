"""Kafka records: one frozen dataclass per record type, JSON on the wire.

Every record value is a JSON object::

    {"type": "supply.request", "v": 1, "ts": "2026-11-21T10:00:00.123456+00:00", ...fields}

``encode(record)`` gives the bytes; ``decode(bytes)`` gives the record or raises
``BadRecord`` (malformed JSON, unknown type, newer schema version, missing or
mistyped field), which consumers log and skip. Decimals travel as strings
("0.4800") so that no amount is rounded through a float. docs/topics.md lists
every topic, type and field; keep it in step with this file.
"""

from __future__ import annotations

import dataclasses
import json
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


@dataclass(frozen=True)
class Record:
    TYPE: ClassVar[str] = ""
    ts: datetime = field(default_factory=utcnow, kw_only=True)

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
    hints = get_type_hints(cls)
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
    return cls(**values)


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
