"""EV_Central command line.

    EV_Central --port 5000 --kafka HOST:PORT [--db URL]     run Central
    EV_Central drivers add|remove|list [ID] [--db URL]      manage registered drivers
    EV_Central accounts add|list|disable|enable|statement   manage accounts, print statements
    EV_Central tags add|list|disable|enable                 manage accounts' RFID tags
    EV_Central rejected [--db URL] [--json] [--limit N]     rows the database refused, set aside
    EV_Central audit [--since T] [--action A] [--json]      the audit log; 'audit verify' checks its chain
    EV_Central gateway --port 5000 --kafka HOST:PORT --id G1 a gateway serving Monitors for a core run
                                                            with --gateways (docs/scaling.md)

``--ui panel`` shows the full-screen monitoring panel (ev_central/panel); its logs go
to the panel's message list and to ``--log-file``, never to the terminal. ``--ui log``
writes plain log lines to stderr and reads operator commands on stdin.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from ev_common.bus import Topics
from ev_common.config import env, host_port, port_number, seconds
from ev_common.lifecycle import Shutdown, raise_file_limit
from ev_common.log import add_log_level_argument, setup_logging

from .core.network import DEFAULT_SILENCE_TIMEOUT
from .core.supplies import DEFAULT_END_GRACE, DEFAULT_STALE_AFTER
from .keys import MASTER_KEY_FILE, KeyError_
from .remote import DEFAULT_GATEWAY_TIMEOUT
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
               "stop <CP|all>, resume <CP|all>, keys revoke <CP> (secure mode), list, help. Drivers, accounts and "
               "RFID tags: "
               "'EV_Central drivers --help', 'EV_Central accounts --help', 'EV_Central tags --help'. The audit "
               "log: 'EV_Central audit --help'. Gateways serving Monitors on other processes or machines "
               "(docs/scaling.md): 'EV_Central gateway --help', and --gateways here.",
    )
    parser.add_argument("--port", type=port_number, required=True, help="TCP port Monitors connect to")
    parser.add_argument("--kafka", type=host_port, default=env("EV_KAFKA"), metavar="HOST:PORT",
                        help="Kafka bootstrap server (required unless $EV_KAFKA is set; default: $EV_KAFKA)")
    parser.add_argument("--mcsp-port", type=port_number, default=env("EV_MCSP_PORT"), metavar="PORT",
                        help="TCP port RFID charging stations speak MCSP/1.0 to (START/END with a tag, "
                             "docs/mcsp.md); off unless given (default: $EV_MCSP_PORT)")
    parser.add_argument("--db", default=env("EV_DB"), metavar="URL", help=DB_HELP)
    secure = parser.add_argument_group(
        "secure mode (docs/security.md)",
        "CPs authenticate with the credential EV_Registry gave them, over TLS, and seal every record with a key "
        "of their own. Without --secure Central runs in open mode (Release 1): CPs are not authenticated.")
    secure.add_argument("--secure", action="store_true", default=env("EV_SECURE", "") in ("1", "true", "yes"),
                        help="secure mode (default: $EV_SECURE=1, else open mode)")
    secure.add_argument("--tls-cert", type=Path, metavar="FILE",
                        help="Central's certificate for the Monitor port (PEM); default: ev_central.crt in "
                             "$EV_DATA_DIR or the working directory, made (self-signed) on first start")
    secure.add_argument("--tls-key", type=Path, metavar="FILE", help="the private key of --tls-cert (PEM)")
    secure.add_argument("--tls-name", action="append", metavar="HOST", dest="tls_names",
                        help="a name or address Monitors reach Central by, put in a certificate made on first "
                             "start (repeat it; default: localhost, 127.0.0.1 and this machine's name)")
    secure.add_argument("--master-key", type=Path, metavar="FILE",
                        help="the key that seals the CPs' keys in the database; default: "
                             f"{MASTER_KEY_FILE} in $EV_DATA_DIR or the working directory, made on first start "
                             "(keep it, and keep it private)")
    parser.add_argument("--host", default=env("EV_CENTRAL_HOST", "0.0.0.0"),
                        help="address to listen on (default: $EV_CENTRAL_HOST or 0.0.0.0, every interface)")
    api = parser.add_argument_group(
        "API (docs/api.md)",
        "Central's HTTP API and web page: the state of every CP, drivers, sessions, messages, the audit log, "
        "the weather and Central's health, live events, the operator's commands and EV_W's weather reports.")
    api.add_argument("--api-port", type=port_number, default=env("EV_API_PORT"), metavar="PORT",
                     help="serve the API on this port; off unless given (default: $EV_API_PORT)")
    api.add_argument("--api-host", metavar="HOST", help="address the API listens on (default: the same as --host)")
    api.add_argument("--api-cert", type=Path, metavar="FILE",
                     help="the API's certificate (PEM): HTTPS with --api-key; without them plain HTTP")
    api.add_argument("--api-key", type=Path, metavar="FILE", help="the private key of --api-cert (PEM)")
    api.add_argument("--api-token-file", type=Path, metavar="FILE",
                     help="file holding the operator's token for the API's commands (16-512 printable ASCII "
                          "characters; default: $EV_API_TOKEN); without one the commands answer 403")
    api.add_argument("--weather-token-file", type=Path, metavar="FILE",
                     help="file holding EV_W's token for its weather reports and alerts (default: "
                          "$EV_WEATHER_TOKEN); without one they answer 403")
    api.add_argument("--registry-url", default=env("EV_REGISTRY_URL"), metavar="URL",
                     help="EV_Registry (https://HOST:PORT), checked every 15 s for the API's health "
                          "(default: $EV_REGISTRY_URL; else 'not configured')")
    api.add_argument("--registry-ca", default=env("EV_REGISTRY_CA"), metavar="FILE",
                     help="verify EV_Registry's certificate against this CA file (default: $EV_REGISTRY_CA)")
    api.add_argument("--registry-fingerprint", default=env("EV_REGISTRY_FINGERPRINT"), metavar="SHA256:...",
                     help="or by its pinned fingerprint (default: $EV_REGISTRY_FINGERPRINT); neither: the "
                          "system's CAs")
    gateways = parser.add_argument_group(
        "gateways (docs/scaling.md)",
        "Monitors may also be served by gateway processes ('EV_Central gateway'), which pass their CPs' events "
        "to Central and Central's commands to them over Kafka. Without --gateways Central serves only the "
        "Monitors of --port.")
    gateways.add_argument("--gateways", action="store_true", default=env("EV_GATEWAYS", "") in ("1", "true", "yes"),
                          help="also serve the CPs of gateways (default: $EV_GATEWAYS=1, else off)")
    gateways.add_argument("--gateway-timeout", type=seconds(0.5, 3600), metavar="SECONDS",
                          default=env("EV_GATEWAY_TIMEOUT", str(DEFAULT_GATEWAY_TIMEOUT)),
                          help="a gateway silent this long is dead: its CPs go DESCONECTADO (default: "
                               "$EV_GATEWAY_TIMEOUT or %(default)s)")
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


def data_directory() -> Path:
    from .store import ENV_DATA_DIR

    return Path(os.environ.get(ENV_DATA_DIR, "").strip() or Path.cwd())


def secure_parts(args: argparse.Namespace):
    """Secure mode's TLS context for the Monitor port and the master key (made on first start
    when not given); says where they are and the certificate's fingerprint Monitors pin."""
    from ev_common.tls import ensure_certificate, fingerprint_of, server_context

    from .keys import load_or_make_master_key

    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("give both --tls-cert and --tls-key, or neither (a certificate is then made)")
    if args.tls_cert is None:
        names = args.tls_names or ["localhost", "127.0.0.1", socket.gethostname()]
        made = ensure_certificate(data_directory(), "ev_central", names)
        cert_path, key_path = made.cert_path, made.key_path
    else:
        cert_path, key_path = args.tls_cert, args.tls_key
    context = server_context(cert_path, key_path)
    fingerprint = fingerprint_of(Path(cert_path).read_bytes())
    log.info("TLS on the Monitor port with %s; its fingerprint (a Monitor's --central-fingerprint): %s",
             cert_path, fingerprint)
    master_key = load_or_make_master_key(args.master_key or data_directory() / MASTER_KEY_FILE)
    return context, master_key


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
    parser.add_argument("--account", metavar="ID",
                        help="(add) the account the driver belongs to; an already registered driver is moved "
                             "to it (a driver belongs to at most one account)")
    parser.add_argument("--db", default=env("EV_DB"), metavar="URL", help=DB_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["drivers"]:
        return drivers_main(argv[1:])
    if argv[:1] == ["rejected"]:
        return rejected_main(argv[1:])
    if argv[:1] == ["accounts"]:
        return accounts_main(argv[1:])
    if argv[:1] == ["tags"]:
        return tags_main(argv[1:])
    if argv[:1] == ["certificate"]:
        return certificate_main(argv[1:])
    if argv[:1] == ["gateway"]:
        from .gateway.cli import gateway_main

        return gateway_main(argv[1:])
    if argv[:1] == ["audit"]:
        from .audit_cli import audit_main

        return audit_main(argv[1:])
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
        tls, master_key = secure_parts(args) if args.secure else (None, None)
    except (OSError, ValueError, KeyError_) as exc:
        log.error("secure mode cannot start: %s", exc)
        store.close()
        return 1
    try:
        api_settings = api_parts(args) if args.api_port is not None else None
    except (OSError, ValueError) as exc:
        log.error("the API cannot start: %s", exc)
        store.close()
        return 1
    try:
        audit_store = open_store(args.db)  # the audit writer's own connection
    except (StoreError, ValueError) as exc:
        log.error("cannot open the database: %s", exc)
        store.close()
        return 1
    try:
        central = Central(store, args.host, args.port, kafka=kafka, topics=Topics(args.topic_prefix),
                          silence_timeout=args.silence_timeout, request_ttl=args.request_ttl,
                          end_grace=args.end_grace, stale_after=args.stale_after,
                          topic_partitions=args.topic_partitions, topic_replication=args.topic_replication,
                          mcsp_port=args.mcsp_port, secure=args.secure, tls=tls, master_key=master_key,
                          audit_store=audit_store, gateways=args.gateways,
                          gateway_timeout=args.gateway_timeout).start()
    except (OSError, AnotherCentral) as exc:
        if isinstance(exc, AnotherCentral):
            log.error("%s", exc)
        else:
            ports = f"ports {args.port} and {args.mcsp_port}" if args.mcsp_port is not None else f"port {args.port}"
            log.error("cannot listen on %s, %s: %s", args.host, ports, exc.strerror or exc)
        audit_store.close()
        store.close()
        return 1
    view = CentralView(central, messages)
    try:
        api = start_api(args, api_settings, central, view) if api_settings is not None else None
    except (OSError, ValueError, RuntimeError, StoreError) as exc:
        log.error("the API cannot start on %s, port %s: %s", args.api_host or args.host, args.api_port,
                  getattr(exc, "strerror", None) or exc)
        central.stop()
        return 1

    def stop_central() -> None:
        if api is not None:
            api.stop()
        central.stop()

    status = view.health()  # Kafka as the topic creation found it, the database, the Monitors
    where = f"panel on screen, log in {log_file}" if ui == "panel" else "Ctrl+C stops"
    log.log(logging.INFO if status.ok else logging.WARNING, "%s (Kafka %s; %s)",
            status.text if status.ok else f"Central running with problems: {status.text}", kafka, where)
    if ui == "panel":
        return run_panel(central, view, shutdown, terminal, stop=stop_central)
    if sys.stdin is not None and not sys.stdin.closed:
        threading.Thread(target=run_console, args=(central, shutdown.event, sys.stdin), name="operator",
                         daemon=True).start()
    try:
        shutdown.wait()
    finally:
        log.info("shutting down (%s)", shutdown.signal_name or "requested")
        stop_central()
    return 0


@dataclass(frozen=True)
class ApiSettings:
    operator_token: str | None
    weather_token: str | None
    cert: Path | None
    key: Path | None
    registry: object | None  # a RegistryProbe, or None


def api_parts(args: argparse.Namespace) -> ApiSettings:
    """The API's tokens and certificate, read before Central starts (``ValueError`` or
    ``OSError``: a message to show, never a token)."""
    from ev_common.tokens import read_token
    from .api.registry_probe import RegistryProbe

    if (args.api_cert is None) != (args.api_key is None):
        raise ValueError("give both --api-cert and --api-key (HTTPS), or neither (plain HTTP)")
    for path in (args.api_cert, args.api_key):
        if path is not None and not path.is_file():
            raise ValueError(f"{path} is not a file")
    operator = read_token(args.api_token_file, "EV_API_TOKEN", "the operator's token")
    weather = read_token(args.weather_token_file, "EV_WEATHER_TOKEN", "EV_W's token")
    registry = (RegistryProbe(args.registry_url, ca_file=args.registry_ca, fingerprint=args.registry_fingerprint)
                if args.registry_url else None)
    return ApiSettings(operator, weather, args.api_cert, args.api_key, registry)


def start_api(args: argparse.Namespace, settings: ApiSettings, central, view):
    """Central's API on ``--api-host``:``--api-port``, reading the database through a connection of
    its own (its reads never wait behind Central's writes); says where it listens."""
    from .api import ApiServer
    from .store import open_store

    store = open_store(args.db)
    try:
        api = ApiServer(central, view, args.api_host or args.host, args.api_port, cert=settings.cert,
                        key=settings.key, operator_token=settings.operator_token,
                        weather_token=settings.weather_token, store=store, own_store=True,
                        registry=settings.registry)
    except BaseException:
        store.close()
        raise
    api.start()
    log.info("API on %s (%s; docs/api.md, the page at /, the OpenAPI document at /openapi.json)", api.url,
             "HTTPS" if api.tls else "plain HTTP: give --api-cert and --api-key for HTTPS")
    if not api.tls:
        log.warning("the API is served over plain HTTP: its tokens travel in clear (--api-cert/--api-key for "
                    "HTTPS)")
    for token, what, flag in ((settings.operator_token, "operator's commands", "--api-token-file"),
                              (settings.weather_token, "weather reports (EV_W)", "--weather-token-file")):
        if token is None:
            log.warning("the API's %s answer 403: no token is configured (%s)", what, flag)
    return api


def run_panel(central, view, shutdown: Shutdown, terminal: logging.Handler | None,
              stop: Callable[[], None] | None = None) -> int:
    """The panel until the operator quits (q, Ctrl+C) or a signal sets ``shutdown``; then ``stop``
    (default: stop Central)."""
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
        (stop or central.stop)()
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
    if args.account is not None:
        if args.action != "add":
            parser.error("--account goes with add")
        try:
            Identifier().check(args.account)
        except (ValueError, LocalProtocolError) as exc:
            parser.error(f"--account: {exc}")
    try:
        store = open_store(args.db)
    except (StoreError, ValueError) as exc:
        print(f"cannot open the database: {exc}", file=sys.stderr)
        return 1
    try:
        if args.action == "add" and args.account is not None:
            return _add_driver_to_account(store, args.driver_id, args.name, args.account)
        if args.action == "add":
            added = store.add_driver(args.driver_id, args.name)
            print(f"driver {args.driver_id} registered" if added else f"driver {args.driver_id} was already registered")
        elif args.action == "remove":
            removed = store.remove_driver(args.driver_id)
            print(f"driver {args.driver_id} removed" if removed else f"driver {args.driver_id} was not registered")
            return 0 if removed else 1
        else:
            for driver in store.list_drivers():
                print(f"{driver.driver_id}\t{driver.name}\t{driver.registered_at:%Y-%m-%d %H:%M:%S}"
                      f"\t{driver.account_id or '-'}")
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


# -- accounts, RFID tags and statements ---------------------------------------------------------------------

STATEMENT_CSV_COLUMNS = ("session_id", "cp_id", "tag", "driver_id", "started_at", "ended_at", "kwh",
                         "price_eur_kwh", "amount_eur", "status")


def _account_id(text: str) -> str:
    """argparse type: an account id, as the accounts table takes it."""
    from ev_common.protocol import LocalProtocolError
    from ev_common.protocol.fields import Identifier

    try:
        return Identifier().check(text)
    except (ValueError, LocalProtocolError) as exc:
        raise argparse.ArgumentTypeError(f"account id: {exc}") from None


def _account_name(text: str) -> str:
    """argparse type: an account's name: at most 100 characters, no control characters."""
    from ev_common.protocol.fields import Text

    try:
        return Text(max_len=100, allow_empty=True).check(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _account_kind(text: str) -> str:
    from .core.entities import ACCOUNT_KIND_PATTERN

    if not ACCOUNT_KIND_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a kind: a word of 1-32 characters from a-z 0-9 _ -, starting with a letter "
            "(such as apartment or company)")
    return text


def _tag_uid(text: str) -> str:
    from .core.entities import normalise_tag_uid

    try:
        return normalise_tag_uid(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _day(text: str):
    """argparse type: a date YYYY-MM-DD."""
    import re
    from datetime import date

    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def build_accounts_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="EV_Central accounts",
        description="Manage accounts (who pays for the sessions of their RFID tags and drivers) and print "
                    "their statements. Give tags with 'EV_Central tags add UID --account ID' and drivers with "
                    "'EV_Central drivers add DRIVER --account ID'.",
        epilog="Exit status: 0 done; 1 refused (no such account, already exists) or database error; 2 bad "
               "arguments.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="create an active account",
                             description="Create an active account. An account that exists is left as it is "
                                         "(exit status 1).")
    add.add_argument("account_id", metavar="ID", type=_account_id, help="the account's id: 1-64 of A-Z a-z 0-9 _ -")
    add.add_argument("--name", default="", type=_account_name, help="a display name, up to 100 characters")
    add.add_argument("--kind", default="other", type=_account_kind,
                     help="a word such as apartment or company (default: %(default)s)")
    actions.add_parser("list", help="every account: id, kind, active or disabled, name",
                       description="Every account, one a line: id, kind, active or disabled, name.")
    for action, what in (("disable", "its tags and drivers are not to charge"), ("enable", "back in use")):
        one = actions.add_parser(action, help=f"{action} an account ({what})",
                                 description=f"{action.capitalize()} an account ({what}); its tags, drivers and "
                                             "sessions are kept.")
        one.add_argument("account_id", metavar="ID", type=_account_id, help="the account's id")
    statement = actions.add_parser(
        "statement", help="the sessions booked to an account and their totals",
        description="Every session booked to the account that started in the period (days in UTC, both "
                    "included), oldest first, whatever its status, and the totals: their exact sums. Open "
                    "sessions count with their figures so far. Amounts are exact decimals, as stored and as on "
                    "tickets; times are UTC.",
        epilog=f"CSV columns, in this order: {', '.join(STATEMENT_CSV_COLUMNS)}. 'tag' is the RFID tag's UID "
               "and 'driver_id' the driver's id, whichever charged (the other is empty); 'ended_at' is empty "
               "while the session is open; times are ISO-8601 UTC.")
    statement.add_argument("account_id", metavar="ID", type=_account_id, help="the account's id")
    statement.add_argument("--from", dest="start", type=_day, metavar="DATE",
                           help="first day, YYYY-MM-DD (default: no limit)")
    statement.add_argument("--to", dest="end", type=_day, metavar="DATE",
                           help="last day, YYYY-MM-DD, included (default: no limit)")
    statement.add_argument("--csv", action="store_true",
                           help="CSV: a header row, then one row per session; no total row")
    for sub in actions.choices.values():
        sub.add_argument("--db", default=env("EV_DB"), metavar="URL", help=DB_HELP)
    return parser


def build_certificate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="EV_Central certificate",
        description="Make a self-signed TLS certificate and its key (mode 0600) in DIR, or load the ones there, "
                    "and print its SHA-256 fingerprint: Central's for its Monitor port (secure mode), or "
                    "EV_Registry's. Clients trust it by that fingerprint, or by the .crt file itself as their CA "
                    "file (docs/security.md).")
    parser.add_argument("--dir", required=True, type=Path, metavar="DIR", help="where NAME.crt and NAME.key are")
    parser.add_argument("--name", default="ev_central", help="the files' name and the certificate's CN "
                                                             "(default: %(default)s)")
    parser.add_argument("--host", action="append", required=True, metavar="HOST", dest="hosts",
                        help="a DNS name or IP address clients reach the server by (repeat it)")
    return parser


def certificate_main(argv: list[str]) -> int:
    args = build_certificate_parser().parse_args(argv)
    from ev_common.tls import ensure_certificate

    try:
        made = ensure_certificate(args.dir, args.name, args.hosts)
    except (OSError, ValueError) as exc:
        print(f"cannot make or load the certificate: {exc}", file=sys.stderr)
        return 1
    print(f"{'made' if made.created else 'kept'} {made.cert_path} ({made.fingerprint})")
    return 0


def build_tags_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="EV_Central tags",
        description="Manage RFID tags. A tag belongs to one account; its UID is 4, 7, 8 or 10 bytes in hex "
                    "(8, 14, 16 or 20 digits), with or without ':', '-' or spaces between bytes, and is kept "
                    "in upper case without separators.",
        epilog="Exit status: 0 done; 1 refused (no such tag or account, disabled account, tag already stored) "
               "or database error; 2 bad arguments.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="give a new, active tag to an account",
                             description="Give a new, active tag to an active account. A tag already stored is "
                                         "left as it is (exit status 1).")
    add.add_argument("tag_uid", metavar="UID", type=_tag_uid, help="the tag's UID, e.g. 16AC936B1692E73A")
    add.add_argument("--account", required=True, type=_account_id, metavar="ID", help="the account it belongs to")
    listing = actions.add_parser("list", help="tags: UID, account, active or disabled, added at (UTC)",
                                 description="Tags, one a line: UID, account, active or disabled, when added "
                                             "(UTC).")
    listing.add_argument("--account", type=_account_id, metavar="ID", help="only this account's tags")
    for action in ("disable", "enable"):
        one = actions.add_parser(action, help=f"{action} a tag", description=f"{action.capitalize()} a tag.")
        one.add_argument("tag_uid", metavar="UID", type=_tag_uid, help="the tag's UID")
    for sub in actions.choices.values():
        sub.add_argument("--db", default=env("EV_DB"), metavar="URL", help=DB_HELP)
    return parser


def _open_for_command(name: str, url: str | None):
    """The store for a subcommand, or None (the reason printed)."""
    setup_logging(name, "WARNING")
    from .store import StoreError, open_store

    try:
        return open_store(url)
    except (StoreError, ValueError) as exc:
        print(f"cannot open the database: {exc}", file=sys.stderr)
        return None


def _state(active: bool) -> str:
    return "active" if active else "disabled"


def accounts_main(argv: list[str]) -> int:
    parser = build_accounts_parser()
    args = parser.parse_args(argv)
    if args.action == "statement" and args.start and args.end and args.start > args.end:
        parser.error(f"--from {args.start} is after --to {args.end}")
    store = _open_for_command("EV_Central accounts", args.db)
    if store is None:
        return 1
    from .store import StoreError, StoreRefused

    try:
        if args.action == "add":
            if not store.add_account(args.account_id, args.name, args.kind):  # as drivers add: not a failure
                print(f"account {args.account_id} already exists; nothing changed")
                return 0
            print(f"account {args.account_id} created")
        elif args.action == "list":
            for account in store.list_accounts():
                print(f"{account.account_id}\t{account.kind}\t{_state(account.active)}\t{_shown(account.name)}")
        elif args.action in ("disable", "enable"):
            return _set_active(store.get_account(args.account_id), f"account {args.account_id}", args.action,
                               lambda active: store.set_account_active(args.account_id, active))
        else:
            return _statement(store, args)
    except StoreRefused as exc:
        print(f"refused: {exc.reason}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"database error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def tags_main(argv: list[str]) -> int:
    parser = build_tags_parser()
    args = parser.parse_args(argv)
    store = _open_for_command("EV_Central tags", args.db)
    if store is None:
        return 1
    from .store import StoreError, StoreRefused

    try:
        if args.action == "add":
            if not store.add_tag(args.tag_uid, args.account):
                tag = store.get_tag(args.tag_uid)
                if tag is not None and tag.account_id == args.account:  # added before: not a failure
                    print(f"tag {args.tag_uid} already belongs to account {args.account}; nothing changed")
                    return 0
                owner = f" to account {tag.account_id}" if tag is not None else ""
                print(f"tag {args.tag_uid} already belongs{owner}; nothing changed", file=sys.stderr)
                return 1
            print(f"tag {args.tag_uid} added to account {args.account}")
        elif args.action == "list":
            if args.account is not None and store.get_account(args.account) is None:
                print(f"no account {args.account}", file=sys.stderr)
                return 1
            for tag in store.list_tags(args.account):
                print(f"{tag.tag_uid}\t{tag.account_id}\t{_state(tag.active)}\t{tag.created_at:%Y-%m-%d %H:%M:%S}")
        else:
            return _set_active(store.get_tag(args.tag_uid), f"tag {args.tag_uid}", args.action,
                               lambda active: store.set_tag_active(args.tag_uid, active))
    except StoreRefused as exc:
        print(f"refused: {exc.reason}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"database error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _set_active(row, what: str, action: str, set_active) -> int:
    """disable/enable an account or a tag (``row``: as stored now, or None)."""
    active = action == "enable"
    if row is None or not set_active(active):
        print(f"no {what}", file=sys.stderr)
        return 1
    print(f"{what} {action}d" if row.active != active else f"{what} was already {action}d")
    return 0


def _add_driver_to_account(store, driver_id: str, name: str, account_id: str) -> int:
    """``drivers add DRIVER --account ID``: register the driver if needed and put it in the account; nothing
    is registered when the account does not exist or is disabled."""
    account = store.get_account(account_id)
    if account is None or not account.active:
        print(f"refused: {'no account' if account is None else 'disabled account'} {account_id}", file=sys.stderr)
        return 1
    added = store.add_driver(driver_id, name)
    store.set_driver_account(driver_id, account_id)
    print(f"driver {driver_id} {'registered' if added else 'was already registered'}; account {account_id}")
    return 0


def _statement(store, args) -> int:
    import csv
    from datetime import datetime, time, timedelta, timezone

    start = None if args.start is None else datetime.combine(args.start, time(), timezone.utc)
    end = None if args.end is None else datetime.combine(args.end + timedelta(days=1), time(), timezone.utc)
    statement = store.account_statement(args.account_id, start, end)
    if statement is None:
        print(f"no account {args.account_id}", file=sys.stderr)
        return 1
    rows = [(s.session_id, s.cp_id, s.tag_uid or "", s.driver_id or "", s.started_at.isoformat(),
             "" if s.ended_at is None else s.ended_at.isoformat(), str(s.kwh), str(s.price_eur_kwh),
             str(s.amount_eur), s.status) for s in statement.sessions]
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(STATEMENT_CSV_COLUMNS)
        writer.writerows(rows)
        return 0
    account = statement.account
    period = {(False, False): "all sessions", (True, False): f"from {args.start}", (False, True): f"to {args.end}",
              (True, True): f"{args.start} to {args.end}"}[(args.start is not None, args.end is not None)]
    print(f"Statement of account {account.account_id} ({_shown(account.name) or 'no name'}, {account.kind}, "
          f"{_state(account.active)})")
    print(f"Period: {period} (UTC days, by the session's start)")
    header = ("session", "CP", "tag", "driver", "started (UTC)", "ended (UTC)", "kWh", "EUR/kWh", "amount EUR",
              "status")
    shown = [(r[0], r[1], r[2] or "-", r[3] or "-", f"{s.started_at:%Y-%m-%d %H:%M:%S}",
              "-" if s.ended_at is None else f"{s.ended_at:%Y-%m-%d %H:%M:%S}", *r[6:])
             for r, s in zip(rows, statement.sessions)]
    widths = [max(len(str(line[i])) for line in [header, *shown]) for i in range(len(header))]
    right = {6, 7, 8}
    for line in [header, *shown]:
        print("  ".join(str(v).rjust(w) if i in right else str(v).ljust(w)
                        for i, (v, w) in enumerate(zip(line, widths))).rstrip())
    open_count = sum(1 for s in statement.sessions if s.ended_at is None)
    print(f"Total: {len(statement.sessions)} sessions, {statement.total_kwh} kWh, {statement.total_amount_eur} EUR"
          + (f" ({open_count} still open: their figures so far)" if open_count else ""))
    return 0
