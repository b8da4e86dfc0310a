"""What gateways and the core say to each other over Kafka (docs/topics.md, "Gateways").

Three kinds of record, JSON objects with ``type``, ``v`` (1) and ``ts`` like every record of
the system, but decoded here (``decode``), never by ``ev_common.records``:

* ``CPEvent`` (a gateway -> the core, on ``ev.cp.events``, keyed by CP id): a CP registered,
  reported a fault or a recovery, lost its session, answered a ``SUP``, reported its supply
  (``SST``), or a ``SUP`` could not be delivered.
* ``Command`` (the core -> one gateway, on ``ev.gateway.<id>``, keyed by CP id): a protocol
  message for a CP's Monitor (``SUP``, ``STOP``, ``RESUME``, ``FIN``, ``CAN``, ``RVK``), close
  a session another one replaced (``cp.drop``), or send the roster now (``roster.request``).
* ``Beacon`` (a gateway, every second, on ``ev.gateway.beacons``, keyed by gateway id): I am
  alive, with so many sessions; now and then (and when asked) with its roster, in parts.

Every field is checked when a record is built, so also when one is decoded: ids as the
protocol's (``[A-Za-z0-9_-]``, CP ids up to 64, gateway ids up to 32), texts without control
characters and no longer than their database column (reasons and locations 200), prices as
``REG``'s, and a protocol message as the protocol's own decoder takes it, of the opcodes its
record allows, naming the record's CP. A value that breaks a rule raises ``BadRecord``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from ev_common.protocol import MESSAGES, Can, Fin, Message, MessageError, Resume, Rvk, Sst, Stop, Sup, Supr
from ev_common.protocol import LocalProtocolError
from ev_common.records import BadRecord

SCHEMA_VERSION = 1
GATEWAY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
CP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
INCARNATION = re.compile(r"[0-9a-f]{8,32}")
ASK_ID = re.compile(r"[0-9a-f]{32}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
TEXT_MAX = 200  # reasons and locations: their database columns
PEER_MAX = 64  # host:port of a Monitor ([IPv6]:port fits)
ADDRESS_MAX = 255
SESSION_MAX = 2**53  # a session's number within its gateway's run
MS_MAX = 2**63 - 1
VERSION_MAX = 2**31 - 1
PRICE_MAX = Decimal(1000)
ROSTER_PART_MAX = 1000  # CPs in one beacon: well under Kafka's 1 MB per record
PARTS_MAX = 10_000
VALUE_MAX = 1_000_000  # bytes of one record value

EVENT_KINDS = ("cp.registered", "cp.fault", "cp.recovered", "cp.lost", "cp.answer", "cp.undelivered", "cp.supply")
COMMAND_KINDS = ("cp.command", "cp.drop", "roster.request")
COMMAND_MESSAGES = (Sup, Stop, Resume, Fin, Can, Rvk)  # what the core may send a CP through a gateway


def now_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)


def _ts_ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


# -- field checks: each raises ValueError naming what is wrong --------------------------------

def _match(name: str, pattern: re.Pattern, value: Any) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{name}: {value!r:.80} is not of the form {pattern.pattern}")
    return value


def _text(name: str, value: Any, limit: int = TEXT_MAX, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a string, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{name}: longer than {limit} characters ({len(value)})")
    if not value and not empty:
        raise ValueError(f"{name}: must not be empty")
    if _CONTROL.search(value):
        raise ValueError(f"{name}: {value!r:.80} contains a control character")
    return value


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}: {value!r:.40} is not an integer from {low} to {high}")
    return value


def _price(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, Decimal)):
        raise ValueError(f"price_eur_kwh: expected a decimal string, got {value!r:.40}")
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"price_eur_kwh: {value!r:.40} is not a decimal") from None
    if not price.is_finite() or not 0 <= price <= PRICE_MAX or price != price.quantize(Decimal("0.0001")):
        raise ValueError(f"price_eur_kwh: {value!r:.40} is not 0 to {PRICE_MAX} with at most 4 decimal places")
    return price


def _message(name: str, value: Any, cp_id: str, allowed: tuple[type[Message], ...]) -> Message:
    """A protocol message's DATA text, decoded and checked as the protocol does."""
    if isinstance(value, Message):
        message = value
    else:
        if not isinstance(value, str) or len(value.encode("utf-8", "replace")) > 4096:
            raise ValueError(f"{name}: expected a protocol message of at most 4096 bytes")
        try:
            message = MESSAGES.decode(value)
        except MessageError as exc:
            raise ValueError(f"{name}: {exc}") from None
    if not isinstance(message, allowed):
        raise ValueError(f"{name}: {message.OPCODE} is not one of {', '.join(c.OPCODE for c in allowed)}")
    if getattr(message, "cp_id", cp_id) != cp_id:
        raise ValueError(f"{name}: names CP {message.cp_id}, not {cp_id}")
    return message


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    else:
        if not isinstance(value, str) or len(value) > 40:
            raise ValueError(f"ts: {value!r:.40} is not an ISO-8601 time")
        moment = datetime.fromisoformat(value)
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"ts: {value!r:.40} has no time zone")
    return moment


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# -- the records ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CPEvent:
    """One thing that happened to a CP's session at a gateway (see the module doc).

    ``session`` numbers the session within the gateway's run (``incarnation``): with the
    gateway's id, the three name one Monitor session, the core's owner token for the CP."""

    kind: str
    cp_id: str
    gateway: str
    incarnation: str
    session: int
    location: str = ""  # registered
    price_eur_kwh: Decimal | None = None  # registered
    key_version: int = 0  # registered: the CP's key version (secure mode), 0 in open mode
    peer: str = ""  # registered: the Monitor's address
    since_ms: int = 0  # registered: when, by the gateway's clock (ms since the epoch)
    reason: str = ""  # fault, lost, undelivered
    ask_id: str = ""  # answer, undelivered: the command's correlation
    message: Message | None = None  # answer: SUPR; supply: SST
    ts: datetime = field(default_factory=_utcnow)

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"type: unknown event {self.kind!r:.40}")
        _match("cp_id", CP_ID, self.cp_id)
        _match("gateway", GATEWAY_ID, self.gateway)
        _match("incarnation", INCARNATION, self.incarnation)
        _int("session", self.session, 1, SESSION_MAX)
        _text("reason", self.reason)
        _text("peer", self.peer, PEER_MAX)
        _int("key_version", self.key_version, 0, VERSION_MAX)
        _int("since_ms", self.since_ms, 0, MS_MAX)
        object.__setattr__(self, "ts", _time(self.ts))
        if self.kind == "cp.registered":
            _text("location", self.location, empty=False)
            object.__setattr__(self, "price_eur_kwh", _price(self.price_eur_kwh))
        if self.kind in ("cp.answer", "cp.undelivered"):
            _match("ask_id", ASK_ID, self.ask_id)
        if self.kind == "cp.answer":
            object.__setattr__(self, "message", _message("message", self.message, self.cp_id, (Supr,)))
        elif self.kind == "cp.supply":
            object.__setattr__(self, "message", _message("message", self.message, self.cp_id, (Sst,)))
        elif self.message is not None:
            raise ValueError(f"message: {self.kind} carries none")

    @property
    def TYPE(self) -> str:  # noqa: N802 (the name every record has, for the Publisher's logs)
        return self.kind

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "v": SCHEMA_VERSION, "ts": self.ts.isoformat(),
                               "cp_id": self.cp_id, "gateway": self.gateway, "incarnation": self.incarnation,
                               "session": self.session}
        if self.kind == "cp.registered":
            out.update(location=self.location, price_eur_kwh=format(self.price_eur_kwh, "f"),
                       key_version=self.key_version, peer=self.peer, since_ms=self.since_ms)
        if self.reason:
            out["reason"] = self.reason
        if self.ask_id:
            out["ask_id"] = self.ask_id
        if self.message is not None:
            out["message"] = self.message.to_data().decode("utf-8")
        return out


@dataclass(frozen=True)
class Command:
    """The core -> one gateway (see the module doc). ``incarnation`` is the gateway's run the
    command is meant for (another run drops it); ``deadline_ms`` when it is too late to carry
    out (a gateway that reads it later drops it, answering a ``SUP`` as undelivered)."""

    kind: str
    gateway: str
    incarnation: str
    deadline_ms: int
    cp_id: str = ""
    session: int = 0  # the session it is meant for; 0: whichever holds the CP
    message: Message | None = None  # cp.command
    ask_id: str = ""  # cp.command with SUP: the answer's correlation
    reason: str = ""  # cp.drop
    ts: datetime = field(default_factory=_utcnow)

    def __post_init__(self) -> None:
        if self.kind not in COMMAND_KINDS:
            raise ValueError(f"type: unknown command {self.kind!r:.40}")
        _match("gateway", GATEWAY_ID, self.gateway)
        _match("incarnation", INCARNATION, self.incarnation)
        _int("deadline_ms", self.deadline_ms, 0, MS_MAX)
        _int("session", self.session, 0, SESSION_MAX)
        _text("reason", self.reason)
        object.__setattr__(self, "ts", _time(self.ts))
        if self.kind != "roster.request":
            _match("cp_id", CP_ID, self.cp_id)
        if self.kind == "cp.command":
            message = _message("message", self.message, self.cp_id, COMMAND_MESSAGES)
            object.__setattr__(self, "message", message)
            if isinstance(message, Sup):
                _match("ask_id", ASK_ID, self.ask_id)
        elif self.message is not None:
            raise ValueError(f"message: {self.kind} carries none")

    @property
    def TYPE(self) -> str:  # noqa: N802
        return self.kind

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "v": SCHEMA_VERSION, "ts": self.ts.isoformat(),
                               "gateway": self.gateway, "incarnation": self.incarnation,
                               "deadline_ms": self.deadline_ms}
        if self.cp_id:
            out.update(cp_id=self.cp_id, session=self.session)
        if self.message is not None:
            out["message"] = self.message.to_data().decode("utf-8")
        if self.ask_id:
            out["ask_id"] = self.ask_id
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class RosterEntry:
    """One CP a gateway holds a session for, in a beacon's roster."""

    cp_id: str
    session: int
    since_ms: int
    location: str
    price_eur_kwh: Decimal
    fault: str = ""  # the Engine's fault as last reported; "" when healthy
    peer: str = ""

    def __post_init__(self) -> None:
        _match("cp_id", CP_ID, self.cp_id)
        _int("session", self.session, 1, SESSION_MAX)
        _int("since_ms", self.since_ms, 0, MS_MAX)
        _text("location", self.location, empty=False)
        object.__setattr__(self, "price_eur_kwh", _price(self.price_eur_kwh))
        _text("fault", self.fault)
        _text("peer", self.peer, PEER_MAX)

    def to_json(self) -> list[Any]:
        return [self.cp_id, self.session, self.since_ms, self.location, format(self.price_eur_kwh, "f"), self.fault,
                self.peer]

    @classmethod
    def from_json(cls, value: Any) -> "RosterEntry":
        if not isinstance(value, list) or len(value) != 7:
            raise ValueError("roster: an entry is [cp_id, session, since_ms, location, price, fault, peer]")
        return cls(*value)


@dataclass(frozen=True)
class Beacon:
    """A gateway is alive (see the module doc). A roster comes in ``parts`` records sharing
    ``roster_id`` (``part`` 1 to ``parts``); ``roster_id`` 0: no roster in this one.
    ``leaving``: the gateway stops cleanly (its Monitors go elsewhere)."""

    TYPE: ClassVar[str] = "gateway.beacon"

    gateway: str
    incarnation: str
    started_ms: int  # when this run of the gateway started (a newer run replaces an older one)
    seq: int
    sessions: int
    interval_ms: int
    address: str = ""
    leaving: bool = False
    roster_id: int = 0
    part: int = 0
    parts: int = 0
    roster: tuple[RosterEntry, ...] = ()
    ts: datetime = field(default_factory=_utcnow)

    def __post_init__(self) -> None:
        _match("gateway", GATEWAY_ID, self.gateway)
        _match("incarnation", INCARNATION, self.incarnation)
        _int("started_ms", self.started_ms, 0, MS_MAX)
        _int("seq", self.seq, 0, MS_MAX)
        _int("sessions", self.sessions, 0, VERSION_MAX)
        _int("interval_ms", self.interval_ms, 1, 3_600_000)
        _text("address", self.address, ADDRESS_MAX)
        if not isinstance(self.leaving, bool):
            raise ValueError("leaving: expected true/false")
        _int("roster_id", self.roster_id, 0, MS_MAX)
        object.__setattr__(self, "ts", _time(self.ts))
        if self.roster_id:
            _int("parts", self.parts, 1, PARTS_MAX)
            _int("part", self.part, 1, self.parts)
        if not isinstance(self.roster, tuple) or len(self.roster) > ROSTER_PART_MAX:
            raise ValueError(f"roster: at most {ROSTER_PART_MAX} entries")
        if self.roster and not self.roster_id:
            raise ValueError("roster: entries without a roster_id")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE, "v": SCHEMA_VERSION, "ts": self.ts.isoformat(),
                               "gateway": self.gateway, "incarnation": self.incarnation,
                               "started_ms": self.started_ms, "seq": self.seq, "sessions": self.sessions,
                               "interval_ms": self.interval_ms, "address": self.address, "leaving": self.leaving}
        if self.roster_id:
            out.update(roster_id=self.roster_id, part=self.part, parts=self.parts,
                       roster=[entry.to_json() for entry in self.roster])
        return out


Record = CPEvent | Command | Beacon

_EVENT_FIELDS = ("cp_id", "gateway", "incarnation", "session", "location", "price_eur_kwh", "key_version", "peer",
                 "since_ms", "reason", "ask_id", "message")
_COMMAND_FIELDS = ("gateway", "incarnation", "deadline_ms", "cp_id", "session", "message", "ask_id", "reason")
_BEACON_FIELDS = ("gateway", "incarnation", "started_ms", "seq", "sessions", "interval_ms", "address", "leaving",
                  "roster_id", "part", "parts")


def encode(record: Record) -> bytes:
    return json.dumps(record.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode(raw: bytes | None) -> Record:
    """Bytes -> a checked record; ``BadRecord`` for anything else."""
    if raw is None or len(raw) > VALUE_MAX:
        raise BadRecord(f"no value, or longer than {VALUE_MAX} bytes", raw)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRecord(f"not JSON: {exc}", raw) from None
    if not isinstance(data, dict):
        raise BadRecord("not a JSON object", raw)
    kind = data.get("type")
    if data.get("v") != SCHEMA_VERSION:
        raise BadRecord(f"unsupported schema version {data.get('v')!r:.20} of {kind!r:.40}", raw)
    try:
        ts = _time(data.get("ts"))
        if kind in EVENT_KINDS:
            values = {name: data[name] for name in _EVENT_FIELDS if name in data}
            if "price_eur_kwh" in values and not isinstance(values["price_eur_kwh"], str):
                raise ValueError("price_eur_kwh: expected a decimal string")
            return CPEvent(kind, ts=ts, **values)
        if kind in COMMAND_KINDS:
            return Command(kind, ts=ts, **{name: data[name] for name in _COMMAND_FIELDS if name in data})
        if kind == Beacon.TYPE:
            roster = data.get("roster", [])
            if not isinstance(roster, list) or len(roster) > ROSTER_PART_MAX:
                raise ValueError(f"roster: expected a list of at most {ROSTER_PART_MAX} entries")
            return Beacon(ts=ts, roster=tuple(RosterEntry.from_json(entry) for entry in roster),
                          **{name: data[name] for name in _BEACON_FIELDS if name in data})
    except (TypeError, ValueError, LocalProtocolError) as exc:  # a missing, extra or mistyped field
        raise BadRecord(f"{kind}: {exc}"[:300], raw) from None
    raise BadRecord(f"unknown record type {kind!r:.40}", raw)


def decoder(topic: str, value: bytes | None, partition: int = 0, offset: int = 0) -> Record:
    """``RecordConsumer``'s decoder for the gateways' topics."""
    return decode(value)


__all__ = ["Beacon", "Command", "CPEvent", "RosterEntry", "decode", "decoder", "encode", "now_ms", "ROSTER_PART_MAX"]
