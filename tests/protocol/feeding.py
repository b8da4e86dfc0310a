"""Feed the same bytes to a FrameDecoder in different ways and collect what comes out.

Every outcome is a list of events and errors in order: ``Frame``/``Control`` objects,
and error *classes* for raised ``FrameError``s (so results compare across feedings).
"""

from __future__ import annotations

from ev_common.protocol import NEED_DATA, FrameDecoder, FrameError


def drain(decoder: FrameDecoder, out: list) -> None:
    while True:
        try:
            event = decoder.next_event()
        except FrameError as exc:
            out.append(type(exc))
            continue
        if event is NEED_DATA:
            return
        out.append(event)


def feed_chunks(chunks, at_eof: bool = True) -> list:
    decoder = FrameDecoder()
    out: list = []
    for chunk in chunks:
        decoder.feed(chunk)
        drain(decoder, out)
    if at_eof:
        try:
            decoder.close()
        except FrameError as exc:
            out.append(type(exc))
    return out


def whole(data: bytes) -> list:
    return feed_chunks([data])


def halves(data: bytes) -> list:
    mid = len(data) // 2
    return feed_chunks([data[:mid], data[mid:]])


def bytewise(data: bytes) -> list:
    return feed_chunks([data[i : i + 1] for i in range(len(data))])


FEEDINGS = {"whole": whole, "halves": halves, "bytewise": bytewise}
