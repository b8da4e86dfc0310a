"""Files written whole or not at all, with their mode from the start: keys, certificates,
credentials and tokens (a reader never sees a half-written file, nor one with a wider mode)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: str | os.PathLike, data: bytes, mode: int = 0o600, *, replace: bool = True) -> None:
    """Write ``data`` to a fresh temporary file of ``mode`` (whatever the umask) beside ``path``,
    fsync it, then rename it over ``path`` (``replace``) or link it to ``path``, which must not
    exist yet (``FileExistsError``; what is there is left alone)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(temporary, flags, mode)
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # never replaces a file written meanwhile
    finally:
        try:
            os.unlink(temporary)  # (gone already once renamed)
        except OSError:
            pass
