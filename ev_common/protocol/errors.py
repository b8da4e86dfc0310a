"""Typed protocol errors.

Two families, with a fixed meaning for the receiver:

* ``FrameError``: the bytes do not form a well-formed frame (bad LRC, oversize,
  control byte in DATA, invalid UTF-8, truncated...). The receiver answers NACK.
* ``MessageError``: the frame is well formed (it was ACKed) but its content is
  not a valid message (unknown opcode, wrong field count, invalid field). The
  receiver answers with an error message and the session goes on.

``LocalProtocolError`` is raised when *this* program tries to build a message
or frame that the protocol forbids (a ``#`` in a field, a negative price...):
the sender refuses to send it.

Every error keeps the offending bytes in ``raw`` (bounded: at most
``RAW_KEEP`` bytes are kept, so that an oversize frame does not pin memory).
"""

from __future__ import annotations

import re

RAW_KEEP = 128

# The secret fields of REG (the credential and the ticket), KEY (the key) and AUTH (the ticket):
# never kept in an error, which is logged (a malformed REG may still carry a good credential).
_SECRETS = re.compile(rb"(REG#[^#]*#[^#]*#[^#]*#|KEY#[^#]*#[^#]*#|AUTH#[^#]*#[^#]*#)[^\x03]+")


def _clip(raw: bytes) -> bytes:
    return _SECRETS.sub(rb"\1***", bytes(raw[:RAW_KEEP]))


class ProtocolError(Exception):
    """Base of every protocol error; ``raw`` holds the offending bytes."""

    def __init__(self, message: str, raw: bytes = b"") -> None:
        super().__init__(message)
        self.raw = _clip(raw)

    def __str__(self) -> str:  # the message plus a short view of the bytes
        base = super().__str__()
        return f"{base} (bytes: {self.raw!r})" if self.raw else base


# --- frame level: answered with NACK ---------------------------------------


class FrameError(ProtocolError):
    """The bytes are not a well-formed frame; the receiver answers NACK."""


class BadChecksum(FrameError):
    def __init__(self, raw: bytes, expected: int, got: int) -> None:
        super().__init__(f"LRC mismatch: computed 0x{expected:02x}, received 0x{got:02x}", raw)
        self.expected = expected
        self.got = got


class FrameTooLong(FrameError):
    def __init__(self, raw: bytes, limit: int) -> None:
        super().__init__(f"frame DATA exceeds {limit} bytes", raw)
        self.limit = limit


class EmptyFrame(FrameError):
    def __init__(self, raw: bytes) -> None:
        super().__init__("frame has empty DATA", raw)


class ControlByteInData(FrameError):
    def __init__(self, raw: bytes, byte: int) -> None:
        super().__init__(f"control byte 0x{byte:02x} inside frame DATA", raw)
        self.byte = byte


class TruncatedFrame(FrameError):
    """A frame was cut short: a new STX or the end of the stream came before ETX/LRC."""

    def __init__(self, raw: bytes, why: str) -> None:
        super().__init__(f"truncated frame: {why}", raw)


class InvalidEncoding(FrameError):
    def __init__(self, raw: bytes, detail: str) -> None:
        super().__init__(f"frame DATA is not valid UTF-8: {detail}", raw)


# --- message level: frame ACKed, answered with an error message -------------


class MessageError(ProtocolError):
    """A well-formed frame whose content is not a valid message."""

    def __init__(self, message: str, raw: bytes = b"", opcode: str | None = None) -> None:
        super().__init__(message, raw)
        self.opcode = opcode


class UnknownOpcode(MessageError):
    def __init__(self, raw: bytes, opcode: str) -> None:
        super().__init__(f"unknown opcode {opcode!r}", raw, opcode)


class FieldCountError(MessageError):
    def __init__(self, raw: bytes, opcode: str, expected: int, got: int, minimum: int | None = None) -> None:
        takes = f"{minimum} to {expected}" if minimum is not None and minimum != expected else str(expected)
        super().__init__(f"{opcode} takes {takes} field(s), got {got}", raw, opcode)
        self.expected = expected
        self.got = got


class InvalidField(MessageError):
    def __init__(self, raw: bytes, opcode: str | None, field: str, reason: str) -> None:
        where = f"{opcode}.{field}" if opcode else field
        super().__init__(f"invalid {where}: {reason}", raw, opcode)
        self.field = field
        self.reason = reason


# --- our own misuse ---------------------------------------------------------


class LocalProtocolError(ProtocolError, ValueError):
    """This program tried to build something the protocol forbids."""
