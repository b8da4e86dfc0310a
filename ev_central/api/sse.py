"""``GET /api/events``: Central's live events as Server-Sent Events (text/event-stream).

The stream opens with ``retry: 2000`` and, for a new reader (no ``Last-Event-ID``) or one
whose missed events are gone from the replay buffer, a ``snapshot`` event holding the whole
state (CPs, ongoing requests, recent messages, weather, health) numbered with the hub's last
id; then every event as it comes (``id:``, ``event:``, ``data:`` one JSON line), and a
comment line every ``heartbeat`` seconds while nothing happens (proxies and browsers keep
the connection). A reader that falls behind is dropped by the hub: it gets a last
``overflow`` event and the stream ends (the browser reconnects, with its ``Last-Event-ID``).
Events are written as they come, but at most one write per ``BATCH`` s: in a burst (thousands
of CPs registering at once) a reader costs Central a write and a wake-up 20 times a second,
not one per event.

A client that stops reading is never waited for: each write has ``send_timeout`` seconds;
past that, or as soon as the hub drops it while a write is stuck, its connection is cut
(``ev.abort`` in the ASGI scope: the server's protocol puts it there, ev_central/api/server.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..events import EventHub, Subscription, to_json

log = logging.getLogger("ev_central.api")

HEARTBEAT = 15.0
SEND_TIMEOUT = 10.0
BATCH = 0.05  # s after a write before the next: events that come meanwhile go in one write
RETRY_MS = 2000
ABORT = "ev.abort"  # the ASGI scope's key for a function that cuts the connection at once


class EventStream(Response):
    """A response streaming ``subscription``; ``snapshot`` makes the first event's data (None:
    no snapshot)."""

    media_type = "text/event-stream"

    def __init__(self, hub: EventHub, subscription: Subscription, snapshot: Callable[[], dict] | None, *,
                 heartbeat: float = HEARTBEAT, send_timeout: float = SEND_TIMEOUT) -> None:
        super().__init__(status_code=200, media_type=self.media_type)
        self.hub = hub
        self.subscription = subscription
        self.snapshot = snapshot
        self.heartbeat = heartbeat
        self.send_timeout = send_timeout
        self._gone = asyncio.Event()  # the client disconnected, or its connection was cut

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        abort = scope.get(ABORT)
        watcher = asyncio.ensure_future(self._watch(receive))
        try:
            await self._stream(send, abort)
        finally:
            self.subscription.close()
            watcher.cancel()

    async def _watch(self, receive: Receive) -> None:
        """Until the client goes away (the stream then ends at its next turn)."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._gone.set()
                return

    async def _stream(self, send: Send, abort) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
                   (b"x-accel-buffering", b"no")]
        if not await self._send(send, abort, {"type": "http.response.start", "status": 200, "headers": headers}):
            return
        first = f"retry: {RETRY_MS}\n\n".encode()
        if self.snapshot is not None:
            data = await run_in_threadpool(lambda: to_json(self.snapshot()))
            first += (f"id: {self.subscription.last_event_id}\nevent: snapshot\ndata: {data}\n\n").encode("utf-8")
        if not await self._body(send, abort, first):
            return
        sub = self.subscription
        while not self._gone.is_set():
            events = sub.take()
            if events:
                if not await self._body(send, abort, b"".join(event.frame() for event in events)):
                    return
                await asyncio.sleep(BATCH)
                continue
            if sub.dropped:
                why = "Central is stopping" if sub.closed else "this reader fell behind"
                data = to_json({"reason": why, "last_id": self.hub.last_id})
                await self._send(send, abort, {"type": "http.response.body", "more_body": False,
                                               "body": f"event: overflow\ndata: {data}\n\n".encode()},
                                 timeout=min(1.0, self.send_timeout))
                return
            waiter = asyncio.ensure_future(sub.wait(self.heartbeat))
            gone = asyncio.ensure_future(self._gone.wait())
            done, _ = await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            gone.cancel()
            if gone in done:
                return
            if not sub.queued() and not sub.dropped:
                if not await self._body(send, abort, b": keep-alive\n\n"):
                    return

    async def _body(self, send: Send, abort, data: bytes) -> bool:
        return await self._send(send, abort, {"type": "http.response.body", "body": data, "more_body": True})

    async def _send(self, send: Send, abort, message: dict, timeout: float | None = None) -> bool:
        """Write ``message``, at most ``timeout`` s (while the hub may drop the reader meanwhile);
        False when the client is gone or was cut off."""
        if self._gone.is_set():
            return False
        writing = asyncio.ensure_future(send(message))
        waiting = {writing}
        if not self.subscription.dropped:  # (a reader dropped already gets its last write, in time)
            waiting.add(asyncio.ensure_future(self._dropped()))
        try:
            done, _ = await asyncio.wait(waiting, timeout=timeout or self.send_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiting - {writing}:
                task.cancel()
        if writing in done:
            writing.result()
            return True
        writing.cancel()
        log.warning("a live-events reader did not take its events%s: its connection is cut",
                    " and fell behind" if self.subscription.dropped else f" for {timeout or self.send_timeout:g} s")
        self._cut(abort)
        return False

    async def _dropped(self) -> None:
        """Returns when the hub drops the reader for falling behind while a write of it is stuck
        (not when Central stops: that write finishes or times out)."""
        await self.subscription.until_dropped()
        if self.subscription.closed:
            await asyncio.Event().wait()

    def _cut(self, abort) -> None:
        self._gone.set()
        if abort is not None:
            abort()
