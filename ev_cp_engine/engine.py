"""The Engine: the charging point itself, as a state machine driven by its inputs.

Inputs: health checks and commands from its Monitor (``health``, ``authorise``,
``cancel``, ``supply_state``, ``stop``, ``resume``, the Monitor's arrival and loss), the person at the CP
(``plug``, ``unplug``, ``toggle_fault``, ``request_supply``), whether the broker answers
(``kafka_ok``) and ``tick()`` every second. Outputs: records through ``emit`` (telemetry every second while
supplying, the end of each supply, requests made at the CP) and lines for
people through ``say``. Pure and thread-safe; the clock is injected.

    IDLE --authorise--> AUTHORISED --plug--> SUPPLYING --unplug--> IDLE (supply.end "unplugged")
    AUTHORISED/SUPPLYING --fault | stop | Monitor lost | plug timeout | cancel--> IDLE (supply.end, interrupted)

Every ``supply.end`` is kept (in the journal, if any) until the broker confirms it
(``emit(record, on_delivery)``); one reported undelivered is sent again from ``tick``
after a capped, jittered backoff, and ``recover`` sends again at start what an
earlier run left unconfirmed. ``shut_down`` ends the supply as "engine stopped".

A CP that cannot reach the broker cannot report a supply, so while it is idle and told
``kafka_ok(False)`` it answers health checks ``KO`` with ``KAFKA_DOWN`` (its Monitor reports
the fault to Central, which authorises nothing here) and refuses supplies with that reason.
A supply already held goes on: its telemetry and its end wait in the producer and the journal.

A cancelled session id is remembered (the last ``CANCELLED_KEPT``): Central gave up on it,
so a ``SUP`` for it that arrives later is refused.

A supply an RFID tag opened (``held_by_tag``, told by the reader, ``rfid.py``) is ended by
that reader with an MCSP ``END``, not by ``--auto`` after ``--auto-seconds``; its ``SUP``
carries the tag's account in place of a driver, and the lines name it so.

Secure mode (docs/topics.md, "Sealed records (secure mode)"): the Monitor passes the CP's key
(``set_key``, from ``KEY``); from then on every record goes out sealed: ``emit`` is called with
``seal=`` (``seal(topic, record)``, run by the producer each time it produces the record, so that
a record produced again is sealed again, with the key in force then). ``KEY#<cp>#0`` is open
mode: records in clear, as in Release 1. An Engine that got a key notes it in its data
directory (``SecureMark``): after a restart, or after a revocation (``revoke``, from ``RVK``:
the supply held ends, "keys revoked"), it sends nothing in clear: its supply ends wait
(in the journal) for the next key and go out sealed with it, and it refuses supplies and
requests until then. An Engine never given a key behaves as in Release 1.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum
from typing import Callable

from ev_common.bounded import keep_newest
from ev_common.envelope import KEY_BYTES, MAX_KEY_VERSION, Counter, Sealer
from ev_common.records import BadRecord, Record, SupplyEnd, SupplyRequest, Telemetry, decode, encode
from ev_common.retry import Backoff
from ev_common.words import CANNOT_REPORT

from .journal import MAX_ENDS, SupplyJournal
from .secure_mode import SecureMark

log = logging.getLogger(__name__)


def kwh(value: Decimal) -> str:
    """Energy as every screen shows it: 3 decimals, half up (as the driver's ticket)."""
    return str(Decimal(value).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP))


def eur(value: Decimal) -> str:
    """Money as every screen shows it: 2 decimals, half up."""
    return str(Decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))

DEFAULT_POWER_KW = Decimal("11")
DEFAULT_PLUG_TIMEOUT = 60.0
DEFAULT_AUTO_SECONDS = 10.0
DEFAULT_TIME_SCALE = Decimal(60)  # one real second simulates one minute of charging
AUTO_PLUG_AFTER = 1.0
FOUR = Decimal("0.0001")
CANCELLED_KEPT = 256  # cancelled session ids remembered, to refuse a late SUP for them
KAFKA_DOWN = CANNOT_REPORT
NORMAL_END = "unplugged"  # supply.end's reason when the person ended the supply
KEYS_REVOKED = "keys revoked"  # supply.end's reason when Central revoked the CP's keys (RVK)
OPEN_MODE = "open mode"
WAITING_FOR_KEY = "waiting for this CP's key"
HELD = float("inf")  # a supply end waiting for this CP's key: sent when it comes


class NoKey(RuntimeError):
    """Secure mode, and no key to seal a record with now (revoked, or not given yet)."""


class Phase(str, Enum):
    IDLE = "idle"
    AUTHORISED = "authorised, waiting for the plug"
    SUPPLYING = "supplying"


@dataclass
class Supply:
    session_id: str
    driver_id: str
    price: Decimal
    authorised_at: float
    plugged_at: float | None = None
    last_tick: float | None = None
    kwh: Decimal = Decimal(0)
    seq: int = 0

    @property
    def amount(self) -> Decimal:
        return (self.kwh * self.price).quantize(FOUR, rounding=ROUND_HALF_UP)


# emit(record, on_delivery=None[, seal=]); on_delivery(ok) once the broker answered; with a key,
# seal(topic, record) -> bytes is passed: the record must go out sealed by it
Emit = Callable[..., None]


class Engine:
    def __init__(self, emit: Emit | None = None, *, power_kw: Decimal = DEFAULT_POWER_KW,
                 plug_timeout: float = DEFAULT_PLUG_TIMEOUT, auto_seconds: float | None = None,
                 time_scale: Decimal = Decimal(1), journal: SupplyJournal | None = None,
                 clock: Callable[[], float] = time.monotonic, say: Callable[[str], None] | None = None,
                 secure_mark: SecureMark | None = None) -> None:
        self._emit = emit if emit is not None else (lambda record, on_delivery=None: None)
        self.power_kw = power_kw
        self.time_scale = time_scale  # simulated seconds of charging per real second
        self.journal = journal
        self.plug_timeout = plug_timeout
        self.auto_seconds = auto_seconds  # None: a person plugs and unplugs; else --auto
        self._clock = clock
        self._say = say or (lambda text: log.info("%s", text))
        self._lock = threading.RLock()
        self.cp_id: str | None = None
        self.faulty = False
        self.stopped = False
        self.monitor: str | None = None  # peer address of the connected Monitor
        self.kafka_reachable = True  # kafka_ok(): whether the broker answers (presumed until told)
        self.supply: Supply | None = None
        self.tag_session: str | None = None  # the supply held was opened by an RFID tag (held_by_tag)
        self._cancelled: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.closing = False  # shut_down(): no more supplies
        # supply ends the broker has not confirmed: session id -> (record, when to send again; None in flight)
        self._ends_lock = threading.Lock()  # a leaf lock: delivery callbacks take it from any thread
        self._unconfirmed: collections.OrderedDict[str, tuple[SupplyEnd, float | None]] = collections.OrderedDict()
        self._resend_backoff = Backoff(initial=5.0, cap=60.0)
        # secure mode: the key in force (in a Sealer: never shown), or none
        self.secure_mark = secure_mark
        self.secure = secure_mark is not None and secure_mark.is_set()  # records must go out sealed
        self._sealer: Sealer | None = None
        self._counter = Counter()  # the records' counter, shared by every key of this run
        self.key_version: int | None = None
        self.revoked: str | None = None  # why Central revoked the keys, until a new key comes
        self._told_mode = False  # a KEY came (the status shows the mode)

    @property
    def phase(self) -> Phase:
        with self._lock:
            if self.supply is None:
                return Phase.IDLE
            return Phase.SUPPLYING if self.supply.plugged_at is not None else Phase.AUTHORISED

    # -- the Monitor ------------------------------------------------------------------------------

    def health(self, cp_id: str) -> tuple[bool, str]:
        """A health check from the Monitor of ``cp_id``: (ok, detail)."""
        with self._lock:
            previous, self.cp_id = self.cp_id, cp_id
            faulty = self.faulty
            cannot_report = not self.kafka_reachable and self.supply is None
        if previous != cp_id:
            self._say(f"this Engine is CP {cp_id}" + (f" (was {previous})" if previous else ""))
        if faulty:
            return False, "simulated fault"
        if cannot_report:  # a supply held goes on: its records wait for the broker
            return False, KAFKA_DOWN
        return True, ""

    def kafka_ok(self, ok: bool) -> None:
        """Whether the broker answers now. Said once per change."""
        with self._lock:
            changed = ok != self.kafka_reachable
            self.kafka_reachable = ok
            supplying = self.supply is not None
        if not changed:
            return
        if not ok:
            self._say(f"{KAFKA_DOWN}: " + ("the supply in course goes on; its figures wait and reach Central "
                                           "when Kafka is back" if supplying
                                           else "refusing supplies until Kafka is back"))
        else:
            self._say("Kafka reachable again: this CP reports its supplies")

    def monitor_connected(self, peer: str) -> None:
        with self._lock:
            self.monitor = peer
        self._say(f"Monitor connected from {peer}")

    def monitor_lost(self, why: str) -> None:
        with self._lock:
            self.monitor = None
            self._end("monitor lost")
        self._say(f"Monitor lost: {why}; no supplies until it is back")

    # -- keys (secure mode) --------------------------------------------------------------------------

    def set_key(self, version: int, key: bytes | None, cp_id: str | None = None) -> None:
        """The CP's key from its Monitor (``KEY``): version 0 with no key is open mode, records in
        clear; a version from 1 with its 32-byte key: every record goes out sealed with it. The
        supply ends that waited for a key go out now. Raises ValueError for a bad pair."""
        if version == 0 and key is None:
            with self._lock:
                was = self.records_mode
                self._sealer, self.key_version, self.secure, self.revoked = None, None, False, None
                self._told_mode = True
                if self.secure_mark is not None:
                    self.secure_mark.clear()
            if was != OPEN_MODE:
                self._say("open mode: this CP's records travel in clear (Central is not in secure mode)")
            self._release_held()
            return
        if (isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_KEY_VERSION
                or not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES):
            raise ValueError(f"a key is a version from 1 to {MAX_KEY_VERSION} with {KEY_BYTES} bytes, "
                             "or version 0 with none")
        with self._lock:
            if cp_id is not None and cp_id != self.cp_id:
                previous, self.cp_id = self.cp_id, cp_id
                self._say(f"this Engine is CP {cp_id}" + (f" (was {previous})" if previous else ""))
            if self.cp_id is None:
                raise ValueError("a key for an Engine that does not know its CP id yet")
            was = self.records_mode
            self._sealer = Sealer(self.cp_id, version, bytes(key), counter=self._counter)
            self.key_version, self.secure, self.revoked = version, True, None
            self._told_mode = True
            if self.secure_mark is not None:
                self.secure_mark.set(self.cp_id, version)
            now = self.records_mode
        if now != was:
            self._say(now + " (secure mode: no record leaves this CP in clear)")
        self._release_held()

    def revoke(self, reason: str) -> str:
        """Central revoked this CP's keys (``RVK``): the key is forgotten, the supply held ends
        ("keys revoked"; its end waits for the next key) and supplies are refused until a new
        key comes."""
        with self._lock:
            self._sealer, self.key_version, self.secure, self.revoked = None, None, True, reason
            self._told_mode = True
            if self.secure_mark is not None:
                self.secure_mark.set(self.cp_id, None)
            ended = self._end(KEYS_REVOKED)
        return self._tell(f"Central REVOKED this CP's keys ({reason}): " + (
            "its supply ended; its figures wait for a new key. " if ended else "")
            + "No supplies until the Monitor authenticates again and a new key comes")

    @property
    def waiting_for_key(self) -> bool:
        """Secure mode without a key now: no record can leave this CP."""
        return self.secure and self._sealer is None

    @property
    def records_mode(self) -> str | None:
        """How this CP's records travel, for its screen: "records sealed with key v3", "open mode",
        "waiting for this CP's key" (also after a revocation); None: never told (Release 1)."""
        sealer = self._sealer
        if sealer is not None:
            return f"records sealed with key v{sealer.key_version}"
        if self.secure:
            return (f"{KEYS_REVOKED}: " if self.revoked else "") + WAITING_FOR_KEY
        return OPEN_MODE if self._told_mode else None

    def seal(self, topic: str, record: Record) -> bytes:
        """The value of ``record`` on ``topic`` now: sealed with the key in force; in clear in open
        mode; NoKey while waiting for a key (the record is then reported undelivered)."""
        sealer = self._sealer
        if sealer is not None:
            return sealer.seal(topic, record)
        if self.secure:
            raise NoKey(f"{WAITING_FOR_KEY}: a {record.TYPE} cannot leave this CP in clear")
        return encode(record)

    def authorise(self, session_id: str, driver_id: str, price: Decimal) -> tuple[bool, str]:
        """Central authorised a supply here; the CP accepts it or says why not."""
        with self._lock:
            if self.supply is not None and self.supply.session_id == session_id:
                return True, ""  # the same SUP again (a retransmission): already accepted
            refusal = self._cannot_supply()
            if session_id in self._cancelled:
                refusal = "the supply was cancelled by Central"
            if refusal is None and self.supply is not None:
                refusal = f"busy with the supply of {self._who(self.supply)}"
            if refusal is not None:
                self._say(f"refused a supply for driver {driver_id}: {refusal}")
                return False, refusal
            self.supply = Supply(session_id, driver_id, price, self._clock())
            self._journal()
        self._say(f"supply AUTHORISED for driver {driver_id} at {price} EUR/kWh: "
                  + ("plugging in shortly (auto)" if self.auto_seconds is not None else "plug in the vehicle [p]"))
        return True, ""

    def cancel(self, session_id: str, reason: str) -> str:
        """Central gave up on ``session_id``: end it now if held; refuse it from now on. Idempotent."""
        with self._lock:
            keep_newest(self._cancelled, session_id, None, CANCELLED_KEPT)
            if self.supply is not None and self.supply.session_id == session_id:
                return self._end(f"cancelled by Central: {reason}")
        log.info("session %s cancelled by Central (%s); not held here", session_id, reason)
        return ""

    def finish(self, session_id: str) -> str:
        """Central ends ``session_id`` as the person would by unplugging (its tag was presented
        again, ``FIN``): ended now if held, with the energy delivered so far. Idempotent."""
        with self._lock:
            if self.supply is not None and self.supply.session_id == session_id:
                return self._end(NORMAL_END)
        log.info("session %s ended by Central; not held here (ended before)", session_id)
        return ""

    def held_by_tag(self, session_id: str) -> bool:
        """The RFID reader opened ``session_id`` with a tag: it ends it (``END``), not --auto.
        False if that supply is not held here (any more)."""
        with self._lock:
            if self.supply is None or self.supply.session_id != session_id:
                return False
            self.tag_session = session_id
            return True

    def supply_state(self) -> tuple[str, str, int, Decimal]:
        """(phase, session id, seq, kWh) of the supply held, as of its last telemetry; for ``SST``."""
        with self._lock:
            supply = self.supply
            if supply is None:
                return "IDLE", "", 0, Decimal(0)
            phase = "SUPPLYING" if supply.plugged_at is not None else "AUTHORISED"
            return phase, supply.session_id, supply.seq, supply.kwh.quantize(FOUR)

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            self._end("stopped")
        self._say("Central STOPPED this CP: Out of Order")

    def resume(self) -> None:
        with self._lock:
            self.stopped = False
        self._say("Central RESUMED this CP: back in service")

    # -- the person at the CP -------------------------------------------------------------------------

    def plug(self) -> str:
        with self._lock:
            if self.supply is None:
                return self._tell("nothing to plug in: no supply is authorised")
            if self.supply.plugged_at is not None:
                return self._tell("already plugged in")
            now = self._clock()
            self.supply.plugged_at = self.supply.last_tick = now
            return self._tell(f"plugged in: supplying {self._who(self.supply)} at {self.power_kw} kW")

    def unplug(self) -> str:
        with self._lock:
            if self.supply is None or self.supply.plugged_at is None:
                return self._tell("nothing to unplug")
            return self._end(NORMAL_END)

    def toggle_fault(self) -> bool:
        with self._lock:
            self.faulty = not self.faulty
            if self.faulty:
                self._end("fault")
            faulty = self.faulty
        self._say("simulated FAULT on: answering KO to the Monitor" if faulty
                  else "simulated fault off: answering OK to the Monitor")
        return faulty

    def request_supply(self, driver_id: str) -> str:
        """A supply requested from the CP's own menu: it goes to Central like a driver's."""
        with self._lock:
            refusal = self._cannot_supply() or (None if self.cp_id else "this Engine does not know its CP id yet")
            if refusal is None and self.supply is not None:
                refusal = "a supply is already in course here"
            if refusal is not None:
                return self._tell(f"cannot request a supply: {refusal}")
            request = SupplyRequest(uuid.uuid4().hex, driver_id, self.cp_id, source="cp")
            self._send(request)
        return self._tell(f"supply requested at Central for driver {driver_id}")

    # -- time ------------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Every second: telemetry while supplying; --auto plugging and unplugging; plug timeout;
        supply ends the broker refused, sent again when their time comes."""
        self._resend_due_ends()
        with self._lock:
            supply, now = self.supply, self._clock()
            if supply is None:
                return
            if supply.plugged_at is None:
                if self.auto_seconds is not None and now - supply.authorised_at >= AUTO_PLUG_AFTER:
                    self.plug()
                elif now - supply.authorised_at >= self.plug_timeout:
                    self._end("not plugged in")
                return
            self._tick_energy(now)
            supply.seq += 1
            self._send(Telemetry(self.cp_id or "?", supply.session_id, supply.driver_id, supply.seq,
                                 supply.kwh.quantize(FOUR), supply.amount, self.power_kw))
            self._journal()
            if (self.auto_seconds is not None and now - supply.plugged_at >= self.auto_seconds
                    and supply.session_id != self.tag_session):  # a tag's supply: its reader ends it
                self.unplug()

    def recover(self) -> str | None:
        """At start: send again what an earlier run of this Engine left in its journal: the
        supply that was running (ended now as "engine restarted") and the ends not confirmed."""
        if self.journal is None:
            return None
        said = []
        entry = self.journal.read()
        if entry is not None:
            try:
                end = SupplyEnd(entry["cp_id"], entry["session_id"], entry["driver_id"], int(entry["seq"]) + 1,
                                Decimal(entry["kwh"]), Decimal(entry["amount_eur"]), "engine restarted")
            except (KeyError, ValueError, TypeError, ArithmeticError) as exc:
                self._say(f"the supply journal could not be used ({exc}); ignored")
                self.journal.clear()
            else:
                self.journal.ended(end.session_id, end.to_json())
                said.append(f"reported the supply interrupted by the last stop: driver {end.driver_id}, "
                            f"{kwh(end.kwh)} kWh, {eur(end.amount_eur)} EUR")
        ends = []
        for raw in self.journal.ends():
            try:
                record = decode(json.dumps(raw).encode("utf-8"))
                if not isinstance(record, SupplyEnd):
                    raise BadRecord(f"a {record.TYPE}, not a supply.end")
            except BadRecord as exc:
                log.error("a supply end in the journal could not be used (%s); dropped", exc)
                self.journal.confirmed(str(raw.get("session_id")))
                continue
            ends.append(record)
        earlier = len(ends) - len(said)
        if earlier > 0:
            said.append(f"sending again {earlier} supply end(s) the broker had not confirmed before the last stop")
        if ends and self.waiting_for_key:
            said.append(f"secure mode: {'it waits' if len(ends) == 1 else 'they wait'} for this CP's key "
                        "from its Monitor")
        for end in ends:
            self._send_end(end)
        return self._tell("; ".join(said)) if said else None

    def shut_down(self) -> str:
        """A clean stop of the Engine: end the supply (reason "engine stopped") and take no other."""
        with self._lock:
            self.closing = True
            return self._end("engine stopped")

    def unconfirmed_ends(self) -> int:
        """How many supply ends the broker has not confirmed yet."""
        with self._ends_lock:
            return len(self._unconfirmed)

    # -- internals ---------------------------------------------------------------------------------------

    def _cannot_supply(self) -> str | None:
        if self.closing:
            return "the Engine is stopping"
        if self.monitor is None:
            return "no Monitor connected (the CP cannot reach Central)"
        if self.faulty:
            return "the CP is faulty"
        if not self.kafka_reachable:
            return KAFKA_DOWN
        if self.waiting_for_key:
            return (f"this CP's keys were revoked ({self.revoked}); " if self.revoked else "secure mode: ") + \
                WAITING_FOR_KEY
        if self.stopped:
            return "the CP is stopped by Central (Out of Order)"
        return None

    def _tick_energy(self, now: float) -> None:
        supply = self.supply
        hours = Decimal(str(max(0.0, now - supply.last_tick))) * self.time_scale / Decimal(3600)
        supply.kwh += self.power_kw * hours
        supply.last_tick = now

    def _end(self, reason: str) -> str:
        """End the supply in course, if any, telling Central its final figures."""
        supply = self.supply
        if supply is None:
            return ""
        if supply.plugged_at is not None:  # the energy delivered since the last tick counts too
            self._tick_energy(self._clock())
        self.supply = None
        end = SupplyEnd(self.cp_id or "?", supply.session_id, supply.driver_id, supply.seq + 1,
                        supply.kwh.quantize(FOUR), supply.amount, reason)
        if self.journal is not None:  # kept until the broker confirms it
            self.journal.ended(end.session_id, end.to_json())
        self._send_end(end)
        return self._tell(f"supply of {self._who(supply)} ended ({reason}): "  # the figures it reports
                          f"{kwh(end.kwh)} kWh, {eur(end.amount_eur)} EUR")

    def _who(self, supply: Supply) -> str:
        """``driver D001``, or ``account FLAT3B`` for a supply an RFID tag opened."""
        return f"{'account' if supply.session_id == self.tag_session else 'driver'} {supply.driver_id}"

    def _send_end(self, end: SupplyEnd) -> None:
        """Emit ``end``; it is forgotten (here and in the journal) only once the broker confirms it."""
        session_id = end.session_id

        def delivered(ok: bool) -> None:
            with self._ends_lock:
                if ok:
                    self._unconfirmed.pop(session_id, None)
                    self._resend_backoff.reset()
                elif session_id in self._unconfirmed:
                    self._unconfirmed[session_id] = (end, self._clock() + self._resend_backoff.next())
            if ok:
                if self.journal is not None:
                    self.journal.confirmed(session_id)
            else:
                log.warning("the end of session %s was not delivered; it will be sent again", session_id)

        with self._ends_lock:  # decided with the key state of now: set_key releases what is held after it
            sealer, hold = self._sealer, self.waiting_for_key
            self._unconfirmed.pop(session_id, None)
            self._unconfirmed[session_id] = (end, HELD if hold else None)
            while len(self._unconfirmed) > MAX_ENDS:
                lost, _ = self._unconfirmed.popitem(last=False)
                log.error("%d supply ends not confirmed: no longer sending the end of session %s again",
                          MAX_ENDS, lost)
        if hold:
            log.info("the end of session %s waits for this CP's key", session_id)
            return
        if sealer is not None:
            self._emit(end, delivered, seal=self.seal)
        else:
            self._emit(end, delivered)

    def _send(self, record: Record) -> bool:
        """Emit a record that is not kept (telemetry, a request): sealed with a key, in clear in
        open mode; False (dropped) while waiting for a key."""
        if self.waiting_for_key:
            log.info("a %s not sent: %s", record.TYPE, WAITING_FOR_KEY)
            return False
        if self._sealer is not None:
            self._emit(record, seal=self.seal)
        else:
            self._emit(record)
        return True

    def _release_held(self) -> None:
        """A key came (or open mode): the supply ends that wait go out now."""
        if self.waiting_for_key:
            return
        with self._ends_lock:  # those held, and those waiting to be sent again after a failure
            due = [end for end, at in self._unconfirmed.values() if at is not None]
            held = sum(1 for _, at in self._unconfirmed.values() if at == HELD)
        if held:
            self._say(f"sending the {held} supply end(s) that waited for a key: {self.records_mode}")
        for end in due:
            self._send_end(end)

    def _resend_due_ends(self) -> None:
        now = self._clock()
        with self._ends_lock:
            due = [end for end, at in self._unconfirmed.values() if at is not None and at <= now]
        for end in due:
            log.info("sending the end of session %s again", end.session_id)
            self._send_end(end)

    def _journal(self) -> None:
        supply = self.supply
        if self.journal is not None and supply is not None:
            self.journal.write({"cp_id": self.cp_id or "?", "session_id": supply.session_id,
                                "driver_id": supply.driver_id, "price": supply.price, "seq": supply.seq,
                                "kwh": supply.kwh.quantize(FOUR), "amount_eur": supply.amount})

    def _tell(self, text: str) -> str:
        self._say(text)
        return text
