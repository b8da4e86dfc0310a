"""Feed the same bytes to an MCSP receiver in different ways and collect what comes out.

The outcome is the list of messages in order, then, if one came, the (final)
``ReceiveError``. ``Err(code, text)`` compares equal to a ``ReceiveError`` with that code
whose message contains ``text``, so tables can say which error they expect.
"""

from __future__ import annotations

from dataclasses import dataclass

from ev_common.mcsp import CLOSED, NEED_DATA, ReceiveError, RequestReceiver


@dataclass(frozen=True)
class Err:
    code: int
    text: str = ""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ReceiveError):
            return other.code == self.code and self.text in other.message
        return isinstance(other, Err) and (other.code, other.text) == (self.code, self.text)

    __hash__ = None  # type: ignore[assignment]


def drain(receiver, out: list) -> bool:
    """Collect events until NEED_DATA; False once the receiver is finished."""
    while True:
        event = receiver.next_event()
        if event is NEED_DATA:
            return True
        if event is CLOSED:
            return False
        out.append(event)
        if isinstance(event, ReceiveError):
            assert receiver.next_event() is event  # an error is final
            return False


def feed_chunks(chunks, receiver_class=RequestReceiver, at_eof: bool = True) -> list:
    receiver = receiver_class()
    out: list = []
    for chunk in chunks:
        receiver.feed(chunk)
        if not drain(receiver, out):
            return out
    if at_eof:
        receiver.feed(b"")
        drain(receiver, out)
    return out


def whole(data: bytes, receiver_class=RequestReceiver, at_eof: bool = True) -> list:
    return feed_chunks([data], receiver_class, at_eof)


def halves(data: bytes, receiver_class=RequestReceiver, at_eof: bool = True) -> list:
    mid = len(data) // 2
    return feed_chunks([data[:mid], data[mid:]], receiver_class, at_eof)


def bytewise(data: bytes, receiver_class=RequestReceiver, at_eof: bool = True) -> list:
    return feed_chunks([data[i : i + 1] for i in range(len(data))], receiver_class, at_eof)


FEEDINGS = {"whole": whole, "halves": halves, "bytewise": bytewise}
