"""Field types: how one ``#``-separated field is validated, parsed and formatted.

Every type refuses ``#`` and bytes below 0x20 (the protocol's rule for every
field). ``parse`` turns wire text into a Python value; ``check`` validates and
normalises a Python value given to a message constructor. Both raise
``ValueError`` with a reason a person can read.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

_FORBIDDEN = re.compile(r"[#\x00-\x1f]")


def check_text(value: str) -> str:
    """The rule every field obeys: no ``#``, no byte below 0x20."""
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    m = _FORBIDDEN.search(value)
    if m is not None:
        raise ValueError(f"contains forbidden character {m.group()!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"is not encodable as UTF-8 ({exc.reason})") from None
    return value


def safe_text(value: str, limit: int = 200) -> str:
    """Make any text fit a field: forbidden characters become '?', length is capped."""
    return _FORBIDDEN.sub("?", str(value))[:limit]


class FieldType:
    """Base: free text, bounded length."""

    description = "text"

    def __init__(self, max_len: int = 256, allow_empty: bool = False) -> None:
        self.max_len = max_len
        self.allow_empty = allow_empty

    def parse(self, text: str) -> Any:
        return self.check(text)

    def check(self, value: Any) -> Any:
        value = check_text(value)
        if not value and not self.allow_empty:
            raise ValueError("must not be empty")
        if len(value) > self.max_len:
            raise ValueError(f"longer than {self.max_len} characters")
        return value

    def format(self, value: Any) -> str:
        return str(value)


class Text(FieldType):
    pass


class Identifier(FieldType):
    """An id such as a CP or driver id: ``[A-Za-z0-9_-]{1,64}``."""

    description = "id [A-Za-z0-9_-]{1,64}"
    _PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")

    def __init__(self) -> None:
        super().__init__(max_len=64)

    def check(self, value: Any) -> str:
        value = check_text(value)
        if not self._PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not an id of 1-64 characters from A-Z a-z 0-9 _ -")
        return value


class OptionalIdentifier(Identifier):
    """An id, or empty (for "none")."""

    description = "id [A-Za-z0-9_-]{1,64} or empty"

    def check(self, value: Any) -> str:
        return "" if check_text(value) == "" else super().check(value)


class Choice(FieldType):
    """One of a fixed set of words."""

    def __init__(self, *choices: str) -> None:
        super().__init__(max_len=max(len(c) for c in choices))
        self.choices = tuple(choices)
        self.description = "|".join(choices)

    def check(self, value: Any) -> str:
        value = check_text(value)
        if value not in self.choices:
            raise ValueError(f"{value!r} is not one of {', '.join(self.choices)}")
        return value


class Number(FieldType):
    """A decimal number (``Decimal``), finite, within [minimum, maximum]."""

    _PATTERN = re.compile(r"-?\d{1,12}(\.\d{1,9})?")

    def __init__(self, minimum: Decimal | None = None, maximum: Decimal | None = None,
                 places: int = 9) -> None:
        super().__init__(max_len=24)
        self.minimum = minimum
        self.maximum = maximum
        self.places = places
        bounds = []
        if minimum is not None:
            bounds.append(f">= {minimum}")
        if maximum is not None:
            bounds.append(f"<= {maximum}")
        self.description = f"decimal number, at most {places} decimal places" + (
            " " + " and ".join(bounds) if bounds else "")

    def parse(self, text: str) -> Decimal:
        check_text(text)
        if not self._PATTERN.fullmatch(text):
            raise ValueError(f"{text!r} is not a decimal number such as 0.48")
        return self.check(Decimal(text))

    def check(self, value: Any) -> Decimal:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            number = value if isinstance(value, Decimal) else Decimal(str(value))
        except (InvalidOperation, ValueError):
            raise ValueError(f"{value!r} is not a number") from None
        if not number.is_finite():
            raise ValueError(f"{value!r} is not a finite number")
        if self.minimum is not None and number < self.minimum:
            raise ValueError(f"{number} is below {self.minimum}")
        if self.maximum is not None and number > self.maximum:
            raise ValueError(f"{number} is above {self.maximum}")
        if not self._PATTERN.fullmatch(format(number, "f")):
            raise ValueError(f"{number} has too many digits (at most 12 before and 9 after the point)")
        if -number.as_tuple().exponent > self.places and number != number.quantize(Decimal(1).scaleb(-self.places)):
            raise ValueError(f"{number} has more than {self.places} decimal places")
        return number

    def format(self, value: Decimal) -> str:
        return format(value, "f")


class Integer(Number):
    """A whole number (``int``) within [minimum, maximum]."""

    def __init__(self, minimum: int, maximum: int) -> None:
        super().__init__(Decimal(minimum), Decimal(maximum), places=0)
        self.description = f"whole number >= {minimum} and <= {maximum}"

    def parse(self, text: str) -> int:
        if not text.lstrip("-").isdigit():
            raise ValueError(f"{text!r} is not a whole number")
        return super().parse(text)

    def check(self, value: Any) -> int:
        return int(super().check(value))

    def format(self, value: int) -> str:
        return str(value)


class Token(FieldType):
    """A secret such as a CP's credential or key, in base64url: ``[A-Za-z0-9_-]{0,max}`` (empty
    for "none"). Never shown: messages keep such fields out of their repr."""

    description = "token [A-Za-z0-9_-]"
    _PATTERN = re.compile(r"[A-Za-z0-9_-]*")

    def __init__(self, max_len: int = 128) -> None:
        super().__init__(max_len=max_len, allow_empty=True)

    def check(self, value: Any) -> str:
        value = super().check(value)
        if not self._PATTERN.fullmatch(value):
            raise ValueError("is not base64url text (A-Z a-z 0-9 _ -)")
        return value
