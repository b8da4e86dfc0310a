"""Central's audit log writer: who did what, from where, and how it went (docs/security.md,
"Audit").

``AuditLog.record`` is called from the reactor thread, the Kafka consumers, the MCSP threads
and the effects thread: it never blocks on the database or a file, and never raises. It
stamps the entry with the time (an injected clock), cuts its texts to what the database
keeps, and queues it; one thread appends the queue to ``audit_log`` in batches
(``Store.append_audit`` chains each entry to the one before).

Nothing is lost, within bounds:

- While the database is unreachable the entries wait in memory and the writer retries with
  capped, jittered backoff. Past ``high_water`` entries in memory, the oldest go to the
  spool: an append-only file of JSON lines in Central's data directory, flushed and fsynced
  a batch at a time, at most ``spool_max_bytes`` (an ERROR says when that bound is hit: the
  entries then wait in memory, up to ``max_queued``).
- ``stop()`` appends what it can within its timeout and spools the rest.
- The spool is replayed, in order and before any newer entry, at the next start and as
  soon as the database is back. Entries keep the time they happened at; their place in the
  chain is the order in which they were appended, so an entry replayed from the spool may
  follow entries that other programs (EV_Registry) appended meanwhile.
- An append that failed without a clear answer (a timeout: the commit may have happened)
  is looked up in the log before its entries are appended again, and so is every entry
  replayed from the spool: none is appended twice.
- A batch the database refuses (``StoreRefused``) is appended again one entry at a time;
  an entry refused on its own is logged at ERROR, counted as failed and kept in the
  spool's ``.refused.jsonl`` file beside it (never replayed by itself: the same entry
  would be refused again).
- Past every bound (the queue full while the spool is full or cannot be written) an entry
  is logged at ERROR with its content and counted as failed, and an ``audit.lost`` entry
  later says how many were.

A crash (not a clean stop) loses the entries still in memory: at most ``high_water`` of
them during an outage, as the write-behind of rows loses its rows.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Callable, Protocol

from ev_common.retry import Backoff

from .core.audit import ChainCheck, ChainVerifier
from .core.entities import AuditEntry
from .store.base import Store, StoreError, StoreRefused

log = logging.getLogger(__name__)

# -- names: every action and actor recorded (docs/security.md, "Audit", lists them) ---------

AUTH = "auth"  # a Monitor authenticating, success or failure (with the reason)
KEY_ISSUE = "key.issue"  # Central gave a CP a new key
KEY_REVOKE = "key.revoke"  # a CP's keys revoked (the operator's "restore keys")
RECORD_REJECTED = "record.rejected"  # a message that could not be decrypted or authenticated
REGISTRY_REGISTER = "registry.register"  # EV_Registry registered a CP (alta)
REGISTRY_DEREGISTER = "registry.deregister"  # EV_Registry deregistered a CP (baja)
REGISTRY_AUTH = "registry.auth"  # a request to EV_Registry with a missing or wrong operator token
SUPPLY_START = "supply.start"  # a supply authorised
SUPPLY_DENY = "supply.deny"  # a supply refused, with the reason
SUPPLY_END = "supply.end"  # a supply ended (its ticket), or its ticket corrected
CP_REGISTER = "cp.register"  # a Monitor's REG accepted
CP_FAULT = "cp.fault"  # a CP broke down (AVERIADO)
CP_RECOVER = "cp.recover"  # a broken CP recovered
CP_DISCONNECT = "cp.disconnect"  # a CP's Monitor went away (DESCONECTADO)
CP_STOP = "cp.stop"  # a CP stopped by the operator
CP_RESUME = "cp.resume"  # a CP resumed by the operator
OPERATOR_COMMAND = "operator.command"  # an operator's command (typed at Central, or the API's), and its answer
API_AUTH = "api.auth"  # a request to Central's API refused for its bearer token
MCSP_ERROR = "mcsp.error"  # an ERROR answered to an RFID station
WEATHER_ALERT = "weather.alert"  # EV_W's weather alert: a city below 0 °C, its CPs out of service
WEATHER_CLEAR = "weather.clear"  # EV_W cleared a weather alert: its CPs back in service
AUDIT_LOST = "audit.lost"  # entries that could not be kept (every bound was hit)

ACTIONS: dict[str, str] = {
    AUTH: "a Monitor authenticating (success or failure, with the reason)",
    KEY_ISSUE: "a key issued to a CP",
    KEY_REVOKE: "a CP's keys revoked",
    RECORD_REJECTED: "a message that could not be decrypted or authenticated",
    REGISTRY_REGISTER: "a CP registered at EV_Registry",
    REGISTRY_DEREGISTER: "a CP deregistered at EV_Registry",
    REGISTRY_AUTH: "a request to EV_Registry refused for its operator token",
    SUPPLY_START: "a supply authorised",
    SUPPLY_DENY: "a supply refused",
    SUPPLY_END: "a supply ended, or its ticket corrected",
    CP_REGISTER: "a Monitor's registration (REG) accepted",
    CP_FAULT: "a CP broke down",
    CP_RECOVER: "a broken CP recovered",
    CP_DISCONNECT: "a CP's Monitor went away",
    CP_STOP: "a CP stopped by the operator",
    CP_RESUME: "a CP resumed by the operator",
    OPERATOR_COMMAND: "an operator's command and its answer",
    API_AUTH: "a request to Central's API refused for its bearer token",
    MCSP_ERROR: "an ERROR answered to an RFID station",
    WEATHER_ALERT: "a weather alert: a city below 0 °C, its CPs out of service",
    WEATHER_CLEAR: "a weather alert cleared: its CPs back in service",
    AUDIT_LOST: "audit entries that could not be kept",
}
"""Every action, and what it records."""

OPERATOR = "operator"  # the actor of a command typed at Central (console or panel)
CENTRAL = "central"  # the actor of what Central itself decides
MCSP_STATION = "MCSP station"  # the actor of an MCSP error before the station named itself

OK = "ok"
REFUSED = "refused"
FAILED = "failed"
INTERRUPTED = "interrupted"  # a supply.end whose session was interrupted
CORRECTED = "corrected"  # a supply.end that corrects a ticket

# -- bounds -----------------------------------------------------------------------------------

MAX_QUEUED = 100_000  # entries in memory; past it an entry is lost (logged at ERROR)
HIGH_WATER = 10_000  # entries in memory during an outage before the oldest go to the spool
BATCH_SIZE = 500  # entries per append (one transaction)
SPOOL_MAX_BYTES = 32 * 1024 * 1024  # each spool file
REPLAY_CHUNK = 5_000  # spooled entries read (and looked up in the log) at a time
LOOKUP_BATCH = 1_000  # rows per query when looking entries up in the log
SPOOL_SUFFIX = ".audit-spool.jsonl"


class Recorder(Protocol):
    """What callers need: ``AuditLog`` or ``NoAudit``."""

    def record(self, action: str, actor: str, details: str = "", outcome: str = OK,
               source_ip: str = "") -> None: ...


@dataclass(frozen=True)
class AuditStats:
    """The audit writer's counters (for the panel)."""

    queued: int  # entries in memory, waiting for the database
    written: int  # entries appended since the start
    spooled: int  # entries in the spool file, waiting for the database
    failed: int  # entries refused alone or lost since the start (each logged at ERROR)
    db_ok: bool = True  # the last append reached the database


class NoAudit:
    """Records nothing: for the parts built without an ``AuditLog`` (unit tests)."""

    def record(self, action: str, actor: str, details: str = "", outcome: str = OK,
               source_ip: str = "") -> None:
        pass

    def start(self) -> "NoAudit":
        return self

    def stop(self, timeout: float = 5.0) -> None:
        pass

    def wait_idle(self, timeout: float) -> bool:
        return True

    def stats(self) -> AuditStats:
        return AuditStats(0, 0, 0, 0)


NO_AUDIT = NoAudit()


def stored_form(entry: AuditEntry) -> AuditEntry:
    """``entry`` as the store keeps (and hashes) it: UTC, texts printable and cut to their
    columns. Taking this form at ``record`` bounds each entry, and lets the spool be compared
    with the log."""
    from .store.sql import _audit_entry  # the one definition of the stored form

    return _audit_entry(entry)


def source_host(peer: str) -> str:
    """The address part of a peer ``host:port`` (``[v6]:port`` or ``v6:port``: the port is
    always there), for the audit's ``source_ip``."""
    if peer.startswith("["):
        return peer[1:].split("]", 1)[0]
    host, sep, port = peer.rpartition(":")
    return host if sep and host and port.isdigit() else peer


def default_spool_path(store: Store) -> Path:
    """Where Central spools audit entries: next to the SQLite file; with another database,
    in ``$EV_DATA_DIR`` (else the working directory), named after the database."""
    path = getattr(store, "path", None)
    if path is not None:
        path = Path(path)
        return path.with_name(path.name + SPOOL_SUFFIX)
    from .store import ENV_DATA_DIR

    directory = Path(os.environ.get(ENV_DATA_DIR, "").strip() or Path.cwd()).expanduser()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", getattr(store, "description", "") or "database").strip("-.")
    return directory / f"{name[:100] or 'database'}{SPOOL_SUFFIX}"


# -- the spool file -----------------------------------------------------------------------------


def _line(entry: AuditEntry, refused: str = "") -> bytes:
    fields = {"at": entry.at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "actor": entry.actor,
              "source_ip": entry.source_ip, "action": entry.action, "details": entry.details,
              "outcome": entry.outcome}
    if refused:
        fields["refused"] = refused
    return (json.dumps(fields, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


def _entry(line: bytes) -> AuditEntry:
    """An entry back from its spool line; ValueError if it is not one."""
    fields = json.loads(line)
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    texts = [fields.get(key) for key in ("actor", "source_ip", "action", "details", "outcome")]
    if not all(isinstance(text, str) for text in texts) or not isinstance(fields.get("at"), str):
        raise ValueError("a field is missing or not text")
    at = datetime.fromisoformat(fields["at"].replace("Z", "+00:00"))
    if at.tzinfo is None:
        raise ValueError("a time without its zone")
    return stored_form(AuditEntry(at, *texts))


class Spool:
    """The spool: ``path`` is appended to; ``replay_path`` is the part being replayed (the
    spool renamed, so that what is spooled meanwhile goes to a new file after it);
    ``refused_path`` keeps the entries the database refused. Each file holds at most
    ``max_bytes``. Writes are flushed and fsynced before they return."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = SPOOL_MAX_BYTES) -> None:
        self.path = Path(path)
        base = self.path.name[: -len(".jsonl")] if self.path.name.endswith(".jsonl") else self.path.name
        self.replay_path = self.path.with_name(base + ".replay.jsonl")
        self.refused_path = self.path.with_name(base + ".refused.jsonl")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def count(self) -> tuple[int, int]:
        """(entries in the spool file, entries in the replay file)."""
        return _lines(self.path), _lines(self.replay_path)

    def append(self, entries: list[AuditEntry], *, refused: str = "") -> int:
        """Append as many of ``entries`` as fit, in order; returns how many did (OSError if
        the file cannot be written)."""
        return self._append(self.refused_path if refused else self.path, [_line(e, refused) for e in entries])

    def _append(self, path: Path, lines: list[bytes]) -> int:
        if not lines:
            return 0
        with self._lock:
            size = path.stat().st_size if path.exists() else 0
            fitted = []
            for line in lines:
                if size + len(line) > self.max_bytes:
                    break
                fitted.append(line)
                size += len(line)
            if not fitted:
                return 0
            new = not path.exists()
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab+") as f:
                if f.tell() > 0:  # a line cut by a crash must not swallow the next one
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
                f.write(b"".join(fitted))
                f.flush()
                os.fsync(f.fileno())
            if new:
                _fsync_directory(path.parent)
            return len(fitted)

    def begin_replay(self) -> bool | None:
        """Make ``replay_path`` the file to replay: the one an unfinished replay left (False),
        else the spool renamed (True); None when there is nothing to replay."""
        with self._lock:
            if self.replay_path.exists():
                return False
            if not self.path.exists():
                return None
            if self.path.stat().st_size == 0:
                self.path.unlink()
                return None
            os.replace(self.path, self.replay_path)
            _fsync_directory(self.path.parent)
            return True

    def read(self, offset: int, limit: int) -> tuple[list[AuditEntry], int, int]:
        """Up to ``limit`` entries of the replay file from byte ``offset``: (the entries, the
        offset after them, how many lines were not entries: each logged at ERROR)."""
        entries: list[AuditEntry] = []
        bad = 0
        with open(self.replay_path, "rb") as f:
            f.seek(offset)
            while len(entries) < limit:
                line = f.readline()
                if not line:
                    break
                offset += len(line)
                if not line.strip():
                    continue
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError("the line is cut (a crash while it was written)")
                    entries.append(_entry(line))
                except (ValueError, TypeError) as exc:
                    bad += 1
                    log.error("audit spool %s: a line that is not an entry was skipped (%s): %r",
                              self.replay_path, exc, line[:2000])
        return entries, offset, bad

    def finish_replay(self) -> None:
        with self._lock:
            self.replay_path.unlink(missing_ok=True)
            _fsync_directory(self.replay_path.parent)


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


def _fsync_directory(directory: Path) -> None:
    """Make a file's creation, renaming or removal durable (where the platform allows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _key(entry: AuditEntry) -> tuple:
    return (entry.at.astimezone(timezone.utc), entry.actor, entry.source_ip, entry.action, entry.details,
            entry.outcome)


def _shown(entry: AuditEntry) -> str:
    return _line(entry).decode("ascii").rstrip("\n")


# -- the writer -----------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class AuditLog:
    """Central's audit writer (see the module's doc). ``spool_path`` None keeps no spool:
    entries the database has not taken are then only in memory (tests)."""

    def __init__(self, store: Store, spool_path: str | os.PathLike[str] | None, *,
                 clock: Callable[[], datetime] = _utcnow, max_queued: int = MAX_QUEUED,
                 high_water: int = HIGH_WATER, batch_size: int = BATCH_SIZE,
                 spool_max_bytes: int = SPOOL_MAX_BYTES, replay_chunk: int = REPLAY_CHUNK,
                 lookup_batch: int = LOOKUP_BATCH, backoff: Backoff | None = None) -> None:
        if not 0 < high_water < max_queued:
            raise ValueError("need 0 < high_water < max_queued")
        if batch_size < 1 or replay_chunk < 1 or lookup_batch < 1:
            raise ValueError("batch_size, replay_chunk and lookup_batch must be at least 1")
        self.store = store
        self.spool = Spool(spool_path, spool_max_bytes) if spool_path is not None else None
        self.max_queued = max_queued
        self.high_water = high_water
        self.batch_size = batch_size
        self.replay_chunk = replay_chunk
        self.lookup_batch = lookup_batch
        self._clock = clock
        self._backoff = backoff or Backoff(initial=0.5, cap=10.0)
        self._cond = threading.Condition()
        self._spooling = threading.Lock()  # one writer of the spool file at a time: the writer or stop()
        self._queue: deque[AuditEntry] = deque()
        self._suspect = 0  # the queue's first entries whose append failed without a clear answer
        self._replaying = False  # the spool has entries to append before the queue's
        self._fresh = 0  # entries spooled since the spool file was last taken for replay
        self._replay_offset: int | None = None  # how far the replay file was read; None: none open
        self._chunk: deque[AuditEntry] = deque()  # entries read from the replay file, not appended yet
        self._chunk_checked = True  # the chunk was looked up in the log
        self._spool_count = 0
        self._spool_full = False
        self._full_said = False
        self._busy = False
        self._started = False
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._lost_untold = 0
        self.db_ok = True
        self.written = 0
        self.failed = 0

    # -- what callers use -----------------------------------------------------------------------

    def start(self) -> "AuditLog":
        """Start the writer; what the spool holds is appended first (once it is readable)."""
        if self._started:
            return self
        self._started = True
        if self.spool is not None:
            try:
                spooled, replaying = self.spool.count()
            except OSError as exc:
                log.error("cannot read the audit spool %s: %s", self.spool.path, exc)
                spooled = replaying = 0
            with self._cond:
                self._spool_count = spooled + replaying
                self._fresh = spooled
                self._replaying = self._spool_count > 0 or self.spool.replay_path.exists()
            if self._spool_count:
                log.info("%d audit entries in the spool %s: appended before any new one", self._spool_count,
                         self.spool.path)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        return self

    def record(self, action: str, actor: str, details: str = "", outcome: str = OK, source_ip: str = "") -> None:
        """Queue an entry stamped now; never blocks on the database and never raises."""
        try:
            entry = stored_form(AuditEntry(self._clock(), actor, source_ip, action, details, outcome))
        except Exception:
            log.exception("audit entry %r by %r could not be made", action, actor)
            with self._cond:
                self.failed += 1
            return
        with self._cond:
            closed = self._closed
            if not closed and len(self._queue) < self.max_queued:
                self._queue.append(entry)
                if len(self._queue) == 1 or len(self._queue) > self.high_water:
                    self._cond.notify_all()
                return
        if closed:  # after stop(): straight to the spool (Central is shutting down)
            self._spool_or_lose([entry], "the audit writer is stopped")
        else:
            self._lose([entry], f"{self.max_queued} entries wait in memory and the spool cannot take more")

    def stats(self) -> AuditStats:
        with self._cond:
            return AuditStats(len(self._queue), self.written, self._spool_count, self.failed, self.db_ok)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every entry recorded so far is appended (or set aside); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._replaying and not self._busy, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Append what can be appended within ``timeout``, spool the rest, stop the writer."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        spooling = self._spooling.acquire(timeout=max(0.1, deadline - time.monotonic()))
        try:
            with self._cond:
                self._closed = True
                left = list(self._queue)
                self._queue.clear()
                self._cond.notify_all()
            if self._thread is not None and self._thread.is_alive():
                log.warning("audit: the writer did not finish within %g s (the database hangs?); what it holds "
                            "is spooled, and looked up in the log before it is appended again", timeout)
            if left:
                if spooling:
                    self._spool_or_lose(left, "Central is stopping")
                else:
                    self._lose(left, "Central is stopping and the spool is busy")
        finally:
            if spooling:
                self._spooling.release()
        with self._cond:
            if self._lost_untold:
                log.error("audit: %d entries were lost in this run (see the ERROR lines above)", self._lost_untold)

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._queue or self._replaying)
                if self._closed or (self._stopping and (self._replaying or not self._queue)):
                    return  # stop() spools what is left; the spool is replayed at the next start
                replay = self._replaying
                self._busy = True
            try:
                done = self._replay_step() if replay else self._write_step()
            except Exception:
                log.exception("audit: writing the log failed; will retry")
                done = False
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            if done:
                self._backoff.reset()
                self._spool_overflow()
                self._tell_lost()
                continue
            with self._cond:
                if self._stopping:
                    return
            self._pause(self._backoff.next())

    def _write_step(self) -> bool:
        """Append the queue's next batch; False on an outage."""
        with self._cond:
            batch = list(islice(self._queue, self.batch_size))
            suspect = min(self._suspect, len(batch))
        if suspect:
            try:
                stored = self._stored_already(batch[:suspect])
            except StoreError as exc:
                self._outage(exc)
                return False
            with self._cond:
                if self._closed:
                    return True
                head = [self._queue.popleft() for _ in range(len(batch))]
                batch = [entry for index, entry in enumerate(head) if index not in stored]
                self._queue.extendleft(reversed(batch))
                self._suspect = 0
            self._appended(len(stored))  # (in this run after all) the database answers again
            if stored:
                log.info("audit: %d entries were appended before the database failed to answer; not appended "
                         "again", len(stored))
            if not batch:
                return True
        done = self._append(batch)
        with self._cond:
            if not self._closed:
                for _ in range(done):
                    self._queue.popleft()
                self._suspect = len(batch) - done  # the one that failed may have been committed
        return done == len(batch)

    def _replay_step(self) -> bool:
        """Append the spool's next batch; False on an outage."""
        spool = self.spool
        assert spool is not None
        if self._replay_offset is None:
            try:
                began = spool.begin_replay()
            except OSError as exc:
                return self._spool_unreadable(exc)
            if began is None:  # nothing spooled after all
                with self._cond:
                    self._replaying, self._fresh = False, 0
                return True
            if began:
                with self._cond:
                    self._fresh = 0
            self._replay_offset, self._chunk, self._chunk_checked = 0, deque(), True
        if not self._chunk:
            try:
                entries, offset, bad = spool.read(self._replay_offset, self.replay_chunk)
            except OSError as exc:
                return self._spool_unreadable(exc)
            with self._cond:
                self.failed += bad
                self._spool_count = max(0, self._spool_count - bad)
            self._replay_offset = offset
            if not entries:
                try:
                    spool.finish_replay()
                except OSError as exc:
                    return self._spool_unreadable(exc)
                self._replay_offset = None
                with self._cond:
                    self._replaying = self._fresh > 0
                log.info("audit: the spool %s is appended to the log", spool.replay_path)
                return True
            self._chunk, self._chunk_checked = deque(entries), False
        if not self._chunk_checked:  # appended before a crash, or before stop() gave up waiting?
            chunk = list(self._chunk)
            try:
                stored = self._stored_already(chunk)
            except StoreError as exc:
                self._outage(exc)
                return False
            self._chunk = deque(entry for index, entry in enumerate(chunk) if index not in stored)
            self._chunk_checked = True
            self._appended(0)  # the database answers again
            if stored:
                with self._cond:
                    self._spool_count = max(0, self._spool_count - len(stored))
                log.info("audit: %d spooled entries were already in the log; not appended again", len(stored))
            if not self._chunk:
                return True
        batch = list(islice(self._chunk, self.batch_size))
        done = self._append(batch)
        for _ in range(done):
            self._chunk.popleft()
        with self._cond:
            self._spool_count = max(0, self._spool_count - done)
        if done < len(batch):
            self._chunk_checked = False
            return False
        return True

    def _spool_unreadable(self, exc: OSError) -> bool:
        """The spool cannot be read: its entries stay in it (tried again at the next start, or
        when more are spooled); the new ones are appended meanwhile."""
        log.error("audit: cannot read the spool %s (%s): its entries stay there, tried again at the next "
                  "start; the new ones are appended meanwhile", self.spool.replay_path if self.spool else "", exc)
        self._replay_offset, self._chunk = None, deque()
        with self._cond:
            self._replaying = False
        return True

    def _append(self, entries: list[AuditEntry]) -> int:
        """Append ``entries``; how many of them, from the first, are done (appended or set aside
        as refused): fewer than all on an outage."""
        try:
            self.store.append_audit(entries)
        except StoreRefused as exc:
            if len(entries) == 1:
                self._refused(entries[0], _reason(exc))
                return 1
            log.warning("audit: the database refused an entry of a batch of %d; appending them one at a time",
                        len(entries))
            return self._one_by_one(entries)
        except StoreError as exc:
            self._outage(exc)
            return 0
        except Exception:  # an entry the store cannot even take (a bug's symptom): find it
            log.exception("audit: appending %d entries failed; appending them one at a time", len(entries))
            return self._one_by_one(entries)
        self._appended(len(entries))
        return len(entries)

    def _one_by_one(self, entries: list[AuditEntry]) -> int:
        for index, entry in enumerate(entries):
            try:
                self.store.append_audit([entry])
            except StoreRefused as exc:
                self._refused(entry, _reason(exc))
            except StoreError as exc:
                self._outage(exc)
                return index
            except Exception as exc:
                self._refused(entry, f"{type(exc).__name__}: {exc}")
            else:
                self._appended(1)
        return len(entries)

    def _stored_already(self, entries: list[AuditEntry]) -> set[int]:
        """The indexes of ``entries`` the log holds already (the first ones of equal entries)."""
        wanted = Counter(_key(entry) for entry in entries)
        found: Counter = Counter()
        since = min(entry.at for entry in entries)
        after = 0
        while True:
            rows = self.store.list_audit(since=since, after_seq=after, limit=self.lookup_batch)
            for row in rows:
                key = _key(row.entry)
                if found[key] < wanted[key]:
                    found[key] += 1
            if len(rows) < self.lookup_batch:
                break
            after = rows[-1].seq
        stored, seen = set(), Counter()
        for index, entry in enumerate(entries):
            key = _key(entry)
            if seen[key] < found[key]:
                seen[key] += 1
                stored.add(index)
        return stored

    def _appended(self, count: int) -> None:
        with self._cond:
            self.written += count
            back = not self.db_ok
            self.db_ok = True
        if back:
            log.warning("audit: the database is back; appending the entries that waited")

    def _outage(self, exc: StoreError) -> None:
        with self._cond:
            first = self.db_ok
            self.db_ok = False
        if first:
            where = f"past {self.high_water} the oldest go to {self.spool.path}" if self.spool else "no spool"
            log.error("audit: the database is unreachable (%s): entries wait in memory (%s); will retry", exc, where)

    def _refused(self, entry: AuditEntry, reason: str) -> None:
        with self._cond:
            self.failed += 1
        where = "in no file (no spool)"
        if self.spool is not None:
            try:
                if self.spool.append([entry], refused=reason) == 1:
                    where = f"in {self.spool.refused_path}"
                else:
                    where = f"in no file ({self.spool.refused_path} is full)"
            except OSError as exc:
                where = f"in no file ({exc})"
        log.error("audit: the database refused an entry (%s); kept %s: %s", reason, where, _shown(entry))

    def _pause(self, delay: float) -> None:
        """Wait ``delay`` before the next try; meanwhile spool the oldest entries past the high water."""
        deadline = time.monotonic() + delay
        self._spool_full = False  # try the spool again once per wait
        while True:
            self._spool_overflow()
            with self._cond:
                left = deadline - time.monotonic()
                if self._stopping or left <= 0:
                    return
                self._cond.wait_for(lambda: self._stopping or self._over_high_water(), left)

    def _over_high_water(self) -> bool:
        return self.spool is not None and not self._spool_full and len(self._queue) > self.high_water

    def _spool_overflow(self) -> None:
        """Move the oldest entries to the spool, down to half the high water, when past it."""
        if self.spool is None:
            return
        with self._spooling:
            with self._cond:
                if self._closed or not self._over_high_water():
                    return
                entries = list(islice(self._queue, len(self._queue) - self.high_water // 2))
            try:
                fitted = self.spool.append(entries)
            except OSError as exc:
                self._spool_full = True
                if not self._full_said:  # (said once until the spool takes entries again)
                    self._full_said = True
                    log.error("audit: cannot write the spool %s (%s): %d entries wait in memory; past %d they "
                              "are lost", self.spool.path, exc, len(self._queue), self.max_queued)
                return
            with self._cond:
                for _ in range(fitted):
                    self._queue.popleft()
                self._suspect = max(0, self._suspect - fitted)
                self._spool_count += fitted
                self._fresh += fitted
                if fitted:
                    self._replaying = True
        if fitted < len(entries):
            self._spool_full = True
            if not self._full_said:
                self._full_said = True
                log.error("audit: the spool %s is full (%d bytes): %d entries wait in memory; past %d they are "
                          "lost", self.spool.path, self.spool.max_bytes, len(self._queue), self.max_queued)
        else:
            self._full_said = False

    def _spool_or_lose(self, entries: list[AuditEntry], why: str) -> None:
        """(stopping or stopped) Spool ``entries``; those that do not fit are lost, loudly."""
        fitted = 0
        if self.spool is not None:
            try:
                fitted = self.spool.append(entries)
            except OSError as exc:
                log.error("audit: cannot write the spool %s: %s", self.spool.path, exc)
            if fitted < len(entries) and self.spool.path.exists():
                log.error("audit: the spool %s is full (%d bytes)", self.spool.path, self.spool.max_bytes)
        with self._cond:
            self._spool_count += fitted
            self._fresh += fitted
        if fitted:
            log.warning("audit: %d entries not appended to the log (%s) are kept in %s: appended at the next "
                        "start", fitted, why, self.spool.path)
        self._lose(entries[fitted:], why)

    def _lose(self, entries: list[AuditEntry], why: str) -> None:
        if not entries:
            return
        with self._cond:
            self.failed += len(entries)
            self._lost_untold += len(entries)
        for entry in entries:
            log.error("audit entry lost (%s); it is only in this log: %s", why, _shown(entry))

    def _tell_lost(self) -> None:
        with self._cond:
            lost, self._lost_untold = self._lost_untold, 0
        if lost:
            self.record(AUDIT_LOST, CENTRAL, f"{lost} audit entries could not be kept (memory and spool full); "
                                             f"Central's log has each of them", FAILED)


def _reason(exc: StoreRefused) -> str:
    return exc.reason if exc.errno is None else f"{exc.reason} (error {exc.errno})"


# -- checking the chain -----------------------------------------------------------------------------


def verify(store: Store, batch: int = LOOKUP_BATCH) -> ChainCheck:
    """Check the whole chain, ``batch`` rows at a time, up to the head read first (entries
    appended meanwhile are not part of this check)."""
    head = store.audit_head()
    verifier = ChainVerifier()
    after = 0
    while after < head[0]:
        rows = [row for row in store.list_audit(after_seq=after, limit=batch) if row.seq <= head[0]]
        if not rows or not verifier.feed(rows):
            break
        after = rows[-1].seq
    return verifier.finish(head)
