"""EV_Driver command line: ``EV_Driver --kafka HOST:PORT --driver_id ID [--file PATH | --cp CP_ID]``.

Logging: when stdout is a terminal the log goes to a file (``--log-file``, by default
``ev_driver-<driver_id>.log`` in ``$EV_DATA_DIR`` or the working directory; at most
``LOG_FILE_BYTES`` bytes, then one older file) and the terminal gets only WARNING and
above, without what the screen already says (records marked ``extra={"shown": True}``)
and without the Kafka client's own lines (outages are on the screen). Elsewhere (a pipe,
a file) every record goes to stderr as in every program, and to ``--log-file`` if given.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import math
import os
import sys
from pathlib import Path

from ev_common.config import env, host_port
from ev_common.log import add_log_level_argument, setup_logging

from .driver import DEFAULT_PAUSE, DEFAULT_SUPPLY_TIMEOUT, DEFAULT_TIMEOUT
from .services_file import ServicesFileError, read_services_file, valid_id

log = logging.getLogger(__name__)

LOG_FILE_BYTES = 5_000_000
CLIENT_LOGGER = "ev_driver.kafka"  # librdkafka's own lines (see ev_driver.bus)


def _bootstrap(text: str) -> str:
    """argparse type: ``host:port[,host:port...]``, kept as the text Kafka clients take."""
    for item in text.split(","):
        host_port(item.strip())
    return text


def _identifier(text: str) -> str:
    if not valid_id(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an id of 1-64 characters from A-Z a-z 0-9 _ -")
    return text


def _seconds(minimum_exclusive: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (minimum_exclusive and value == 0):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'above' if minimum_exclusive else 'at least'} 0")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="EV_Driver",
        description="The driver's app: asks Central for supplies over Kafka and shows their progress. "
                    "Without --file or --cp it offers a menu on the terminal.",
    )
    parser.add_argument("--kafka", type=_bootstrap, default=env("EV_KAFKA"), required=env("EV_KAFKA") is None,
                        metavar="HOST:PORT", help="Kafka bootstrap server (default: $EV_KAFKA)")
    parser.add_argument("--driver_id", type=_identifier, required=True,
                        help="this driver's id, registered at Central")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--file", metavar="PATH",
                      help="a services file: one CP id per line (# comments), requested one after another")
    mode.add_argument("--cp", metavar="CP_ID", type=_identifier, help="request one supply at this CP")
    parser.add_argument("--timeout", type=_seconds(True), default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="no answer from Central to a request in this time: it fails (default: %(default)g)")
    parser.add_argument("--supply-timeout", type=_seconds(True), default=DEFAULT_SUPPLY_TIMEOUT, metavar="SECONDS",
                        help="no news at all of an authorised supply for this long: give up on it "
                             "(default: %(default)g)")
    parser.add_argument("--pause", type=_seconds(False), default=DEFAULT_PAUSE, metavar="SECONDS",
                        help="wait after each supply of the file ends, before the next (default: %(default)g)")
    parser.add_argument("--topic-prefix", default=env("EV_TOPIC_PREFIX", ""), metavar="PREFIX",
                        help="prefix of every Kafka topic and group name (default: $EV_TOPIC_PREFIX or none)")
    parser.add_argument("--log-file", type=Path, metavar="PATH",
                        help="where the log goes when stdout is a terminal (default: ev_driver-<driver_id>.log in "
                             "$EV_DATA_DIR or the working directory; the terminal then shows only warnings the "
                             "screen does not already show); elsewhere the log goes to stderr and also here")
    add_log_level_argument(parser)
    return parser


class _NotOnScreen(logging.Filter):
    """For the terminal: drops what the screen already shows and the Kafka client's own lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "shown", False) and not record.name.startswith(CLIENT_LOGGER)


def default_log_file(driver_id: str) -> Path:
    return Path(os.environ.get("EV_DATA_DIR", "").strip() or Path.cwd()) / f"ev_driver-{driver_id}.log"


def configure_logging(program: str, level: str, terminal: bool, log_file: Path | None) -> Path | None:
    """Set up the log as the module says; returns the log file in use, if any."""
    setup_logging(program, level)
    root = logging.getLogger()
    stderr = root.handlers[0]
    if terminal:
        stderr.setLevel(logging.WARNING)
        stderr.addFilter(_NotOnScreen())
    if not terminal and log_file is None:
        return None
    path = log_file or default_log_file(program.split()[-1])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_FILE_BYTES, backupCount=1,
                                                       encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write the log file %s (%s): warnings only, here", path, exc)
        return None
    handler.setFormatter(stderr.formatter)
    for log_filter in stderr.filters:
        if not isinstance(log_filter, _NotOnScreen):
            handler.addFilter(log_filter)
    root.addHandler(handler)
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    terminal = _stdout_is_terminal()
    log_file = configure_logging(f"EV_Driver {args.driver_id}", args.log_level, terminal, args.log_file)
    from ev_common.bus import Topics
    from ev_common.lifecycle import Shutdown

    from .bus import DriverBus
    from .driver import CPDirectory, Driver, run_file, run_single
    from .menu import line_reader, run_menu
    from .screen import Screen

    screen = Screen(terminal=terminal)
    entries: list[str] = []
    if args.file:
        try:
            entries = read_services_file(args.file)
        except ServicesFileError as exc:
            screen.error(str(exc))
            return 2
        mode = f"services file {args.file} ({len(entries)} request(s), {args.pause:g} s apart)"
    elif args.cp:
        mode = f"one request at {args.cp}"
    else:
        mode = "menu"

    shutdown = Shutdown().install()
    bus = DriverBus(args.kafka, args.driver_id, Topics(args.topic_prefix), screen)
    driver = Driver(args.driver_id, bus.send_request, screen, timeout=args.timeout,
                    supply_timeout=args.supply_timeout, stop=shutdown.event, link=bus)
    cps = CPDirectory(screen=screen)
    screen.started(args.driver_id, args.kafka, mode, str(log_file) if log_file and terminal else None)
    log.info("driver %s on Kafka %s (topic prefix %r)", args.driver_id, args.kafka, args.topic_prefix)
    bus.start(driver.handle, cps.handle)
    code = 1
    try:
        if entries:
            _, code = run_file(driver, entries, args.pause)
        elif args.cp:
            _, code = run_single(driver, args.cp)
        else:
            reader = line_reader(sys.stdin, screen)
            try:
                code = run_menu(driver, cps, screen, lambda: reader.get(shutdown.event))
            finally:
                reader.close()
    finally:
        if shutdown.signal_name:
            log.info("stopping (%s)", shutdown.signal_name)
        screen.stopping()
        bus.close()
    return code


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout is not None and sys.stdout.isatty()
    except (OSError, ValueError):
        return False
