"""Sealed records: what a CP sends to Central over Kafka in secure mode (docs/topics.md,
"Sealed records (secure mode)").

A sealed record is a JSON object like every other record value::

    {"type": "sealed", "v": 1, "cp_id": "CP001", "kv": 3, "ctr": 1764512345123456,
     "nonce": "<16 base64url chars>", "ct": "<base64url>"}

``ct`` is the inner record's ``encode()`` bytes encrypted and authenticated with AES-256-GCM
(``cryptography``'s AESGCM) under the CP's key number ``kv``, with a random 96-bit ``nonce``;
the associated data binds the CP id, the topic, the key version and the counter (``aad``), so
that a record moved to another CP, topic or key, or given another counter, does not open.
``ctr`` is the sender's counter: strictly increasing per (CP, key version), at least the
microseconds since the epoch (``Counter``), so it keeps increasing across restarts of the
sender; the receiver refuses a counter it has seen, or one too old (``ReplayGuard``).

Binary fields are base64url without padding, canonical (what ``base64url(decode(text))`` gives).

``Sealer(cp_id, key_version, key).seal(topic, record)`` makes one; ``open_envelope(topic, raw,
key_for, guard=None)`` opens one, or raises an ``EnvelopeError`` (a ``BadRecord``, so that every
consumer skips and counts it): ``UnknownKey``, ``NotAuthentic``, ``MalformedEnvelope``,
``CpMismatch``, ``Replayed``, or ``Unsealed`` for a plain record where a sealed one is required.
Key material is never logged and never in an exception's text.
"""

from __future__ import annotations

import base64
import binascii
import collections
import heapq
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .records import BadRecord, Record, decode, encode

ENVELOPE_TYPE = "sealed"
ENVELOPE_VERSION = 1
AAD_LABEL = "ev.sealed.v1"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits, random per record
TAG_BYTES = 16
MAX_INNER_BYTES = 8192  # an inner record (a record's encode() is a few hundred bytes)
MAX_CT_BYTES = MAX_INNER_BYTES + TAG_BYTES
MAX_ENVELOPE_BYTES = 16384  # a whole sealed record value on the wire
MAX_KEY_VERSION = 2**31 - 1  # the protocol's KEY version (version 0 is open mode: no key)
MAX_CTR = 2**63 - 1
DEFAULT_WINDOW_US = 120_000_000  # 120 s of counter below the highest seen
FIELDS = frozenset({"type", "v", "cp_id", "kv", "ctr", "nonce", "ct"})
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

KeyFor = Callable[[str, int], "bytes | None"]  # key_for(cp_id, kv): the key in force, or None


# -- errors -------------------------------------------------------------------------------------


class EnvelopeError(BadRecord):
    """A record that must not reach a session. ``reason`` is a short fixed word for counters and
    the audit; ``cp_id`` and ``kv`` are the envelope's when they could be read (they are not
    authenticated unless the error comes after the tag check: ``CpMismatch``, ``Replayed``)."""

    reason = "bad envelope"

    def __init__(self, detail: str, raw: bytes | None = b"", *, cp_id: str | None = None,
                 kv: int | None = None) -> None:
        super().__init__(detail, raw)
        self.detail = detail
        self.cp_id = cp_id
        self.kv = kv


class UnknownKey(EnvelopeError):
    """No key in force for this CP and version (never issued, replaced, or revoked)."""

    reason = "unknown key"


class NotAuthentic(EnvelopeError):
    """The tag check failed: tampered or truncated, sealed with another key, meant for another
    topic, CP, version or counter."""

    reason = "not authentic"


class MalformedEnvelope(EnvelopeError):
    """Not a well-formed sealed record: bad JSON, base64url, field or size."""

    reason = "malformed"


class CpMismatch(EnvelopeError):
    """Authentic, but the record inside names another CP than the envelope."""

    reason = "cp mismatch"


class Replayed(EnvelopeError):
    """Authentic, but its counter was seen already or is too old."""

    reason = "replayed"


class Unsealed(EnvelopeError):
    """A plain record where a sealed one is required."""

    reason = "unsealed"


# -- the pieces -----------------------------------------------------------------------------------


def aad(cp_id: str, topic: str, kv: int, ctr: int) -> bytes:
    """The associated data of a sealed record: the canonical bytes of the JSON array
    ``["ev.sealed.v1", cp_id, topic, kv, ctr]`` (no spaces, ASCII)."""
    return json.dumps([AAD_LABEL, cp_id, topic, kv, ctr], separators=(",", ":"), ensure_ascii=True).encode("ascii")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def unb64url(text: str, what: str, max_bytes: int) -> bytes:
    """Bytes of canonical base64url without padding; MalformedEnvelope otherwise (or beyond
    ``max_bytes``). The message never quotes the text."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise ValueError(f"{what} is not base64url text")
    if len(text) > (max_bytes * 4 + 2) // 3:
        raise ValueError(f"{what} is longer than {max_bytes} bytes")
    if len(text) % 4 == 1:
        raise ValueError(f"{what} has an impossible length")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not base64url text") from None
    if b64url(data) != text:
        raise ValueError(f"{what} is not canonical base64url")
    return data


class Counter:
    """Counter values for one sender: each ``max(last + 1, microseconds since the epoch)``, so
    strictly increasing within a run and, with a sane clock, across runs. Thread-safe."""

    def __init__(self, now_us: Callable[[], int] | None = None) -> None:
        self._now_us = now_us or (lambda: time.time_ns() // 1000)
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            self._last = min(MAX_CTR, max(self._last + 1, self._now_us()))
            return self._last


class Sealer:
    """Seals the records of one CP with one of its keys. Thread-safe; never shows the key."""

    def __init__(self, cp_id: str, key_version: int, key: bytes, *, counter: Counter | None = None) -> None:
        if not isinstance(cp_id, str) or not _ID.fullmatch(cp_id):
            raise ValueError("a sealer's cp_id must be an id of 1-64 characters from A-Z a-z 0-9 _ -")
        if isinstance(key_version, bool) or not isinstance(key_version, int) or not 1 <= key_version <= MAX_KEY_VERSION:
            raise ValueError(f"a key version is from 1 to {MAX_KEY_VERSION}")
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
            raise ValueError(f"a CP key is {KEY_BYTES} bytes")
        self.cp_id = cp_id
        self.key_version = key_version
        self._aead = AESGCM(bytes(key))
        self._counter = counter or Counter()

    def __repr__(self) -> str:
        return f"Sealer(cp_id={self.cp_id!r}, key_version={self.key_version})"

    def seal(self, topic: str, record: Record) -> bytes:
        """The sealed record value for ``record`` on ``topic`` (the full topic name, prefix and
        all). Raises ValueError for a record of another CP or one too large."""
        if getattr(record, "cp_id", None) != self.cp_id:
            raise ValueError(f"a {record.TYPE} of CP {getattr(record, 'cp_id', None)!r} cannot be sealed "
                             f"with the key of {self.cp_id}")
        inner = encode(record)
        if len(inner) > MAX_INNER_BYTES:
            raise ValueError(f"a {record.TYPE} of {len(inner)} bytes is over the {MAX_INNER_BYTES}-byte limit")
        ctr = self._counter.next()
        nonce = _random_nonce()
        ct = self._aead.encrypt(nonce, inner, aad(self.cp_id, topic, self.key_version, ctr))
        envelope = {"type": ENVELOPE_TYPE, "v": ENVELOPE_VERSION, "cp_id": self.cp_id, "kv": self.key_version,
                    "ctr": ctr, "nonce": b64url(nonce), "ct": b64url(ct)}
        return json.dumps(envelope, separators=(",", ":")).encode("ascii")


def _random_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


@dataclass(frozen=True)
class Envelope:
    """A sealed record as read, not yet opened (its fields are not authenticated)."""

    cp_id: str
    kv: int
    ctr: int
    nonce: bytes
    ct: bytes
    raw: bytes


def parse_envelope(raw: bytes | None, *, strict: bool = True) -> Envelope | None:
    """The envelope in ``raw``; None when ``raw`` is a JSON object of another type (a plain
    record) or not JSON at all. Raises MalformedEnvelope for a sealed record that is not well
    formed (unless not ``strict``: then None)."""
    raw = raw or b""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("type") != ENVELOPE_TYPE:
        return None
    try:
        return _fields(data, raw)
    except MalformedEnvelope:
        if strict:
            raise
        return None


def _fields(data: dict, raw: bytes) -> Envelope:
    cp_id = data.get("cp_id")
    shown_cp = cp_id if isinstance(cp_id, str) and _ID.fullmatch(cp_id) else None
    kv = data.get("kv")
    shown_kv = kv if isinstance(kv, int) and not isinstance(kv, bool) else None

    def bad(detail: str) -> MalformedEnvelope:
        return MalformedEnvelope(f"malformed sealed record: {detail}", raw, cp_id=shown_cp, kv=shown_kv)

    if len(raw) > MAX_ENVELOPE_BYTES:
        raise bad(f"{len(raw)} bytes, over the {MAX_ENVELOPE_BYTES}-byte limit")
    if set(data) != FIELDS:
        missing, extra = sorted(FIELDS - set(data)), sorted(set(data) - FIELDS)
        raise bad("; ".join(filter(None, [f"lacks {', '.join(missing)}" if missing else "",
                                          f"unexpected {', '.join(x[:20] for x in extra[:5])}" if extra else ""])))
    version = data["v"]
    if isinstance(version, bool) or not isinstance(version, int) or version != ENVELOPE_VERSION:
        raise bad(f"unsupported envelope version {str(version)[:20]!r}")
    if shown_cp is None:
        raise bad("cp_id is not an id")
    if shown_kv is None or not 1 <= kv <= MAX_KEY_VERSION:
        raise bad(f"kv is not a key version from 1 to {MAX_KEY_VERSION}")
    ctr = data["ctr"]
    if isinstance(ctr, bool) or not isinstance(ctr, int) or not 1 <= ctr <= MAX_CTR:
        raise bad(f"ctr is not a counter from 1 to {MAX_CTR}")
    try:
        nonce = unb64url(data["nonce"], "nonce", NONCE_BYTES)
        ct = unb64url(data["ct"], "ct", MAX_CT_BYTES)
    except ValueError as exc:
        raise bad(str(exc)) from None
    if len(nonce) != NONCE_BYTES:
        raise bad(f"the nonce is not {NONCE_BYTES} bytes")
    return Envelope(cp_id, kv, ctr, nonce, ct, raw)


def open_envelope(topic: str, raw: bytes | None, key_for: KeyFor, *, guard: "ReplayGuard | None" = None) -> Record:
    """The record sealed in ``raw`` for ``topic``; with ``guard``, also refused when replayed.

    Raises ``Unsealed`` (a plain record), ``MalformedEnvelope``, ``UnknownKey`` (``key_for``
    gave None), ``NotAuthentic``, ``CpMismatch`` or ``Replayed``. The guard learns a counter
    only from a record that opened and whose CP matches."""
    envelope = parse_envelope(raw)
    if envelope is None:
        try:
            plain = decode(raw)
        except BadRecord:
            raise MalformedEnvelope("neither a sealed record nor a record", raw) from None
        raise Unsealed(f"a plain {plain.TYPE}, not sealed", raw, cp_id=_cp_of(plain))
    return open_parsed(topic, envelope, key_for, guard=guard)


def open_parsed(topic: str, envelope: Envelope, key_for: KeyFor, *, guard: "ReplayGuard | None" = None) -> Record:
    """``open_envelope`` for an envelope already parsed (``parse_envelope``)."""
    cp_id, kv, raw = envelope.cp_id, envelope.kv, envelope.raw
    key = key_for(cp_id, kv)
    if key is None:
        raise UnknownKey(f"no key v{kv} in force for {cp_id}", raw, cp_id=cp_id, kv=kv)
    if len(envelope.ct) < TAG_BYTES:
        raise NotAuthentic(f"a sealed record of {cp_id} (key v{kv}) is truncated", raw, cp_id=cp_id, kv=kv)
    try:
        inner = AESGCM(bytes(key)).decrypt(envelope.nonce, envelope.ct, aad(cp_id, topic, kv, envelope.ctr))
    except (InvalidTag, ValueError):
        raise NotAuthentic(f"a sealed record of {cp_id} (key v{kv}) failed authentication on {topic}", raw,
                           cp_id=cp_id, kv=kv) from None
    try:
        record = decode(inner)
    except BadRecord as exc:  # authentic, so the CP itself sent it: a bug there
        raise MalformedEnvelope(f"the record sealed by {cp_id} (key v{kv}) is malformed: {exc}", raw,
                                cp_id=cp_id, kv=kv) from None
    inner_cp = _cp_of(record)
    if inner_cp != cp_id:
        raise CpMismatch(f"a {record.TYPE} of CP {inner_cp} sealed by {cp_id} (key v{kv})", raw, cp_id=cp_id, kv=kv)
    if guard is not None and not guard.accept(cp_id, kv, envelope.ctr):
        raise Replayed(f"a {record.TYPE} of {cp_id} (key v{kv}) with counter {envelope.ctr} was seen already "
                       "or is too old", raw, cp_id=cp_id, kv=kv)
    return record


def _cp_of(record: Record) -> str | None:
    cp_id = getattr(record, "cp_id", None)
    return cp_id if isinstance(cp_id, str) else None


# -- replays -----------------------------------------------------------------------------------------


class ReplayGuard:
    """The counters seen per (CP, key version), in bounded memory. Thread-safe.

    ``accept(cp_id, kv, ctr)`` takes a counter above the highest seen, or one at most
    ``window_us`` below it that was not seen before; it refuses the rest. Per key, at most
    ``max_seen`` counters of the window are remembered: when more come, the oldest is
    forgotten and everything up to it refused from then on. At most ``max_keys`` (CP, version)
    pairs are remembered, the least recently used forgotten first (a forgotten pair starts
    afresh: its next counter is taken)."""

    def __init__(self, window_us: int = DEFAULT_WINDOW_US, *, max_seen: int = 4096, max_keys: int = 100_000) -> None:
        if window_us < 0 or max_seen < 1 or max_keys < 1:
            raise ValueError("a replay guard needs a window >= 0, max_seen >= 1 and max_keys >= 1")
        self.window_us = window_us
        self.max_seen = max_seen
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._keys: collections.OrderedDict[tuple[str, int], _Seen] = collections.OrderedDict()

    def accept(self, cp_id: str, kv: int, ctr: int) -> bool:
        with self._lock:
            pair = (cp_id, kv)
            seen = self._keys.get(pair)
            if seen is None:
                seen = self._keys[pair] = _Seen()
                while len(self._keys) > self.max_keys:
                    self._keys.popitem(last=False)
            else:
                self._keys.move_to_end(pair)
            return seen.accept(ctr, self.window_us, self.max_seen)

    def highest(self, cp_id: str, kv: int) -> int | None:
        with self._lock:
            seen = self._keys.get((cp_id, kv))
            return seen.highest if seen is not None else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)


class _Seen:
    __slots__ = ("highest", "floor", "heap", "set")

    def __init__(self) -> None:
        self.highest: int | None = None
        self.floor = 0  # every counter up to this one is refused (forgotten for lack of room)
        self.heap: list[int] = []  # the counters remembered, smallest first
        self.set: set[int] = set()

    def accept(self, ctr: int, window: int, max_seen: int) -> bool:
        if ctr <= self.floor or ctr in self.set:
            return False
        if self.highest is not None and ctr <= self.highest - window:
            return False
        if self.highest is None or ctr > self.highest:
            self.highest = ctr
        heapq.heappush(self.heap, ctr)
        self.set.add(ctr)
        low = self.highest - window
        while self.heap and (self.heap[0] <= low or len(self.heap) > max_seen):
            gone = heapq.heappop(self.heap)
            self.set.discard(gone)
            if gone > low:  # forgotten for lack of room, not age: refuse it and below from now on
                self.floor = max(self.floor, gone)
        return True
