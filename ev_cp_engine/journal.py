"""The Engine's journal: what Central must still learn, on disk, so that a crash loses nothing.

One small JSON file, replaced atomically (write a temporary file, fsync, rename),
holding two things:

* ``supply``: the supply in progress, written at authorisation and every second
  while supplying;
* ``ends``: the supplies that ended but whose ``supply.end`` the broker has not
  confirmed yet (at most ``max_ends``, oldest dropped first, each as its record's
  JSON). An end leaves the journal only when the broker confirmed it.

The file is removed when both are empty. An Engine that starts and finds it sends
every end again and reports the supply that was running (``supply.end``, reason
"engine restarted"); Central deduplicates ends by session, so a re-send is harmless.
A journal of an earlier version (just the supply object) is read as ``supply``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from decimal import Decimal
from pathlib import Path

log = logging.getLogger(__name__)

MAX_ENDS = 100


def _plain(entry: dict) -> dict:
    return {k: format(v, "f") if isinstance(v, Decimal) else v for k, v in entry.items()}


class SupplyJournal:
    def __init__(self, path: Path, max_ends: int = MAX_ENDS) -> None:
        self.path = Path(path)
        self.max_ends = max_ends
        self._lock = threading.Lock()  # a leaf lock: delivery callbacks take it from the producer's thread
        self._loaded = False
        self._supply: dict | None = None
        self._ends: dict[str, dict] = {}  # session id -> supply.end record JSON, oldest first

    # -- the supply in progress ----------------------------------------------------------------

    def write(self, entry: dict) -> None:
        """Replace the supply in progress with ``entry`` (str, int and Decimal values)."""
        with self._lock:
            self._load()
            self._supply = _plain(entry)
            self._save()

    def read(self) -> dict | None:
        """The supply in progress, or None. A damaged journal is set aside and reported."""
        with self._lock:
            self._load()
            return dict(self._supply) if self._supply is not None else None

    def clear(self) -> None:
        """Forget the supply in progress (the ends not yet confirmed stay)."""
        with self._lock:
            self._load()
            self._supply = None
            self._save()

    # -- ends not yet confirmed --------------------------------------------------------------------

    def ended(self, session_id: str, end: dict) -> None:
        """The supply ended: in one write, forget it as in progress and keep its end until confirmed."""
        with self._lock:
            self._load()
            if self._supply is not None and self._supply.get("session_id") == session_id:
                self._supply = None
            self._ends.pop(session_id, None)
            self._ends[session_id] = end
            while len(self._ends) > self.max_ends:
                lost = next(iter(self._ends))
                del self._ends[lost]
                log.error("supply journal full (%d ends not confirmed by the broker): the end of session %s "
                          "is no longer kept", self.max_ends, lost)
            self._save()

    def ends(self) -> list[dict]:
        """The ends not yet confirmed, oldest first."""
        with self._lock:
            self._load()
            return [dict(end) for end in self._ends.values()]

    def confirmed(self, session_id: str) -> None:
        """The broker confirmed the end of ``session_id``: it leaves the journal."""
        with self._lock:
            self._load()
            if self._ends.pop(session_id, None) is not None:
                self._save()

    # -- the file ------------------------------------------------------------------------------------

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("cannot read the supply journal %s: %s", self.path, exc)
            return
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            if "ends" not in data and "supply" not in data:  # an earlier version: the supply alone
                data = {"supply": data, "ends": []}
            supply, ends = data.get("supply"), data.get("ends") or []
            if supply is not None and not isinstance(supply, dict):
                raise ValueError("supply is not an object")
            if not isinstance(ends, list) or not all(isinstance(e, dict) and "session_id" in e for e in ends):
                raise ValueError("ends is not a list of supply ends")
        except ValueError as exc:
            aside = self.path.with_name(self.path.name + ".damaged")
            try:
                os.replace(self.path, aside)
            except OSError:
                pass
            log.error("the supply journal was damaged (%s); kept as %s", exc, aside)
            return
        self._supply = supply
        self._ends = {str(end["session_id"]): end for end in ends}

    def _save(self) -> None:
        try:
            if self._supply is None and not self._ends:
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                return
            data = json.dumps({"supply": self._supply, "ends": list(self._ends.values())})
            tmp = self.path.with_name(self.path.name + ".tmp")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:  # a full or read-only disk must not stop the supply
            log.error("cannot write the supply journal %s: %s", self.path, exc)
