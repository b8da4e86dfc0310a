"""Small helpers for command-line flags shared by the programs."""

from __future__ import annotations

import argparse
import os


def host_port(text: str) -> tuple[str, int]:
    """argparse type for ``host:port`` (IPv6 as ``[::1]:9092``)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port (for example 127.0.0.1:9092)")
    return host, int(port)


def port_number(text: str) -> int:
    """argparse type for a TCP port; 0 asks the system for a free one."""
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535)")
    return int(text)


def seconds(low: float, high: float):
    """argparse type for a number of seconds from ``low`` to ``high`` (both included)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from {low:g} to {high:g}")
        return value
    return parse


def env(name: str, default: str | None = None) -> str | None:
    """The value of ``$name`` if set and not empty, else ``default``."""
    value = os.environ.get(name, "")
    return value if value else default
