"""MCSP messages: one frozen dataclass per message, validated on construction.

Requests (station -> server): ``StartRequest``, ``EndRequest``.
Answers (server -> station): ``StartOk``, ``EndOk``, ``ErrorAnswer``.

``to_bytes()`` gives the message as sent: the start line, ``Content-Length`` (the number
of header lines that follow it) and the headers in the drawn order, each line ending in
CRLF. ``build(action, headers)`` is the receiver's side: it turns a start line's action
and its parsed headers into a message, raising ``LocalProtocolError`` for a missing
header or a bad value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar, Union

from .errors import DEFAULT_MESSAGES, LocalProtocolError, show
from .fields import (
    AMOUNT_PLACES,
    ENERGY_PLACES,
    check_code,
    check_decimal,
    check_id,
    check_key,
    check_message,
    round_decimal,
)

PROTOCOL = "MMETERING"
VERSION = "1.0"
NEWLINE = b"\r\n"

# header names as sent; the receiver matches them case-insensitively
CONTENT_LENGTH = "Content-Length"
NAME = "Name"
KEY = "Key"
SESSION_ID = "Session-Id"
ENERGY = "Energy-kWh"
AMOUNT = "Amount-EUR"
MESSAGE = "Message"
CODE = "Code"

HEADERS = {h.lower(): h for h in (CONTENT_LENGTH, NAME, KEY, SESSION_ID, ENERGY, AMOUNT, MESSAGE, CODE)}
"""Every header name this protocol knows, by its lower-case form."""

_WIRE_DECIMAL = re.compile(r"[0-9]{1,8}(?:\.[0-9]{1,8})?")


def _encode(action: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{PROTOCOL}/{VERSION} {action}", f"{CONTENT_LENGTH}: {len(headers)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return "".join(line + "\r\n" for line in lines).encode("ascii")


@dataclass(frozen=True, slots=True)
class StartRequest:
    """``MMETERING/1.0 START``: a tag was presented at station ``name``."""

    ACTION: ClassVar[str] = "START"
    name: str
    key: str

    def __post_init__(self) -> None:
        check_id(NAME, self.name)
        object.__setattr__(self, "key", check_key(self.key))

    def to_bytes(self) -> bytes:
        return _encode(self.ACTION, [(NAME, self.name), (KEY, self.key)])


@dataclass(frozen=True, slots=True)
class EndRequest:
    """``MMETERING/1.0 END``: the session ``session_id`` at station ``name`` ends."""

    ACTION: ClassVar[str] = "END"
    name: str
    session_id: str
    key: str

    def __post_init__(self) -> None:
        check_id(NAME, self.name)
        check_id(SESSION_ID, self.session_id)
        object.__setattr__(self, "key", check_key(self.key))

    def to_bytes(self) -> bytes:
        return _encode(self.ACTION, [(NAME, self.name), (SESSION_ID, self.session_id), (KEY, self.key)])


@dataclass(frozen=True, slots=True)
class StartOk:
    """``MMETERING/1.0 OK`` to a START: the session opened, with this id."""

    ACTION: ClassVar[str] = "OK"
    session_id: str

    def __post_init__(self) -> None:
        check_id(SESSION_ID, self.session_id)

    def to_bytes(self) -> bytes:
        return _encode(self.ACTION, [(SESSION_ID, self.session_id)])


@dataclass(frozen=True, slots=True)
class EndOk:
    """``MMETERING/1.0 OK`` to an END: the session closed; its energy (kWh, 4 places) and
    amount (EUR, to the cent) were booked. Both ``None``: the bare OK of the drawing,
    a closed session whose figures the server does not report."""

    ACTION: ClassVar[str] = "OK"
    energy_kwh: Decimal | None = None
    amount_eur: Decimal | None = None

    def __post_init__(self) -> None:
        if (self.energy_kwh is None) != (self.amount_eur is None):
            raise LocalProtocolError(f"{ENERGY} and {AMOUNT} go together: give both or neither")
        if self.energy_kwh is not None:
            object.__setattr__(self, "energy_kwh", check_decimal(ENERGY, self.energy_kwh, ENERGY_PLACES))
            object.__setattr__(self, "amount_eur", check_decimal(AMOUNT, self.amount_eur, AMOUNT_PLACES))

    @classmethod
    def rounded(cls, energy_kwh: object, amount_eur: object) -> "EndOk":
        """The answer for figures with more places: rounded half up to 4 and 2 places."""
        return cls(round_decimal(energy_kwh, ENERGY_PLACES), round_decimal(amount_eur, AMOUNT_PLACES))

    def to_bytes(self) -> bytes:
        if self.energy_kwh is None:
            return _encode(self.ACTION, [])
        return _encode(self.ACTION, [(ENERGY, str(self.energy_kwh)), (AMOUNT, str(self.amount_eur))])


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """``MMETERING/1.0 ERROR``: the request failed; ``code`` says why (``ErrorCode``)."""

    ACTION: ClassVar[str] = "ERROR"
    code: int
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", check_code(self.code))
        check_message(self.message)

    @classmethod
    def for_code(cls, code: int, message: str | None = None) -> "ErrorAnswer":
        """The answer for ``code``, with its default message unless one is given."""
        return cls(code, message if message is not None else DEFAULT_MESSAGES.get(code, "Error"))

    def to_bytes(self) -> bytes:
        return _encode(self.ACTION, [(MESSAGE, self.message), (CODE, str(self.code))])


Request = Union[StartRequest, EndRequest]
Answer = Union[StartOk, EndOk, ErrorAnswer]
Message = Union[Request, Answer]

REQUEST_ACTIONS = {"START": 2, "END": 3}
"""Request actions and the number of header lines each carries."""
ANSWER_ACTIONS = {"OK": (0, 1, 2), "ERROR": (2,)}
"""Answer actions and the header counts each may carry."""

ALLOWED = {
    "START": (NAME, KEY),
    "END": (NAME, SESSION_ID, KEY),
    "OK": (SESSION_ID, ENERGY, AMOUNT),
    "ERROR": (MESSAGE, CODE),
}
"""The headers (besides Content-Length) each action may carry."""


def _decimal(field: str, value: str) -> str:
    if not _WIRE_DECIMAL.fullmatch(value):
        raise LocalProtocolError(f"{field} must be digits with an optional decimal point, not {show(value)}")
    return value


def build(action: str, headers: dict[str, str]) -> Message:
    """The message for ``action`` from its headers (canonical name -> value)."""

    def need(*names: str) -> list[str]:
        missing = [n for n in names if n not in headers]
        if missing:
            raise LocalProtocolError(f"{action} lacks the header {missing[0]}")
        return [headers[n] for n in names]

    if action == "START":
        return StartRequest(*need(NAME, KEY))
    if action == "END":
        return EndRequest(*need(NAME, SESSION_ID, KEY))
    if action == "ERROR":
        message, code = need(MESSAGE, CODE)
        return ErrorAnswer(check_code(code), message)
    if action == "OK":
        present = set(headers)
        if present == {SESSION_ID}:
            return StartOk(headers[SESSION_ID])
        if present == {ENERGY, AMOUNT}:
            return EndOk(_decimal(ENERGY, headers[ENERGY]), _decimal(AMOUNT, headers[AMOUNT]))
        if not present:
            return EndOk()
        raise LocalProtocolError(f"OK carries {SESSION_ID}, or {ENERGY} and {AMOUNT}, or nothing")
    raise LocalProtocolError(f"unknown action {show(action)}")
