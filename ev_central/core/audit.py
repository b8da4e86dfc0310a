"""The audit log's hash chain: each entry's hash covers the hash of the one before it, so an
entry changed, removed or put in another place breaks every hash after it
(``EV_Central audit verify``; docs/security.md says what this detects and what it cannot).

    hash(n) = SHA-256( prev_hash "\\n" canonical JSON of {seq, at, actor, source_ip, action,
                       details, outcome} )

with ``prev_hash`` the hex hash of entry n-1 (64 zeros before the first), ``at`` in ISO 8601
UTC with microseconds, the JSON with sorted keys, no spaces, ASCII only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import timezone
from typing import Iterable

from .entities import AuditEntry, AuditRow

GENESIS = "0" * 64


def entry_hash(prev_hash: str, seq: int, entry: AuditEntry) -> str:
    body = json.dumps({
        "seq": seq,
        "at": entry.at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": entry.actor,
        "source_ip": entry.source_ip,
        "action": entry.action,
        "details": entry.details,
        "outcome": entry.outcome,
    }, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{prev_hash}\n{body}".encode("ascii")).hexdigest()


@dataclass(frozen=True)
class ChainCheck:
    """What ``verify`` found: ``ok``, how many entries it checked, and the first problem."""

    ok: bool
    checked: int
    problem: str = ""
    bad_seq: int | None = None


class ChainVerifier:
    """Checks entries in order, a batch at a time (the log may be long)."""

    def __init__(self) -> None:
        self.prev_hash = GENESIS
        self.last_seq = 0
        self.checked = 0
        self.failure: ChainCheck | None = None

    def feed(self, rows: Iterable[AuditRow]) -> bool:
        """False once a problem was found (``result`` says which)."""
        for row in rows:
            if self.failure is not None:
                return False
            if row.seq != self.last_seq + 1:
                return self._fail(row.seq, f"entry {self.last_seq + 1} is missing (the next one is {row.seq})")
            if not hmac.compare_digest(row.prev_hash, self.prev_hash):
                return self._fail(row.seq, f"entry {row.seq} does not follow entry {self.last_seq}: "
                                           f"its previous hash differs")
            if not hmac.compare_digest(entry_hash(row.prev_hash, row.seq, row.entry), row.hash):
                return self._fail(row.seq, f"entry {row.seq} was changed: its hash does not match its content")
            self.prev_hash, self.last_seq = row.hash, row.seq
            self.checked += 1
        return self.failure is None

    def finish(self, head: tuple[int, str]) -> ChainCheck:
        """The result, given the head the store keeps (the last seq and hash appended): entries
        removed from the end leave the chain shorter than the head."""
        if self.failure is not None:
            return self.failure
        last_seq, last_hash = head
        if (last_seq, last_hash) != (self.last_seq, self.prev_hash):
            return ChainCheck(False, self.checked, f"the log ends at entry {self.last_seq}, but entry {last_seq} "
                                                   f"was appended: entries were removed from its end",
                              self.last_seq + 1)
        return ChainCheck(True, self.checked)

    def _fail(self, seq: int, problem: str) -> bool:
        self.failure = ChainCheck(False, self.checked, problem, seq)
        return False
