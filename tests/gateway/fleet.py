"""Simulated Monitors for the gateway tests: each speaks the real wire protocol (``LinkState``,
the link state machine every program runs) on one asyncio loop on a thread: ENQ, ``REG``
(answered ``AUTH``), ``HB`` every second, ``SUPR#OK`` to every ``SUP``; a lost connection is
opened again after a short random delay, to the same address (gateways sharing a port, or a
load balancer, take it from there)."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from decimal import Decimal

from ev_common.linkstate import Ended, LinkConfig, LinkError, LinkState, Opened, OutboundFull, Received, Role
from ev_common.protocol import MESSAGES, Auth, Hb, Message, Reg, Sup, Supr

LINK = LinkConfig(ack_timeout=1.0, max_retries=3)  # a Monitor's defaults
HB_INTERVAL = 1.0


class _Sim(asyncio.Protocol):
    def __init__(self, fleet: "Fleet", cp_id: str) -> None:
        self.fleet, self.cp_id = fleet, cp_id
        self.transport = None
        self.link: LinkState | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.registered = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.link = LinkState(Role.CLIENT, LINK, MESSAGES, peer=self.cp_id)
        self._write(self.link.start(self.fleet.loop.time()))
        self._events()

    def data_received(self, data: bytes) -> None:
        self._write(self.link.feed(data, self.fleet.loop.time()))
        self._events()

    def connection_lost(self, exc) -> None:
        self.registered = False
        if self.timer is not None:
            self.timer.cancel()
        self.fleet.lost(self)

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _events(self) -> None:
        for event in self.link.events():
            if isinstance(event, Received):
                self._message(event.message)
            elif isinstance(event, Opened):
                self.send(Reg(self.cp_id, f"Gateway test street {self.cp_id}", Decimal("0.40")))
            elif isinstance(event, Ended):
                self.transport.close()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        deadline = self.link.next_deadline()
        if deadline is not None:
            self.timer = self.fleet.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self._write(self.link.on_timer(self.fleet.loop.time()))
        self._events()

    def send(self, message: Message) -> None:
        if self.link is None or self.link.closed:
            return
        try:
            self._write(self.link.send(message, self.fleet.loop.time()))
        except (LinkError, OutboundFull):
            return
        self._events()

    def _message(self, message) -> None:
        if isinstance(message, Auth) and message.ok and not self.registered:
            self.registered = True
            self.fleet.registered(self)
        elif isinstance(message, Sup):
            self.send(Supr(self.cp_id, message.session_id, "OK", ""))

    def beat(self) -> None:
        if self.registered and self.fleet.sims.get(self.cp_id) is self:
            self.send(Hb(self.cp_id))
            self.fleet.loop.call_later(HB_INTERVAL, self.beat)


class Fleet:
    """``cp_ids`` Monitors against ``host:port``, connecting ``rate`` per second."""

    def __init__(self, host: str, port: int, cp_ids: list[str], rate: float = 200) -> None:
        self.host, self.port, self.cp_ids, self.rate = host, port, cp_ids, rate
        self.loop = asyncio.new_event_loop()
        self.sims: dict[str, _Sim] = {}
        self.registrations: Counter[str] = Counter()  # AUTH#OK per CP
        self.losses = 0
        self.stopping = False
        self._thread = threading.Thread(target=self._run, name="sim-monitors", daemon=True)

    def start(self) -> "Fleet":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping = True

        def close_all() -> None:
            for sim in self.sims.values():
                if sim.transport is not None:
                    sim.transport.close()
        self.loop.call_soon_threadsafe(close_all)
        self._thread.join(10)

    def registered_count(self) -> int:
        return sum(1 for sim in list(self.sims.values()) if sim.registered)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        for i, cp_id in enumerate(self.cp_ids):
            self.loop.create_task(self._connect(cp_id))
            if (i + 1) % 20 == 0:
                await asyncio.sleep(20 / self.rate)
        while not self.stopping:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)

    async def _connect(self, cp_id: str) -> None:
        if self.stopping:
            return
        sim = _Sim(self, cp_id)
        self.sims[cp_id] = sim
        try:
            await self.loop.create_connection(lambda: sim, self.host, self.port)
        except OSError:
            self._again(cp_id)

    def _again(self, cp_id: str) -> None:
        if not self.stopping:
            self.loop.call_later(0.2 + 0.5 * random.random(), lambda: self.loop.create_task(self._connect(cp_id)))

    def lost(self, sim: _Sim) -> None:
        self.losses += 1
        if self.sims.get(sim.cp_id) is sim:
            self._again(sim.cp_id)

    def registered(self, sim: _Sim) -> None:
        self.registrations[sim.cp_id] += 1
        self.loop.call_later(HB_INTERVAL, sim.beat)
