"""EV_RFID command line: one MCSP request to Central, as an RFID charging station sends it.

    EV_RFID start --central HOST:PORT --station CP001 --key 16AC936B1692E73A
    EV_RFID end   --central HOST:PORT --station CP001 --key 16AC936B1692E73A --session 23

It prints Central's answer, its start line and header lines exactly as received, on
stdout (``MMETERING/1.0 OK``, ``Content-Length: 1``, ``Session-Id: 23``), and exits 0 on
OK, 1 on ERROR, 2 on a usage error and 3 when Central cannot be reached (said on stderr).
The log goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

from ev_common.config import env, host_port
from ev_common.log import add_log_level_argument, setup_logging
from ev_common.mcsp import ErrorAnswer, LocalProtocolError, check_key
from ev_common.mcsp.fields import check_id

from .client import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, CentralUnreachable, StationClient

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1  # Central answered ERROR
EXIT_USAGE = 2  # argparse's
EXIT_UNREACHABLE = 3


def _checked(check):
    """argparse type from a codec check: its message on a bad value."""

    def parse(text: str) -> str:
        try:
            return check(text)
        except LocalProtocolError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="EV_RFID",
        description="An RFID charging station's request to Central's MCSP port (docs/mcsp.md): "
                    "start opens a session for a tag at a station, end closes it. Prints Central's "
                    "answer as received.",
        epilog="Exit status: 0 Central answered OK, 1 Central answered ERROR, 2 usage error, "
               "3 Central cannot be reached (no connection, no answer within --timeout, or not an MCSP answer).",
    )
    parser.add_argument("action", choices=("start", "end"),
                        help="start: MMETERING/1.0 START (opens a session); end: MMETERING/1.0 END (closes one)")
    parser.add_argument("--central", type=host_port, default=env("EV_MCSP"), required=env("EV_MCSP") is None,
                        metavar="HOST:PORT", help="Central's MCSP address, its --mcsp-port (default: $EV_MCSP)")
    parser.add_argument("--station", type=_checked(lambda v: check_id("Name", v)), required=True, metavar="CP_ID",
                        help="the station's name: the CP id, 1-64 of A-Z a-z 0-9 _ -")
    parser.add_argument("--key", type=_checked(check_key), required=True, metavar="UID",
                        help="the tag's UID in hex, 4, 7, 8 or 10 bytes, plain (16AC936B) or with one "
                             "separator between bytes (16:ac:93:6b)")
    parser.add_argument("--session", type=_checked(lambda v: check_id("Session-Id", v)), metavar="ID",
                        help="with end: the session id Central gave in its answer to start (required for end)")
    parser.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="how long to wait for Central's answer (default: %(default)g; Central may take "
                             "~4 s for start and ~10 s for end)")
    parser.add_argument("--connect-timeout", type=_seconds, default=DEFAULT_CONNECT_TIMEOUT, metavar="SECONDS",
                        help="how long to wait for the connection to Central (default: %(default)g)")
    add_log_level_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.action == "end" and args.session is None:
        parser.error("end needs --session ID (the session id Central gave to start)")
    if args.action == "start" and args.session is not None:
        parser.error("--session is for end only")
    setup_logging("EV_RFID", args.log_level)
    host, port = args.central
    try:
        with StationClient(host, port, timeout=args.timeout, connect_timeout=args.connect_timeout) as client:
            if args.action == "start":
                answer = client.start(args.station, args.key)
            else:
                answer = client.end(args.station, args.session, args.key)
            received = client.last_answer_bytes
    except CentralUnreachable as exc:
        print(f"EV_RFID: Central cannot be reached: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    for line in received.decode("ascii").splitlines():
        if line:
            print(line)
    sys.stdout.flush()
    return EXIT_ERROR if isinstance(answer, ErrorAnswer) else EXIT_OK
