"""The services file: the CPs a driver asks for, one after another.

One CP id per line; blank lines are ignored, and so is everything from a ``#`` to
the end of its line. Ids are ``[A-Za-z0-9_-]{1,64}``, as everywhere in the system.
"""

from __future__ import annotations

import re
from pathlib import Path

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ServicesFileError(ValueError):
    """The file cannot be read, holds an invalid line, or lists no CP at all."""


def valid_id(text: str) -> bool:
    return bool(ID_PATTERN.fullmatch(text))


def parse_services(text: str, source: str = "services file") -> list[str]:
    """The CP ids in ``text``, in order (a CP may appear more than once)."""
    entries: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        if not valid_id(content):
            raise ServicesFileError(
                f"{source}, line {number}: {content!r} is not a CP id "
                "(1-64 characters from A-Z a-z 0-9 _ -, one per line)")
        entries.append(content)
    if not entries:
        raise ServicesFileError(f"{source} lists no CP (one CP id per line; # starts a comment)")
    return entries


def read_services_file(path: str | Path) -> list[str]:
    """Read and parse a services file; every problem is a ServicesFileError with a clear message."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ServicesFileError(f"cannot read the services file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ServicesFileError(f"the services file {str(path)!r} is not UTF-8 text ({exc.reason})") from None
    return parse_services(text, source=str(path))
