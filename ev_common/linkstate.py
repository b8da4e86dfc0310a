"""The link layer as a state machine, without I/O (as h11 is for HTTP).

``LinkState`` owns no socket and reads no clock. Its caller (a driver) feeds it the
bytes that arrived, takes the events they made, asks it to send messages, and drives
time explicitly; every call that may produce bytes returns the bytes to write::

    state = LinkState(Role.CLIENT, config, peer="central:5000")
    write(state.start(now))             # ENQ (a server writes nothing: it waits for ENQ)
    write(state.feed(chunk, now))       # ACK/NACK for frames, retransmissions, the next frame
    for event in state.events():        # Opened, Received, Acked, Closed/Broken/Refused
        ...
    write(state.send(message, now, tag))   # the frame now, or b"" when queued behind one in flight
    write(state.on_timer(now))          # when now >= state.next_deadline()
    state.feed(b"", now)                # the peer closed its side (end of stream)
    write(state.close("reason"))        # EOT

The rules are docs/protocol.md's section 2: the client sends ENQ and the server
answers ACK, or NACK to refuse (``refuse``); every frame received is answered ACK
(well formed) or NACK (malformed, or more than ``max_inbound`` messages unread); one
frame in flight per direction, the rest queued behind it (at most ``max_outbound``);
a frame NACKed or not ACKed within ``ack_timeout`` is retransmitted ``max_retries``
times, then the link is broken; EOT ends the session. The first event that ends a
session (``Ended``: ``Closed``, ``Broken`` or ``Refused``) is its last.
"""

from __future__ import annotations

import collections
import enum
import logging
from dataclasses import dataclass

from .protocol import (
    MESSAGES,
    NEED_DATA,
    Control,
    ControlByte,
    FrameDecoder,
    FrameError,
    Message,
    MessageError,
    Registry,
    encode_frame,
)

log = logging.getLogger("ev_common.link")

ACK_BYTE = bytes((ControlByte.ACK,))
NACK_BYTE = bytes((ControlByte.NACK,))
ENQ_BYTE = bytes((ControlByte.ENQ,))
EOT_BYTE = bytes((ControlByte.EOT,))


# --- errors (the causes of the events that end a session) -------------------------------------


class LinkError(Exception):
    """The session cannot go on (or could not start)."""


class LinkClosed(LinkError):
    """The session ended: EOT received, the peer closed, or we closed it."""


class LinkBroken(LinkError):
    """The session failed: retransmissions exhausted, a socket error, a peer closed mid-frame."""


class NeverOpened(LinkBroken):
    """The peer connected and closed without a byte: a port probe or a health check, not a
    session that failed (a server logs it quietly)."""


class LinkTimeout(LinkBroken):
    """A peer stayed silent past a timeout (connect, handshake)."""


class SessionRefused(LinkError):
    """The server answered ENQ with NACK."""


class OutboundFull(Exception):
    """``send`` refused: ``max_outbound`` messages already wait for their ACK (the link goes on)."""


# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkConfig:
    """Timeouts (seconds) and bounds of a link. Every field has a safe default."""

    connect_timeout: float = 3.0
    handshake_timeout: float = 3.0  # ENQ -> ACK/NACK
    ack_timeout: float = 1.0  # a frame unacknowledged this long is retransmitted
    max_retries: int = 3  # retransmissions after the first send
    write_timeout: float = 5.0  # one sendall
    max_inbound: int = 256  # received messages not yet consumed; beyond that frames are NACKed
    max_outbound: int = 64  # messages queued to send (the one in flight included)
    recv_chunk: int = 65536


# --- events ----------------------------------------------------------------------------------


class Event:
    __slots__ = ()


class Opened(Event):
    """The handshake succeeded: the session is open."""

    __slots__ = ()

    def __eq__(self, other) -> bool:
        return type(other) is Opened

    def __hash__(self) -> int:
        return hash(Opened)

    def __repr__(self) -> str:
        return "Opened()"


class Received(Event):
    """A well-formed frame arrived (and was ACKed): its message, or the ``MessageError`` of bad content."""

    __slots__ = ("message",)

    def __init__(self, message: Message | MessageError) -> None:
        self.message = message

    def __eq__(self, other) -> bool:
        if type(other) is not Received:
            return NotImplemented
        mine, theirs = self.message, other.message
        if isinstance(mine, MessageError) or isinstance(theirs, MessageError):
            return type(mine) is type(theirs) and mine.raw == theirs.raw
        return mine == theirs

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Received({self.message!r})"


class Acked(Event):
    """The frame sent with ``tag`` was acknowledged."""

    __slots__ = ("tag",)

    def __init__(self, tag: object) -> None:
        self.tag = tag

    def __eq__(self, other) -> bool:
        return type(other) is Acked and other.tag == self.tag

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Acked({self.tag!r})"


class Ended(Event):
    """The session is over; ``cause`` is the error a driver raises from now on, ``undelivered``
    the tags of the messages that were queued or in flight, never acknowledged."""

    __slots__ = ("cause", "undelivered")

    def __init__(self, cause: LinkError, undelivered: tuple = ()) -> None:
        self.cause = cause
        self.undelivered = undelivered

    def __eq__(self, other) -> bool:  # compares kinds and causes, for tables
        return (type(other) is type(self) and type(other.cause) is type(self.cause)
                and str(other.cause) == str(self.cause) and other.undelivered == self.undelivered)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.cause).__name__}({str(self.cause)!r}), {self.undelivered!r})"


class Closed(Ended):
    """Ended in order: EOT, the peer closed between frames, or closed locally (``LinkClosed``)."""

    __slots__ = ()


class Broken(Ended):
    """Failed: retransmissions exhausted, a timeout, closed mid-frame, an I/O error (``LinkBroken``)."""

    __slots__ = ()


class Refused(Ended):
    """The server answered ENQ with NACK (``SessionRefused``), on either side."""

    __slots__ = ()


def ended_event(cause: LinkError, undelivered: tuple = ()) -> Ended:
    if isinstance(cause, SessionRefused):
        return Refused(cause, undelivered)
    if isinstance(cause, LinkClosed):
        return Closed(cause, undelivered)
    return Broken(cause, undelivered)


# --- the state machine -----------------------------------------------------------------------


_NO_EVENTS: tuple = ()


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class Phase(enum.Enum):
    IDLE = "idle"  # before start()
    OPENING = "opening"  # handshake under way
    OPEN = "open"
    CLOSED = "closed"


IDLE, OPENING, OPEN, CLOSED = Phase.IDLE, Phase.OPENING, Phase.OPEN, Phase.CLOSED


class _Outbound:
    __slots__ = ("frame", "opcode", "tag", "attempt", "deadline")

    def __init__(self, frame: bytes, opcode: str, tag: object) -> None:
        self.frame = frame
        self.opcode = opcode
        self.tag = tag
        self.attempt = 0
        self.deadline = 0.0


class LinkState:
    """One session's link layer, without I/O (see the module doc). Not thread-safe: a driver
    calls it from one thread at a time."""

    def __init__(self, role: Role, config: LinkConfig = LinkConfig(), registry: Registry = MESSAGES,
                 peer: str = "peer", refuse: str | None = None) -> None:
        self.role = role
        self.config = config
        self.registry = registry
        self.peer = peer
        self.refuse = refuse  # a server answers ENQ with NACK when this gives a reason (settable until then)
        self.backlog = 0  # messages the driver holds unread (counted against max_inbound; settable)
        self.phase = IDLE
        self.cause: LinkError | None = None
        self.stats: collections.Counter = collections.Counter()
        self._heard = False  # any byte received yet
        self._decoder = FrameDecoder()
        self._events: list[Event] = []
        self._unread = 0  # Received events not yet taken
        self._handshake_deadline: float | None = None
        self._in_flight: _Outbound | None = None
        self._queue: collections.deque[_Outbound] = collections.deque()
        # the last chunk that was exactly one well-formed message, and its event: a peer sends
        # the same frame again and again (a Monitor's sign of life), which is then not decoded again
        self._repeat: bytes | None = None
        self._repeat_event: Received | None = None

    # -- state ---------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.phase is OPEN

    @property
    def closed(self) -> bool:
        return self.phase is CLOSED

    @property
    def queued(self) -> int:
        """Messages sent and not acknowledged yet (the one in flight included)."""
        return len(self._queue) + (self._in_flight is not None)

    def next_deadline(self) -> float | None:
        """When ``on_timer`` has work to do (a handshake or an ACK overdue); None: no timer."""
        phase = self.phase
        if phase is OPEN:
            return None if self._in_flight is None else self._in_flight.deadline
        if phase is OPENING:
            return self._handshake_deadline
        return None

    def events(self) -> "list[Event] | tuple[()]":
        """The events made since the last call, in order (and forgets them)."""
        events = self._events
        if not events:
            return _NO_EVENTS
        self._events = []
        self._unread = 0
        return events

    # -- input ---------------------------------------------------------------------------------

    def start(self, now: float) -> bytes:
        """Begin the handshake: a client sends ENQ; both sides wait at most ``handshake_timeout``."""
        if self.phase is not IDLE:
            raise RuntimeError("start() called twice")
        self.phase = OPENING
        self._handshake_deadline = now + self.config.handshake_timeout
        return ENQ_BYTE if self.role is Role.CLIENT else b""

    def feed(self, data: bytes, now: float) -> bytes:
        """Bytes received (``b""``: the peer closed its side). Returns the bytes to write."""
        if self.phase is CLOSED:
            return b""
        decoder = self._decoder
        if not data:
            return self._end_of_stream()
        if data == self._repeat and decoder.idle and self._unread + self.backlog < self.config.max_inbound:
            # the same frame as the last one (messages are immutable): its event again, no decoding
            self.stats["received"] += 1
            self._unread += 1
            self._events.append(self._repeat_event)
            return ACK_BYTE
        single = self.phase is OPEN and decoder.idle and len(data) <= 128  # may become the repeat
        discarded, before = decoder.discarded, len(self._events)
        self._heard = True
        decoder.feed(data)
        out = b""
        while self.phase is not CLOSED:
            try:
                event = decoder.next_event()
            except FrameError as exc:
                if self.phase is OPEN:
                    self.stats["nacked"] += 1
                    log.warning("%s: malformed frame, answered NACK: %s", self.peer, exc)
                    out += NACK_BYTE
                else:
                    out += self._handshake_answer(f"a malformed frame ({exc})")
                continue
            if event is NEED_DATA:
                break
            if self.phase is not OPEN:
                if self.role is Role.SERVER and type(event) is not Control and self.refuse is None:
                    # a peer that speaks only frames (the seed's Monitor): its first frame is an
                    # implied ENQ; the session opens and the frame is served like any other
                    self.stats["implied_enq"] += 1
                    log.info("%s sent a frame without ENQ first: taken as ENQ", self.peer)
                    out += self._opened(now)
                else:
                    out += self._handshake(event, now)
                    continue
            if type(event) is Control:
                out += self._control(event.byte, now)
                continue
            if self._unread + self.backlog >= self.config.max_inbound:
                self.stats["refused_full"] += 1
                log.warning("%s: %d messages unread, answered NACK", self.peer, self._unread + self.backlog)
                out += NACK_BYTE
                continue
            try:
                message = self.registry.decode(event.text)
            except MessageError as exc:
                message = exc
            self.stats["received"] += 1
            self._unread += 1
            self._events.append(Received(message))
            out += ACK_BYTE
        if single:
            if (out == ACK_BYTE and len(self._events) == before + 1 and decoder.idle
                    and decoder.discarded == discarded and not isinstance(message, MessageError)):
                self._repeat, self._repeat_event = bytes(data), self._events[-1]
            else:
                self._repeat = None
        return out

    def on_timer(self, now: float) -> bytes:
        """Let time pass: retransmit an overdue frame, give up a link, a handshake. Returns bytes."""
        phase = self.phase
        if phase is OPEN:
            sending = self._in_flight
            if sending is not None and now >= sending.deadline:
                return self._retry(sending, f"no ACK within {self.config.ack_timeout:g} s", now)
        elif phase is OPENING and now >= self._handshake_deadline:
            if self.role is Role.CLIENT:
                why = f"{self.peer} did not answer ENQ within {self.config.handshake_timeout:g} s"
            else:
                why = f"{self.peer} sent no ENQ within {self.config.handshake_timeout:g} s"
            self._end(LinkTimeout(why))
        return b""

    # -- output --------------------------------------------------------------------------------

    def send(self, message: Message, now: float, tag: object = None) -> bytes:
        """Queue ``message``; returns its frame when it may go now (nothing else in flight),
        else b"" (it goes when the frame before it is acknowledged). ``Acked(tag)`` tells when
        it was acknowledged. Raises the session's cause once it is over, ``OutboundFull`` past
        ``max_outbound``, ``LocalProtocolError`` for a message no receiver would accept."""
        if self.phase is CLOSED:
            raise _copy(self.cause)
        if self.queued >= self.config.max_outbound:
            raise OutboundFull(f"{self.peer}: {self.queued} messages wait for their ACK")
        item = _Outbound(encode_frame(message.to_data()), message.OPCODE, tag)
        if self._in_flight is None and self.phase is OPEN:
            return self._transmit(item, now)
        self._queue.append(item)
        return b""

    def close(self, reason: str = "closed locally", send_eot: bool = True) -> bytes:
        """End the session ourselves: ``Closed``; returns EOT to write (once open, with ``send_eot``)."""
        if self.phase is CLOSED:
            return b""
        out = EOT_BYTE if send_eot and self.phase is OPEN else b""
        self._end(LinkClosed(f"{self.peer}: {reason}"))
        return out

    def fail(self, cause: LinkError) -> None:
        """The driver found the session over (an I/O error, ...): ends it with ``cause``."""
        if self.phase is not CLOSED:
            self._end(cause)

    # -- internals ----------------------------------------------------------------------------

    def _transmit(self, item: _Outbound, now: float) -> bytes:
        item.deadline = now + self.config.ack_timeout
        self._in_flight = item
        return item.frame

    def _retry(self, item: _Outbound, why: str, now: float) -> bytes:
        log.debug("%s: %s for %s (attempt %d)", self.peer, why, item.opcode, item.attempt + 1)
        if item.attempt >= self.config.max_retries:
            self._end(LinkBroken(f"{self.peer}: {item.opcode} not acknowledged after "
                                 f"{self.config.max_retries} retransmissions ({why})"))
            return b""
        item.attempt += 1
        self.stats["retransmitted"] += 1
        return self._transmit(item, now)

    def _control(self, byte: ControlByte, now: float) -> bytes:
        if byte == ControlByte.ACK or byte == ControlByte.NACK:
            sending = self._in_flight
            if sending is None:
                self.stats["stray_" + byte.name.lower()] += 1
                log.debug("%s: %s with no frame awaiting it, ignored", self.peer, byte.name)
                return b""
            if byte == ControlByte.NACK:
                return self._retry(sending, "NACK", now)
            self._in_flight = None
            self.stats["sent"] += 1
            self._events.append(Acked(sending.tag))
            if self._queue:
                return self._transmit(self._queue.popleft(), now)
            return b""
        if byte == ControlByte.EOT:
            self._end(LinkClosed(f"{self.peer} ended the session (EOT)"))
            return b""
        self.stats["stray_enq"] += 1  # ENQ inside an open session: nothing to do
        return b""

    def _handshake(self, event, now: float) -> bytes:
        byte = event.byte if type(event) is Control else None
        if self.role is Role.CLIENT:
            if byte == ControlByte.ACK:
                return self._opened(now)
            if byte == ControlByte.NACK:
                self._end(SessionRefused(f"{self.peer} refused the session (NACK)"))
                return b""
            return self._handshake_answer(byte.name if byte is not None else "a frame")
        if byte != ControlByte.ENQ and byte is not None:
            return self._handshake_answer(byte.name)
        if self.refuse is not None:
            self._end(SessionRefused(f"refused session from {self.peer}: {self.refuse}"))
            return NACK_BYTE if byte is not None else NACK_BYTE + EOT_BYTE
        return ACK_BYTE + self._opened(now)

    def _handshake_answer(self, what: str) -> bytes:
        """The handshake failed: a client gives up; a server tells its peer (NACK, then EOT)
        before it closes, so that the peer learns what went wrong."""
        if self.role is Role.CLIENT:
            self._end(LinkBroken(f"{self.peer} answered ENQ with {what}, expected ACK or NACK"))
            return b""
        self._end(LinkBroken(f"{self.peer} sent {what} instead of ENQ"))
        return NACK_BYTE + EOT_BYTE

    def _opened(self, now: float) -> bytes:
        self.phase = OPEN
        self._handshake_deadline = None
        self._events.append(Opened())
        if self._queue:
            return self._transmit(self._queue.popleft(), now)
        return b""

    def _end_of_stream(self) -> bytes:
        try:
            self._decoder.close()
        except FrameError as exc:
            self._end(LinkBroken(f"{self.peer} closed the connection mid-frame ({exc})"))
            return b""
        if self.phase is OPEN:
            self._end(LinkClosed(f"{self.peer} closed the connection"))
        elif self.role is Role.CLIENT:
            self._end(LinkBroken(f"{self.peer} closed the connection instead of answering ENQ"))
        elif self._heard:
            self._end(LinkBroken(f"{self.peer} closed the connection instead of ENQ"))
        else:
            self._end(NeverOpened(f"{self.peer} closed the connection without sending anything"))
        return b""

    def _end(self, cause: LinkError) -> None:
        undelivered = tuple(item.tag for item in ([self._in_flight] if self._in_flight else []) + list(self._queue))
        self._in_flight = None
        self._queue.clear()
        self._handshake_deadline = None
        self.phase = CLOSED
        self.cause = cause
        self._events.append(ended_event(cause, undelivered))


def _copy(cause: LinkError | None) -> LinkError:
    """A fresh exception of the cause's type and text (raising one instance twice chains tracebacks)."""
    if cause is None:
        return LinkClosed("the session is not open")
    return type(cause)(str(cause))
