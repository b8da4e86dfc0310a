"""The Engine's RFID reader: a tag presented at the CP starts or ends a supply through
Central's MCSP port (docs/mcsp.md, "Stations: the Engine's reader and ev_rfid").

``tap(uid)`` is a tag presented (the ``t`` key, or ``--rfid-tag`` under ``--auto``):

* a UID that is not a tag's (``check_key``) is said on screen; nothing is sent;
* if the Engine holds the supply this reader opened with this same tag: ``END`` for it
  (Central sends ``FIN``, the Engine ends the supply as an unplug, Central answers with the
  figures);
* otherwise ``START`` with ``Name`` = the Engine's CP id (Central authorises the supply here
  with a ``SUP``, as for a driver, and answers once the Engine accepted it).

Each exchange runs on the reader's own worker thread, one at a time: Central's answer to
START waits for this Engine to accept the ``SUP`` on another thread, so nothing that
serves the Engine may wait for it. A tag presented while an exchange is in flight is
refused on screen (never queued). What happened is said through the Engine's ``say``:
``tag ...E73A: session <id> opened``, ``tag ...E73A: session <id> ended: 2.7500 kWh, 1.32 EUR``,
``tag ...E73A refused: <Message> (<Code>)``, ``Central's MCSP port cannot be reached: ...``.
UIDs are keys: screens and logs show their last four hex digits only.

``tick()`` (every second, with the Engine's) does the unattended part. Under ``--auto`` the
Engine leaves a tag's supply alone after ``--auto-seconds`` (``Engine.held_by_tag``): the
reader sends ``END`` for it then, again every few seconds if that fails, and if the supply
is still held ``END_GIVE_UP`` seconds after END was first due, the Engine unplugs locally
(its ``supply.end`` reaches Central over Kafka, so the session is still booked). With
``auto_key`` (``--rfid-tag``) the reader also presents that tag by itself: ``START``
whenever the CP is idle, its Monitor connected, not faulty nor stopped, and at least
``every`` seconds after its last tag supply ended or its last START failed (after repeated
failures, longer: capped backoff with jitter).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ev_common.mcsp import EndOk, ErrorAnswer, LocalProtocolError, StartOk, check_key, masked
from ev_common.retry import Backoff
from ev_rfid.client import CentralUnreachable

log = logging.getLogger(__name__)

DEFAULT_EVERY = 15.0  # --rfid-every: s between the end of a tag supply and the next auto START
START_BACKOFF_CAP = 120.0  # s: the longest extra wait after repeated failed auto STARTs
END_GIVE_UP = 30.0  # s after END was due under --auto: unplug locally
END_RETRY_INITIAL, END_RETRY_CAP = 1.0, 5.0  # s between END attempts under --auto
JOIN_TIMEOUT = 2.0
NO_MCSP = "no MCSP address: start the Engine with --mcsp HOST:PORT"
NO_CP_ID = "this Engine does not know its CP id yet"


@dataclass(frozen=True)
class Held:
    """A tag supply this reader opened: its session, the tag and the station it was opened at."""

    session_id: str
    key: str
    station: str


@dataclass(frozen=True)
class _Job:
    action: str  # "START" or "END"
    key: str
    station: str
    session_id: str = ""
    auto: bool = False  # sent by tick(), not by a person


class RfidReader:
    """The CP's RFID reader (see the module doc). ``client`` is a ``StationClient`` to
    Central's MCSP port, or None when the Engine has no MCSP address (``tap`` says so)."""

    def __init__(self, engine, client, *, say: Callable[[str], None] | None = None, auto_key: str | None = None,
                 every: float = DEFAULT_EVERY, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, end_give_up: float = END_GIVE_UP) -> None:
        if not every > 0:
            raise ValueError("every must be above 0")
        self.engine = engine
        self.client = client
        self.auto_key = check_key(auto_key) if auto_key is not None else None
        self.every = every
        self.end_give_up = end_give_up
        self._say = say or (lambda text: log.info("%s", text))
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: queue.Queue[_Job] = queue.Queue(maxsize=1)  # at most one exchange waits or runs
        self._busy = False  # an exchange is queued or in flight
        self._closed = False
        self._thread: threading.Thread | None = None
        self.held: Held | None = None
        self._next_start = clock()  # --rfid-tag: no auto START before this
        self._start_backoff = Backoff(initial=every, cap=max(every, START_BACKOFF_CAP), rng=rng)
        self._end_due: float | None = None  # --auto: when END of the held supply was first due
        self._end_next = 0.0  # --auto: no END attempt before this
        self._end_backoff = Backoff(initial=END_RETRY_INITIAL, cap=END_RETRY_CAP, rng=rng)

    @property
    def busy(self) -> bool:
        """Whether an exchange with Central is queued or in flight."""
        return self._busy

    # -- a tag presented ------------------------------------------------------------------------

    def tap(self, uid: str) -> str:
        """A tag presented at the CP: START or END at Central (on the worker); the line said."""
        try:
            key = check_key(uid.strip() if isinstance(uid, str) else uid)
        except LocalProtocolError:
            return self._tell("not a tag UID (4, 7, 8 or 10 bytes in hex, e.g. 16AC936B1692E73A): nothing sent")
        if self.client is None:
            return self._tell(NO_MCSP)
        with self._lock:
            return self._present(key, auto=False)

    def _present(self, key: str, auto: bool) -> str:
        """Under the lock: queue START or END for ``key``, or say why not."""
        tag = f"tag {masked(key)}"
        if self._closed:
            return self._tell(f"{tag} not read: the Engine is stopping")
        if self._busy:
            return self._tell(f"{tag} not read: the last tag's exchange with Central is still in course; "
                              "present it again when it is answered")
        held = self._held_now(self._clock())
        if held is not None and held.key == key:
            job = _Job("END", key, held.station, held.session_id, auto)
            said = f"{tag} presented: asking Central to end session {held.session_id}"
        else:
            station = self.engine.cp_id
            if not station:
                return self._tell(f"{tag} not read: {NO_CP_ID}")
            job = _Job("START", key, station, auto=auto)
            said = f"{tag} presented: asking Central to open a session at {station}"
        self._busy = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="rfid-reader", daemon=True)
            self._thread.start()
        self._jobs.put_nowait(job)  # never full: _busy guards it
        return self._tell(said)

    # -- every second ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Under --auto: END for a tag supply plugged in for --auto-seconds (unplug locally if
        that fails for ``end_give_up`` s); with ``auto_key``, START when the CP is free."""
        if self.client is None:
            return
        give_up: Held | None = None
        with self._lock:
            if self._closed:
                return
            now = self._clock()
            held = self._held_now(now)
            engine = self.engine
            if held is not None:
                supply = engine.supply
                if (engine.auto_seconds is None or supply is None or supply.plugged_at is None
                        or now - supply.plugged_at < engine.auto_seconds):
                    return
                if self._end_due is None:
                    self._end_due = now
                if now - self._end_due >= self.end_give_up:
                    give_up, self.held, self._end_due = held, None, None
                    self._next_start = now + self.every
                elif not self._busy and now >= self._end_next:
                    self._present(held.key, auto=True)
            elif self.auto_key is not None and not self._busy and now >= self._next_start and self._can_start():
                self._present(self.auto_key, auto=True)
        if give_up is not None:
            log.warning("tag %s: END of session %s not answered by Central for %g s; unplugging here",
                        masked(give_up.key), give_up.session_id, self.end_give_up)
            self._tell(f"tag {masked(give_up.key)}: Central did not end session {give_up.session_id} within "
                       f"{self.end_give_up:g} s: unplugged here; its end reaches Central over Kafka")
            self.engine.unplug()

    def _can_start(self) -> bool:
        engine = self.engine
        return (engine.supply is None and engine.monitor is not None and not engine.faulty and not engine.stopped
                and engine.kafka_reachable and not engine.closing and bool(engine.cp_id))

    def _held_now(self, now: float) -> Held | None:
        """Under the lock: the tag supply held, forgotten once the Engine no longer holds it
        (ended by END, unplugged, a fault, a stop...): the next auto START waits ``every``."""
        held = self.held
        if held is None:
            return None
        supply = self.engine.supply
        if supply is not None and supply.session_id == held.session_id:
            return held
        log.info("tag %s: session %s is no longer held here", masked(held.key), held.session_id)
        self._ended(now)
        return None

    def _ended(self, now: float) -> None:
        self.held, self._end_due, self._end_next = None, None, 0.0
        self._end_backoff.reset()
        self._next_start = max(self._next_start, now + self.every)

    # -- the worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._closed:
            try:
                job = self._jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._exchange(job)
            except Exception:  # a bug in one exchange must not stop the reader
                log.exception("the RFID reader's %s failed", job.action)
            finally:
                with self._lock:
                    self._busy = False

    def _exchange(self, job: _Job) -> None:
        tag = f"tag {masked(job.key)}"
        try:
            if job.action == "START":
                answer = self.client.start(job.station, job.key)
            else:
                answer = self.client.end(job.station, job.session_id, job.key)
        except CentralUnreachable as exc:
            if self._closed:  # close() abandoned it: the Engine is stopping
                log.info("%s: %s abandoned: the Engine is stopping", tag, job.action)
                return
            log.warning("%s: %s not answered: %s", tag, job.action, exc)
            self._failed(job, f"Central's MCSP port cannot be reached: {exc}")
            return
        except LocalProtocolError as exc:  # a CP id or session id the protocol cannot carry
            self._failed(job, f"{tag} not read: {exc}")
            return
        if isinstance(answer, ErrorAnswer):
            self._failed(job, f"{tag} refused: {answer.message} ({answer.code})")
        elif job.action == "START" and isinstance(answer, StartOk):
            self._opened(job, answer.session_id)
        elif isinstance(answer, EndOk):
            with self._lock:
                if self.held is not None and self.held.session_id == job.session_id:
                    self._ended(self._clock())
            figures = "" if answer.energy_kwh is None else f": {answer.energy_kwh} kWh, {answer.amount_eur} EUR"
            self._tell(f"{tag}: session {job.session_id} ended{figures}")

    def _opened(self, job: _Job, session_id: str) -> None:
        held_here = self.engine.held_by_tag(session_id)
        with self._lock:
            self._start_backoff.reset()
            self.held = Held(session_id, job.key, job.station)
            self._end_due, self._end_next = None, 0.0
        if not held_here:
            log.warning("tag %s: Central opened session %s but this Engine does not hold it (ended already?)",
                        masked(job.key), session_id)
        self._tell(f"tag {masked(job.key)}: session {session_id} opened")

    def _failed(self, job: _Job, said: str) -> None:
        now = self._clock()
        with self._lock:
            if job.action == "START":  # the next auto START waits longer after each failure
                self._next_start = max(self._next_start, now + self.every + self._start_backoff.next())
            else:
                self._end_next = now + self._end_backoff.next()
                held = self._held_now(now)
                if held is not None and job.auto:
                    said += f"; trying again (the supply goes on; unplugged here after {self.end_give_up:g} s)"
                elif held is not None:
                    said += "; the supply goes on: present the tag again, or unplug [u]"
        self._tell(said)

    # -- the end --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker; an exchange in flight is abandoned (its connection closed)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if self.client is not None:
            self.client.close()
        if thread is not None:
            thread.join(JOIN_TIMEOUT)

    def _tell(self, text: str) -> str:
        self._say(text)
        return text
