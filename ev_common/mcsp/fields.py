"""MCSP field rules: each checker takes a value and returns it normalised, or raises
``LocalProtocolError`` naming the field. The same checks run when a message is built
by this program and when one is parsed from the wire (then they become 400 answers).
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from .errors import MESSAGE_MAX, LocalProtocolError, show

ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A CP id (``Name``) or a session id (``Session-Id``)."""

KEY_BYTES = (4, 7, 8, 10)
"""UID lengths a Key may have: 4, 7, 10 (ISO 14443 tags) and 8 (the spec's example)."""

_HEX = re.compile(r"[0-9A-Fa-f]+")
_HEX_SEPARATED = re.compile(r"[0-9A-Fa-f]{2}([:\- ])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2})*")

VALUE_LIMIT = Decimal(10) ** 8
"""Energy and amounts are below 10^8 (as in the project's database, DECIMAL(12,4))."""
ENERGY_PLACES = 4
AMOUNT_PLACES = 2

_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_CODE = re.compile(r"[1-9][0-9]{2}")


def check_id(field: str, value: object) -> str:
    if not isinstance(value, str) or not ID.fullmatch(value):
        raise LocalProtocolError(f"{field} must be 1 to 64 of A-Z a-z 0-9 _ -, not {show(value)}")
    return value


def check_key(value: object) -> str:
    """A tag UID: hex, 4/7/8/10 bytes, plain or with one separator (``:``, ``-`` or space)
    between every byte; returned upper case without separators."""
    if isinstance(value, str) and (_HEX.fullmatch(value) or _HEX_SEPARATED.fullmatch(value)):
        digits = re.sub(r"[:\- ]", "", value).upper()
        if len(digits) % 2 == 0 and len(digits) // 2 in KEY_BYTES:
            return digits
    raise LocalProtocolError(f"Key must be a tag UID of 4, 7, 8 or 10 bytes in hex, not {show(value)}")


def masked(key: str) -> str:
    """A tag UID as logs and screens show it: its last four hex digits (``...E73A``). The UID is
    a key: whoever knows it can charge to its account."""
    return f"...{key[-4:]}"


def check_decimal(field: str, value: object, places: int) -> Decimal:
    """A finite decimal, 0 <= value < 10^8, with at most ``places`` decimal places."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, float, str)):
        raise LocalProtocolError(f"{field} must be a decimal number, not {show(value)}")
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, ValueError):
        raise LocalProtocolError(f"{field} must be a decimal number, not {show(value)}") from None
    if not number.is_finite() or number < 0 or number >= VALUE_LIMIT:
        raise LocalProtocolError(f"{field} must be from 0 to below 10^8, not {show(value)}")
    exponent = number.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -places:
        raise LocalProtocolError(f"{field} has more than {places} decimal places: {show(value)}")
    return number.quantize(Decimal(1).scaleb(-places)).copy_abs()  # -0 is sent as 0


def round_decimal(value: object, places: int) -> Decimal:
    """``value`` rounded half up to ``places`` (for callers whose figures carry more)."""
    try:
        return Decimal(repr(value) if isinstance(value, float) else value).quantize(
            Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    except (InvalidOperation, ValueError, TypeError, ArithmeticError):
        raise LocalProtocolError(f"not a decimal number: {show(value)}") from None


def check_message(value: object) -> str:
    """The text of an ERROR answer: 1 to 200 printable ASCII characters, no outer spaces."""
    if (not isinstance(value, str) or not value or len(value) > MESSAGE_MAX
            or not _PRINTABLE.fullmatch(value) or value != value.strip(" ")):
        raise LocalProtocolError(
            f"Message must be 1 to {MESSAGE_MAX} printable ASCII characters, not {show(value)}")
    return value


def check_code(value: object) -> int:
    """An answer code: a three-digit number from 100 to 999."""
    if isinstance(value, str) and _CODE.fullmatch(value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 999:
        return int(value)
    raise LocalProtocolError(f"Code must be a number from 100 to 999, not {show(value)}")
