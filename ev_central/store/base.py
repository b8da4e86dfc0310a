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
from typing import Iterable

from ev_central.core.entities import (  # noqa: F401  (the entities the store maps to rows)
    CP_STATES,
    OPEN_STATUSES,
    SESSION_STATUSES,
    CPRow,
    DriverRow,
    SessionRow,
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

    # rows the database refused

    @abc.abstractmethod
    def add_rejected(self, kind: str, row_id: str, reason: str, row_json: str,
                     at: datetime | None = None) -> None:
        """Keep a refused row in ``rejected_rows``; texts too long for their column are cut
        (``row_json`` to 60,000 characters), so the database always takes it."""

    @abc.abstractmethod
    def list_rejected(self, limit: int = 100) -> list[RejectedRow]:
        """The rows set aside, newest first."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; idempotent."""
