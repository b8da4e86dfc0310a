"""EV_Central command line.

    EV_Central --port 5000 --kafka HOST:PORT [--db URL]     run Central
    EV_Central drivers add|remove|list [ID] [--db URL]      manage registered drivers
    EV_Central rejected [--db URL] [--json] [--limit N]     rows the database refused, set aside

``--ui panel`` shows the full-screen monitoring panel (ev_central/panel); its logs go
to the panel's message list and to ``--log-file``, never to the terminal. ``--ui log``
writes plain log lines to stderr and reads operator commands on stdin.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TextIO

from ev_common.bus import Topics
from ev_common.config import env, host_port, port_number
from ev_common.lifecycle import Shutdown, raise_file_limit
from ev_common.log import add_log_level_argument, setup_logging

from .core.network import DEFAULT_SILENCE_TIMEOUT
from .core.supplies import DEFAULT_END_GRACE, DEFAULT_STALE_AFTER
from .supply_service import DEFAULT_REQUEST_TTL

log = logging.getLogger(__name__)

UI_CHOICES = ("auto", "panel", "log")
LOG_FILE_NAME = "ev_central.log"
KAFKA_MISSING = "--kafka HOST:PORT is required (or set $EV_KAFKA, for example EV_KAFKA=localhost:9092)"
DB_HELP = ("database URL: mysql://user[:password]@host[:port]/database or sqlite:///path/to/file.db "
           "(default: $EV_DB, else the embedded SQLite file ev_central.db in $EV_DATA_DIR or the working directory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="EV_Central",
        description="EVCharging Central: registers CPs, watches their state, authorises supplies.",
        epilog="Operator commands, on the panel's command line or (--ui log) on standard input: "
               "stop <CP|all>, resume <CP|all>, list, help. Drivers: 'EV_Central drivers --help'.",
    )
    parser.add_argument("--port", type=port_number, required=True, help="TCP port Monitors connect to")
    parser.add_argument("--kafka", type=host_port, default=env("EV_KAFKA"), metavar="HOST:PORT",
                        help="Kafka bootstrap server (required unless $EV_KAFKA is set; default: $EV_KAFKA)")
    parser.add_argument("--db", default=env("EV_DB"), metavar="URL", help=DB_HELP)
    parser.add_argument("--host", default=env("EV_CENTRAL_HOST", "0.0.0.0"),
                        help="address to listen on (default: $EV_CENTRAL_HOST or 0.0.0.0, every interface)")
    parser.add_argument("--topic-prefix", default=env("EV_TOPIC_PREFIX", ""),
                        help="prefix of every Kafka topic name (default: $EV_TOPIC_PREFIX or none)")
    parser.add_argument("--topic-partitions", type=int, default=1, help="partitions of topics Central creates")
    parser.add_argument("--topic-replication", type=int, default=1, help="replication of topics Central creates")
    parser.add_argument("--silence-timeout", type=float, default=DEFAULT_SILENCE_TIMEOUT, metavar="SECONDS",
                        help="a Monitor silent this long is DESCONECTADO (default: %(default)s)")
    parser.add_argument("--request-ttl", type=float, default=DEFAULT_REQUEST_TTL, metavar="SECONDS",
                        help="a driver's request older than this when read is refused as expired "
                             "(default: %(default)s)")
    parser.add_argument("--end-grace", type=float, default=DEFAULT_END_GRACE, metavar="SECONDS",
                        help="after Central interrupts a supply, how long it waits for the CP's final figures "
                             "before closing the ticket with the last telemetry (default: %(default)s)")
    parser.add_argument("--stale-after", type=float, default=DEFAULT_STALE_AFTER, metavar="SECONDS",
                        help="a supply with no news from its CP for this long is closed as interrupted "
                             "(default: %(default)s)")
    parser.add_argument("--ui", default=env("EV_UI", "auto"), choices=UI_CHOICES,
                        help="panel: the full-screen monitoring panel; log: plain log lines on stderr and "
                             "operator commands on standard input; auto: the panel when standard output is a "
                             "terminal, else log (default: $EV_UI or auto)")
    parser.add_argument("--log-file", type=Path, metavar="PATH",
                        help="also write the log to this file; with the panel the log goes only there and to "
                             f"the panel's messages (default with the panel: {LOG_FILE_NAME} in $EV_DATA_DIR "
                             "or the working directory; in log mode: no file)")
    add_log_level_argument(parser)
    return parser


def choose_ui(requested: str, stdout: TextIO | None) -> str:
    """"panel" or "log": ``auto`` is the panel when standard output is a terminal."""
    if requested != "auto":
        return requested
    try:
        return "panel" if stdout is not None and stdout.isatty() else "log"
    except (ValueError, OSError):  # closed or odd stream
        return "log"


def default_log_file() -> Path:
    from .store import ENV_DATA_DIR

    return Path(os.environ.get(ENV_DATA_DIR, "").strip() or Path.cwd()) / LOG_FILE_NAME


def _like(handler: logging.Handler, template: logging.Handler) -> logging.Handler:
    """``handler`` with the format and filters of the one ``setup_logging`` made."""
    handler.setFormatter(template.formatter)
    for log_filter in template.filters:
        handler.addFilter(log_filter)
    return handler


def configure_logging(ui: str, level: str, log_file: Path | None) -> logging.Handler | None:
    """Log lines as ``ui`` needs; returns the stderr handler to take away while the panel is shown.

    Panel: the log file, plus stderr for warnings until the panel starts (so a failure to start
    is seen). Log: stderr as always, plus the file when one is given.
    """
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    if ui == "panel":
        assert log_file is not None
        setup_logging("EV_Central", level, stream=open(log_file, "a", encoding="utf-8"))
        root = logging.getLogger()
        terminal = _like(logging.StreamHandler(sys.stderr), root.handlers[0])
        terminal.setLevel(logging.WARNING)
        root.addHandler(terminal)
        return terminal
    setup_logging("EV_Central", level)
    if log_file is not None:
        root = logging.getLogger()
        root.addHandler(_like(logging.FileHandler(log_file, encoding="utf-8"), root.handlers[0]))
    return None


def build_drivers_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="EV_Central drivers", description="Register and list drivers.")
    parser.add_argument("action", choices=["add", "remove", "list"])
    parser.add_argument("driver_id", nargs="?", help="the driver's id (add, remove)")
    parser.add_argument("--name", default="", help="a display name (add)")
    parser.add_argument("--db", default=env("EV_DB"), metavar="URL", help=DB_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["drivers"]:
        return drivers_main(argv[1:])
    if argv[:1] == ["rejected"]:
        return rejected_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.kafka is None:
        parser.error(KAFKA_MISSING)
    if args.ui not in UI_CHOICES:  # a bad $EV_UI (argparse checks only what is typed)
        parser.error(f"--ui (or $EV_UI): {args.ui!r} is not one of {', '.join(UI_CHOICES)}")
    ui = choose_ui(args.ui, sys.stdout)
    raise_file_limit()  # one descriptor per Monitor (docs/performance.md)
    log_file = args.log_file or (default_log_file() if ui == "panel" else None)
    try:
        terminal = configure_logging(ui, args.log_level, log_file)
    except OSError as exc:
        print(f"cannot open the log file {log_file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    from .app import AnotherCentral, Central
    from .console import run_console
    from .store import StoreError, open_store
    from .view import CentralView, MessageLog

    messages = MessageLog()  # what the panel lists (every logger, Kafka's outages too); attached in log mode too
    logging.getLogger().addHandler(messages)
    shutdown = Shutdown().install()
    try:
        store = open_store(args.db)
    except (StoreError, ValueError) as exc:
        log.error("cannot open the database: %s", exc)
        return 1
    kafka = "%s:%d" % args.kafka
    try:
        central = Central(store, args.host, args.port, kafka=kafka, topics=Topics(args.topic_prefix),
                          silence_timeout=args.silence_timeout, request_ttl=args.request_ttl,
                          end_grace=args.end_grace, stale_after=args.stale_after,
                          topic_partitions=args.topic_partitions, topic_replication=args.topic_replication).start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc.strerror or exc)
        store.close()
        return 1
    except AnotherCentral as exc:
        log.error("%s", exc)
        store.close()
        return 1
    view = CentralView(central, messages)
    status = view.health()  # Kafka as the topic creation found it, the database, the Monitors
    where = f"panel on screen, log in {log_file}" if ui == "panel" else "Ctrl+C stops"
    log.log(logging.INFO if status.ok else logging.WARNING, "%s (Kafka %s; %s)",
            status.text if status.ok else f"Central running with problems: {status.text}", kafka, where)
    if ui == "panel":
        return run_panel(central, view, shutdown, terminal)
    if sys.stdin is not None and not sys.stdin.closed:
        threading.Thread(target=run_console, args=(central, shutdown.event, sys.stdin), name="operator",
                         daemon=True).start()
    try:
        shutdown.wait()
    finally:
        log.info("shutting down (%s)", shutdown.signal_name or "requested")
        central.stop()
    return 0


def run_panel(central, view, shutdown: Shutdown, terminal: logging.Handler | None) -> int:
    """The panel until the operator quits (q, Ctrl+C) or a signal sets ``shutdown``; then stop Central."""
    from .panel import CentralPanel

    root = logging.getLogger()
    if terminal is not None:
        root.removeHandler(terminal)  # nothing but the panel on the terminal while it runs
    panel = CentralPanel(view, stop_event=shutdown.event)
    try:
        panel.run()
    finally:
        if terminal is not None:
            root.addHandler(terminal)
        log.info("shutting down (%s)", shutdown.signal_name or "the operator quit the panel")
        central.stop()
    return 1 if panel.return_code else 0


def drivers_main(argv: list[str]) -> int:
    parser = build_drivers_parser()
    args = parser.parse_args(argv)
    if args.action in ("add", "remove") and not args.driver_id:
        parser.error(f"{args.action} needs a driver id")
    setup_logging("EV_Central drivers", "WARNING")
    from ev_common.protocol import LocalProtocolError
    from ev_common.protocol.fields import Identifier, Text

    from .store import StoreError, open_store

    if args.driver_id:
        try:
            Identifier().check(args.driver_id)
        except (ValueError, LocalProtocolError) as exc:
            parser.error(f"driver id: {exc}")
    try:  # the limits of the drivers table: 100 characters, no control characters
        Text(max_len=100, allow_empty=True).check(args.name)
    except ValueError as exc:
        parser.error(f"--name: {exc}")
    try:
        store = open_store(args.db)
    except (StoreError, ValueError) as exc:
        print(f"cannot open the database: {exc}", file=sys.stderr)
        return 1
    try:
        if args.action == "add":
            added = store.add_driver(args.driver_id, args.name)
            print(f"driver {args.driver_id} registered" if added else f"driver {args.driver_id} was already registered")
        elif args.action == "remove":
            removed = store.remove_driver(args.driver_id)
            print(f"driver {args.driver_id} removed" if removed else f"driver {args.driver_id} was not registered")
            return 0 if removed else 1
        else:
            for driver in store.list_drivers():
                print(f"{driver.driver_id}\t{driver.name}\t{driver.registered_at:%Y-%m-%d %H:%M:%S}")
    except StoreError as exc:
        print(f"database error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def build_rejected_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="EV_Central rejected",
        description="List the CP and session rows the database refused (table rejected_rows), newest first.")
    parser.add_argument("--db", default=env("EV_DB"), metavar="URL", help=DB_HELP)
    parser.add_argument("--json", action="store_true", help="one JSON array, each row's JSON included")
    parser.add_argument("--limit", type=int, default=100, help="at most this many rows (default: %(default)s)")
    return parser


def rejected_main(argv: list[str]) -> int:
    import json

    parser = build_rejected_parser()
    args = parser.parse_args(argv)
    if args.limit < 0:
        parser.error("--limit must be >= 0")
    setup_logging("EV_Central rejected", "WARNING")
    from .store import StoreError, open_store

    try:
        store = open_store(args.db)
    except (StoreError, ValueError) as exc:
        print(f"cannot open the database: {exc}", file=sys.stderr)
        return 1
    try:
        rows = store.list_rejected(args.limit)
    except StoreError as exc:
        print(f"database error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if args.json:
        out = []
        for row in rows:
            try:
                data = json.loads(row.row_json)
            except ValueError:  # cut: shown as the text it is
                data = row.row_json
            out.append({"id": row.id, "at": row.at.isoformat(), "kind": row.kind, "row_id": row.row_id,
                        "reason": row.reason, "row": data})
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no rejected rows")
    for row in rows:
        print(f"{row.id}\t{row.at:%Y-%m-%d %H:%M:%S}\t{row.kind}\t{_shown(row.row_id)}\t{_shown(row.reason)}")
    return 0


def _shown(text: str) -> str:
    """``text`` safe on a terminal: characters that are not printable become '?'."""
    return "".join(c if c.isprintable() else "?" for c in text)
