"""The Engine's note that its CP is in secure mode: a small file beside its journal.

Once its Monitor gave it a key, the Engine writes ``{"secure": true, "cp_id": ..., "key_version": ...}``
(never the key) in its data directory, so that after a restart it sends no record in clear
before its Monitor gives it the key again: until then its records wait (docs/topics.md,
"Sealed records (secure mode)"). Open mode (``KEY#<cp>#0``) removes the file. A file that
cannot be read counts as secure mode: a record waits rather than leaves in clear.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)


class SecureMark:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._written: dict | None = None  # what the file holds, as far as this run knows

    def is_set(self) -> bool:
        """Whether an earlier run of this Engine was in secure mode."""
        with self._lock:
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return False
            except OSError as exc:
                log.error("cannot read %s (%s): taking this CP to be in secure mode", self.path, exc)
                return True
            try:
                data = json.loads(text)
                self._written = data if isinstance(data, dict) else None
                return not isinstance(data, dict) or data.get("secure") is not False
            except ValueError:
                log.error("%s is damaged: taking this CP to be in secure mode", self.path)
                return True

    def set(self, cp_id: str | None, key_version: int | None) -> None:
        """Secure mode, with key ``key_version`` (None: none now, e.g. revoked)."""
        data = {"secure": True, "cp_id": cp_id, "key_version": key_version}
        with self._lock:
            if data == self._written:
                return
            try:
                tmp = self.path.with_name(self.path.name + ".tmp")
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(json.dumps(data))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
                self._written = data
            except OSError as exc:
                log.error("cannot write %s (%s): after a restart this Engine may not know it is in secure mode "
                          "until its Monitor gives it the key", self.path, exc)

    def clear(self) -> None:
        """Open mode: the file goes."""
        with self._lock:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("cannot remove %s (%s)", self.path, exc)
                return
            self._written = None
