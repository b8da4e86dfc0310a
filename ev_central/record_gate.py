"""Central's gate for the records CPs send over Kafka: sealed records opened, the rest judged.

``RecordGate(secure, key_for, on_rejected)`` is the decoder of Central's Kafka consumers
(``CentralBus(gate=...)``): ``open(topic, raw, partition=, offset=)`` gives the record or raises
a ``BadRecord`` (an ``ev_common.envelope.EnvelopeError``), which the consumer counts and skips,
its offset done at once, so that it never stalls.

* A sealed record (``ev_common/envelope.py``) is opened with its CP's key (``key_for(cp_id, kv)``,
  None for no key in force) and checked against replays, in either mode.
* In secure mode, a plain record on the telemetry topic, or a plain record only a CP sends
  anywhere (``telemetry``, ``supply.end``, a ``supply.request`` with source ``cp``), is refused
  (``Unsealed``); a plain driver request (source ``driver``) passes. Something on the telemetry
  topic that is no record at all is refused as malformed.
* In open mode plain records pass, as in Release 1.

Every refusal calls ``on_rejected(RejectedRecord(...))`` (Central audits it and shows it on the
panel) and is counted: ``rejected`` in all, ``rejected_by_reason`` by reason. Replays are
judged per topic (``ReplayGuard`` per topic): a CP's counter is shared by its records on both
topics, which Central's two consumers read at their own pace. The guards live in memory
(docs/topics.md, "Sealed records (secure mode)", says what that allows after a restart).
No key material is ever logged or put in a ``RejectedRecord``.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from typing import Callable

from ev_common.bus import Topics
from ev_common.envelope import (
    DEFAULT_WINDOW_US,
    EnvelopeError,
    KeyFor,
    MalformedEnvelope,
    ReplayGuard,
    Unsealed,
    open_parsed,
    parse_envelope,
)
from ev_common.records import BadRecord, Record, SupplyEnd, SupplyRequest, Telemetry, decode

log = logging.getLogger(__name__)

MAX_TOPICS = 16  # replay guards, one per topic read (Central reads two)
REASONS = ("unsealed", "unknown key", "not authentic", "malformed", "cp mismatch", "replayed")


@dataclass(frozen=True)
class RejectedRecord:
    """A record the gate refused: where it was, whose it claimed to be, why."""

    topic: str
    cp_id: str | None  # the CP it names (an envelope's cp_id is not authenticated before the tag check)
    reason: str  # one of REASONS
    detail: str = ""  # for people; never a key
    kv: int | None = None  # the key version it names
    partition: int | None = None
    offset: int | None = None

    def describe(self) -> str:
        where = self.topic + (f"[{self.partition}]@{self.offset}" if self.offset is not None else "")
        who = f" of {self.cp_id}" if self.cp_id else ""
        key = f" (key v{self.kv})" if self.kv is not None else ""
        return f"record{who}{key} on {where} refused: {self.reason}: {self.detail}"


def sent_by_a_cp(record: Record) -> bool:
    """Records only a CP sends: they must be sealed in secure mode."""
    if isinstance(record, (Telemetry, SupplyEnd)):
        return True
    return isinstance(record, SupplyRequest) and record.source == "cp"


class RecordGate:
    def __init__(self, secure: bool, key_for: KeyFor, on_rejected: Callable[[RejectedRecord], None] | None = None,
                 *, topics: Topics | None = None, window_us: int = DEFAULT_WINDOW_US) -> None:
        self.secure = secure
        self._key_for = key_for
        self.on_rejected = on_rejected
        self.topics = topics
        self.window_us = window_us
        self._lock = threading.Lock()
        self._guards: dict[str, ReplayGuard] = {}
        self._by_reason: collections.Counter[str] = collections.Counter()
        self.opened = 0  # sealed records opened
        self.passed = 0  # plain records let through

    # -- counters (for the panel) -------------------------------------------------------------

    @property
    def rejected(self) -> int:
        with self._lock:
            return sum(self._by_reason.values())

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_reason)

    # -- the decoder ----------------------------------------------------------------------------

    def open(self, topic: str, raw: bytes | None, *, partition: int | None = None,
             offset: int | None = None) -> Record:
        """The record in ``raw`` read from ``topic``; raises BadRecord (refused: reported and
        counted, or a plain malformed record as before)."""
        try:
            envelope = parse_envelope(raw)
            if envelope is not None:
                record = open_parsed(topic, envelope, self._key, guard=self._guard(topic))
                with self._lock:
                    self.opened += 1
                return record
            try:
                record = decode(raw)
            except BadRecord as exc:
                if self.secure and self._cp_topic(topic):
                    raise MalformedEnvelope(f"neither a sealed record nor a record: {exc}", raw) from None
                raise  # a malformed plain record, as without the gate
            if self.secure and (self._cp_topic(topic) or sent_by_a_cp(record)):
                cp_id = getattr(record, "cp_id", None)
                raise Unsealed(f"a plain {record.TYPE} where a sealed one is required", raw, cp_id=cp_id)
        except EnvelopeError as exc:
            self._reject(topic, exc, partition, offset)
            raise
        with self._lock:
            self.passed += 1
        return record

    # -- internals -------------------------------------------------------------------------------

    def _key(self, cp_id: str, kv: int) -> bytes | None:
        try:
            return self._key_for(cp_id, kv)
        except Exception:  # a key store that failed: the record cannot be opened now
            log.exception("looking up the key v%d of %s failed", kv, cp_id)
            return None

    def _cp_topic(self, topic: str) -> bool:
        if self.topics is not None:
            return topic == self.topics.cp_telemetry
        return topic.endswith("ev.cp.telemetry")

    def _guard(self, topic: str) -> ReplayGuard:
        with self._lock:
            guard = self._guards.get(topic)
            if guard is None:
                if len(self._guards) >= MAX_TOPICS:  # never with Central's two topics
                    self._guards.pop(next(iter(self._guards)))
                guard = self._guards[topic] = ReplayGuard(self.window_us)
            return guard

    def _reject(self, topic: str, exc: EnvelopeError, partition: int | None, offset: int | None) -> None:
        rejected = RejectedRecord(topic, exc.cp_id, exc.reason, exc.detail, exc.kv, partition, offset)
        with self._lock:
            self._by_reason[exc.reason] += 1
        if self.on_rejected is not None:
            try:
                self.on_rejected(rejected)
            except Exception:  # the report failed; the record is refused all the same
                log.exception("reporting a refused record failed: %s", rejected.describe())
