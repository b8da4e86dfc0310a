"""Framing: bytes <-> frames and control bytes. No sockets here (sans-I/O).

Wire format (see docs/protocol.md)::

    +-----+---------------------------+-----+-----+
    | STX | DATA (UTF-8, 1..4096 B)   | ETX | LRC |
    +-----+---------------------------+-----+-----+
     0x02   OPCODE#field1#...#fieldN   0x03  XOR of every DATA byte

    Outside a frame, single bytes: ENQ 0x05, ACK 0x06, NACK 0x15, EOT 0x04.

DATA never holds a byte below 0x20, so ETX always ends it; the LRC byte that
follows may take any value. Any other byte outside a frame is noise and is
discarded (resync on the next STX).

``FrameDecoder`` is fed arbitrary chunks and hands out events one at a time::

    decoder.feed(chunk)
    while (event := decoder.next_event()) is not NEED_DATA:
        ...   # Frame or Control

``next_event`` raises a ``FrameError`` for a malformed frame; the decoder has
already resynchronised, so the caller answers NACK and calls it again. Memory
is bounded: a frame in assembly never holds more than ``MAX_DATA`` bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from .errors import (
    BadChecksum,
    ControlByteInData,
    EmptyFrame,
    FrameTooLong,
    InvalidEncoding,
    LocalProtocolError,
    TruncatedFrame,
)

STX: Final = 0x02
ETX: Final = 0x03
EOT: Final = 0x04
ENQ: Final = 0x05
ACK: Final = 0x06
NACK: Final = 0x15

MAX_DATA: Final = 4096
"""Largest DATA, in bytes, that a frame may carry."""


class ControlByte(IntEnum):
    """The single bytes that travel outside frames."""

    ENQ = ENQ
    ACK = ACK
    NACK = NACK
    EOT = EOT


@dataclass(frozen=True, slots=True)
class Frame:
    """A well-formed frame whose LRC matched; ``text`` is its DATA decoded."""

    text: str


@dataclass(frozen=True, slots=True)
class Control:
    """A control byte received outside any frame."""

    byte: ControlByte


class _NeedData:
    _instance = None

    def __new__(cls):  # a singleton sentinel, like h11's NEED_DATA
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()

_BELOW_0X20 = re.compile(rb"[\x00-\x1f]")
_IDLE_INTEREST = re.compile(rb"[\x02\x04\x05\x06\x15]")
_SKIP_INTEREST = re.compile(rb"[\x02\x03]")


def lrc(data: bytes) -> int:
    """The LRC of DATA: the XOR of all its bytes."""
    value = 0
    for b in data:
        value ^= b
    return value


def encode_frame(data: bytes) -> bytes:
    """STX DATA ETX LRC. Refuses (``LocalProtocolError``) what no receiver would accept."""
    if not data:
        raise LocalProtocolError("refusing to send a frame with empty DATA")
    if len(data) > MAX_DATA:
        raise LocalProtocolError(f"refusing to send {len(data)} bytes of DATA (limit {MAX_DATA})", data)
    bad = _BELOW_0X20.search(data)
    if bad is not None:
        raise LocalProtocolError(f"refusing to send control byte 0x{data[bad.start()]:02x} in DATA", data)
    return b"\x02" + data + b"\x03" + bytes((lrc(data),))


# decoder states
_IDLE, _DATA, _LRC, _SKIP, _SKIP_LRC = range(5)


class FrameDecoder:
    """Streaming decoder: chunks in, ``Frame``/``Control`` events out (see module doc)."""

    def __init__(self, max_data: int = MAX_DATA) -> None:
        self.max_data = max_data
        self._buf = bytearray()  # unconsumed input
        self._pos = 0
        self._state = _IDLE
        self._data = bytearray()  # DATA of the frame being assembled (<= max_data)
        self.discarded = 0  # noise bytes dropped outside frames, for diagnostics

    # -- input --------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += chunk

    @property
    def in_frame(self) -> bool:
        """True while a frame has started and not ended (useful at end of stream)."""
        return self._state in (_DATA, _LRC)

    @property
    def idle(self) -> bool:
        """True between frames with nothing held: the next byte starts afresh."""
        return self._state == _IDLE and self._pos == len(self._buf)

    @property
    def pending(self) -> int:
        """Bytes held by the decoder: unconsumed input plus the frame in assembly."""
        return len(self._buf) - self._pos + len(self._data)

    def close(self) -> None:
        """The stream ended. Raises ``TruncatedFrame`` if it ended inside a frame."""
        if self.in_frame:
            partial = b"\x02" + bytes(self._data) + (b"\x03" if self._state == _LRC else b"")
            self._reset()
            raise TruncatedFrame(partial, "stream ended inside a frame")

    # -- output -------------------------------------------------------------

    def next_event(self) -> Frame | Control | _NeedData:
        buf = self._buf
        while self._pos < len(buf):
            state = self._state
            if state == _IDLE:
                m = _IDLE_INTEREST.search(buf, self._pos)
                if m is None:
                    self.discarded += len(buf) - self._pos
                    self._pos = len(buf)
                    break
                self.discarded += m.start() - self._pos
                byte = buf[m.start()]
                self._pos = m.start() + 1
                if byte == STX:
                    self._state = _DATA
                    continue
                return Control(ControlByte(byte))
            if state == _DATA:
                m = _BELOW_0X20.search(buf, self._pos)
                end = len(buf) if m is None else m.start()
                room = self.max_data - len(self._data)
                if end - self._pos > room:
                    self._data += buf[self._pos : self._pos + room]
                    self._pos += room
                    raw = b"\x02" + bytes(self._data)
                    self._data.clear()
                    self._state = _SKIP
                    raise FrameTooLong(raw, self.max_data)
                self._data += buf[self._pos : end]
                self._pos = end
                if m is None:
                    break
                byte = buf[end]
                self._pos = end + 1
                if byte == ETX:
                    self._state = _LRC
                    continue
                raw = b"\x02" + bytes(self._data) + bytes((byte,))
                self._data.clear()
                if byte == STX:  # a new frame began before this one ended
                    self._state = _DATA
                    raise TruncatedFrame(raw[:-1], "STX before ETX")
                self._state = _SKIP
                raise ControlByteInData(raw, byte)
            if state == _LRC:
                got = buf[self._pos]
                self._pos += 1
                data = bytes(self._data)
                self._reset()
                return self._finish(data, got)
            if state == _SKIP:
                m = _SKIP_INTEREST.search(buf, self._pos)
                if m is None:
                    self._pos = len(buf)
                    break
                self._pos = m.start() + 1
                self._state = _DATA if buf[m.start()] == STX else _SKIP_LRC
                continue
            # _SKIP_LRC: drop the LRC byte of the frame being skipped
            self._pos += 1
            self._state = _IDLE
        return NEED_DATA

    def _reset(self) -> None:
        self._data.clear()
        self._state = _IDLE

    @staticmethod
    def _finish(data: bytes, got: int) -> Frame:
        raw = b"\x02" + data + b"\x03" + bytes((got,))
        expected = lrc(data)
        if expected != got:
            raise BadChecksum(raw, expected, got)
        if not data:
            raise EmptyFrame(raw)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEncoding(raw, str(exc)) from None
        return Frame(text)
