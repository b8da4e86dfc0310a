"""Messages: one frozen dataclass per opcode, validated on construction, in a registry.

A message class declares its opcode and its fields in wire order::

    @MESSAGES.register
    @dataclass(frozen=True)
    class Reg(Message):
        OPCODE: ClassVar[str] = "REG"
        cp_id: str = wire(Identifier())
        ...

``MESSAGES.decode(text)`` turns a frame's DATA into a message (raising a
``MessageError`` that keeps the bytes), ``msg.to_data()`` turns a message into
DATA. Building a message with an invalid value raises ``LocalProtocolError``:
a sender never puts a bad frame on the wire. docs/protocol.md lists every
message; keep it in step with this file.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Iterator

from .errors import FieldCountError, InvalidField, LocalProtocolError, MessageError, UnknownOpcode
from .fields import (Choice, FieldType, Identifier, Integer, Number, OptionalIdentifier, Text, Token, check_text,
                     safe_text)
from .framing import MAX_DATA

SEPARATOR = "#"
_OPCODE = re.compile(r"[A-Z][A-Z0-9_]{0,15}")


def wire(ftype: FieldType, **kwargs: Any) -> Any:
    """Declare a dataclass field that travels on the wire with type ``ftype``."""
    return dataclasses.field(metadata={"wire": ftype}, **kwargs)


class Message:
    """Base of every message. Subclasses are frozen dataclasses with ``wire`` fields."""

    OPCODE: ClassVar[str] = ""
    _WIRE: ClassVar[tuple[tuple[str, FieldType], ...]] = ()
    _OPTIONAL: ClassVar[int | None] = None

    def __post_init__(self) -> None:
        for name, ftype in self._wire_fields():
            try:
                value = ftype.check(getattr(self, name))
            except ValueError as exc:
                raise LocalProtocolError(f"cannot build {self.OPCODE}: {name}: {exc}") from None
            object.__setattr__(self, name, value)

    @classmethod
    def _wire_fields(cls) -> tuple[tuple[str, FieldType], ...]:
        if "_WIRE" not in cls.__dict__:
            cls._WIRE = tuple((f.name, f.metadata["wire"]) for f in dataclasses.fields(cls) if "wire" in f.metadata)
        return cls._WIRE

    def to_fields(self) -> tuple[str, ...]:
        fields = [ftype.format(getattr(self, name)) for name, ftype in self._wire_fields()]
        optional = self._optional_count()
        while optional and fields and fields[-1] == "":  # an empty optional field is left out
            fields.pop()
            optional -= 1
        return tuple(fields)

    @classmethod
    def _optional_count(cls) -> int:
        """How many trailing wire fields are optional (they have a default): a sender leaves
        them out when empty, and a receiver takes a message without them (worked out once per class)."""
        count = cls.__dict__.get("_OPTIONAL")
        if count is None:
            count = 0
            for f in reversed([f for f in dataclasses.fields(cls) if "wire" in f.metadata]):
                if f.default is dataclasses.MISSING:
                    break
                count += 1
            cls._OPTIONAL = count
        return count

    def to_data(self) -> bytes:
        """DATA of this message: ``OPCODE#f1#...#fN`` in UTF-8, at most MAX_DATA bytes."""
        data = SEPARATOR.join((self.OPCODE, *self.to_fields())).encode("utf-8")
        if len(data) > MAX_DATA:
            raise LocalProtocolError(f"{self.OPCODE} is {len(data)} bytes long, over the {MAX_DATA}-byte limit")
        return data

    @classmethod
    def from_fields(cls, fields: list[str], raw: bytes = b"") -> "Message":
        spec = cls._wire_fields()
        if not len(spec) - cls._optional_count() <= len(fields) <= len(spec):
            raise FieldCountError(raw, cls.OPCODE, len(spec), len(fields), len(spec) - cls._optional_count())
        spec = spec[:len(fields)]
        values = {}
        for (name, ftype), text in zip(spec, fields):
            try:
                values[name] = ftype.parse(text)
            except ValueError as exc:
                raise InvalidField(raw, cls.OPCODE, name, str(exc)) from None
        try:
            return cls(**values)
        except LocalProtocolError as exc:  # a rule between fields (KEY: a version goes with a key)
            raise InvalidField(raw, cls.OPCODE, "fields", str(exc)) from None


class Registry:
    """Maps an opcode to its message class."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Message]] = {}

    def register(self, cls: type[Message]) -> type[Message]:
        opcode = cls.OPCODE
        if not _OPCODE.fullmatch(opcode):
            raise ValueError(f"bad opcode {opcode!r} on {cls.__name__}")
        if opcode in self._classes:
            raise ValueError(f"opcode {opcode} registered twice ({self._classes[opcode].__name__}, {cls.__name__})")
        self._classes[opcode] = cls
        return cls

    def __contains__(self, opcode: str) -> bool:
        return opcode in self._classes

    def __iter__(self) -> Iterator[type[Message]]:
        return iter(self._classes.values())

    def get(self, opcode: str) -> type[Message] | None:
        return self._classes.get(opcode)

    def decode(self, text: str) -> Message:
        """DATA text -> message. Raises ``MessageError`` (UnknownOpcode, FieldCountError, InvalidField)."""
        raw = text.encode("utf-8", "replace")
        opcode, _, rest = text.partition(SEPARATOR)
        if not _OPCODE.fullmatch(opcode):
            raise UnknownOpcode(raw, opcode)
        cls = self._classes.get(opcode)
        if cls is None:
            raise UnknownOpcode(raw, opcode)
        fields = rest.split(SEPARATOR) if SEPARATOR in text else []
        return cls.from_fields(fields, raw)


MESSAGES = Registry()
"""The registry of every message of the EVCharging socket protocol."""


# --- registration (Monitor <-> Central) --------------------------------------

CP_ID = Identifier()
PRICE = Number(minimum=Decimal(0), maximum=Decimal(1000), places=4)  # the DB keeps 4 places
CREDENTIAL_MAX = 128  # a CP's credential from EV_Registry (ev_common/credentials.py)
TICKET_MAX = 128  # a resumption ticket (today 43 characters: ev_central/tickets.py)
KEY_TEXT_LEN = 43  # a 256-bit key in base64url without padding


@MESSAGES.register
@dataclass(frozen=True)
class Reg(Message):
    """Monitor -> Central: register (sign up or update) a CP and open its session."""

    OPCODE: ClassVar[str] = "REG"
    cp_id: str = wire(CP_ID)
    location: str = wire(Text(max_len=200))
    price_eur_kwh: Decimal = wire(PRICE)
    credential: str = wire(Token(CREDENTIAL_MAX), default="", repr=False)  # secure mode; left out when empty
    # secure mode: the resumption ticket of the last AUTH#OK (ev_central/tickets.py); left out when empty
    ticket: str = wire(Token(TICKET_MAX), default="", repr=False)

    def redacted(self) -> str:
        """The message as logs show it: the credential and the ticket replaced by ``***``."""
        parts = [self.OPCODE, self.cp_id, self.location, str(self.price_eur_kwh)]
        if self.credential or self.ticket:
            parts.append("***" if self.credential else "")
        if self.ticket:
            parts.append("***")
        return SEPARATOR.join(parts)


@MESSAGES.register
@dataclass(frozen=True)
class Auth(Message):
    """Central -> Monitor: the answer to ``REG``; ``OK`` or ``KO`` with a text for people."""

    OPCODE: ClassVar[str] = "AUTH"
    status: str = wire(Choice("OK", "KO"))
    text: str = wire(Text(max_len=400, allow_empty=True))
    # secure mode, with OK: a resumption ticket for the Monitor's next REG; left out when empty
    ticket: str = wire(Token(TICKET_MAX), default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @classmethod
    def accepted(cls, text: str = "Autenticacion exitosa", ticket: str = "") -> "Auth":
        return cls("OK", safe_text(text, 400), ticket)

    @classmethod
    def refused(cls, reason: str) -> "Auth":
        return cls("KO", safe_text(reason, 400))


@MESSAGES.register
@dataclass(frozen=True)
class Key(Message):
    """Central -> Monitor right after every ``AUTH#OK``, and Monitor -> Engine on every new
    link: the CP's symmetric key (256 bits, base64url) and its version, with which the Engine
    seals every record it sends over Kafka (docs/security.md). Version 0 with no key: open
    mode, records travel in clear."""

    OPCODE: ClassVar[str] = "KEY"
    cp_id: str = wire(CP_ID)
    version: int = wire(Integer(0, 2**31 - 1))
    key: str = wire(Token(KEY_TEXT_LEN), default="", repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.version == 0) != (self.key == ""):
            raise LocalProtocolError("cannot build KEY: version 0 goes with no key, a version from 1 with a key")
        if self.key and len(self.key) != KEY_TEXT_LEN:
            raise LocalProtocolError(f"cannot build KEY: a key is {KEY_TEXT_LEN} base64url characters")

    @property
    def open_mode(self) -> bool:
        return self.version == 0


@MESSAGES.register
@dataclass(frozen=True)
class Rvk(Message):
    """Central -> Monitor (and the Monitor -> its Engine): the CP's keys were revoked; the CP is
    out of service until its Monitor authenticates again. Central closes the session after it."""

    OPCODE: ClassVar[str] = "RVK"
    cp_id: str = wire(CP_ID)
    reason: str = wire(Text(max_len=200))


# --- state of a registered CP (Monitor -> Central; ACK only, no answer frame) ----


@MESSAGES.register
@dataclass(frozen=True)
class Hb(Message):
    """Monitor -> Central, every second: sign of life of the Monitor of ``cp_id``."""

    OPCODE: ClassVar[str] = "HB"
    cp_id: str = wire(CP_ID)


@MESSAGES.register
@dataclass(frozen=True)
class Avr(Message):
    """Monitor -> Central: the Engine is faulty (KO, not answering, unreachable), once per change."""

    OPCODE: ClassVar[str] = "AVR"
    cp_id: str = wire(CP_ID)
    reason: str = wire(Text(max_len=200))


@MESSAGES.register
@dataclass(frozen=True)
class Rec(Message):
    """Monitor -> Central: the Engine recovered, once per change."""

    OPCODE: ClassVar[str] = "REC"
    cp_id: str = wire(CP_ID)


# --- health checks (Monitor -> Engine -> Monitor) -----------------------------------


@MESSAGES.register
@dataclass(frozen=True)
class Chk(Message):
    """Monitor -> Engine, every second: are you healthy? Tells the Engine its CP id."""

    OPCODE: ClassVar[str] = "CHK"
    cp_id: str = wire(CP_ID)


@MESSAGES.register
@dataclass(frozen=True)
class Health(Message):
    """Engine -> Monitor: the answer to ``CHK``."""

    OPCODE: ClassVar[str] = "HEALTH"
    status: str = wire(Choice("OK", "KO"))
    detail: str = wire(Text(max_len=200, allow_empty=True))

    @property
    def ok(self) -> bool:
        return self.status == "OK"


# --- supplies and commands (Central -> Monitor -> Engine, and back) ------------------

SESSION_ID = Identifier()


@MESSAGES.register
@dataclass(frozen=True)
class Sup(Message):
    """Central -> Monitor -> Engine: Central authorised this supply; will the CP take it?"""

    OPCODE: ClassVar[str] = "SUP"
    cp_id: str = wire(CP_ID)
    session_id: str = wire(SESSION_ID)
    driver_id: str = wire(Identifier())
    price_eur_kwh: Decimal = wire(PRICE)


@MESSAGES.register
@dataclass(frozen=True)
class Supr(Message):
    """Engine -> Monitor -> Central: the answer to ``SUP``."""

    OPCODE: ClassVar[str] = "SUPR"
    cp_id: str = wire(CP_ID)
    session_id: str = wire(SESSION_ID)
    status: str = wire(Choice("OK", "KO"))
    reason: str = wire(Text(max_len=200, allow_empty=True))

    @property
    def ok(self) -> bool:
        return self.status == "OK"


@MESSAGES.register
@dataclass(frozen=True)
class Stop(Message):
    """Central -> Monitor -> Engine: out of service; end any supply now."""

    OPCODE: ClassVar[str] = "STOP"
    cp_id: str = wire(CP_ID)


@MESSAGES.register
@dataclass(frozen=True)
class Resume(Message):
    """Central -> Monitor -> Engine: back in service."""

    OPCODE: ClassVar[str] = "RESUME"
    cp_id: str = wire(CP_ID)


@MESSAGES.register
@dataclass(frozen=True)
class Can(Message):
    """Central -> Monitor -> Engine: end (or never start) this supply; Central will not bill it
    further. Sent when Central gave up on a request the CP may have accepted late, and when a
    CP reports a supply Central no longer has open. The Engine ends the session if it holds
    it (reporting its figures with ``supply.end``) and refuses a later ``SUP`` for it."""

    OPCODE: ClassVar[str] = "CAN"
    cp_id: str = wire(CP_ID)
    session_id: str = wire(SESSION_ID)
    reason: str = wire(Text(max_len=200))


@MESSAGES.register
@dataclass(frozen=True)
class Fin(Message):
    """Central -> Monitor -> Engine: end this supply as the person at the CP would by unplugging
    (an RFID tag's ``END``, docs/mcsp.md). The Engine ends the session if it holds it, reporting
    its figures with ``supply.end`` (reason ``unplugged``), and ignores it otherwise."""

    OPCODE: ClassVar[str] = "FIN"
    cp_id: str = wire(CP_ID)
    session_id: str = wire(SESSION_ID)


@MESSAGES.register
@dataclass(frozen=True)
class Sq(Message):
    """Monitor -> Engine: which supply do you hold now? Answered with ``SST``."""

    OPCODE: ClassVar[str] = "SQ"
    cp_id: str = wire(CP_ID)


SUPPLY_PHASES = ("IDLE", "AUTHORISED", "SUPPLYING")
KWH = Number(minimum=Decimal(0), maximum=Decimal("99999999.9999"), places=4)  # DECIMAL(12,4)
SEQ = Integer(0, 2**31 - 1)  # INT


@MESSAGES.register
@dataclass(frozen=True)
class Sst(Message):
    """Engine -> Monitor (answering ``SQ``), then Monitor -> Central right after each ``AUTH#OK``:
    the supply the CP holds, with its figures so far. ``IDLE`` has an empty session id and
    zero figures. Central re-adopts a session it still has open, closes one the CP no longer
    holds, and cancels (``CAN``) one it does not know."""

    OPCODE: ClassVar[str] = "SST"
    cp_id: str = wire(CP_ID)
    phase: str = wire(Choice(*SUPPLY_PHASES))
    session_id: str = wire(OptionalIdentifier())
    seq: int = wire(SEQ)
    kwh: Decimal = wire(KWH)

    @classmethod
    def idle(cls, cp_id: str) -> "Sst":
        return cls(cp_id, "IDLE", "", Decimal(0), Decimal(0))


ERROR_CODES = ("BAD_MESSAGE", "UNKNOWN_OPCODE", "NOT_REGISTERED", "UNEXPECTED", "INTERNAL")


@MESSAGES.register
@dataclass(frozen=True)
class Err(Message):
    """Either side: the frame was received (ACKed) but its content could not be served."""

    OPCODE: ClassVar[str] = "ERR"
    code: str = wire(Choice(*ERROR_CODES))
    text: str = wire(Text(max_len=400, allow_empty=True))

    @classmethod
    def about(cls, error: MessageError) -> "Err":
        code = "UNKNOWN_OPCODE" if isinstance(error, UnknownOpcode) else "BAD_MESSAGE"
        return cls(code, safe_text(str(error.args[0] if error.args else error), 400))


__all__ = [
    "Auth",
    "Avr",
    "Can",
    "Chk",
    "Err",
    "Hb",
    "Health",
    "MESSAGES",
    "Message",
    "Rec",
    "Reg",
    "Registry",
    "Resume",
    "Sq",
    "Sst",
    "Stop",
    "Sup",
    "Supr",
    "SEPARATOR",
    "check_text",
    "safe_text",
    "wire",
]
