"""What EV_Registry does, whatever carries the requests: checks the operator token, registers
and deregisters CPs in the shared database, and writes every such event to the audit log.

The HTTP layer (``api.py``) only maps requests and answers onto ``Registry``'s methods. Inputs
reach these methods already validated (``validate_cp_id``, ``validate_location``,
``validate_price``: the limits of the database and of the Monitor protocol); they check again,
so that nothing else can put a value in the store that it would refuse.

Secrets: the operator token is kept only as its SHA-256 digest (compared in constant time); a
new credential is returned once to the caller and never logged nor stored in clear (only its
scrypt hash, ``ev_common.credentials``).
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Callable

from ev_central.audit import REGISTRY_AUTH, REGISTRY_DEREGISTER, REGISTRY_REGISTER
from ev_central.core.entities import AuditEntry, RegistrationRow
from ev_common.credentials import FailureLimiter, hash_credential, new_credential
from ev_common.log import shown
from ev_common.protocol.messages import PRICE
from ev_common.tokens import bearer_token, load_token, token_digest

log = logging.getLogger("ev_registry")

ACTOR_OPERATOR = "operator"
ACTOR_REGISTRY = "EV_Registry"
ACTION_REGISTER, ACTION_DEREGISTER, ACTION_AUTH = REGISTRY_REGISTER, REGISTRY_DEREGISTER, REGISTRY_AUTH

CP_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
LOCATION_MAX = 200  # cp_registrations.location, and the protocol's location field
PRICE_MIN, PRICE_MAX, PRICE_PLACES = Decimal(0), Decimal(1000), 4
#: A price as text: 0 to 1000 with at most 4 decimal places (the API's OpenAPI pattern too).
PRICE_TEXT_PATTERN = r"^(?:1000(?:\.0{1,4})?|[0-9]{1,3}(?:\.[0-9]{1,4})?)$"
PRICE_TEXT = re.compile(PRICE_TEXT_PATTERN)
#: A location for the OpenAPI document: no '#' nor control characters, not only white space
#: (and printable: the document's format "printable").
LOCATION_PATTERN = r"^[^#\u0000-\u001f\u007f]*[^#\s\u0000-\u001f\u007f][^#\u0000-\u001f\u007f]*$"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# -- validation --------------------------------------------------------------------------------


def validate_cp_id(value: object) -> str:
    if not isinstance(value, str) or not CP_ID_PATTERN.fullmatch(value):
        raise ValueError("a CP id is 1-64 characters from A-Z a-z 0-9 _ -")
    return value


def validate_location(value: object) -> str:
    """1-200 printable characters (Python's ``str.isprintable``: the database's rule), not only
    white space, without '#' (the Monitor protocol's separator)."""
    if not isinstance(value, str):
        raise ValueError("the location is text")
    if not 1 <= len(value) <= LOCATION_MAX:
        raise ValueError(f"the location has 1 to {LOCATION_MAX} characters (it has {len(value)})")
    if "#" in value:
        raise ValueError("the location must not hold '#'")
    if not value.isprintable():
        raise ValueError("the location holds a character that is not printable")
    if not value.strip():
        raise ValueError("the location is only spaces")
    return value


def validate_price(value: object) -> Decimal:
    """A price from 0 to 1000 EUR/kWh with at most 4 decimal places: text matching
    ``PRICE_TEXT`` ("0.48"), a ``Decimal``, an int, or a float whose shortest form ("0.48")
    has at most 4 decimal places. ``ValueError`` otherwise (booleans included)."""
    try:
        if isinstance(value, str):
            if not PRICE_TEXT.fullmatch(value):
                raise ValueError(f"{value[:40]!r} is not a decimal number such as 0.48")
            return PRICE.check(Decimal(value))
        if isinstance(value, float):
            return PRICE.check(Decimal(repr(value)))
        if isinstance(value, (Decimal, int)) and not isinstance(value, bool):
            return PRICE.check(value)
        raise ValueError("is not a number")
    except ValueError as exc:
        raise ValueError(f"the price {exc}: a number from 0 to 1000 EUR/kWh with at most 4 decimal places, "
                         f"such as 0.48") from None


# -- authentication ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthResult:
    ok: bool
    reason: str = ""  # "no token", "wrong token", "malformed Authorization header"
    token_given: bool = False  # a token was sent (WWW-Authenticate says invalid_token then)
    retry_after: float = 0.0  # > 0: the address is locked out; its attempts are not checked


@dataclass(frozen=True)
class Registered:
    row: RegistrationRow
    credential: str  # shown once to the caller; never logged nor stored
    created: bool  # first registration (201) or again (200)


class NotRegistered(Exception):
    """The CP was never registered (404)."""


class AlreadyDeregistered(Exception):
    """The CP is deregistered already (409)."""

    def __init__(self, row: RegistrationRow) -> None:
        super().__init__(f"{row.cp_id} is already deregistered")
        self.row = row


class Registry:
    """EV_Registry's operations on ``store`` (an ``ev_central.store.Store``), guarded by the
    operator ``token``; ``limiter`` counts failed token attempts per source address."""

    def __init__(self, store, token: str, *, limiter: FailureLimiter | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self._token_digest = token_digest(load_token(token, "the configuration"))
        self.limiter = limiter if limiter is not None else FailureLimiter()
        self.clock = clock

    # -- the operator token

    def authenticate(self, authorization: str | None, source: str, request: str) -> AuthResult:
        """Check an ``Authorization`` header from ``source`` (an address) for ``request``
        ("PUT /cps/CP001"). A locked-out address is refused without a check; a failed attempt
        is counted, logged and audited (never the token sent)."""
        key = f"ip:{source}"
        request = shown(request)
        wait = self.limiter.locked(key)
        if wait > 0:
            log.debug("refused %s from %s without checking: locked out for %.0f s more", request, source, wait)
            return AuthResult(False, "locked out", retry_after=wait)
        given, reason = bearer_token(authorization)
        if given is not None and hmac.compare_digest(token_digest(given), self._token_digest):
            self.limiter.success(key)
            return AuthResult(True)
        lockout = self.limiter.failure(key)
        details = f"{reason}: {request}"
        if lockout:
            details += f"; the address is locked out for {lockout:.0f} s"
        log.warning("refused a request from %s: %s", source, details)
        self._audit(ACTOR_REGISTRY, source, ACTION_AUTH, details, "refused")
        return AuthResult(False, reason, token_given=given is not None)

    # -- registrations

    def register(self, cp_id: str, location: str, price, source: str) -> Registered:
        """Register ``cp_id`` or register it again with a new credential (the old one stops
        working). Raises ``ValueError`` for invalid fields, ``StoreError`` if the database fails."""
        cp_id, location, price = validate_cp_id(cp_id), validate_location(location), validate_price(price)
        credential = new_credential()
        created = self.store.register_cp(cp_id, location, price, hash_credential(credential))
        row = self.store.get_registration(cp_id)
        if row is None:  # the row was just written: only a broken database loses it
            raise RuntimeError(f"the registration of {cp_id} was not found right after it was written")
        how = "registered" if created else "registered again (a new credential replaces the old one)"
        log.info("%s %s from %s: location %r, %s EUR/kWh", cp_id, how, source, location, price)
        self._audit(ACTOR_OPERATOR, source, ACTION_REGISTER,
                    f"{cp_id} {how}; location={location!r}; price_eur_kwh={price}", "ok")
        return Registered(row, credential, created)

    def deregister(self, cp_id: str, source: str) -> RegistrationRow:
        """Drop the CP's credential; its row (history) stays. ``NotRegistered`` if it was never
        registered, ``AlreadyDeregistered`` if it is deregistered already (both audited as
        refused)."""
        cp_id = validate_cp_id(cp_id)
        if not self.store.deregister_cp(cp_id):
            row = self.store.get_registration(cp_id)
            why = "never registered" if row is None else "already deregistered"
            self._audit(ACTOR_OPERATOR, source, ACTION_DEREGISTER, f"{cp_id}: {why}", "refused")
            if row is None:
                raise NotRegistered(cp_id)
            raise AlreadyDeregistered(row)
        row = self.store.get_registration(cp_id)
        log.info("%s deregistered from %s: it can no longer authenticate", cp_id, source)
        self._audit(ACTOR_OPERATOR, source, ACTION_DEREGISTER, f"{cp_id} deregistered", "ok")
        if row is None:
            raise RuntimeError(f"the registration of {cp_id} was not found right after it was updated")
        return row

    def get(self, cp_id: str) -> RegistrationRow | None:
        return self.store.get_registration(validate_cp_id(cp_id))

    def list(self) -> list[RegistrationRow]:
        return self.store.list_registrations()

    # -- audit

    def _audit(self, actor: str, source: str, action: str, details: str, outcome: str) -> None:
        """Append one entry; a database that fails is logged (the operation it records stands)."""
        try:
            self.store.append_audit([AuditEntry(at=self.clock(), actor=actor, source_ip=source or "",
                                                action=action, details=details, outcome=outcome)])
        except Exception as exc:  # noqa: BLE001 - the request has been served; say the entry is missing
            log.error("could not write the audit entry %s %s (%s): %s", action, outcome, details[:200], exc)
