"""The CPs' symmetric keys at Central (secure mode; docs/security.md).

Each CP that authenticates gets a 256-bit key with a version; its Engine seals every record it
sends over Kafka with it (ev_common/envelope.py) and Central opens them with ``key_for``. A key
stays the CP's across reconnections and Central restarts (a supply's records sealed before a
reconnection still open after it); only a revocation (``keys revoke CP001``) ends it, and the
CP's next authentication gets a new key with the next version.

Keys are kept in the database (``cp_keys``) sealed with Central's **master key** (AES-256-GCM,
the CP id and the version bound as associated data), never in clear; the master key is a file
in Central's data directory, made on first start, readable by its owner only. Whoever holds
the database without that file holds no CP key.
"""

from __future__ import annotations

import base64
import logging
import secrets
import stat
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ev_common.files import write_atomically

from .core.entities import CPKeyRow
from .store.base import Store, StoreRefused

log = logging.getLogger(__name__)

KEY_BYTES = 32
NONCE_BYTES = 12
MASTER_KEY_FILE = "ev_central.master.key"


class KeyError_(Exception):
    """A key cannot be used: a master key file that is unreadable, malformed or too open."""


def load_or_make_master_key(path: Path) -> bytes:
    """The master key in ``path`` (32 random bytes, base64url), made when missing with mode 0600.
    Refuses a file others can read."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        try:
            write_atomically(path, key_text(key).encode() + b"\n", 0o600, replace=False)
        except FileExistsError:  # another Central made it meanwhile: that one is the key
            return load_or_make_master_key(path)
        log.info("made the master key that seals the CPs' keys: %s (keep it, and keep it private)", path)
        return key
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyError_(f"the master key {path} can be read by others: chmod 600 {path}")
    try:
        text = path.read_text(encoding="ascii").strip()
        key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (OSError, ValueError) as exc:
        raise KeyError_(f"cannot read the master key {path}: {exc}") from None
    if len(key) != KEY_BYTES:
        raise KeyError_(f"the master key {path} is not {KEY_BYTES} bytes of base64url")
    return key


def key_text(key: bytes) -> str:
    """A key as the KEY message carries it: base64url without padding (43 characters)."""
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


class KeyRing:
    """Every CP key in force, in memory (the Kafka consumers ask for one per record), backed by
    the store. Thread-safe."""

    def __init__(self, store: Store, master_key: bytes, *, shared: bool = False) -> None:
        """``shared``: other processes issue keys in the same store too (Central's gateways,
        docs/scaling.md): a CP's key in force there is taken before a new one is made."""
        self.store = store
        self.shared = shared
        self._sealer = AESGCM(master_key)
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[int, bytes]] = {}  # cp_id -> (version, key) in force
        self._revoked: set[str] = set()  # revoked since this Central started, not issued again

    def load(self) -> int:
        """Read the keys in force from the store (at start); how many."""
        keys = {}
        for row in self.store.load_cp_keys():
            try:
                keys[row.cp_id] = (row.version, self._unseal(row))
            except InvalidTag:
                log.error("the key v%d of %s cannot be opened with this master key: it is ignored, and %s gets "
                          "a new key when its Monitor authenticates", row.version, row.cp_id, row.cp_id)
        with self._lock:
            self._keys = keys
        return len(keys)

    def key_for(self, cp_id: str, version: int) -> bytes | None:
        """The key ``version`` of ``cp_id`` if it is in force, else None (unknown, old or revoked)."""
        with self._lock:
            held = self._keys.get(cp_id)
        return held[1] if held is not None and held[0] == version else None

    def version_of(self, cp_id: str) -> int | None:
        with self._lock:
            held = self._keys.get(cp_id)
        return held[0] if held is not None else None

    def revoked(self, cp_id: str) -> bool:
        """Its keys were revoked since this Central started, and it has not authenticated again."""
        with self._lock:
            return cp_id in self._revoked

    def issue(self, cp_id: str) -> tuple[int, bytes, bool]:
        """The key of an authenticated CP: the one in force, or a new one (stored sealed first).
        Returns (version, key, new). Raises StoreError if a new key cannot be stored."""
        with self._lock:
            held = self._keys.get(cp_id)
        if held is None and self.shared:
            held = self._read(cp_id)
        if held is not None:
            return held[0], held[1], False
        key = secrets.token_bytes(KEY_BYTES)
        sealed: list[str] = []

        def seal(version: int) -> str:
            sealed.append(self._seal(cp_id, version, key))
            return sealed[-1]

        try:
            row = self.store.issue_cp_key(cp_id, seal, keep_current=self.shared)
        except StoreRefused:
            if not self.shared:
                raise
            # another process issued this CP's first key at the same moment: take that one
            row = self.store.issue_cp_key(cp_id, seal, keep_current=True)
        if sealed and row.key_sealed == sealed[-1]:
            return (*self._hold(cp_id, row.version, key), True)
        try:  # another process's key in force, kept in the same transaction
            return (*self._hold(cp_id, row.version, self._unseal(row)), False)
        except InvalidTag:
            log.error("the key v%d of %s cannot be opened with this master key: a new one is issued", row.version,
                      cp_id)
        row = self.store.issue_cp_key(cp_id, seal)
        return (*self._hold(cp_id, row.version, key), True)

    def revoke(self, cp_id: str) -> int:
        """Revoke every key of ``cp_id``, in the store and here; how many were in force in the
        store. Raises StoreError when the store cannot be reached: nothing is revoked then."""
        count = self.store.revoke_cp_keys(cp_id)
        with self._lock:
            had = self._keys.pop(cp_id, None)
            self._revoked.add(cp_id)
        return max(count, 1 if had else 0)

    def refresh(self, cp_id: str) -> int | None:
        """Read the key of ``cp_id`` in force from the store (another process issued it): its
        version, or None when it has none. Raises StoreError when the store cannot be read."""
        held = self._read(cp_id)
        return held[0] if held is not None else None

    def forget(self, cp_id: str) -> None:
        """Forget the key of ``cp_id`` held here (another process revoked it in the store)."""
        with self._lock:
            self._keys.pop(cp_id, None)

    # -- internals -------------------------------------------------------------------------

    def _read(self, cp_id: str) -> tuple[int, bytes] | None:
        row = self.store.current_cp_key(cp_id)
        if row is None:
            return None
        try:
            return self._hold(cp_id, row.version, self._unseal(row))
        except InvalidTag:
            log.error("the key v%d of %s cannot be opened with this master key: it is ignored", row.version, cp_id)
            return None

    def _hold(self, cp_id: str, version: int, key: bytes) -> tuple[int, bytes]:
        """``cp_id``'s key in force from now on, here: (version, key)."""
        with self._lock:
            self._keys[cp_id] = (version, key)
            self._revoked.discard(cp_id)
        return version, key

    def _seal(self, cp_id: str, version: int, key: bytes) -> str:
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._sealer.encrypt(nonce, key, _aad(cp_id, version))
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def _unseal(self, row: CPKeyRow) -> bytes:
        text = row.key_sealed
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except ValueError:
            raise InvalidTag() from None
        return self._sealer.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(row.cp_id, row.version))


def _aad(cp_id: str, version: int) -> bytes:
    """What a sealed key is bound to: a row moved to another CP or version does not open."""
    return f"ev-central cp key|{cp_id}|{version}".encode()
