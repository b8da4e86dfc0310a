"""EV_Registry command line.

    EV_Registry --port 8443 [--db URL] [--admin-token-file F] ...        run the Registry (HTTPS)
    EV_Registry serve --port 8443 ...                                    the same
    EV_Registry register CP001 --location L --price P --url U ...        register a CP, get its credential
    EV_Registry deregister CP001 --url U ...                             deregister a CP
    EV_Registry list --url U ... / EV_Registry show CP001 --url U ...    registration state

docs/registry.md describes the API, the certificate, the tokens and the audit entries.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import socket
import sys
from decimal import Decimal
from pathlib import Path

from ev_common.config import env, port_number
from ev_common.files import write_atomically
from ev_common.log import add_log_level_argument, setup_logging
from ev_common.tokens import read_token

log = logging.getLogger("ev_registry")

PROGRAM = "EV_Registry"
CERT_NAME = "ev_registry"
ENV_TOKEN = "EV_REGISTRY_TOKEN"
ENV_URL = "EV_REGISTRY_URL"
ENV_FINGERPRINT = "EV_REGISTRY_FINGERPRINT"
ENV_CA = "EV_REGISTRY_CA"
CLIENT_COMMANDS = ("register", "deregister", "list", "show")
DB_HELP = ("database URL, the same as Central's: mysql://user[:password]@host[:port]/database or "
           "sqlite:///path/to/file.db (default: $EV_DB, else the SQLite file ev_central.db in --data-dir)")
NO_TOKEN = (f"no operator token: give --admin-token-file FILE (a file holding the token) or set ${ENV_TOKEN}; "
            f"EV_Registry does not start without one")
_CP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


# -- argument types ------------------------------------------------------------------------------


def _cp_id(text: str) -> str:
    if not _CP_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a CP id (1-64 characters from A-Z a-z 0-9 _ -)")
    return text


def _price(text: str) -> Decimal:
    from .service import validate_price

    try:
        return validate_price(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _location(text: str) -> str:
    from .service import validate_location

    try:
        return validate_location(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fingerprint(text: str) -> str:
    from ev_common.tls import format_fingerprint, parse_fingerprint

    try:
        return format_fingerprint(parse_fingerprint(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


# -- parsers -------------------------------------------------------------------------------------


def build_serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="EVCharging's registry of charging points: an HTTPS REST API where an operator registers "
                    "CPs (each gets a credential, shown once, to authenticate at Central) and deregisters them. "
                    "It shares Central's database.",
        epilog="Commands for installers (run 'EV_Registry COMMAND --help'): register, deregister, list, show. "
               "'EV_Registry serve ...' is the same as 'EV_Registry ...'. API, certificate, tokens, rate limits "
               "and audit: docs/registry.md.")
    parser.add_argument("--port", type=port_number, required=True, help="TCP port of the HTTPS API (0: any free one)")
    parser.add_argument("--host", default=env("EV_REGISTRY_HOST", "0.0.0.0"),
                        help="address to listen on (default: $EV_REGISTRY_HOST or 0.0.0.0, every interface)")
    parser.add_argument("--db", default=env("EV_DB"), metavar="URL", help=DB_HELP)
    parser.add_argument("--data-dir", type=Path, default=Path(env("EV_DATA_DIR", ".")), metavar="DIR",
                        help="where the self-signed certificate (ev_registry.crt, ev_registry.key) and the default "
                             "SQLite database are kept (default: $EV_DATA_DIR or the working directory)")
    parser.add_argument("--cert", type=Path, metavar="PEM",
                        help="the server's certificate (chain), PEM; with --key. Without both, a self-signed "
                             "certificate is made on the first start and kept in --data-dir")
    parser.add_argument("--key", type=Path, metavar="PEM", help="the certificate's private key, PEM, unencrypted")
    parser.add_argument("--cert-host", action="append", metavar="NAME", default=[],
                        help="a DNS name or IP address clients use to reach the Registry, named in the self-signed "
                             "certificate (repeat for several; default: this machine's name, localhost, 127.0.0.1, "
                             "::1 and --host); used only when the certificate is made")
    parser.add_argument("--admin-token-file", type=Path, metavar="FILE",
                        help=f"file holding the operator token (16-512 printable ASCII characters, no spaces) that "
                             f"every request must send as 'Authorization: Bearer <token>' (default: ${ENV_TOKEN}; "
                             f"one of the two is required)")
    add_log_level_argument(parser)
    return parser


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=env(ENV_URL), metavar="URL",
                        help=f"the Registry, https://host:port (default: ${ENV_URL}; required)")
    parser.add_argument("--token-file", type=Path, metavar="FILE",
                        help=f"file holding the operator token (default: ${ENV_TOKEN})")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--ca", metavar="PEM", default=env(ENV_CA),
                       help=f"trust the Registry's certificate when it chains to a certificate in this PEM file and "
                            f"names the URL's host (default: ${ENV_CA})")
    trust.add_argument("--fingerprint", type=_fingerprint, default=None, metavar="SHA256:..",
                       help=f"trust exactly the certificate with this SHA-256 fingerprint, as EV_Registry prints at "
                            f"start (default: ${ENV_FINGERPRINT}); without --ca or --fingerprint the system's CA "
                            f"certificates are used")
    parser.add_argument("--timeout", type=_positive, default=10.0, metavar="SECONDS",
                        help="for connecting and for each answer (default: %(default)s)")


def build_client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Register and deregister CPs at a running EV_Registry.",
        epilog="Exit status: 0 done; 1 refused by the Registry (the message says why) or the Registry could not be "
               "reached; 2 bad arguments.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register = commands.add_parser(
        "register", help="register a CP (or register it again) and get its credential",
        description="Register a CP, or register it again: the Registry answers with a new credential, shown this "
                    "once (a credential given before stops working). Give it to the CP's Monitor.")
    register.add_argument("cp_id", type=_cp_id, metavar="CP_ID", help="the CP's id, e.g. CP001")
    register.add_argument("--location", type=_location, required=True,
                          help="where the CP is: 1-200 printable characters, without '#'")
    register.add_argument("--price", type=_price, required=True, metavar="EUR_KWH",
                          help="its price in EUR/kWh, 0 to 1000, at most 4 decimal places, e.g. 0.48")
    register.add_argument("--credentials-out", type=Path, metavar="FILE",
                          help="write the credential to this file (mode 0600, replaced if it exists) instead of "
                               "printing it")
    deregister = commands.add_parser(
        "deregister", help="deregister a CP: it can no longer authenticate",
        description="Deregister a CP: its credential stops working at once; its history stays. 'register' makes "
                    "it a new one.")
    deregister.add_argument("cp_id", type=_cp_id, metavar="CP_ID", help="the CP's id")
    listing = commands.add_parser("list", help="every CP ever registered and its state",
                                  description="Every CP ever registered: id, state, price, since when, location.")
    listing.add_argument("--json", action="store_true", help="the Registry's JSON answer")
    show = commands.add_parser("show", help="one CP's registration state", description="One CP's registration state.")
    show.add_argument("cp_id", type=_cp_id, metavar="CP_ID", help="the CP's id")
    show.add_argument("--json", action="store_true", help="the Registry's JSON answer")
    for sub in commands.choices.values():
        _client_options(sub)
    return parser


# -- helpers -------------------------------------------------------------------------------------


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, whole or not at all."""
    write_atomically(path.expanduser(), text.encode("ascii"), 0o600)


def certificate_hosts(host: str, extra: list[str]) -> list[str]:
    """The names the self-signed certificate is made for."""
    names = list(extra)
    if not extra:
        names += [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    names.append(host)
    return [name for name in names if name]


# -- serve -----------------------------------------------------------------------------------------


def serve_main(argv: list[str]) -> int:
    parser = build_serve_parser()
    args = parser.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together (neither: a self-signed certificate in --data-dir)")
    setup_logging(PROGRAM, args.log_level)
    try:
        token = read_token(args.admin_token_file, ENV_TOKEN)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    if token is None:
        parser.error(NO_TOKEN)

    from ev_central.store import StoreError, open_store
    from ev_common.lifecycle import Shutdown
    from ev_common.tls import ensure_certificate, fingerprint_of

    from .api import create_app
    from .server import RegistryServer
    from .service import Registry

    try:
        if args.cert is not None:
            cert_path, key_path = args.cert, args.key
            fingerprint = fingerprint_of(cert_path.read_bytes())
            where = f"certificate {cert_path}"
        else:
            certificate = ensure_certificate(args.data_dir, CERT_NAME, certificate_hosts(args.host, args.cert_host))
            cert_path, key_path, fingerprint = certificate.cert_path, certificate.key_path, certificate.fingerprint
            made = "made now" if certificate.created else "self-signed"
            where = f"certificate {cert_path} ({made})"
    except OSError as exc:
        log.error("cannot use the certificate: %s", f"{exc.filename}: {exc.strerror}" if exc.strerror else exc)
        return 1
    except ValueError as exc:
        log.error("cannot use the certificate: %s", exc)
        return 1
    shutdown = Shutdown().install()
    try:
        store = open_store(args.db, args.data_dir)
    except (StoreError, ValueError) as exc:
        log.error("cannot open the database: %s", exc)
        return 1
    try:
        registry = Registry(store, token)
        try:
            server = RegistryServer(create_app(registry), args.host, args.port, cert_path, key_path)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.error("cannot load the certificate %s and key %s: %s", cert_path, key_path, exc)
            return 1
        try:
            server.start()
        except OSError as exc:
            log.error("cannot listen on %s port %d: %s", args.host, args.port, exc.strerror or exc)
            return 1
        except RuntimeError as exc:
            log.error("%s", exc)
            return 1
        log.info("EV_Registry listening on %s (HTTPS only; database %s; %s; fingerprint %s); Ctrl+C stops",
                 f"https://{args.host}:{server.port}" if ":" not in args.host else f"https://[{args.host}]:{server.port}",
                 store.description, where, fingerprint)
        print(f"EV_Registry certificate fingerprint: {fingerprint}", flush=True)
        failed = False
        while not shutdown.wait(0.5):
            if not server.alive:
                log.error("the HTTPS server stopped: %s", server.error)
                failed = True
                break
        log.info("shutting down (%s)", shutdown.signal_name or "the server stopped")
        server.stop()
        return 1 if failed else 0
    finally:
        store.close()


# -- client commands -----------------------------------------------------------------------------


def client_main(argv: list[str]) -> int:
    parser = build_client_parser()
    args = parser.parse_args(argv)
    setup_logging(PROGRAM, "WARNING")
    if not args.url:
        parser.error(f"--url https://host:port is required (or set ${ENV_URL})")
    fingerprint = args.fingerprint
    if fingerprint is None and args.ca is None and env(ENV_FINGERPRINT):
        try:
            fingerprint = _fingerprint(env(ENV_FINGERPRINT))
        except argparse.ArgumentTypeError as exc:
            parser.error(f"${ENV_FINGERPRINT}: {exc}")
    try:
        token = read_token(args.token_file, ENV_TOKEN)
    except ValueError as exc:
        parser.error(str(exc))
    if token is None:
        parser.error(f"no operator token: give --token-file FILE or set ${ENV_TOKEN}")

    from .client import RegistryClient, RegistryError

    try:
        client = RegistryClient(args.url, token, ca_file=args.ca, fingerprint=fingerprint, timeout=args.timeout)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    try:
        with client:
            return _run_command(client, args)
    except RegistryError as exc:
        print(f"{args.command} refused: {exc}" if exc.status is not None else f"{args.command} failed: {exc}",
              file=sys.stderr)
        return 1


def _run_command(client, args) -> int:
    if args.command == "register":
        answer = client.register_full(args.cp_id, args.location, args.price)
        credential = answer["credential"]
        how = "registered" if answer["created"] else "registered again (its previous credential no longer works)"
        if args.credentials_out is not None:
            try:
                write_secret(args.credentials_out, credential + "\n")
            except OSError as exc:
                print(f"{args.cp_id} {how}, but its credential could not be written to {args.credentials_out}: "
                      f"{exc.strerror or exc}; register it again to get a new one", file=sys.stderr)
                return 1
            print(f"{args.cp_id} {how}; its credential is in {args.credentials_out} (mode 0600)", file=sys.stderr)
        else:
            print(f"{args.cp_id} {how}; its credential, shown this once:", file=sys.stderr)
            print(credential, flush=True)
        return 0
    if args.command == "deregister":
        client.deregister(args.cp_id)
        print(f"{args.cp_id} deregistered: it can no longer authenticate")
        return 0
    rows = client.list() if args.command == "list" else [client.get(args.cp_id)]
    if args.json:
        print(json.dumps(rows if args.command == "list" else rows[0], indent=2))
        return 0
    for row in rows:
        state = "registered" if row.get("registered") else f"deregistered {row.get('deregistered_at') or ''}".strip()
        print(f"{row.get('cp_id')}\t{state}\t{row.get('price_eur_kwh')} EUR/kWh\tsince {row.get('registered_at')}"
              f"\t{row.get('location')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve_main(argv[1:])
    if argv[:1] and argv[0] in CLIENT_COMMANDS:
        return client_main(argv)
    if argv[:1] and not argv[0].startswith("-"):
        build_serve_parser().error(f"unknown command {argv[0]!r}: use serve, {', '.join(CLIENT_COMMANDS)} "
                                   f"(or flags alone to serve)")
    return serve_main(argv)
