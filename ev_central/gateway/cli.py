"""``EV_Central gateway``: one gateway process (docs/scaling.md, "Gateways").

    EV_Central gateway --port 5000 --kafka HOST:PORT --id G1 [--reuse-port] [--topic-prefix P]

Serves Monitors on ``--port`` as Central does and passes their CPs' events to the core (an
``EV_Central --gateways``) over Kafka, and the core's commands to them. Several gateways on one
machine share a port with ``--reuse-port``. Logs go to stderr; Ctrl+C (or SIGTERM) stops it
cleanly: its Monitors go to another gateway.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ev_common.bus import Topics
from ev_common.config import env, host_port, port_number, seconds
from ev_common.lifecycle import Shutdown, raise_file_limit
from ev_common.log import add_log_level_argument, setup_logging

from ..core.network import DEFAULT_SILENCE_TIMEOUT
from .edge import DEFAULT_BEACON_INTERVAL, DEFAULT_ROSTER_INTERVAL

log = logging.getLogger(__name__)

_YES = ("1", "true", "yes")


def _gateway_id(text: str) -> str:
    from .wire import GATEWAY_ID

    if not GATEWAY_ID.fullmatch(text or ""):
        raise argparse.ArgumentTypeError(f"{text!r} is not a gateway id: 1-32 of A-Z a-z 0-9 _ -")
    return text


def build_gateway_parser() -> argparse.ArgumentParser:
    from ..cli import DB_HELP
    from ..keys import MASTER_KEY_FILE

    parser = argparse.ArgumentParser(
        prog="EV_Central gateway",
        description="A gateway of EVCharging Central: serves Monitors (handshake, frames, signs of life, silence; "
                    "TLS and credentials in secure mode) and exchanges only their CPs' events and the core's "
                    "commands with the core (EV_Central --gateways) over Kafka. Run several, on one port with "
                    "--reuse-port or behind a TCP load balancer (docs/scaling.md).",
        epilog="Every gateway needs its own --id; the core and its gateways share --kafka and --topic-prefix. "
               "Ctrl+C or SIGTERM stops it cleanly (its Monitors register again through another gateway).")
    parser.add_argument("--port", type=port_number, required=True, help="TCP port Monitors connect to")
    parser.add_argument("--kafka", type=host_port, default=env("EV_KAFKA"), metavar="HOST:PORT",
                        help="Kafka bootstrap server (required unless $EV_KAFKA is set; default: $EV_KAFKA)")
    parser.add_argument("--id", type=_gateway_id, default=env("EV_GATEWAY_ID"), metavar="ID", dest="gateway_id",
                        help="this gateway's id, unique among the core's gateways: 1-32 of A-Z a-z 0-9 _ - "
                             "(required unless $EV_GATEWAY_ID is set)")
    parser.add_argument("--host", default=env("EV_GATEWAY_HOST", "0.0.0.0"),
                        help="address to listen on (default: $EV_GATEWAY_HOST or 0.0.0.0, every interface)")
    parser.add_argument("--reuse-port", action="store_true", default=env("EV_REUSE_PORT", "") in _YES,
                        help="share the port with other gateways on this machine (SO_REUSEPORT; the system spreads "
                             "new connections among them; default: $EV_REUSE_PORT=1, else off)")
    parser.add_argument("--topic-prefix", default=env("EV_TOPIC_PREFIX", ""),
                        help="prefix of every Kafka topic name, as the core's (default: $EV_TOPIC_PREFIX or none)")
    parser.add_argument("--topic-partitions", type=int, default=1, help="partitions of topics the gateway creates")
    parser.add_argument("--topic-replication", type=int, default=1, help="replication of topics the gateway creates")
    parser.add_argument("--silence-timeout", type=seconds(0.5, 3600), default=DEFAULT_SILENCE_TIMEOUT,
                        metavar="SECONDS", help="a Monitor silent this long loses its session and its CP goes "
                                                "DESCONECTADO (default: %(default)s)")
    parser.add_argument("--beacon-interval", type=seconds(0.1, 60), default=DEFAULT_BEACON_INTERVAL,
                        metavar="SECONDS", help="how often the gateway tells the core it is alive (default: "
                                                "%(default)s; the core's --gateway-timeout must be several times "
                                                "longer)")
    parser.add_argument("--roster-interval", type=seconds(1, 3600), default=DEFAULT_ROSTER_INTERVAL,
                        metavar="SECONDS", help="how often a beacon carries the list of CPs held here (also sent at "
                                                "once when the core asks; default: %(default)s)")
    parser.add_argument("--max-sessions", type=int, default=10_000, metavar="N",
                        help="Monitor sessions served at most; more are refused at the handshake (default: "
                             "%(default)s)")
    secure = parser.add_argument_group(
        "secure mode (docs/security.md)",
        "As EV_Central --secure: the gateway serves TLS and checks each CP's credential against the database, "
        "handing out the CP's key sealed there with the master key (the core's own). The core runs --secure too.")
    secure.add_argument("--secure", action="store_true", default=env("EV_SECURE", "") in _YES,
                        help="secure mode (default: $EV_SECURE=1, else open mode)")
    secure.add_argument("--tls-cert", type=Path, metavar="FILE",
                        help="the certificate for the Monitor port (PEM); default: ev_central.crt in $EV_DATA_DIR "
                             "or the working directory, made (self-signed) on first start")
    secure.add_argument("--tls-key", type=Path, metavar="FILE", help="the private key of --tls-cert (PEM)")
    secure.add_argument("--tls-name", action="append", metavar="HOST", dest="tls_names",
                        help="a name or address Monitors reach the gateway by, put in a certificate made on first "
                             "start (repeat it)")
    secure.add_argument("--master-key", type=Path, metavar="FILE",
                        help=f"the core's master key file (default: {MASTER_KEY_FILE} in $EV_DATA_DIR or the "
                             "working directory)")
    secure.add_argument("--db", default=env("EV_DB"), metavar="URL",
                        help="(secure mode) the core's database, where the CPs' credentials and keys are; "
                             + DB_HELP.split(": ", 1)[1])
    add_log_level_argument(parser)
    return parser


def gateway_main(argv: list[str]) -> int:
    parser = build_gateway_parser()
    args = parser.parse_args(argv)
    if args.kafka is None:
        parser.error("--kafka HOST:PORT is required (or set $EV_KAFKA)")
    if args.gateway_id is None:
        parser.error("--id is required (or set $EV_GATEWAY_ID)")
    setup_logging(f"EV_Central gateway {args.gateway_id}", args.log_level)
    raise_file_limit()  # one descriptor per Monitor
    shutdown = Shutdown().install()
    from .edge import Gateway

    tls = authenticator = keys = store = audit = None
    if args.secure:
        try:
            tls, authenticator, keys, store, audit = _secure_parts(args)
        except Exception as exc:  # OSError, ValueError, StoreError, KeyError_: a message, never a secret
            log.error("secure mode cannot start: %s", exc)
            return 1
    else:
        log.warning("open mode: CPs are NOT authenticated (--secure authenticates them, docs/security.md)")
    kafka = "%s:%d" % args.kafka
    try:
        gateway = Gateway(args.gateway_id, args.host, args.port, kafka, topics=Topics(args.topic_prefix),
                          reuse_port=args.reuse_port, silence_timeout=args.silence_timeout,
                          beacon_interval=args.beacon_interval, roster_interval=args.roster_interval,
                          max_sessions=args.max_sessions, tls=tls, authenticator=authenticator, keys=keys,
                          partitions=args.topic_partitions, replication=args.topic_replication).start()
    except OSError as exc:
        log.error("cannot listen on %s, port %d: %s", args.host, args.port, exc.strerror or exc)
        _close(audit, store)
        return 1
    log.info("gateway %s running (Kafka %s, topic prefix '%s'); Ctrl+C stops", args.gateway_id, kafka,
             args.topic_prefix)
    try:
        shutdown.wait()
    finally:
        log.info("shutting down (%s)", shutdown.signal_name or "requested")
        gateway.stop()
        _close(audit, store)
    return 0


def _secure_parts(args):
    """TLS on the Monitor port, and the credentials' check against the core's database."""
    from ..audit import SPOOL_SUFFIX, AuditLog
    from ..auth import CPAuthenticator
    from ..cli import data_directory, secure_parts
    from ..keys import KeyRing
    from ..store import open_store
    from ..tickets import TicketBox

    if not args.db:
        raise ValueError("secure mode needs the core's database: --db URL (or $EV_DB)")
    tls, master_key = secure_parts(args)
    store = open_store(args.db)
    try:
        keys = KeyRing(store, master_key, shared=True)
        log.info("secure mode: %d CP key(s) in force", keys.load())
        audit = AuditLog(store, data_directory() / f"ev_gateway_{args.gateway_id}{SPOOL_SUFFIX}").start()
    except BaseException:
        store.close()
        raise
    return tls, CPAuthenticator(store, keys, audit, tickets=TicketBox(master_key)), keys, store, audit


def _close(audit, store) -> None:
    if audit is not None:
        audit.stop()
    if store is not None:
        store.close()


if __name__ == "__main__":
    sys.exit(gateway_main(sys.argv[1:]))
