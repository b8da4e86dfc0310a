"""The store interface: what Central keeps in its database, whatever the backend.

Two backends implement it with the same behaviour and the same tests:
``SQLiteStore`` (embedded default) and ``MySQLStore`` (mysql-connector-python).
Table and column names are a contract documented in docs/schema.md.

Every method is safe to call from several threads. A method that cannot reach
the database (or finds it too slow, or busy) raises ``StoreUnavailable``: Central then
keeps working from memory and retries. A method whose data the database refuses (too
long, out of range, not allowed by a constraint) raises ``StoreRefused``: the same
data will be refused again, but other rows are not affected. Other failures raise
``StoreError``. SQL is always parameterised.

Rows carry a ``version``: a save never replaces a stored row with one whose version
is lower (docs/schema.md, "versions").
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterable, Sequence

from ev_central.core.entities import (  # noqa: F401  (the entities the store maps to rows)
    CP_STATES,
    DEFAULT_ACCOUNT_KIND,
    OPEN_STATUSES,
    SESSION_STATUSES,
    AccountRow,
    AccountStatement,
    AuditEntry,
    AuditRow,
    CPKeyRow,
    CPRow,
    DriverRow,
    RegistrationRow,
    SessionRow,
    TagRow,
    WeatherAlertRow,
)


class StoreError(Exception):
    """The database refused an operation."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now; the same call may succeed later."""


class StoreRefused(StoreError):
    """The database refused the data itself (a value too long or out of range, a broken
    constraint...): the same row will be refused again; other rows are not affected.

    ``row_id`` is the id of the refused row when it is known (the first one refused of
    a batch), ``reason`` what was wrong, ``errno`` the database's error number if any."""

    def __init__(self, reason: str, *, row_id: str | None = None, errno: int | None = None) -> None:
        super().__init__(reason if row_id is None else f"row {row_id!r}: {reason}")
        self.reason = reason
        self.row_id = row_id
        self.errno = errno

    def for_row(self, row_id: str) -> "StoreRefused":
        """The same refusal, naming ``row_id`` (unless it already names a row)."""
        if self.row_id is not None:
            return self
        return StoreRefused(self.reason, row_id=row_id, errno=self.errno)


class UnknownAccount(StoreRefused):
    """A tag or a driver was given to an account that is not stored."""

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} does not exist")
        self.account_id = account_id


class AccountDisabled(StoreRefused):
    """A tag or a driver was given to a disabled account."""

    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} is disabled")
        self.account_id = account_id


REJECTED_KINDS = ("cp", "session")


@dataclass(frozen=True)
class RejectedRow:
    """One row of ``rejected_rows``: a CP or session row the database refused, set aside."""

    id: int
    at: datetime  # timezone-aware, UTC: when it was set aside
    kind: str  # one of REJECTED_KINDS
    row_id: str  # the CP's or session's id (cut to 200 characters)
    reason: str  # why it was refused (cut to 1000 characters)
    row_json: str  # the row as JSON (long texts cut)


class Store(abc.ABC):
    """Central's database. Build one with ``ev_central.store.open_store(url)``."""

    description: str  # for messages: "MySQL ev@db:3306/evcharging" or "SQLite /path/ev_central.db"

    @abc.abstractmethod
    def migrate(self) -> int:
        """Create or upgrade the schema (idempotent); returns the schema version now in force.

        Safe when several processes migrate the same database at once. Raises
        ``StoreError`` if the database holds a schema newer than this program knows."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the database answers now (reconnecting if needed)."""

    # charging points

    @abc.abstractmethod
    def load_charging_points(self) -> list[CPRow]:
        """Every stored CP, ordered by cp_id."""

    @abc.abstractmethod
    def save_charging_points(self, rows: Iterable[CPRow]) -> None:
        """Insert or update these CPs (every column), all in one transaction; a stored row
        whose version is higher than the given one's is kept as it is. ``StoreRefused``
        (naming the first refused row) when the database refuses a row: nothing is saved."""

    @abc.abstractmethod
    def mark_all_disconnected(self, at: datetime) -> int:
        """Set every CP's state to DESCONECTADO (done at each start); returns how many rows.

        ``updated_at`` becomes ``at`` and ``stopped`` is kept. The count is every stored CP,
        whether or not its row changed."""

    # drivers

    @abc.abstractmethod
    def add_driver(self, driver_id: str, name: str = "") -> bool:
        """Register a driver; False if it was already registered (nothing changes then).

        ``registered_at`` is the current time."""

    @abc.abstractmethod
    def remove_driver(self, driver_id: str) -> bool:
        """Unregister a driver; False if it was not registered."""

    @abc.abstractmethod
    def list_drivers(self) -> list[DriverRow]:
        """Every registered driver, ordered by driver_id."""

    @abc.abstractmethod
    def driver_exists(self, driver_id: str) -> bool:
        """True when ``driver_id`` is registered."""

    @abc.abstractmethod
    def set_driver_account(self, driver_id: str, account_id: str | None) -> bool:
        """Make ``driver_id`` belong to ``account_id`` (None: to no account); False if the
        driver is not registered. ``UnknownAccount`` / ``AccountDisabled`` when the account
        does not exist or is disabled (nothing changes then)."""

    @abc.abstractmethod
    def account_of_driver(self, driver_id: str) -> AccountRow | None:
        """The account ``driver_id`` belongs to (active or not), or None: a driver with no
        account, or not registered."""

    # accounts and RFID tags

    @abc.abstractmethod
    def add_account(self, account_id: str, name: str = "",
                    kind: str = DEFAULT_ACCOUNT_KIND) -> bool:
        """Create an active account; False if it already existed (nothing changes then).

        ``account_id`` is 1-64 characters from ``A-Z a-z 0-9 _ -``, ``name`` at most 100
        printable characters, ``kind`` a word matching ``ACCOUNT_KIND_PATTERN``;
        ``StoreRefused`` otherwise. ``created_at`` is the current time."""

    @abc.abstractmethod
    def get_account(self, account_id: str) -> AccountRow | None:
        """One account, or None."""

    @abc.abstractmethod
    def list_accounts(self) -> list[AccountRow]:
        """Every account, ordered by account_id."""

    @abc.abstractmethod
    def set_account_active(self, account_id: str, active: bool) -> bool:
        """Enable or disable an account; False if it does not exist. Its tags, drivers and
        sessions are kept."""

    @abc.abstractmethod
    def add_tag(self, tag_uid: str, account_id: str) -> bool:
        """Give an active RFID tag to an account; False if the tag was already stored (for
        this account or another: nothing changes then). The UID is normalised
        (``normalise_tag_uid``); a malformed one is ``StoreRefused``, an account that does
        not exist ``UnknownAccount``, a disabled one ``AccountDisabled``."""

    @abc.abstractmethod
    def get_tag(self, tag_uid: str) -> TagRow | None:
        """One tag by its UID, in any accepted form; None if not stored or malformed."""

    @abc.abstractmethod
    def find_tag(self, tag_uid: str) -> tuple[TagRow, AccountRow] | None:
        """A tag and the account that owns it, read together; None if the tag is not
        stored (or malformed) or its account is missing. Whether it may charge is
        ``tag.active and account.active``."""

    @abc.abstractmethod
    def list_tags(self, account_id: str | None = None) -> list[TagRow]:
        """Every tag, or an account's tags, ordered by tag_uid."""

    @abc.abstractmethod
    def set_tag_active(self, tag_uid: str, active: bool) -> bool:
        """Enable or disable a tag; False if it is not stored (or malformed)."""

    # charging sessions

    @abc.abstractmethod
    def save_sessions(self, rows: Iterable[SessionRow]) -> None:
        """Insert or update these sessions (every column), all in one transaction; a stored
        row whose version is higher than the given one's is kept as it is. ``StoreRefused``
        (naming the first refused row) when the database refuses a row: nothing is saved."""

    @abc.abstractmethod
    def get_session(self, session_id: str) -> SessionRow | None:
        """One session, or None."""

    @abc.abstractmethod
    def load_open_sessions(self) -> list[SessionRow]:
        """Sessions whose status is AUTHORISED or SUPPLYING, oldest first."""

    @abc.abstractmethod
    def load_unsent_tickets(self) -> list[SessionRow]:
        """Ended sessions (COMPLETED/INTERRUPTED) whose ticket_sent is false, oldest first."""

    @abc.abstractmethod
    def list_sessions(self, cp_id: str | None = None, driver_id: str | None = None,
                      limit: int = 100) -> list[SessionRow]:
        """Sessions, newest first (by started_at), optionally of one CP and/or one driver."""

    # pages for Central's API (ev_central/api): newest or lowest first, from after a cursor.
    # Written here over the methods above; the SQL backends read only the page.

    def list_sessions_page(self, cp_id: str | None = None, driver_id: str | None = None,
                           after: str | None = None, limit: int = 100) -> list[SessionRow]:
        """Sessions newest first (by started_at, then session_id), optionally of one CP and/or
        one driver, from after the session ``after`` (the last one of the previous page; a
        session that does not exist gives an empty page); at most ``limit``."""
        rows = self.list_sessions(cp_id, driver_id, limit=2**31 - 1)
        if after is not None:
            index = next((i for i, row in enumerate(rows) if row.session_id == after), None)
            rows = [] if index is None else rows[index + 1:]
        return rows[:limit]

    def list_drivers_page(self, after: str | None = None, limit: int = 100) -> list[DriverRow]:
        """Registered drivers ordered by driver_id, those after ``after``; at most ``limit``."""
        return [row for row in self.list_drivers() if after is None or row.driver_id > after][:limit]

    def list_accounts_page(self, after: str | None = None, limit: int = 100) -> list[AccountRow]:
        """Accounts ordered by account_id, those after ``after``; at most ``limit``."""
        return [row for row in self.list_accounts() if after is None or row.account_id > after][:limit]

    def list_audit_before(self, before_seq: int, action: str | None = None, limit: int = 100) -> list[AuditRow]:
        """The last ``limit`` audit entries before ``before_seq`` (of one action, or a prefix
        ending in "."), oldest first."""
        rows = [row for row in self.list_audit(action=action, limit=2**31 - 1) if row.seq < before_seq]
        return rows[-limit:] if limit else []

    @abc.abstractmethod
    def sessions_of_account(self, account_id: str, start: datetime | None = None,
                            end: datetime | None = None) -> list[SessionRow]:
        """Every session booked to ``account_id`` that started at or after ``start`` and
        before ``end`` (None: no bound), whatever its status, oldest first (by started_at,
        then session_id)."""

    @abc.abstractmethod
    def account_statement(self, account_id: str, start: datetime | None = None,
                          end: datetime | None = None) -> AccountStatement | None:
        """The account and ``sessions_of_account(account_id, start, end)``, read in one
        transaction; None if the account does not exist."""

    # rows the database refused

    @abc.abstractmethod
    def add_rejected(self, kind: str, row_id: str, reason: str, row_json: str,
                     at: datetime | None = None) -> None:
        """Keep a refused row in ``rejected_rows``; texts too long for their column are cut
        (``row_json`` to 60,000 characters), so the database always takes it."""

    @abc.abstractmethod
    def list_rejected(self, limit: int = 100) -> list[RejectedRow]:
        """The rows set aside, newest first."""

    # CP registrations (EV_Registry), CP keys and the audit log: schema version 5

    @abc.abstractmethod
    def register_cp(self, cp_id: str, location: str, price_eur_kwh, credential_hash: str) -> bool:
        """Register ``cp_id`` with a new credential (its hash), or register it again (a new
        credential replaces the old one, a deregistered CP is registered again); True if it
        was never registered before. In secure mode Central gives the CP this location and
        price when it authenticates (charging_points is Central's own)."""

    @abc.abstractmethod
    def deregister_cp(self, cp_id: str) -> bool:
        """Drop the CP's credential (it can no longer authenticate; its rows stay); False if it
        is not registered now."""

    @abc.abstractmethod
    def get_registration(self, cp_id: str) -> RegistrationRow | None:
        """The CP's registration (registered or deregistered), or None if it never was."""

    def get_registrations(self, cp_ids: Sequence[str]) -> dict[str, RegistrationRow]:
        """The registrations of these CPs, by id (an id never registered is missing), read at
        once where the store can (a registration storm's batch)."""
        found = {}
        for cp_id in cp_ids:
            row = self.get_registration(cp_id)
            if row is not None:
                found[cp_id] = row
        return found

    @abc.abstractmethod
    def list_registrations(self) -> list[RegistrationRow]:
        """Every registration, ordered by cp_id."""

    @abc.abstractmethod
    def issue_cp_key(self, cp_id: str, seal: Callable[[int], str], *, keep_current: bool = False) -> CPKeyRow:
        """Keep a new key for ``cp_id``, numbered one past the CP's last key, revoked or not:
        ``seal(version)`` gives the key sealed with Central's master key for that version
        (called inside the transaction, so that the version it binds is the one stored).
        ``keep_current``: when the CP has a key in force (another process issued it), return that
        one instead, in the same transaction, and call no ``seal``. Two issuing the same version
        at once: one gets ``StoreRefused`` (the key's version is taken)."""

    @abc.abstractmethod
    def current_cp_key(self, cp_id: str) -> CPKeyRow | None:
        """The CP's newest key that is not revoked, or None."""

    @abc.abstractmethod
    def load_cp_keys(self) -> list[CPKeyRow]:
        """Every key not revoked (Central loads them at start)."""

    @abc.abstractmethod
    def revoke_cp_keys(self, cp_id: str) -> int:
        """Revoke every key of ``cp_id`` not yet revoked; how many were."""

    @abc.abstractmethod
    def append_audit(self, entries: Iterable[AuditEntry]) -> list[AuditRow]:
        """Append entries to the audit log, in order, each chained to the one before (its
        ``hash`` covers the previous entry's hash: ev_central/audit.py); one transaction, so
        that two programs appending at once (Central and EV_Registry) keep one chain. Texts
        too long for their column are cut."""

    @abc.abstractmethod
    def list_audit(self, since: datetime | None = None, action: str | None = None,
                   after_seq: int = 0, limit: int = 1000) -> list[AuditRow]:
        """Audit entries in order (oldest first), optionally from ``since``, of one action
        (or a prefix ending in "."), after ``after_seq``; at most ``limit``."""

    @abc.abstractmethod
    def audit_head(self) -> tuple[int, str]:
        """(the last entry's seq, its hash): ``(0, "0" * 64)`` when the log is empty."""

    # the weather office (schema version 6)

    @abc.abstractmethod
    def load_weather_alerts(self) -> list[WeatherAlertRow]:
        """Every weather alert in force, by city (Central loads them at start)."""

    @abc.abstractmethod
    def save_weather_alert(self, row: WeatherAlertRow) -> None:
        """Insert the alert of ``row.city``, or replace it (its CPs, temperature, since)."""

    @abc.abstractmethod
    def delete_weather_alert(self, city: str) -> bool:
        """Remove the alert of ``city``; False when there was none."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; idempotent."""
