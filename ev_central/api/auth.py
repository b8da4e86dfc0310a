"""The API's two bearer tokens: the operator's (commands on CPs) and EV_W's (weather reports
and alerts). Each is kept only as its SHA-256 digest and compared in constant time; failed
attempts are counted per source address (``FailureLimiter``: locked out after 5 in 60 s),
logged and audited (``api.auth``), never with the token sent.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

from ev_common.credentials import FailureLimiter
from ev_common.log import shown
from ev_common.tokens import bearer_token, load_token, token_digest

from .. import audit as audited

log = logging.getLogger("ev_central.api")

OPERATOR, WEATHER = "operator", "weather"
WHO = {OPERATOR: "the operator", WEATHER: "EV_W"}
NAME = {OPERATOR: "operator", WEATHER: "EV_W"}
REFUSED = {OPERATOR: "commands", WEATHER: "weather reports"}
FLAG = {OPERATOR: "--api-token-file (or $EV_API_TOKEN)", WEATHER: "--weather-token-file (or $EV_WEATHER_TOKEN)"}


@dataclass(frozen=True)
class Verdict:
    status: int  # 0: allowed; 401, 403 or 429
    message: str = ""
    retry_after: float = 0.0
    token_given: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 0


class TokenGate:
    """Checks a request's ``Authorization`` header for ``realm`` (OPERATOR or WEATHER)."""

    def __init__(self, operator_token: str | None, weather_token: str | None, *,
                 limiter: FailureLimiter | None = None, audit=audited.NO_AUDIT) -> None:
        self._digests = {realm: token_digest(load_token(token, f"the {realm} token")) if token else None
                         for realm, token in ((OPERATOR, operator_token), (WEATHER, weather_token))}
        if operator_token and weather_token and self._digests[OPERATOR] == self._digests[WEATHER]:
            raise ValueError("the operator token and EV_W's token must differ")
        self.limiter = limiter if limiter is not None else FailureLimiter()
        self.audit = audit

    def check(self, realm: str, authorization: str | None, source: str, request: str) -> Verdict:
        """Allowed, or why not (a locked-out address is refused without a check)."""
        expected = self._digests[realm]
        if expected is None:
            return Verdict(403, f"no {NAME[realm]} token is configured at Central ({FLAG[realm]}): "
                                f"{REFUSED[realm]} are refused")
        key = f"ip:{source}"
        wait = self.limiter.locked(key)
        if wait > 0:
            return Verdict(429, f"too many failed token attempts from {source}", retry_after=wait)
        token, reason = bearer_token(authorization)
        given = token_digest(token) if token is not None else None
        if given is not None and hmac.compare_digest(given, expected):
            self.limiter.success(key)
            return Verdict(0)
        other = self._digests[OPERATOR if realm == WEATHER else WEATHER]
        if given is not None and other is not None and hmac.compare_digest(given, other):
            return Verdict(403, f"this token is not {WHO[realm]}'s: it may not do {request}", token_given=True)
        lockout = self.limiter.failure(key)
        details = f"{reason}: {shown(request)}"
        if lockout:
            details += f"; the address is locked out for {lockout:.0f} s"
        log.warning("API: refused a request from %s: %s", source, details)
        self.audit.record(audited.API_AUTH, "unknown", details, audited.REFUSED, source)
        return Verdict(401, f"{reason}: send 'Authorization: Bearer <{WHO[realm]}'s token>'",
                       token_given=token is not None)
