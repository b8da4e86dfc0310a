"""Who may register a CP at Central (docs/security.md).

Open mode (Release 1, the default): every well-formed ``REG`` is accepted; Central sends
``KEY#<cp>#0`` after ``AUTH#OK``: the CP's records travel in clear.

Secure mode (``EV_Central --secure``): a ``REG`` must carry the credential EV_Registry gave
the CP. ``CPAuthenticator.authenticate`` checks it against the registration's salted scrypt
hash (constant time), refuses a CP that is not registered or was deregistered, and rate-limits
failed attempts per CP and per address; on success the CP gets its key (``KeyRing.issue``),
and the location and price registered at EV_Registry. Every attempt is audited, with the
reason of a refusal; no secret is ever logged or audited.

A check that passed is remembered (the credential's SHA-256 beside the registration it matched),
so that a Monitor registering again after a lost link costs a hash, not an scrypt; a new
registration or a deregistration at EV_Registry changes the stored hash and voids it. The
Monitor carries the same memory across Central's restarts: ``AUTH#OK`` gives it a resumption
ticket (ev_central/tickets.py) that its next ``REG`` sends beside the credential, checked with
an HMAC instead of an scrypt, and a ticket that does not match is no failure. While
the database cannot be read, a CP that authenticated before with the same credential, and
still holds its key, is admitted as it was (a deregistration made meanwhile takes effect when
the database is back and the CP registers again).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable

from ev_common.bounded import keep_newest
from ev_common.credentials import FailureLimiter, verify_credential
from ev_common.protocol import Key, Reg

from .keys import KeyRing, key_text
from .store.base import RegistrationRow, Store, StoreError
from .tickets import TicketBox

log = logging.getLogger(__name__)

REMEMBERED = 100_000  # checks that passed, kept


class Audit:  # what this module needs of ev_central.audit.AuditLog
    def record(self, action: str, actor: str, details: str = "", outcome: str = "ok", source_ip: str = "") -> None:
        ...


@dataclass(frozen=True)
class Admitted:
    """The CP may register: with this location and price, and this key for its Engine."""

    location: str
    price_eur_kwh: Decimal
    key: Key
    ticket: str = ""  # secure mode: the resumption ticket for AUTH#OK


@dataclass(frozen=True)
class Refused:
    """``AUTH#KO`` with this reason."""

    reason: str


def one_by_one(authenticate: Callable[[Reg, str], Admitted | Refused],
               requests: list[tuple[Reg, str]]) -> list[Admitted | Refused | None]:
    """``authenticate`` for each (REG, peer); None where it raised (logged: that session ends)."""
    outcomes: list[Admitted | Refused | None] = []
    for reg, peer in requests:
        try:
            outcomes.append(authenticate(reg, peer))
        except Exception:
            log.exception("authenticating %s from %s failed; its session ends", reg.cp_id, peer)
            outcomes.append(None)
    return outcomes


class OpenDoor:
    """Open mode: every REG is admitted as it comes, with no key."""

    secure = False

    def authenticate(self, reg: Reg, peer: str) -> Admitted | Refused:
        return Admitted(reg.location, reg.price_eur_kwh, Key(reg.cp_id, 0))

    def authenticate_many(self, requests: list[tuple[Reg, str]]) -> list[Admitted | Refused | None]:
        """A batch of (REG, peer): the outcome of each, None where serving it failed."""
        return one_by_one(self.authenticate, requests)


class CPAuthenticator:
    """Secure mode's check of a REG (see the module doc). Thread-safe."""

    secure = True

    def __init__(self, store: Store, keys: KeyRing, audit: Audit, *,
                 clock: Callable[[], float] = time.monotonic, tickets: TicketBox | None = None,
                 per_cp: FailureLimiter | None = None, per_address: FailureLimiter | None = None) -> None:
        """``tickets``: resumption tickets are given and taken when set (Central and its gateways
        set it from the master key); without it every first check after a start is an scrypt."""
        self.store = store
        self.keys = keys
        self.audit = audit
        self.tickets = tickets
        self.per_cp = per_cp or FailureLimiter(clock=clock)
        self.per_address = per_address or FailureLimiter(clock=clock)
        self._passed: OrderedDict[str, tuple[RegistrationRow, bytes]] = OrderedDict()  # cp -> (row, sha256)
        self._lock = threading.Lock()

    def authenticate_many(self, requests: list[tuple[Reg, str]]) -> list[Admitted | Refused | None]:
        """A batch of (REG, peer), as a registration storm brings them: their registrations are
        read at once (one query per 500 instead of one each), then each is checked as by
        ``authenticate``. None where serving one failed (logged: its session ends)."""
        ids = [reg.cp_id for reg, _ in requests if reg.credential]
        registrations = None
        if len(ids) > 1:
            try:
                registrations = self.store.get_registrations(ids)
            except StoreError as exc:  # each is read again, and says so, one by one
                log.warning("cannot read %d registrations at once (%s); one at a time", len(ids), exc)
        return one_by_one(lambda reg, peer: self.authenticate(reg, peer, registrations), requests)

    def authenticate(self, reg: Reg, peer: str,
                     registrations: dict[str, RegistrationRow] | None = None) -> Admitted | Refused:
        """``registrations``: read just before for a batch (an id missing there was never registered)."""
        cp_id, address = reg.cp_id, _host(peer)
        outcome = self._check(reg, address, registrations)
        if isinstance(outcome, Refused):
            log.warning("%s from %s refused: %s", cp_id, peer, outcome.reason)
            self.audit.record("auth", cp_id, outcome.reason, "refused", address)
        else:
            how = " with its resumption ticket" if outcome.how == _TICKET else ""
            self.audit.record("auth", cp_id, f"authenticated{how}; key v{outcome.admitted.key.version}", "ok", address)
            outcome = outcome.admitted
        return outcome

    def _check(self, reg: Reg, address: str, registrations: dict[str, RegistrationRow] | None) -> _Passed | Refused:
        cp_id = reg.cp_id
        for limiter, what in ((self.per_address, address), (self.per_cp, cp_id)):
            wait = limiter.locked(what)
            if wait:
                return Refused(f"too many failed attempts for {cp_id if what == cp_id else 'this address'}; "
                               f"try again in {wait:.0f} s")
        if not reg.credential:
            return self._failed(reg, address, "this Central runs in secure mode: REG must carry the CP's credential "
                                              "(from EV_Registry)")
        try:
            registration = self.store.get_registration(cp_id) if registrations is None else registrations.get(cp_id)
        except StoreError as exc:
            remembered = self._remembered(reg)  # a Monitor back after a lost link keeps its CP in service
            if remembered is not None:
                log.warning("cannot read %s's registration (%s): its credential matches the one checked before; "
                            "admitted", cp_id, exc)
                return _Passed(remembered, _MEMORY)
            log.warning("cannot check %s's credential: %s", cp_id, exc)
            return Refused("Central cannot check credentials now (database unreachable); try again later")
        if registration is None or registration.credential_hash is None:
            verify_credential(reg.credential, None)  # as long as a check: the time tells nothing
            why = "is not registered" if registration is None else "was deregistered"
            return self._failed(reg, address, f"{cp_id} {why} at EV_Registry")
        how = self._matches(registration, reg)
        if how is None:
            return self._failed(reg, address, f"wrong credential for {cp_id}")
        self.per_cp.success(cp_id)
        try:
            version, key, new = self.keys.issue(cp_id)
        except StoreError as exc:
            log.warning("cannot issue a key to %s: %s", cp_id, exc)
            return Refused("Central cannot issue a key now (database unreachable); try again later")
        if new:
            log.info("issued key v%d to %s", version, cp_id)
            self.audit.record("key.issue", cp_id, f"key v{version}", "ok", address)
        if (registration.location, registration.price_eur_kwh) != (reg.location, reg.price_eur_kwh):
            log.info("%s registers with the location and price of EV_Registry (%s, %s EUR/kWh), not its own "
                     "(%s, %s EUR/kWh)", cp_id, registration.location, registration.price_eur_kwh, reg.location,
                     reg.price_eur_kwh)
        return _Passed(Admitted(registration.location, registration.price_eur_kwh, Key(cp_id, version, key_text(key)),
                                self._ticket(reg, registration)), how)

    def _matches(self, registration: RegistrationRow, reg: Reg) -> str | None:
        """How the REG's credential was found to match the registration (``_MEMORY``, ``_TICKET``,
        ``_SCRYPT``), or None when it does not."""
        cp_id, stored, credential = registration.cp_id, registration.credential_hash, reg.credential
        digest = hashlib.sha256(credential.encode()).digest()
        with self._lock:
            passed = self._passed.get(cp_id)
        if passed is not None and passed[0].credential_hash == stored and hmac.compare_digest(passed[1], digest):
            return _MEMORY
        if reg.ticket and self.tickets is not None and self.tickets.vouches(reg.ticket, cp_id, credential, stored):
            how = _TICKET
        elif verify_credential(credential, stored):
            how = _SCRYPT
        else:
            return None
        with self._lock:
            keep_newest(self._passed, cp_id, (registration, digest), REMEMBERED)
        return how

    def _remembered(self, reg: Reg) -> Admitted | None:
        """While the database is down: a CP that authenticated before with this very credential and
        still holds its key, admitted as then (or None)."""
        digest = hashlib.sha256(reg.credential.encode()).digest()
        with self._lock:
            passed = self._passed.get(reg.cp_id)
        version = self.keys.version_of(reg.cp_id)
        if passed is None or version is None or not hmac.compare_digest(passed[1], digest):
            return None
        registration = passed[0]
        key = self.keys.key_for(reg.cp_id, version)
        if key is None:
            return None
        return Admitted(registration.location, registration.price_eur_kwh, Key(reg.cp_id, version, key_text(key)),
                        self._ticket(reg, registration))

    def _ticket(self, reg: Reg, registration: RegistrationRow) -> str:
        """The resumption ticket for AUTH#OK ("" without tickets)."""
        if self.tickets is None:
            return ""
        return self.tickets.issue(reg.cp_id, reg.credential, registration.credential_hash)

    def _failed(self, reg: Reg, address: str, reason: str) -> Refused:
        self.per_cp.failure(reg.cp_id)
        self.per_address.failure(address)
        return Refused(reason)


_MEMORY, _TICKET, _SCRYPT = "memory", "ticket", "scrypt"


@dataclass(frozen=True)
class _Passed:
    admitted: Admitted
    how: str  # how the credential was checked


def _host(peer: str) -> str:
    """``10.0.0.7`` of ``10.0.0.7:5123`` (``[::1]:5123`` -> ``::1``)."""
    host, _, _port = peer.rpartition(":")
    return host.strip("[]") or peer
