"""MCSP receivers: bytes in, messages out (sans-I/O, in the manner of h11).

``RequestReceiver`` reads what a station sends (the server's side); ``AnswerReceiver``
reads what the server sends (the station's side)::

    receiver.feed(chunk)            # b"" means: the stream ended
    while True:
        event = receiver.next_event()
        if event is NEED_DATA or event is CLOSED:
            break
        if isinstance(event, ReceiveError):
            send(event.answer().to_bytes()); close(); break
        handle(event)               # StartRequest, EndRequest / StartOk, EndOk, ErrorAnswer

Framing (docs/mcsp.md): lines end in LF or CRLF. A message is a start line
``MMETERING/1.0 <ACTION>``, then ``Content-Length: N``, then exactly N header lines; it
ends after the N-th. Empty lines between messages are skipped. A request must carry
Content-Length as its first header. An answer without it ends at the first empty line,
at the next start line, or at the end of the stream.

A ``ReceiveError`` is final: the receiver returns it again on every later call and drops
further input; the server answers it and closes the connection. Memory is bounded: the
receiver never holds more than one incomplete line (``MAX_LINE`` bytes) besides input
it has not been asked to parse yet.
"""

from __future__ import annotations

import re
from typing import Final

from .errors import ErrorCode, LocalProtocolError, ReceiveError, show
from .messages import (
    ALLOWED,
    ANSWER_ACTIONS,
    CONTENT_LENGTH,
    HEADERS,
    PROTOCOL,
    REQUEST_ACTIONS,
    VERSION,
    Message,
    build,
)

MAX_LINE: Final = 256
"""Longest line, its line ending included, in bytes."""
MAX_HEADERS: Final = 16
"""Most header lines a message may carry (Content-Length's largest value)."""
MAX_MESSAGE: Final = 1024
"""Largest message in bytes, empty lines before its start line included."""


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
"""``next_event()``: no complete message yet; feed more bytes."""
CLOSED: Final = _Sentinel("CLOSED")
"""``next_event()``: the stream ended (``feed(b"")``) between messages; nothing more comes."""

_START_LINE = re.compile(rb"MMETERING/([0-9]+\.[0-9]+)(?: (.*))?")
_HEADER_LINE = re.compile(rb"([A-Za-z][A-Za-z0-9-]*):[ ]*(.*?)[ ]*")
_COUNT = re.compile(rb"0|[1-9][0-9]{0,2}")
_NOT_TEXT = re.compile(rb"[^\x20-\x7e]")
_START_PREFIX = PROTOCOL.encode() + b"/"

BAD = ErrorCode.BAD_REQUEST


class _Fail(Exception):
    def __init__(self, code: int, message: str, raw: bytes = b"") -> None:
        super().__init__(message)
        self.error = ReceiveError(int(code), message, raw)


class _Receiver:
    """The state machine shared by both receivers (see the module doc)."""

    _ACTIONS: dict
    _OTHER: dict
    _OTHER_SIDE: str
    _NEEDS_LENGTH: bool

    def __init__(self, *, max_line: int = MAX_LINE, max_headers: int = MAX_HEADERS,
                 max_message: int = MAX_MESSAGE) -> None:
        self.max_line = max_line
        self.max_headers = max_headers
        self.max_message = max_message
        self._buf = bytearray()
        self._eof = False
        self._error: ReceiveError | None = None
        self._new_message()

    def _new_message(self) -> None:
        self._action: str | None = None  # None: waiting for a start line
        self._count: int | None = None  # header lines still to come (Content-Length)
        self._headers: dict[str, str] = {}
        self._first = True  # the next header line is the first one
        self._size = 0  # bytes of the message so far

    # -- input ---------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Add bytes received; ``b""`` says the stream ended."""
        if self._error is not None:
            return
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("bytes fed after the end of the stream")
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes fed but not yet parsed."""
        return len(self._buf)

    @property
    def error(self) -> ReceiveError | None:
        """The error that finished this receiver, if any."""
        return self._error

    @property
    def in_message(self) -> bool:
        """True between a start line and the end of its message."""
        return self._action is not None

    # -- output --------------------------------------------------------------

    def next_event(self):
        """The next message, ``NEED_DATA``, ``CLOSED`` or a (final) ``ReceiveError``."""
        if self._error is not None:
            return self._error
        try:
            return self._next()
        except _Fail as fail:
            self._error = fail.error
            self._buf.clear()
            return self._error

    def _next(self):
        while True:
            line = self._peek_line()
            if line is None:
                if not self._eof:
                    return NEED_DATA
                if self._action is None:
                    return CLOSED
                if self._count is None and not self._NEEDS_LENGTH:
                    return self._finish()
                raise _Fail(BAD, "the stream ended inside a message")
            text, size = line
            if self._action is None:
                self._take(size)
                if text:
                    self._start(text)
                continue
            event = self._header(text, size)
            if event is not None:
                return event

    def _peek_line(self) -> tuple[bytes, int] | None:
        """The next complete line (without its ending) and its size, not consumed."""
        buf = self._buf
        end = buf.find(b"\n", 0, self.max_line)
        if end < 0:
            if len(buf) >= self.max_line:
                raise _Fail(BAD, f"line longer than {self.max_line} bytes", bytes(buf[: self.max_line]))
            if not (self._eof and buf):
                return None
            size = len(buf)  # the last line of the stream may lack its ending
            text = bytes(buf)
        else:
            size = end + 1
            text = bytes(buf[:end])
            if text.endswith(b"\r"):
                text = text[:-1]
        bad = _NOT_TEXT.search(text)
        if bad is not None:
            byte = text[bad.start()]
            kind = "non-ASCII byte" if byte >= 0x80 else "control byte"
            raise _Fail(BAD, f"{kind} 0x{byte:02x} in a line", text)
        return text, size

    def _take(self, size: int) -> None:
        self._size += size
        if self._size > self.max_message:
            raise _Fail(BAD, f"message longer than {self.max_message} bytes", bytes(self._buf[:size]))
        del self._buf[:size]

    def _start(self, line: bytes) -> None:
        m = _START_LINE.fullmatch(line.rstrip(b" "))
        if m is None:
            raise _Fail(BAD, f"not an {PROTOCOL}/{VERSION} start line", line)
        version = m.group(1).decode()
        if version != VERSION:
            raise _Fail(ErrorCode.VERSION_NOT_SUPPORTED,
                        f"{PROTOCOL}/{version[:16]} is not supported, only {PROTOCOL}/{VERSION}", line)
        action = (m.group(2) or b"").decode()
        if action not in self._ACTIONS:
            if action in self._OTHER:
                raise _Fail(BAD, f"{action} is {self._OTHER_SIDE}", line)
            raise _Fail(BAD, f"unknown action {show(action)}", line)
        self._action = action

    def _header(self, line: bytes, size: int):
        """Handle one line inside a message; return the message if it is complete."""
        action = self._action
        lengthless = self._count is None and not self._first
        if not line or line.startswith(_START_PREFIX):
            what = "an empty line" if not line else "a new start line"
            if self._count is not None:
                raise _Fail(BAD, f"Content-Length says {len(self._headers) + self._count} header lines, "
                                 f"{what} came after {len(self._headers)}", line)
            if self._NEEDS_LENGTH:
                raise _Fail(BAD, f"{action} lacks Content-Length", line)
            if not line:
                self._take(size)
            return self._finish()  # an answer without Content-Length ends here
        self._take(size)
        m = _HEADER_LINE.fullmatch(line)
        if m is None:
            raise _Fail(BAD, "malformed header line", line)
        raw_name, value = m.group(1).decode(), m.group(2).decode()
        name = HEADERS.get(raw_name.lower())
        if name == CONTENT_LENGTH:
            if not self._first:
                kind = "repeated header" if self._count is not None else "not the first header"
                raise _Fail(BAD, f"Content-Length is {kind}", line)
            self._first = False
            self._count = self._content_length(m.group(2), line)
            return self._finish() if self._count == 0 else None
        if self._first:
            self._first = False
            if self._NEEDS_LENGTH:
                raise _Fail(BAD, f"{action} lacks Content-Length: it must be the first header", line)
            lengthless = True
        if name is None:
            raise _Fail(BAD, f"unknown header {show(raw_name)}", line)
        if name not in ALLOWED[action]:
            raise _Fail(BAD, f"header {name} does not belong in {action}", line)
        if name in self._headers:
            raise _Fail(BAD, f"repeated header {name}", line)
        self._headers[name] = value
        if lengthless:
            if len(self._headers) > self.max_headers:
                raise _Fail(BAD, f"more than {self.max_headers} header lines", line)
            return None
        self._count -= 1
        return self._finish() if self._count == 0 else None

    def _content_length(self, value: bytes, line: bytes) -> int:
        if not _COUNT.fullmatch(value):
            raise _Fail(BAD, f"Content-Length must be a number of header lines, not {show(value.decode())}", line)
        count = int(value)
        if count > self.max_headers:
            raise _Fail(BAD, f"Content-Length {count} exceeds the limit of {self.max_headers} header lines", line)
        allowed = self._ACTIONS[self._action]
        if count not in (allowed if isinstance(allowed, tuple) else (allowed,)):
            want = " or ".join(map(str, allowed)) if isinstance(allowed, tuple) else str(allowed)
            raise _Fail(BAD, f"{self._action} carries {want} header lines, Content-Length says {count}", line)
        return count

    def _finish(self) -> Message:
        action, headers = self._action, self._headers
        self._new_message()
        try:
            return build(action, headers)
        except LocalProtocolError as exc:
            raise _Fail(BAD, str(exc)) from None


class RequestReceiver(_Receiver):
    """The server's side: reads ``StartRequest`` and ``EndRequest`` from a station."""

    _ACTIONS = REQUEST_ACTIONS
    _OTHER = ANSWER_ACTIONS
    _OTHER_SIDE = "an answer, not a request"
    _NEEDS_LENGTH = True


class AnswerReceiver(_Receiver):
    """The station's side: reads ``StartOk``, ``EndOk`` and ``ErrorAnswer`` from the server."""

    _ACTIONS = ANSWER_ACTIONS
    _OTHER = REQUEST_ACTIONS
    _OTHER_SIDE = "a request, not an answer"
    _NEEDS_LENGTH = False
