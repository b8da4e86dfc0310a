"""Resumption tickets (secure mode; docs/security.md "Resumption tickets").

A CP's credential is stored as a slow salted scrypt hash: checking it costs about 43 ms of one
core. Central remembers a check that passed, but only while it runs: after Central (or a
gateway) restarts, 10,000 Monitors coming back would cost 10,000 scrypt checks, about 7 minutes
of one core. A ticket carries that memory across restarts, held by the Monitor.

With every ``AUTH#OK`` Central gives the Monitor a ticket: an HMAC-SHA256, under a key derived
from Central's master key (HKDF-SHA256), of the CP id, the stored credential hash the credential
matched, and the credential's SHA-256. The Monitor keeps it in memory and sends it with its
next ``REG``. Central recomputes the HMAC from that REG's credential and the registration it
reads now, and compares in constant time: a match says that this credential is the one that
matched this very stored hash before, and costs microseconds instead of an scrypt.

- A ticket is worth nothing without the credential: it is checked against the credential sent
  beside it, never instead of it.
- A new credential or a deregistration at EV_Registry changes (or removes) the stored hash, so
  every ticket made before it stops matching, with no list of tickets to keep.
- Any Central or gateway with the same master key accepts the tickets of the others.
- A ticket that does not match (another master key, a changed registration, a damaged or
  made-up ticket) is no failure: the credential is then checked with scrypt as before.
- Whoever holds both the master key and the database could make tickets for a credential of
  their choosing; they can already open every CP key. Keep the master key private.

Tickets carry no time: they vouch for a fact that stays true until the registration changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac as std_hmac

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["TICKET_LENGTH", "TicketBox"]

_INFO = b"EVCharging resumption ticket v1"
#: A ticket on the wire: 32 bytes in base64url without padding.
TICKET_LENGTH = 43


class TicketBox:
    """Makes and checks tickets with a key derived from ``master_key``. Thread-safe (it keeps no
    state but its key)."""

    def __init__(self, master_key: bytes) -> None:
        self._key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(master_key)

    def issue(self, cp_id: str, credential: str, credential_hash: str) -> str:
        """The ticket for ``cp_id`` whose ``credential`` matched ``credential_hash``."""
        return base64.urlsafe_b64encode(self._mac(cp_id, credential, credential_hash)).rstrip(b"=").decode("ascii")

    def vouches(self, ticket: str, cp_id: str, credential: str, credential_hash: str) -> bool:
        """True when ``ticket`` was issued for this CP, this credential and this stored hash."""
        if not isinstance(ticket, str) or len(ticket) != TICKET_LENGTH:
            return False
        try:
            presented = base64.urlsafe_b64decode(ticket + "=")
        except (ValueError, TypeError):
            return False
        return std_hmac.compare_digest(presented, self._mac(cp_id, credential, credential_hash))

    def _mac(self, cp_id: str, credential: str, credential_hash: str) -> bytes:
        mac = hmac.HMAC(self._key, hashes.SHA256())
        for part in (cp_id.encode(), credential_hash.encode(), hashlib.sha256(credential.encode()).digest()):
            mac.update(len(part).to_bytes(4, "big"))  # length-prefixed: no two inputs run together alike
            mac.update(part)
        return mac.finalize()
