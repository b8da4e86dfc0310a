"""MCSP errors: the answer codes, the local error, and the receiver's error event.

* ``ErrorCode``: every code an ``MMETERING/1.0 ERROR`` answer carries (docs/mcsp.md).
* ``LocalProtocolError`` (a ``ValueError``): *this* program tried to build a message the
  protocol forbids (a bad Key, a Name with a space...). Nothing is sent.
* ``ReceiveError``: an *event*, not an exception. The receiver returns it from
  ``next_event()`` when the peer's bytes are not a valid message; it carries the code and
  the message to answer with (``.answer()``) and, clipped, the offending bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .messages import ErrorAnswer

RAW_KEEP = 64
"""Bytes of the offending input a ``ReceiveError`` keeps."""

MESSAGE_MAX = 200
"""Longest ``Message`` of an ERROR answer, in characters."""


class ErrorCode(IntEnum):
    """The codes of ``MMETERING/1.0 ERROR`` answers."""

    BAD_REQUEST = 400  # malformed message: framing, headers, values, limits
    KEY_NOT_REGISTERED = 401  # the drawn error: no tag with this UID
    KEY_DISABLED = 403  # the tag or its account is disabled
    NOT_FOUND = 404  # unknown station (Name) or session (Session-Id)
    CONFLICT = 409  # station not available or busy
    CP_UNREACHABLE = 503  # Central cannot reach the charging point
    VERSION_NOT_SUPPORTED = 505  # start line names a version other than 1.0


DEFAULT_MESSAGES: dict[int, str] = {
    ErrorCode.BAD_REQUEST: "Malformed request",
    ErrorCode.KEY_NOT_REGISTERED: "Key is not registered",
    ErrorCode.KEY_DISABLED: "Key or account is disabled",
    ErrorCode.NOT_FOUND: "Unknown station or session",
    ErrorCode.CONFLICT: "Station is not available",
    ErrorCode.CP_UNREACHABLE: "Charging point cannot be reached",
    ErrorCode.VERSION_NOT_SUPPORTED: "Only MMETERING/1.0 is supported",
}


class LocalProtocolError(ValueError):
    """A message this program tried to build breaks the protocol; it is not sent."""


def show(value: object, limit: int = 32) -> str:
    """A short, ASCII-only view of a value, safe to put in an error message."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class ReceiveError:
    """The peer sent something that is not a valid MCSP message (an event).

    ``code`` is 400 or 505; ``message`` is printable ASCII of at most ``MESSAGE_MAX``
    characters, ready to be the ``Message`` header of the answer; ``raw`` keeps at most
    ``RAW_KEEP`` bytes of the offending input. The receiver is finished after it: the
    server sends ``answer()`` and closes the connection.
    """

    code: int
    message: str
    raw: bytes = b""

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", self.message[:MESSAGE_MAX])
        object.__setattr__(self, "raw", bytes(self.raw[:RAW_KEEP]))

    def answer(self) -> "ErrorAnswer":
        from .messages import ErrorAnswer

        return ErrorAnswer(code=self.code, message=self.message)
