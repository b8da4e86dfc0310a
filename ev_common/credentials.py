"""CP credentials: made by EV_Registry, checked by Central; and a limiter of failed attempts.

* ``new_credential()``: a new random credential, ``evc1_`` + 32 random bytes in base64url
  without padding (48 characters): it fits the protocol's ``Token`` field (REG's credential).
* ``hash_credential(credential)``: what is stored instead of it, a slow salted hash,
  ``scrypt$<log2 n>$<r>$<p>$<salt>$<hash>`` (n = 2**14, r = 8, p = 1, a 16-byte random salt,
  a 32-byte hash; salt and hash in standard base64 without padding).
* ``verify_credential(credential, stored_hash)``: True only when the credential is the one
  hashed; the comparison is constant-time (cryptography's ``Scrypt.verify``). False for
  anything malformed, never an exception, whatever the caller was sent. ``stored_hash=None``
  (an unknown or deregistered CP) spends the same time on a dummy hash and answers False, so
  that the answer's timing does not tell whether a CP is registered.
* ``FailureLimiter``: after ``max_failures`` failed attempts of one key (a CP id, a source
  address) within ``window`` seconds, that key is locked out: its attempts are refused without
  being checked, for ``lockout`` seconds, doubled at each further lockout up to ``max_lockout``.
  Memory is bounded (``max_keys``: the least recently seen keys are dropped first, unlocked
  ones before locked ones); the clock is injected.

Credentials are secrets: never log them, nor their hashes (docs/registry.md).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Hashable

__all__ = ["CREDENTIAL_PREFIX", "CREDENTIAL_LENGTH", "FailureLimiter", "hash_credential", "is_credential_text",
           "new_credential", "verify_credential"]

CREDENTIAL_PREFIX = "evc1_"
CREDENTIAL_BYTES = 32
#: ``evc1_`` and 43 base64url characters.
CREDENTIAL_LENGTH = len(CREDENTIAL_PREFIX) + math.ceil(CREDENTIAL_BYTES * 4 / 3)
_CREDENTIAL = re.compile(r"evc1_[A-Za-z0-9_-]{43}")

SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 14, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
#: Longest text ``verify_credential`` looks at (the protocol's Token field takes 128).
_MAX_INPUT = 256
_MAX_STORED = 255
#: Bounds on the parameters of a stored hash (hashes written by older or newer settings are
#: still verified, but a damaged row cannot make a check take gigabytes or minutes).
_LOG2_N_RANGE, _R_RANGE, _P_RANGE = range(10, 21), range(1, 33), range(1, 17)
_MAX_MEMORY = 256 * 1024 * 1024
_B64 = re.compile(r"[A-Za-z0-9+/]+")


def new_credential() -> str:
    """A new credential: ``evc1_`` and 256 random bits in base64url without padding."""
    raw = secrets.token_bytes(CREDENTIAL_BYTES)
    return CREDENTIAL_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def is_credential_text(text: object) -> bool:
    """True when ``text`` has the form of a credential (it says nothing of whether it is valid)."""
    return isinstance(text, str) and _CREDENTIAL.fullmatch(text) is not None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not _B64.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(salt: bytes, length: int, log2_n: int, r: int, p: int):
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=length, n=2 ** log2_n, r=r, p=p)


def hash_credential(credential: str) -> str:
    """The salted scrypt hash to store for ``credential`` (80 characters); ``ValueError`` if
    the credential is not text or longer than 256 characters."""
    if not isinstance(credential, str) or not credential or len(credential) > _MAX_INPUT:
        raise ValueError("a credential is a text of 1 to 256 characters")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(salt, HASH_BYTES, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P).derive(credential.encode("utf-8"))
    return f"scrypt${SCRYPT_LOG2_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


@dataclass(frozen=True)
class _Parsed:
    log2_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _parse(stored_hash: str) -> _Parsed:
    if not isinstance(stored_hash, str) or len(stored_hash) > _MAX_STORED:
        raise ValueError("not a stored hash")
    parts = stored_hash.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(part.isdigit() and len(part) <= 3 for part in parts[1:4]):
        raise ValueError("not a scrypt hash")
    log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    if log2_n not in _LOG2_N_RANGE or r not in _R_RANGE or p not in _P_RANGE or 128 * r * 2 ** log2_n > _MAX_MEMORY:
        raise ValueError("scrypt parameters out of range")
    salt, digest = _unb64(parts[4]), _unb64(parts[5])
    if not 8 <= len(salt) <= 64 or not 16 <= len(digest) <= 64:
        raise ValueError("salt or hash of a wrong length")
    return _Parsed(log2_n, r, p, salt, digest)


_DUMMY: _Parsed | None = None


def _dummy() -> _Parsed:
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = _parse(hash_credential(new_credential()))
    return _DUMMY


def verify_credential(credential: object, stored_hash: object) -> bool:
    """True when ``credential`` is the one ``stored_hash`` was made from; False otherwise,
    including for a credential or hash that is not text or is malformed. Never raises.

    ``stored_hash`` None (no credential: an unknown or deregistered CP) costs the same scrypt
    work as a real check, and answers False."""
    try:
        parsed = _parse(stored_hash) if stored_hash is not None else None
    except (ValueError, TypeError, binascii.Error):
        return False
    if parsed is None:
        parsed, known = _dummy(), False
    else:
        known = True
    try:
        if not isinstance(credential, str) or not credential or len(credential) > _MAX_INPUT:
            candidate, well_formed = b"\0", False
        else:
            candidate, well_formed = credential.encode("utf-8"), True
    except UnicodeError:  # lone surrogates
        candidate, well_formed = b"\0", False
    from cryptography.exceptions import InvalidKey

    try:
        _scrypt(parsed.salt, len(parsed.digest), parsed.log2_n, parsed.r, parsed.p).verify(candidate, parsed.digest)
    except InvalidKey:
        return False
    except Exception:  # noqa: BLE001 - whatever OpenSSL makes of odd input: not verified
        return False
    return known and well_formed


# -- failed attempts ------------------------------------------------------------------------------


@dataclass
class _Key:
    failures: deque = field(default_factory=deque)  # times of the failures within the window
    locked_until: float = 0.0
    lockouts: int = 0  # how many times it was locked out (the next lockout is longer)
    last: float = 0.0  # the last failure, or the end of the last lockout


class FailureLimiter:
    """Failed attempts per key (a CP id, an address): after ``max_failures`` within ``window``
    seconds the key is locked out for ``lockout`` seconds, then ``2 * lockout``, ``4 *``...
    up to ``max_lockout``; a key quiet for ``forget_after`` seconds (default: the longer of
    ``window`` and ``max_lockout``) after its last failure or lockout starts again from zero.

    Use: ``wait = limiter.locked(key)``; if ``wait`` refuse without checking (``wait`` s left);
    else check, then ``limiter.failure(key)`` (returns the lockout it started, 0.0 if none) or
    ``limiter.success(key)`` (forgets its failures). Thread-safe. At most ``max_keys`` keys
    are kept: past that the least recently seen unlocked key is dropped (a locked one only when
    the oldest ``scan`` keys are all locked), so memory is bounded whatever the attacker sends.
    """

    def __init__(self, max_failures: int = 5, window: float = 60.0, lockout: float = 30.0,
                 max_lockout: float = 900.0, *, max_keys: int = 10_000, forget_after: float | None = None,
                 clock: Callable[[], float] = time.monotonic, scan: int = 64) -> None:
        if max_failures < 1 or window <= 0 or lockout <= 0 or max_lockout < lockout or max_keys < 1:
            raise ValueError("FailureLimiter: max_failures >= 1, window > 0, 0 < lockout <= max_lockout, "
                             "max_keys >= 1")
        self.max_failures = max_failures
        self.window = float(window)
        self.lockout = float(lockout)
        self.max_lockout = float(max_lockout)
        self.max_keys = max_keys
        self.forget_after = float(forget_after if forget_after is not None else max(window, max_lockout))
        self.clock = clock
        self.scan = max(1, scan)
        self._keys: OrderedDict[Hashable, _Key] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0  # keys dropped to bound memory

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def _get(self, key: Hashable, now: float) -> _Key | None:
        state = self._keys.get(key)
        if state is None:
            return None
        if state.locked_until <= now and now - max(state.last, state.locked_until) > self.forget_after:
            del self._keys[key]
            return None
        return state

    def locked(self, key: Hashable) -> float:
        """Seconds ``key`` stays locked out (0.0: it may try now)."""
        with self._lock:
            now = self.clock()
            state = self._get(key, now)
            if state is None or state.locked_until <= now:
                return 0.0
            return state.locked_until - now

    def failure(self, key: Hashable) -> float:
        """Count a failed attempt of ``key``; returns the length of the lockout it started
        (0.0 when it started none). A failure while locked out (a caller that did not ask
        ``locked`` first) counts nothing more."""
        with self._lock:
            now = self.clock()
            state = self._get(key, now)
            if state is None:
                state = self._keys[key] = _Key()
                self._bound(now, keep=key)
            else:
                self._keys.move_to_end(key)
            if state.locked_until > now:
                return 0.0
            while state.failures and now - state.failures[0] >= self.window:
                state.failures.popleft()
            state.failures.append(now)
            state.last = now
            if len(state.failures) < self.max_failures:
                return 0.0
            state.failures.clear()
            state.lockouts += 1
            length = min(self.max_lockout, self.lockout * 2 ** min(state.lockouts - 1, 62))
            state.locked_until = now + length
            return length

    def success(self, key: Hashable) -> None:
        """``key`` got in: forget its failures and lockouts."""
        with self._lock:
            self._keys.pop(key, None)

    def _bound(self, now: float, keep: Hashable) -> None:
        while len(self._keys) > self.max_keys:
            victim = None
            oldest = next(key for key in self._keys if key != keep)
            for index, (key, state) in enumerate(self._keys.items()):
                if index >= self.scan:
                    break
                if key != keep and state.locked_until <= now:
                    victim = key
                    break
            if victim is None:
                victim = oldest
            del self._keys[victim]
            self.evicted += 1
