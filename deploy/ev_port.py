#!/usr/bin/env python3
"""TCP port checks for the containers: installed in the image as ``ev-port``.

    ev-port listening PORT                  exit 0 when a socket of this container listens on TCP PORT
    ev-port connected PORT                  exit 0 when this container holds a connection to remote TCP PORT
    ev-port wait HOST PORT [--timeout S]    exit 0 as soon as HOST:PORT accepts a connection (default 600 s)

``listening`` is the healthcheck of Central and of the Engines, ``connected`` the one of
the Monitors (connected to Central). Both read the kernel's socket tables
(/proc/net/tcp and /proc/net/tcp6) instead of connecting, so the programs never see a
client come and go every few seconds (Central would log each one as a Monitor
connecting). ``wait`` holds back the drivers of a machine until Central, on another
machine, answers.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

SOCKET_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TCP_ESTABLISHED = "01"
TCP_LISTEN = "0A"


def _sockets(tables):
    """(local address, remote address, state) of every TCP socket in ``tables``."""
    for table in tables:
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:  # no IPv6 in this container, or not Linux
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 3:
                yield fields[1], fields[2], fields[3]


def listening(port: int, tables=SOCKET_TABLES) -> bool:
    """True when a listening TCP socket has local port ``port``."""
    suffix = f":{port:04X}"
    return any(local.endswith(suffix) and state == TCP_LISTEN for local, _, state in _sockets(tables))


def connected(port: int, tables=SOCKET_TABLES) -> bool:
    """True when an established TCP connection has remote port ``port``."""
    suffix = f":{port:04X}"
    return any(remote.endswith(suffix) and state == TCP_ESTABLISHED for _, remote, state in _sockets(tables))


def wait(host: str, port: int, timeout: float, say=print) -> bool:
    """Try to connect to ``host:port`` every second until it answers or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            say(f"{host}:{port} accepts connections")
            return True
        except OSError as exc:
            if not said:
                say(f"waiting for {host}:{port} ({exc})")
                said = True
        if time.monotonic() >= deadline:
            say(f"{host}:{port} did not answer within {timeout:g} s")
            return False
        time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ev-port", description="TCP port checks for the EVCharging containers.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("listening", help="is a socket of this container listening on PORT?")
    check.add_argument("port", type=int)
    link = commands.add_parser("connected", help="does this container hold a connection to remote PORT?")
    link.add_argument("port", type=int)
    waiting = commands.add_parser("wait", help="wait until HOST:PORT accepts a connection")
    waiting.add_argument("host")
    waiting.add_argument("port", type=int)
    waiting.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    if args.command == "listening":
        return 0 if listening(args.port) else 1
    if args.command == "connected":
        return 0 if connected(args.port) else 1
    return 0 if wait(args.host, args.port, args.timeout, say=lambda text: print(f"ev-port: {text}", flush=True)) else 1


if __name__ == "__main__":
    sys.exit(main())
