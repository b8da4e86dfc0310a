"""The Engine's journal: the supply in progress, on disk, so that a crash loses nothing.

One small JSON file, replaced atomically (write a temporary file, fsync, rename)
at authorisation and every second while supplying, and removed when the supply
ends. An Engine that starts and finds it reports that supply's final state to
Central (``supply.end`` with reason "engine restarted") before anything else.
"""

from __future__ import annotations

import json
import logging
import os
from decimal import Decimal
from pathlib import Path

log = logging.getLogger(__name__)


class SupplyJournal:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, entry: dict) -> None:
        """Replace the journal with ``entry`` (str, int and Decimal values) atomically."""
        data = json.dumps({k: format(v, "f") if isinstance(v, Decimal) else v for k, v in entry.items()})
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:  # a full or read-only disk must not stop the supply
            log.error("cannot write the supply journal %s: %s", self.path, exc)

    def read(self) -> dict | None:
        """The journalled supply, or None. A damaged journal is set aside and reported."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("cannot read the supply journal %s: %s", self.path, exc)
            return None
        try:
            entry = json.loads(text)
            if not isinstance(entry, dict):
                raise ValueError("not an object")
            return entry
        except ValueError as exc:
            aside = self.path.with_name(self.path.name + ".damaged")
            os.replace(self.path, aside)
            log.error("the supply journal was damaged (%s); kept as %s", exc, aside)
            return None

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot remove the supply journal %s: %s", self.path, exc)
