"""What the API shows, made from Central's memory: CPs, ongoing requests, messages, weather
and health (docs/api.md has every field). Nothing here reads the database on a request:
CPs' registrations come from ``Registrations``, a copy the API's watcher refreshes.

Decimals stay ``Decimal`` (``ev_central.events.to_json`` writes them as exact strings);
times are timezone-aware UTC ``datetime``s (ISO 8601 in JSON). Secrets never appear: a tag's
UID is masked (``...E73A``), a CP's key is named by its version and a 4-hex-digit prefix of
its SHA-256, a credential not at all (only whether the CP is registered, and since when).
"""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timezone
from typing import Any, Callable

from ev_common.mcsp import masked
from ev_common.words import AVERIADO, DESCONECTADO, KEYS_REVOKED, OUT_OF_ORDER, PARADO, STATE_MEANINGS, WEATHER_ALERT

from ..core.entities import CPRow, RegistrationRow, SessionRow
from ..store.base import StoreError

Json = dict[str, Any]
MISSING_LISTED = 100  # CPs without their Monitor listed by /api/health (the rest counted)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Registrations:
    """The CPs' registrations at EV_Registry (``cp_registrations``), read from the store by
    ``refresh()`` (the watcher's thread) and served from memory. Never a credential hash."""

    def __init__(self, store, clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self._clock = clock
        self._rows: dict[str, RegistrationRow] | None = None  # None: never read yet
        self.checked_at: datetime | None = None
        self.error: str | None = None  # the last refresh failed: why
        self._lock = threading.Lock()
        self._changed: set[str] = set()  # CPs whose registration changed, not taken yet
        self._everything = False  # the first read: every CP changed

    def refresh(self) -> bool:
        """Read the registrations again (False: the database failed; the last read stays). The
        CPs whose registration changed are kept for ``take_changes``."""
        try:
            rows = {row.cp_id: row for row in self.store.list_registrations()}
        except StoreError as exc:
            with self._lock:
                self.error = str(exc)[:300] or type(exc).__name__
            return False
        with self._lock:
            before = self._rows
            self._rows, self.checked_at, self.error = rows, self._clock(), None
            if before is None:
                self._everything = True
            else:
                self._changed.update(cp_id for cp_id in before.keys() | rows.keys()
                                     if _registration_state(before.get(cp_id))
                                     != _registration_state(rows.get(cp_id)))
        return True

    def take_changes(self) -> set[str] | None:
        """The CPs whose registration (its state, or since when) changed in the reads since the
        last call: registered, deregistered, registered again. None: every CP (the first read
        turned each one's ``unknown`` into what it is)."""
        with self._lock:
            everything, changed = self._everything, self._changed
            self._everything, self._changed = False, set()
        return None if everything else changed

    def of(self, cp_id: str) -> Json:
        with self._lock:
            rows, checked = self._rows, self.checked_at
        if rows is None:
            return {"state": "unknown", "since": None, "checked_at": None}
        state, since = _registration_state(rows.get(cp_id))
        return {"state": state, "since": since, "checked_at": checked}


def _registration_state(row: RegistrationRow | None) -> tuple:
    """What ``Registrations.of`` shows of a registration, but for when it was read."""
    if row is None:
        return ("not registered", None)
    return ("registered", row.registered_at) if row.registered else ("deregistered", row.deregistered_at)


class Presenter:
    """Builds the API's JSON from ``central`` and ``view`` (ev_central/view.py)."""

    def __init__(self, central, view, registrations: Registrations) -> None:
        self.central = central
        self.view = view
        self.registrations = registrations

    # -- CPs ----------------------------------------------------------------------------------

    def cps(self, cp_ids: list[str] | None = None) -> list[Json]:
        """Every CP, or those of ``cp_ids`` that exist (one look at the supplies for all)."""
        supplies = {row.cp_id: row for row in self.central.book.open_sessions()}
        network = self.central.network
        rows = network.snapshot() if cp_ids is None else [row for row in map(network.get, cp_ids) if row is not None]
        return [self._cp(row, supplies.get(row.cp_id)) for row in rows]

    def cp(self, cp_id: str) -> Json | None:
        row = self.central.network.get(cp_id)
        if row is None:
            return None
        return self._cp(row, self.central.book.active_for_cp(cp_id))

    def _cp(self, row: CPRow, supply: SessionRow | None) -> Json:
        network = self.central.network
        fault = network.fault_of(row.cp_id)
        weather = network.weather_held(row.cp_id)
        key = self._key(row.cp_id)
        revoked = bool(key and key["revoked"])
        return {
            "cp_id": row.cp_id,
            "location": row.location,
            "price_eur_kwh": row.price_eur_kwh,
            "state": row.state,
            "meaning": STATE_MEANINGS.get(row.state, ""),
            "stopped": row.stopped,
            "weather_hold": weather,
            "reason": self._reason(row, fault, weather, revoked),
            "fault": fault,
            "updated_at": row.updated_at,
            "supply": _supply(supply) if supply is not None else None,
            "registration": self.registrations.of(row.cp_id),
            "key": key,
        }

    def _reason(self, row: CPRow, fault: str | None, weather: bool, revoked: bool) -> str | None:
        """Why the CP is out of service, for people; None when it is in service."""
        state = row.state
        if state == AVERIADO:
            return f"Engine fault: {fault}" if fault else "faulty"
        if state == DESCONECTADO:
            return KEYS_REVOKED if revoked else "no Monitor connected"
        if state != PARADO:
            return None
        reasons = []
        if row.stopped:
            reasons.append("stopped by the operator")
        if weather:
            office = getattr(self.central, "weather", None)
            reasons.append((office.note_for(row.cp_id) if office is not None else None) or WEATHER_ALERT)
        return f"{OUT_OF_ORDER}: {' and '.join(reasons)}" if reasons else OUT_OF_ORDER

    def _key(self, cp_id: str) -> Json | None:
        """The CP's key in secure mode: its version, whether the operator revoked it, and a
        masked fingerprint; None in open mode (CPs have no keys)."""
        keys = self.central.keys
        if keys is None:
            return None
        version = keys.version_of(cp_id)
        fingerprint = None
        if version is not None:
            key = keys.key_for(cp_id, version)
            if key is not None:
                fingerprint = "SHA256:" + hashlib.sha256(key).hexdigest()[:4] + "…"
        return {"version": version, "revoked": keys.revoked(cp_id), "fingerprint": fingerprint}

    # -- the rest of the panel ----------------------------------------------------------------

    def requests(self) -> list[Json]:
        return [{"started_at": r.started_at, "who": r.who, "cp_id": r.cp_id, "status": r.status, "via": r.via}
                for r in self.view.ongoing()]

    def messages(self, limit: int) -> list[Json]:
        return [{"at": m.at, "level": m.level, "text": m.text} for m in self.view.messages(limit)]

    def weather(self) -> Json:
        """The weather office's view (``central.weather``, ev_central/weather.py), or what says
        it is not there."""
        office = getattr(self.central, "weather", None)
        if office is None:
            return {"available": False, "cities": [], "ev_w": {"last_seen": None, "silent": None}}
        snapshot = office.snapshot()
        return {
            "available": True,
            "cities": [{"city": c.city, "temperature": c.temperature, "alert": c.alert, "alert_since": c.alert_since,
                        "last_report_at": c.last_report_at, "cp_ids": list(c.cp_ids), "error": c.error,
                        "simulated": c.simulated} for c in snapshot.cities],
            "ev_w": {"last_seen": snapshot.ev_w_last_seen, "silent": snapshot.ev_w_silent},
        }

    def health(self, registry: Json, weather: Json | None = None) -> Json:
        """Central's status: the panel's status line (``text``, ``level``) and each part: OK,
        or what fails and since when (``failing``)."""
        status = self.view.health()
        now = utcnow()
        failing: list[Json] = []
        central = self.central
        kafka: Json = {"configured": central.bus is not None, "ok": None, "since": None}
        if central.bus is not None:
            down = central.bus.health.down_since
            kafka.update(ok=down is None, since=down)
            if down is not None:
                failing.append({"part": "kafka", "text": "Kafka unreachable", "since": down})
        db_ok = central.writer.db_ok and central.session_writer.db_ok
        db_since = None if db_ok else self.view.db_down_since
        database = {"ok": db_ok, "since": db_since}
        if not db_ok:
            failing.append({"part": "database", "text": "database unreachable (Central works from memory)",
                            "since": db_since})
        stats = central.audit.stats()
        audit = {"ok": stats.db_ok and not stats.failed, "queued": stats.queued, "written": stats.written,
                 "spooled": stats.spooled, "failed": stats.failed}
        if not audit["ok"]:
            failing.append({"part": "audit", "text": f"audit: {stats.spooled} spooled, {stats.failed} failed",
                            "since": None})
        if registry.get("configured") and registry.get("ok") is False:
            failing.append({"part": "registry", "text": f"EV_Registry unreachable: {registry.get('error')}",
                            "since": registry.get("since")})
        ev_w = self._ev_w(weather if weather is not None else self.weather())
        if ev_w["silent"]:
            failing.append({"part": "ev_w", "text": "EV_W silent", "since": ev_w["last_seen"]})
        rows = central.network.snapshot()
        missing = [row for row in rows if row.state == DESCONECTADO]
        monitors = {"total": len(rows), "connected": len(rows) - len(missing), "missing_count": len(missing),
                    "missing": [{"cp_id": row.cp_id, "since": row.updated_at} for row in missing[:MISSING_LISTED]]}
        if missing:
            failing.append({"part": "monitors", "text": f"{len(missing)} CP(s) without their Monitor",
                            "since": min(row.updated_at for row in missing)})
        gate = getattr(central, "gate", None)
        return {
            "at": now, "ok": status.ok, "level": status.level, "text": status.text,
            "mode": "secure" if central.secure else "open",
            "kafka": kafka, "database": database, "audit": audit, "registry": registry, "ev_w": ev_w,
            "monitors": monitors, "records_refused": gate.rejected if gate is not None else 0,
            "failing": failing,
        }

    @staticmethod
    def _ev_w(weather: Json) -> Json:
        if not weather["available"]:
            return {"configured": False, "ok": None, "silent": None, "last_seen": None}
        seen = weather["ev_w"]
        heard = seen["last_seen"] is not None or seen["silent"]  # (ok: null until EV_W is heard from)
        return {"configured": True, "ok": not seen["silent"] if heard else None, "silent": seen["silent"],
                "last_seen": seen["last_seen"]}


def _supply(row: SessionRow) -> Json:
    return {"session_id": row.session_id, "driver_id": row.driver_id or None, "account_id": row.account_id,
            "tag": masked(row.tag_uid) if row.tag_uid else None, "started_at": row.started_at,
            "status": row.status, "kwh": row.kwh, "amount_eur": row.amount_eur, "price_eur_kwh": row.price_eur_kwh}


def session(row: SessionRow) -> Json:
    """A session (a ticket once ended), as ``/api/sessions`` lists it: never a tag's full UID."""
    return {**_supply(row), "cp_id": row.cp_id, "ended_at": row.ended_at, "end_reason": row.end_reason,
            "corrected": row.corrected}


def telemetry(row: SessionRow, seq: int) -> Json:
    """A ``telemetry`` event: a supply's figures now."""
    return {"session_id": row.session_id, "cp_id": row.cp_id, "seq": seq, "kwh": row.kwh,
            "amount_eur": row.amount_eur, "driver_id": row.driver_id or None, "account_id": row.account_id,
            "tag": masked(row.tag_uid) if row.tag_uid else None}
