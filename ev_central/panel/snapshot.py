"""Render the panel once, with CPs in all five states, to an SVG (docs/panel.svg).

    python -m ev_central.panel.snapshot docs/panel.svg [--size 120x40]

A real Central on a throwaway SQLite file (no Kafka, a free port) gets its CPs the
way it does in service: demo Monitors connect over real sockets and register,
report a fault or leave; the operator stops one CP from the panel's command line.
The supplies are put straight into Central's domain (no Engine, no broker).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

from ev_common.link import Link, LinkConfig, LinkError
from ev_common.log import setup_logging
from ev_common.protocol import Auth, Avr, Reg

from ..app import Central
from ..core.states import Event
from ..store import open_store
from ..view import CentralView, MessageLog
from .app import CentralPanel

# (CP, location, price, what happens to it)
DEMO_CPS = [
    ("ALC1", "C/Italia 5", "0.54", "idle"),
    ("ALC3", "Gran Via 2", "0.54", "stop"),
    ("COR1", "Mezquita", "0.40", "supply:DRV234:21.457"),
    ("MAD1", "C/Arguelles", "0.40", "leave"),
    ("MAD2", "C/Serrano 10", "0.60", "supply:DRV005:10.320"),
    ("MAD3", "C/Pez 21", "0.48", "fault"),
    ("SEV2", "Maestranza", "0.40", "idle"),
    ("SEV3", "C/Sevilla 4", "0.54", "supply:DRV024:50.000"),
    ("VAL1", "San Javier", "0.48", "authorised:DRV023"),
    ("VAL3", "Museo de las Artes y las Ciencias", "0.50", "idle"),
]
LINK = LinkConfig(connect_timeout=2.0, handshake_timeout=2.0, ack_timeout=1.0, max_retries=3, write_timeout=2.0)


class DemoMonitor:
    """A Monitor reduced to its link, reading (and so acknowledging) whatever Central sends."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.link = Link.connect(address[0], address[1], LINK)
        self.received: list[object] = []
        self._reader = threading.Thread(target=self._read, name="demo-monitor", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while not self.link.closed:
                message = self.link.recv(timeout=0.2)
                if message is not None:
                    self.received.append(message)
        except LinkError:
            pass

    def close(self) -> None:
        self.link.close("demo over")
        self._reader.join(2)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def build_demo(central: Central) -> list[DemoMonitor]:
    """Bring the demo CPs into their states; returns the Monitors still connected."""
    monitors: list[DemoMonitor] = []
    for cp_id, location, price, _ in DEMO_CPS:
        monitor = DemoMonitor(central.address)
        monitors.append(monitor)
        monitor.link.send(Reg(cp_id, location, Decimal(price)))
        wait_for(lambda m=monitor: any(isinstance(r, Auth) for r in m.received), 3.0, f"{cp_id} registered")
    for (cp_id, _, price, plan), monitor in zip(DEMO_CPS, list(monitors)):
        kind, _, detail = plan.partition(":")
        if kind == "fault":
            monitor.link.send(Avr(cp_id, "Engine does not answer"))
            wait_for(lambda c=cp_id: central.network.get(c).state == "AVERIADO", 3.0, f"{cp_id} AVERIADO")
        elif kind == "leave":
            monitor.close()
            monitors.remove(monitor)
            wait_for(lambda c=cp_id: central.network.get(c).state == "DESCONECTADO", 3.0, f"{cp_id} DESCONECTADO")
        elif kind in ("supply", "authorised"):
            driver, _, kwh = detail.partition(":")
            session = f"demo-{cp_id.lower()}"
            central.book.open(session, f"request-{cp_id.lower()}", cp_id, driver, Decimal(price))
            if kind == "supply":
                central.network.apply(cp_id, Event.SUPPLY_STARTED, f"supply {session} started")
                central.book.telemetry(session, 1, Decimal(kwh))
    return monitors


async def render(central: Central, view: CentralView, path: Path, size: tuple[int, int]) -> None:
    app = CentralPanel(view)
    async with app.run_test(size=size) as pilot:
        await app.run_command("stop ALC2")  # a typing mistake: refused, shown as a warning
        await app.run_command("stop ALC3")
        app.query_one("#tiles").focus()
        for _ in range(50):  # until the refresh has drawn every tile
            await pilot.pause(0.02)
            if len(app.query("CPTileWidget")) == len(DEMO_CPS):
                break
        await pilot.pause(0.2)
        path.write_text(app.export_screenshot(title="EV_Central"), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ev_central.panel.snapshot",
                                     description="Render Central's panel with demo CPs to an SVG file.")
    parser.add_argument("output", type=Path, help="the SVG file to write (for example docs/panel.svg)")
    parser.add_argument("--size", default="120x40", help="terminal size COLUMNSxROWS (default: %(default)s)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging("EV_Central panel snapshot", "INFO")
    columns, _, rows = args.size.partition("x")
    messages = MessageLog()  # on the root logger, as EV_Central attaches it
    root = logging.getLogger()
    terminal = list(root.handlers)
    for handler in terminal:  # keep the terminal quiet: the messages are in the picture
        root.removeHandler(handler)
    root.addHandler(messages)
    with tempfile.TemporaryDirectory() as data:
        central = Central(open_store(f"sqlite:///{Path(data) / 'demo.db'}"), "127.0.0.1", 0,
                          silence_timeout=3600, link_config=LINK).start()
        monitors: list[DemoMonitor] = []
        try:
            monitors = build_demo(central)
            asyncio.run(render(central, CentralView(central, messages), args.output, (int(columns), int(rows))))
        finally:
            for monitor in monitors:
                monitor.close()
            central.stop()
            root.removeHandler(messages)
            for handler in terminal:
                root.addHandler(handler)
    logging.getLogger(__name__).info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
