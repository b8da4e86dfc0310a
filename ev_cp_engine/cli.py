"""EV_CP_E command line: ``EV_CP_E --port 5001 [--kafka HOST:PORT] [--auto] [--mcsp HOST:PORT]``.

On a terminal (stdin and stdout) and without ``--auto`` the CP's menu takes the
screen (``menu.py``); otherwise the Engine prints timestamped lines and reads its
keys from stdin as they come (``keyboard.py``).

With ``--mcsp`` (Central's MCSP port) the CP has an RFID reader (``rfid.py``): the ``t``
key presents a tag; under ``--auto``, ``--rfid-tag UID`` presents one by itself.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable

from ev_common.config import env, host_port, port_number
from ev_common.lifecycle import Shutdown
from ev_common.log import add_log_level_argument, setup_logging
from ev_common.mcsp import LocalProtocolError, check_key

from .engine import DEFAULT_AUTO_SECONDS, DEFAULT_PLUG_TIMEOUT, DEFAULT_POWER_KW, DEFAULT_TIME_SCALE
from .rfid import DEFAULT_EVERY

log = logging.getLogger(__name__)

STOP_CONFIRM_WAIT = 3.0  # at a clean stop, how long the broker may take to confirm the last supply end
KEYS = ("keys: [p] plug in  [u] unplug  [f] fault on/off  [r] request a supply for a driver  "
        "[t] tap an RFID tag (with --mcsp)  [q] quit")


def _positive(what: str, maximum: int):
    """argparse type: a decimal above 0 and at most ``maximum``."""

    def parse(text: str) -> Decimal:
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number ({what})") from None
        if not value.is_finite() or not 0 < value <= maximum:
            raise argparse.ArgumentTypeError(f"the {what} must be above 0 and at most {maximum}")
        return value

    return parse


def _tag_uid(text: str) -> str:
    """argparse type: an RFID tag's UID (``check_key``), normalised."""
    try:
        return check_key(text)
    except LocalProtocolError:
        raise argparse.ArgumentTypeError("not a tag UID: 4, 7, 8 or 10 bytes in hex, e.g. 16AC936B1692E73A") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="EV_CP_E",
        description="EVCharging CP Engine: the charging point itself. Its Monitor connects to --port.",
        epilog=KEYS + ". SIGUSR1 also toggles the fault.",
    )
    parser.add_argument("--port", type=port_number, required=True, help="TCP port the Monitor connects to")
    parser.add_argument("--host", default=env("EV_ENGINE_HOST", "0.0.0.0"),
                        help="address to listen on (default: $EV_ENGINE_HOST or 0.0.0.0)")
    parser.add_argument("--kafka", type=host_port, default=env("EV_KAFKA", "localhost:9092"), metavar="HOST:PORT",
                        help="Kafka bootstrap server for telemetry (default: $EV_KAFKA or localhost:9092)")
    parser.add_argument("--topic-prefix", default=env("EV_TOPIC_PREFIX", ""),
                        help="prefix of every Kafka topic name (default: $EV_TOPIC_PREFIX or none)")
    parser.add_argument("--auto", action="store_true",
                        help="unattended: plug in about 1 s after each authorisation, unplug after --auto-seconds")
    parser.add_argument("--auto-seconds", type=float, default=DEFAULT_AUTO_SECONDS, metavar="SECONDS",
                        help="with --auto, how long each supply lasts (default: %(default)s)")
    parser.add_argument("--power-kw", type=_positive("power in kW", 1000), default=DEFAULT_POWER_KW, metavar="KW",
                        help="simulated charging power (default: %(default)s kW)")
    parser.add_argument("--time-scale", type=_positive("time scale", 3600), default=DEFAULT_TIME_SCALE, metavar="FACTOR",
                        help="simulated seconds of charging per real second, so that short demo supplies "
                             "deliver visible energy (default: %(default)s; 1 is real time)")
    parser.add_argument("--data-dir", default=env("EV_DATA_DIR", "."), metavar="DIR",
                        help="where the journal of the supply in progress is kept, so that a crash loses "
                             "nothing (default: $EV_DATA_DIR or the working directory)")
    parser.add_argument("--plug-timeout", type=float, default=DEFAULT_PLUG_TIMEOUT, metavar="SECONDS",
                        help="an authorised supply not plugged in within this time is cancelled "
                             "(default: %(default)s)")
    parser.add_argument("--mcsp", type=host_port, default=env("EV_MCSP"), metavar="HOST:PORT",
                        help="Central's MCSP address (its --mcsp-port) for the CP's RFID reader: the [t] key "
                             "presents a tag (default: $EV_MCSP; without it the reader is off)")
    parser.add_argument("--rfid-tag", type=_tag_uid, metavar="UID",
                        help="with --auto and --mcsp: present this tag (its UID in hex) by itself, starting a "
                             "supply whenever the CP is free and ending it after --auto-seconds")
    parser.add_argument("--rfid-every", type=_positive("time between tag supplies", 86400), default=DEFAULT_EVERY,
                        metavar="SECONDS", help="with --rfid-tag, at least this long after a tag supply ended or "
                                                "a START was refused before the next START; longer after repeated "
                                                "failures (default: %(default)g)")
    add_log_level_argument(parser)
    return parser


def use_menu(auto: bool, stdin=None, stdout=None) -> bool:
    """The menu is for a person at a terminal: not under --auto, not on pipes or files."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        return not auto and stdin is not None and stdout is not None and stdin.isatty() and stdout.isatty()
    except (OSError, ValueError):  # closed
        return False


def run_ticks(engine, publisher, stop: threading.Event, watch=None, remind=None, rfid=None) -> None:
    """Every second until ``stop``: the Engine's tick (telemetry, --auto, plug timeout) and the
    RFID reader's (``rfid``: --auto's tag supplies); the publisher's view of the broker to
    ``watch`` (a KafkaWatch); the status to ``remind``."""
    from .screen import EngineStatus

    next_tick = time.monotonic()
    while not stop.wait(max(0.0, next_tick - time.monotonic())):
        next_tick += 1.0
        if next_tick < time.monotonic():  # fell behind (paused process): do not burst
            next_tick = time.monotonic() + 1.0
        try:
            engine.tick()
        except Exception:  # a bug in one tick must not stop the next ones
            log.exception("the Engine's tick failed")
        if rfid is not None:
            try:
                rfid.tick()
            except Exception:
                log.exception("the RFID reader's tick failed")
        publisher.poll(0)
        if watch is not None:
            watch.publisher_says(publisher.reachable)
        if remind is not None:
            remind(EngineStatus.read(engine))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rfid_tag is not None and not args.auto:
        parser.error("--rfid-tag presents a tag by itself under --auto only (without it, press [t])")
    if args.rfid_tag is not None and args.mcsp is None:
        parser.error("--rfid-tag needs --mcsp HOST:PORT (Central's MCSP port), or $EV_MCSP")
    setup_logging("EV_CP_E", args.log_level)
    from ev_common.bus import Publisher, Topics
    from ev_common.records import Record, SupplyRequest

    from ev_common.bus import Producer

    from .engine import Engine
    from .health_server import HealthServer
    from .journal import SupplyJournal
    from .secure_mode import SecureMark
    from .kafka_watch import PROBE_TIMEOUT, KafkaWatch
    from .keyboard import Prompt, run_keyboard
    from .rfid import NO_MCSP, RfidReader
    from .screen import Messages, MessagesLogHandler, Reminder

    shutdown = Shutdown().install()
    menu = use_menu(args.auto)
    messages = Messages()  # the Engine's lines: plain on stdout, or in the menu while it runs
    saved_handlers = list(logging.getLogger().handlers)
    if menu:  # from the start, lines and log records wait for the menu (none goes behind it)
        messages.attach()
        _log_to(MessagesLogHandler(messages))
    topics = Topics(args.topic_prefix)
    kafka = "%s:%d" % args.kafka
    producers = []  # the publisher's producer (a new one replaces it after a fatal error)

    def new_producer(config: dict):
        producers.append(Producer(config))
        del producers[:-1]
        return producers[-1]

    publisher = Publisher(kafka, "ev-cp-engine", producer_factory=new_producer)

    def emit(record: Record, on_delivery: Callable[[bool], None] | None = None, seal=None) -> None:
        """To its topic; with ``seal`` (secure mode), sealed by it for that topic each time it is produced."""
        if isinstance(record, SupplyRequest):
            topic, key = topics.driver_requests, record.driver_id
        else:
            topic, key = topics.cp_telemetry, getattr(record, "cp_id", "")
        encoder = None if seal is None else (lambda r: seal(topic, r))
        publisher.publish(topic, key, record, on_delivery, encode=encoder)

    journal = SupplyJournal(Path(args.data_dir) / f"ev_cp_engine-{args.port}.journal.json")
    secure_mark = SecureMark(Path(args.data_dir) / f"ev_cp_engine-{args.port}.secure.json")
    engine = Engine(emit, power_kw=args.power_kw, plug_timeout=args.plug_timeout, time_scale=args.time_scale,
                    auto_seconds=args.auto_seconds if args.auto else None, journal=journal, say=messages,
                    secure_mark=secure_mark)
    if engine.waiting_for_key:
        messages("secure mode (this CP got a key before): no record leaves in clear; waiting for this CP's key "
                 "from its Monitor")
    engine.recover()  # a supply the last run of this Engine left unfinished is reported first
    reader = RfidReader(engine, _station_client(args.mcsp), say=messages, auto_key=args.rfid_tag,
                        every=float(args.rfid_every))
    # whether the broker answers: asked once before the Monitor can ask this Engine, then by a thread
    watch = KafkaWatch(lambda: producers[-1].list_topics(timeout=PROBE_TIMEOUT), engine.kafka_ok)
    watch.check()
    try:
        server = HealthServer(engine, args.host, args.port).start()
    except OSError as exc:
        reader.close()
        _log_to(*saved_handlers)
        messages.detach()
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc.strerror or exc)
        return 1
    threading.Thread(target=watch.run, args=(shutdown.event,), name="kafka-watch", daemon=True).start()
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=engine.toggle_fault).start())
    host, port = server.address
    listening = f"Engine listening for its Monitor on {host}:{port}"
    if args.mcsp is not None:
        listening += f"; RFID reader to Central's MCSP port {args.mcsp[0]}:{args.mcsp[1]}"
    try:
        if menu:
            from .menu import run_menu

            messages(listening)
            ticker = threading.Thread(target=run_ticks, args=(engine, publisher, shutdown.event, watch),
                                      kwargs={"rfid": reader}, name="tick", daemon=True)
            ticker.start()
            run_menu(engine, messages, shutdown.event, subtitle=f"{listening}; Kafka {kafka}", rfid=reader)
            ticker.join(2)
        else:
            messages(f"{listening} ({'auto mode; ' if args.auto else ''}{KEYS})")
            keys = {"p": engine.plug, "u": engine.unplug, "f": engine.toggle_fault, "q": shutdown.request,
                    "r": Prompt("driver id: ", lambda driver: engine.request_supply(driver) if driver else None),
                    "t": (Prompt("tag UID: ", lambda uid: reader.tap(uid) if uid else None) if args.mcsp
                          else lambda: messages(NO_MCSP))}
            threading.Thread(target=run_keyboard, args=(keys, shutdown.event), name="keyboard", daemon=True).start()
            run_ticks(engine, publisher, shutdown.event, watch, Reminder(messages), reader)
    finally:
        log.info("shutting down (%s)", shutdown.signal_name or "requested")
        reader.close()  # an exchange with Central's MCSP port in flight is abandoned
        engine.shut_down()  # ends the supply ("engine stopped") and tells Central its figures
        server.stop()
        publisher.flush(STOP_CONFIRM_WAIT)  # the broker's confirmation of that end, for a bounded time
        unconfirmed = engine.unconfirmed_ends()
        if unconfirmed:
            messages(f"{unconfirmed} supply end(s) not confirmed by Kafka: kept in the journal, "
                     "sent again at the next start")
        if menu:
            _log_to(*saved_handlers)
    return 0


def _station_client(mcsp: tuple[str, int] | None):
    """The RFID reader's client of Central's MCSP port, or None without ``--mcsp``."""
    if mcsp is None:
        return None
    from ev_rfid.client import StationClient

    return StationClient(*mcsp)


def _log_to(*handlers: logging.Handler) -> None:
    """Replace the root logger's handlers."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
