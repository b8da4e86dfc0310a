"""Write-behind: the latest version of each changed row, written from one thread.

Central never waits for its database to change a CP's state or a session's
figures. Rows go into a dict keyed by id (so memory is bounded by the number of
CPs or open sessions, and a burst of changes to one row becomes one write); a
writer thread saves them in one transaction per batch. While the database is
unreachable the rows stay in memory, Central says so once, retries with backoff
and jitter, and writes the latest version of every row when the database is back.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Generic, Iterable, TypeVar

from ev_common.retry import Backoff

from .store.base import CPRow, SessionRow, Store, StoreError

log = logging.getLogger(__name__)

Row = TypeVar("Row")


class WriteBehind(Generic[Row]):
    def __init__(self, save: Callable[[Iterable[Row]], None], key: Callable[[Row], str], what: str,
                 backoff: Backoff | None = None) -> None:
        self._save = save
        self._key = key
        self.what = what
        self._backoff = backoff or Backoff(initial=0.5, cap=10.0)
        self._cond = threading.Condition()
        self._dirty: dict[str, Row] = {}
        self._writing = 0  # rows taken by the writer and not yet saved
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.db_ok = True
        self.written = 0

    def start(self) -> "WriteBehind[Row]":
        self._thread = threading.Thread(target=self._run, name=f"writer-{self.what.replace(' ', '-')}", daemon=True)
        self._thread.start()
        return self

    def put(self, row: Row) -> None:
        with self._cond:
            self._dirty[self._key(row)] = row
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._dirty) + self._writing

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every row put so far is saved; False on timeout (for tests and shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._dirty and not self._writing, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is pending (within ``timeout``) and stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        left = self.pending()
        if left:
            log.error("stopping with %d %s not written: the database is unreachable", left, self.what)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._dirty or self._stopping)
                if not self._dirty:
                    return
                batch, self._dirty = self._dirty, {}
                self._writing = len(batch)
            try:
                self._save(list(batch.values()))
            except StoreError as exc:
                self._requeue(batch)
                if self.db_ok:
                    self.db_ok = False
                    log.error("database unreachable (%s): keeping %s in memory, will retry", exc, self.what)
                delay = self._backoff.next()
                with self._cond:
                    self._writing = 0
                    if self._stopping:
                        return
                    self._cond.wait(delay)  # woken early by stop()
                continue
            with self._cond:
                self._writing = 0
                self.written += len(batch)
                self._cond.notify_all()
            if not self.db_ok:
                self.db_ok = True
                log.warning("database back: wrote the latest %d %s", len(batch), self.what)
            self._backoff.reset()

    def _requeue(self, batch: dict[str, Row]) -> None:
        with self._cond:
            for key, row in batch.items():
                self._dirty.setdefault(key, row)  # a newer change wins


def cp_state_writer(store: Store, backoff: Backoff | None = None) -> WriteBehind[CPRow]:
    return WriteBehind(store.save_charging_points, lambda row: row.cp_id, "CP states", backoff)


def session_writer(store: Store, backoff: Backoff | None = None) -> WriteBehind[SessionRow]:
    return WriteBehind(store.save_sessions, lambda row: row.session_id, "charging sessions", backoff)
