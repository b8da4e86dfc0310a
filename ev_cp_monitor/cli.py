"""EV_CP_M command line (the seed's flags, plus --location and --price).

What it prints for people is in ``screen.py``: a status line in place on a
terminal, changes and a status line every 10 s otherwise.
"""

from __future__ import annotations

import argparse
import logging
from decimal import Decimal, InvalidOperation

from ev_common.config import env, port_number
from ev_common.lifecycle import Shutdown
from ev_common.log import add_log_level_argument, setup_logging
from ev_common.protocol import LocalProtocolError, Reg

log = logging.getLogger(__name__)

DEFAULT_LOCATION = "Location not set"
DEFAULT_PRICE = "0.35"


def _price(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a price such as 0.48") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="EV_CP_M",
        description="EVCharging CP Monitor: registers its CP at Central and checks its Engine every second.",
    )
    parser.add_argument("--cp_id", required=True, help="this CP's id, [A-Za-z0-9_-]{1,64}")
    parser.add_argument("--central_ip", required=True, help="Central's address")
    parser.add_argument("--central_port", type=port_number, required=True, help="Central's port")
    parser.add_argument("--engine_ip", required=True, help="the Engine's address")
    parser.add_argument("--engine_port", type=port_number, required=True, help="the Engine's port")
    parser.add_argument("--location", default=env("EV_CP_LOCATION", DEFAULT_LOCATION),
                        help="where the CP is, shown at Central (default: $EV_CP_LOCATION or %(default)r)")
    parser.add_argument("--price", type=_price, default=env("EV_CP_PRICE", DEFAULT_PRICE),
                        metavar="EUR_PER_KWH", help="price in EUR/kWh (default: $EV_CP_PRICE or %(default)s)")
    add_log_level_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        registration = Reg(args.cp_id, args.location, args.price)
    except LocalProtocolError as exc:
        parser.error(str(exc).removeprefix("cannot build REG: "))
    setup_logging(f"EV_CP_M {args.cp_id}", args.log_level)
    from .central_client import CentralClient
    from .engine_probe import EngineProbe
    from .monitor import Monitor
    from .screen import MonitorScreen

    shutdown = Shutdown().install()
    engine = EngineProbe(args.engine_ip, args.engine_port, args.cp_id)
    screen = MonitorScreen(args.cp_id, stopped=lambda: engine.stopped)
    screen.guard_logging()  # on a terminal, log lines go above the status line
    central = CentralClient(args.central_ip, args.central_port, registration, engine=engine, say=screen.central_said)
    screen.registered = central.registered
    monitor = Monitor(engine, central, say=screen.message, on_check=screen.checked)
    screen.started(f"{args.central_ip}:{args.central_port}", f"{args.engine_ip}:{args.engine_port}")
    code = monitor.run(shutdown.event)
    screen.closing("Monitor stopped" + (f" ({shutdown.signal_name})" if shutdown.signal_name else ""))
    return code
