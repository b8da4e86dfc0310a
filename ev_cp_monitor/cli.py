"""EV_CP_M command line (the seed's flags, plus --location and --price; and for secure mode
--credentials, --registry..., --central-ca or --central-fingerprint).

What it prints for people is in ``screen.py``: a status line in place on a
terminal, changes and a status line every 10 s otherwise. On a terminal (stdin and
stdout) it also reads keys: [a] authenticate again, [s] status, [q] quit.

Secure mode (docs/security.md, "The Monitor"): the CP's credential is read from
``--credentials FILE`` (mode 0600), or obtained once from EV_Registry (``--registry``,
an operator's token) and written there; it travels in ``REG`` over TLS only, Central's
certificate verified by a CA file or a pinned fingerprint.
"""

from __future__ import annotations

import argparse
import logging
import threading
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable

from ev_common.config import env, port_number
from ev_common.lifecycle import Shutdown
from ev_common.log import add_log_level_argument, setup_logging
from ev_common.protocol import LocalProtocolError, Reg

log = logging.getLogger(__name__)

KEYS_HELP = "Keys on a terminal: [a] authenticate again, [s] status, [q] quit."
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
        epilog=f"{KEYS_HELP} Secure mode: --credentials FILE (or --registry... to obtain it once) with "
               "--central-ca or --central-fingerprint; see docs/security.md.",
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
    secure = parser.add_argument_group(
        "secure mode", "the CP's credential in REG, over TLS only (each flag's default: the environment variable "
                       "named, if set; of a pair of --*-ca/--*-fingerprint flags, the variables apply when "
                       "neither flag is given)")
    secure.add_argument("--credentials", metavar="FILE",
                        help="the CP's credential from EV_Registry, one line, in a file only its owner may read "
                             "(chmod 600); REG carries it (default: $EV_CP_CREDENTIALS)")
    secure.add_argument("--registry", metavar="URL",
                        help="EV_Registry's address (https://HOST:PORT): when the --credentials file does not "
                             "exist yet, register this CP there (with --location and --price) and write its "
                             "credential to that file, mode 0600; an existing file is used as it is "
                             "(default: $EV_REGISTRY_URL, with --credentials)")
    secure.add_argument("--registry-token-file", metavar="FILE",
                        help="with --registry: a file (chmod 600) holding an operator's token, which allows "
                             "registering CPs (default: $EV_REGISTRY_TOKEN_FILE)")
    secure.add_argument("--registry-ca", metavar="FILE",
                        help="with --registry: verify its certificate against these CA certificates (PEM) "
                             "(default: $EV_REGISTRY_CA; without it nor --registry-fingerprint, the system's CAs)")
    secure.add_argument("--registry-fingerprint", metavar="SHA256:AB:CD:...",
                        help="with --registry: accept only the certificate with this SHA-256 fingerprint "
                             "(default: $EV_REGISTRY_FINGERPRINT)")
    secure.add_argument("--central-ca", metavar="FILE",
                        help="speak TLS to Central and verify its certificate against these CA certificates "
                             "(PEM) and its host name (default: $EV_CENTRAL_CA)")
    secure.add_argument("--central-fingerprint", metavar="SHA256:AB:CD:...",
                        help="speak TLS to Central and accept only the certificate with this SHA-256 "
                             "fingerprint (Central logs it at its start) (default: $EV_CENTRAL_FINGERPRINT)")
    add_log_level_argument(parser)
    return parser


def _one_of(args: argparse.Namespace, parser: argparse.ArgumentParser, first: str, second: str,
            env_first: str, env_second: str) -> None:
    """Of two exclusive flags, at most one; when neither is given, their environment variables."""
    a, b = getattr(args, first), getattr(args, second)
    if a is None and b is None:
        a, b = env(env_first), env(env_second)
        given = f"${env_first} and ${env_second}"
    else:
        given = f"--{first.replace('_', '-')} and --{second.replace('_', '-')}"
    if a is not None and b is not None:
        parser.error(f"give only one of {given}")
    setattr(args, first, a)
    setattr(args, second, b)


def check_secure_flags(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """Resolve the secure-mode flags (environment defaults) and check they go together; returns
    the TLS client for Central (None: plain TCP) and the Registry's access (None: no registering)."""
    from ev_common.tls import client_context, parse_fingerprint

    from .credentials import RegistryAccess

    if args.credentials is None:
        args.credentials = env("EV_CP_CREDENTIALS")
    if args.registry is None and args.credentials is not None:  # (the variable alone never asks for a file)
        args.registry = env("EV_REGISTRY_URL")
    if args.registry is None:
        for flag in ("registry_token_file", "registry_ca", "registry_fingerprint"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag.replace('_', '-')} goes with --registry URL")
    elif args.registry_token_file is None:
        args.registry_token_file = env("EV_REGISTRY_TOKEN_FILE")
    _one_of(args, parser, "central_ca", "central_fingerprint", "EV_CENTRAL_CA", "EV_CENTRAL_FINGERPRINT")
    tls = None
    if args.central_ca is not None or args.central_fingerprint is not None:
        try:
            tls = client_context(ca_file=args.central_ca, fingerprint=args.central_fingerprint)
        except (ValueError, OSError) as exc:  # a malformed fingerprint, a missing or unusable CA file
            parser.error(f"--central-{'ca' if args.central_ca is not None else 'fingerprint'}: {exc}")
    if args.credentials is not None and tls is None:
        parser.error("a credential travels only over TLS: give --central-ca or --central-fingerprint")
    registry = None
    if args.registry is not None:
        if args.credentials is None:
            parser.error("--registry writes the CP's credential to --credentials FILE: give it")
        if args.registry_token_file is None:
            parser.error("--registry needs --registry-token-file FILE (an operator's token)")
        _one_of(args, parser, "registry_ca", "registry_fingerprint", "EV_REGISTRY_CA", "EV_REGISTRY_FINGERPRINT")
        if args.registry_fingerprint is not None:
            try:
                parse_fingerprint(args.registry_fingerprint)
            except ValueError as exc:
                parser.error(f"--registry-fingerprint: {exc}")
        registry = RegistryAccess(args.registry, Path(args.registry_token_file), args.registry_ca,
                                  args.registry_fingerprint)
    return tls, registry


def _tls_text(args: argparse.Namespace) -> str | None:
    if args.central_ca is not None:
        return f"certificate verified by the CA file {args.central_ca}"
    if args.central_fingerprint is not None:
        return "certificate pinned"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        registration = Reg(args.cp_id, args.location, args.price)
    except LocalProtocolError as exc:
        parser.error(str(exc).removeprefix("cannot build REG: "))
    tls, registry = check_secure_flags(parser, args)
    setup_logging(f"EV_CP_M {args.cp_id}", args.log_level)
    from ev_common.keyboard import on_terminal, run_keyboard

    from .central_client import CentralClient
    from .credentials import CredentialError, obtain
    from .engine_probe import EngineProbe
    from .monitor import Monitor
    from .screen import MonitorScreen

    shutdown = Shutdown().install()
    menu = on_terminal()  # a person at a terminal: the keys are read
    engine = EngineProbe(args.engine_ip, args.engine_port, args.cp_id)
    screen = MonitorScreen(args.cp_id, stopped=lambda: engine.stopped, menu=menu)
    screen.guard_logging()  # on a terminal, log lines go above the status line

    def registration_now(starting: bool = False) -> Reg:
        """REG, with the credential read now (obtained from EV_Registry if its file is missing;
        at the start, an existing file is said to be used as it is)."""
        if args.credentials is None:
            return registration
        path = Path(args.credentials)
        credential = obtain(path, args.cp_id, args.location, args.price,
                            registry if starting or not path.exists() else None, say=screen.message)
        return Reg(args.cp_id, args.location, args.price, credential)

    try:
        registration = registration_now(starting=True)
    except CredentialError as exc:
        screen.closing(f"Monitor not started: {exc}")
        return 1
    def stopped() -> str:
        return "Monitor stopped" + (f" ({shutdown.signal_name})" if shutdown.signal_name else "")

    if shutdown.is_set():  # Ctrl+C while registering at EV_Registry
        screen.closing(stopped())
        return 0
    central = CentralClient(args.central_ip, args.central_port, registration, engine=engine, tls=tls,
                            interactive=menu, say=screen.central_said)
    screen.registered = central.registered
    screen.halted = lambda: central.halted
    monitor = Monitor(engine, central, say=screen.message, on_check=screen.checked)
    screen.started(f"{args.central_ip}:{args.central_port}", f"{args.engine_ip}:{args.engine_port}",
                   tls=_tls_text(args))
    keyboard = None
    if menu:
        def authenticate_again() -> None:
            try:
                central.reauthenticate(registration_now())
            except CredentialError as exc:
                screen.message(f"cannot authenticate again: {exc}")

        keys = {"a": authenticate_again, "s": lambda: screen.show_status(central.status()), "q": shutdown.request}
        keyboard = threading.Thread(target=run_keyboard, args=({k: _guarded(a) for k, a in keys.items()},
                                                               shutdown.event), name="keyboard", daemon=True)
        keyboard.start()
    code = monitor.run(shutdown.event)
    if keyboard is not None:
        keyboard.join(1.0)  # it puts the terminal back as it was
    screen.closing(stopped())
    return code


def _guarded(action: Callable[[], object]) -> Callable[[], None]:
    """A key's action; a bug in one is logged, and the keys go on working."""

    def run() -> None:
        try:
            action()
        except Exception:
            log.exception("the key's action failed")

    return run
