"""Write-behind: the latest version of each changed row, written from one thread.

Central never waits for its database to change a CP's state or a session's
figures. Rows go into a dict keyed by id (so memory is bounded by the number of
CPs or open sessions, and a burst of changes to one row becomes one write); a
writer thread saves them in one transaction per batch. While the database is
unreachable the rows stay in memory, Central says so once, retries with backoff
and jitter, and writes the latest version of every row when the database is back.

"Latest" is the highest ``version`` (rows without one count as version 0; among rows of
the same version, the last put): an older row put later never replaces a newer one
waiting.

A row the database refuses (a value too long or out of range: ``StoreRefused``) never
blocks the others: the batch is saved again one row at a time, and a row refused on its
own is set aside: logged at ERROR, kept in ``rejected_rows`` and in ``refused()``, and
counted. A refusal is not an outage: ``db_ok`` stays true.

``put(row, on_durable)`` calls ``on_durable()`` from the writer thread once that row, or
a newer version of it, is in the database, or has been set aside as refused.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Generic, Iterable, TypeVar

from ev_common.retry import Backoff

from .store.base import CPRow, SessionRow, Store, StoreError, StoreRefused

log = logging.getLogger(__name__)

Row = TypeVar("Row")
Durable = Callable[[], None]
#: (kind, row_id, reason, row_json, at): keeps a refused row, e.g. ``Store.add_rejected``.
RecordRefused = Callable[[str, str, str, str, datetime], None]

REFUSED_KEPT = 100  # refused rows kept in memory for the panel (the newest)
UNRECORDED_MAX = 1000  # refused rows waiting for the database to keep them
JSON_TEXT_MAX = 500  # each text of a refused row's JSON is cut to this


@dataclass(frozen=True)
class Refused:
    """A row the database refused, set aside."""

    at: datetime  # UTC
    kind: str  # "cp" or "session"
    row_id: str
    reason: str
    row: Any


@dataclass
class _Entry(Generic[Row]):
    row: Row
    callbacks: list[Durable] = field(default_factory=list)


def _version(row: Any) -> int:
    version = getattr(row, "version", 0)
    return version if isinstance(version, int) and not isinstance(version, bool) else 0


def row_json(row: Any) -> str:
    """The row as a JSON object a text column always takes: ASCII only, texts (and
    anything odd) cut to JSON_TEXT_MAX characters."""

    def value(v: Any) -> Any:
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, int):
            return v if abs(v) < 2**63 else str(v)[:40]
        if isinstance(v, datetime):
            return v.isoformat()
        if isinstance(v, Decimal):
            text = str(v)
        elif isinstance(v, str):
            text = v
        else:
            text = repr(v)
        return text if len(text) <= JSON_TEXT_MAX else text[: JSON_TEXT_MAX - 3] + "..."

    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        fields = {f.name: value(getattr(row, f.name)) for f in dataclasses.fields(row)}
    else:
        fields = {"row": value(row)}
    return json.dumps(fields, ensure_ascii=True)


class WriteBehind(Generic[Row]):
    def __init__(self, save: Callable[[Iterable[Row]], None], key: Callable[[Row], str], what: str,
                 backoff: Backoff | None = None, *, kind: str = "",
                 record_refused: RecordRefused | None = None,
                 refused_kept: int = REFUSED_KEPT) -> None:
        self._save = save
        self._key = key
        self.what = what
        self.kind = kind or what
        self._record_refused = record_refused
        self._backoff = backoff or Backoff(initial=0.5, cap=10.0)
        self._cond = threading.Condition()
        self._dirty: dict[str, _Entry[Row]] = {}
        self._inflight: dict[str, _Entry[Row]] = {}  # taken by the writer, not yet done
        self._telling = 0  # rows done whose callbacks are being called
        self._refused: deque[Refused] = deque(maxlen=refused_kept)
        self._unrecorded: deque[Refused] = deque(maxlen=UNRECORDED_MAX)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.db_ok = True
        self.written = 0
        self.refused_count = 0

    def start(self) -> "WriteBehind[Row]":
        self._thread = threading.Thread(target=self._run, name=f"writer-{self.what.replace(' ', '-')}", daemon=True)
        self._thread.start()
        return self

    def put(self, row: Row, on_durable: Durable | None = None) -> None:
        """Write ``row`` soon, unless a newer version of it is waiting; ``on_durable()`` is
        called (from the writer thread; exceptions are logged) once this row or a newer
        version of it is written, or set aside as refused."""
        key = self._key(row)
        with self._cond:
            waiting = self._dirty.get(key)
            newest = waiting if waiting is not None else self._inflight.get(key)
            if newest is not None and _version(newest.row) > _version(row):
                if on_durable is not None:
                    newest.callbacks.append(on_durable)
                return
            callbacks = waiting.callbacks if waiting is not None else []
            if on_durable is not None:
                callbacks.append(on_durable)
            self._dirty[key] = _Entry(row, callbacks)
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._dirty) + len(self._inflight)

    def refused(self) -> list[Refused]:
        """The latest rows set aside as refused (at most ``refused_kept``), oldest first."""
        with self._cond:
            return list(self._refused)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every row put so far is saved; False on timeout (for tests and shutdown)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._dirty and not self._inflight and not self._telling, timeout
            )

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

    # -- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._dirty or self._stopping)
                if not self._dirty:
                    return
                batch, self._dirty = self._dirty, {}
                self._inflight = batch
            try:
                written = self._write(list(batch.items()))
            except Exception as exc:  # never let the writer thread die: keep the rows, retry
                log.exception("writing %s failed", self.what)
                with self._cond:
                    left = list(self._inflight.items())
                self._outage(StoreError(str(exc)), left)
                written = False
            if written:
                self._backoff.reset()
                self._record_unrecorded()
                continue
            delay = self._backoff.next()
            with self._cond:
                if self._stopping:
                    return
                self._cond.wait(delay)  # woken early by stop()

    def _write(self, entries: list[tuple[str, _Entry[Row]]]) -> bool:
        """Save the batch; True when every row is written or set aside, False on an outage
        (the rows not done are waiting again)."""
        try:
            self._save([entry.row for _, entry in entries])
        except StoreRefused as exc:
            if len(entries) == 1:
                self._set_aside(*entries[0], _reason(exc))
                return True
            log.warning("the database refused a row of %d %s: saving them one at a time",
                        len(entries), self.what)
            return self._one_by_one(entries)
        except StoreError as exc:
            self._outage(exc, entries)
            return False
        except Exception:  # a row the store cannot even take (a bug's symptom): find it
            log.exception("saving %d %s failed: saving them one at a time", len(entries), self.what)
            return self._one_by_one(entries)
        self._finish(entries)
        return True

    def _one_by_one(self, entries: list[tuple[str, _Entry[Row]]]) -> bool:
        for index, (key, entry) in enumerate(entries):
            try:
                self._save([entry.row])
            except StoreRefused as exc:
                self._set_aside(key, entry, _reason(exc))
            except StoreError as exc:
                self._outage(exc, entries[index:])
                return False
            except Exception as exc:
                self._set_aside(key, entry, f"{type(exc).__name__}: {exc}")
            else:
                self._finish([(key, entry)])
        return True

    def _finish(self, entries: list[tuple[str, _Entry[Row]]]) -> None:
        """These rows are written: forget them and tell who waits."""
        callbacks = self._take(entries)
        with self._cond:
            self.written += len(entries)
        if not self.db_ok:
            self.db_ok = True
            log.warning("database back: wrote the latest %d %s", len(entries), self.what)
        self._tell(callbacks)

    def _set_aside(self, key: str, entry: _Entry[Row], reason: str) -> None:
        refused = Refused(datetime.now(timezone.utc), self.kind, key, reason, entry.row)
        log.error("the database refused %s %s; set aside (see rejected_rows): %s", self.kind, key, reason)
        callbacks = self._take([(key, entry)])
        with self._cond:
            self._refused.append(refused)
            self.refused_count += 1
        if not self.db_ok:  # it answered
            self.db_ok = True
            log.warning("database back: %s", self.what)
        self._record(refused)
        self._tell(callbacks)

    def _take(self, entries: list[tuple[str, _Entry[Row]]]) -> list[Durable]:
        with self._cond:
            callbacks: list[Durable] = []
            for key, entry in entries:
                self._inflight.pop(key, None)
                callbacks.extend(entry.callbacks)
            self._telling += 1  # until _tell() has called them
            return callbacks

    def _outage(self, exc: StoreError, entries: list[tuple[str, _Entry[Row]]]) -> None:
        with self._cond:
            for key, entry in entries:
                self._inflight.pop(key, None)
                waiting = self._dirty.get(key)
                if waiting is None:
                    self._dirty[key] = entry
                elif _version(entry.row) > _version(waiting.row):  # keep the newer row
                    self._dirty[key] = _Entry(entry.row, entry.callbacks + waiting.callbacks)
                else:
                    waiting.callbacks[:0] = entry.callbacks
            self._cond.notify_all()
        if self.db_ok:
            self.db_ok = False
            log.error("database unreachable (%s): keeping %s in memory, will retry", exc, self.what)

    def _tell(self, callbacks: list[Durable]) -> None:
        """Call what _take() collected."""
        try:
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("a callback waiting for %s to be written failed", self.what)
        finally:
            with self._cond:
                self._telling -= 1
                self._cond.notify_all()

    # -- keeping refused rows in rejected_rows ----------------------------------------------

    def _record(self, refused: Refused) -> None:
        if self._record_refused is None:
            return
        try:
            self._record_refused(refused.kind, refused.row_id, refused.reason, row_json(refused.row),
                                 refused.at)
        except StoreRefused as exc:  # cannot happen with the stores: they cut what must be
            log.error("cannot keep the refused %s %s in rejected_rows: %s", refused.kind, refused.row_id, exc)
        except StoreError as exc:
            with self._cond:
                if len(self._unrecorded) == self._unrecorded.maxlen:
                    log.error("more than %d refused %s wait to be kept in rejected_rows: the oldest "
                              "is only in the log", UNRECORDED_MAX, self.what)
                self._unrecorded.append(refused)
            log.warning("refused %s %s not kept in rejected_rows yet (%s); will retry",
                        refused.kind, refused.row_id, exc)
        except Exception:
            log.exception("cannot keep the refused %s %s in rejected_rows", refused.kind, refused.row_id)

    def _record_unrecorded(self) -> None:
        """After a batch went through: keep the refused rows that were not kept before."""
        while True:
            with self._cond:
                if not self._unrecorded:
                    return
                refused = self._unrecorded.popleft()
            before = len(self._unrecorded)
            self._record(refused)
            if len(self._unrecorded) > before:  # still failing: later
                return


def _reason(exc: StoreRefused) -> str:
    return exc.reason if exc.errno is None else f"{exc.reason} (error {exc.errno})"


def cp_state_writer(store: Store, backoff: Backoff | None = None) -> WriteBehind[CPRow]:
    return WriteBehind(store.save_charging_points, lambda row: row.cp_id, "CP states", backoff,
                       kind="cp", record_refused=getattr(store, "add_rejected", None))


def session_writer(store: Store, backoff: Backoff | None = None) -> WriteBehind[SessionRow]:
    return WriteBehind(store.save_sessions, lambda row: row.session_id, "charging sessions", backoff,
                       kind="session", record_refused=getattr(store, "add_rejected", None))
