"""What both SQL backends share: the migrations list, the common SQL, row conversion.

A backend (``SQLiteStore``, ``MySQLStore``) supplies its dialect: the DDL of each schema
version, the statements whose syntax differs (CP and session upserts, insert-if-absent of
a driver, the catalogue queries that tell whether a column or an index exists), the text
form of a UTC time, and ``_run``, which executes one unit of work in one transaction under
the store's lock and turns driver exceptions into ``StoreError`` / ``StoreUnavailable`` /
``StoreRefused``.

Shared SQL uses named parameters (``:name``), the form sqlite3 takes as is; the MySQL
backend rewrites them to ``%(name)s``.
"""

from __future__ import annotations

import abc
import re
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, TypeVar, Union

from ev_central.core.audit import GENESIS, entry_hash
from ev_central.core.entities import (
    ACCOUNT_KIND_PATTERN,
    AUDIT_ACTION_MAX,
    AUDIT_ACTOR_MAX,
    AUDIT_DETAILS_MAX,
    AUDIT_OUTCOME_MAX,
    AUDIT_SOURCE_MAX,
    WEATHER_CITY_MAX,
    WEATHER_CPS_MAX,
    WeatherAlertRow,
    normalise_tag_uid,
)

from .base import (
    CP_STATES,
    DEFAULT_ACCOUNT_KIND,
    OPEN_STATUSES,
    REJECTED_KINDS,
    SESSION_STATUSES,
    AccountDisabled,
    AccountRow,
    AccountStatement,
    AuditEntry,
    AuditRow,
    CPKeyRow,
    CPRow,
    DriverRow,
    RegistrationRow,
    RejectedRow,
    SessionRow,
    Store,
    StoreError,
    StoreRefused,
    StoreUnavailable,
    TagRow,
    UnknownAccount,
)

T = TypeVar("T")

ENDED_STATUSES = tuple(s for s in SESSION_STATUSES if s not in OPEN_STATUSES)

#: Every schema version, in order: version -> what it does. Each backend gives the DDL
#: of each version in its ``DDL`` mapping. A released version is never edited: a change
#: is a new version appended here.
MIGRATIONS: dict[int, str] = {
    1: "charging_points, drivers and charging_sessions",
    2: "charging_sessions.request_id and index ix_charging_sessions_status",
    3: "row versions, charging_sessions.engine_final and .corrected, table rejected_rows",
    4: "accounts, rfid_tags, drivers.account_id, charging_sessions.tag_uid and .account_id",
    5: "cp_registrations, cp_keys, audit_log and audit_head",
    6: "weather_alerts",
    7: "index ix_charging_sessions_started (started_at, session_id)",
}
LATEST_VERSION = max(MIGRATIONS)


def sql_list(values: Iterable[str]) -> str:
    """``'A', 'B'`` for an ``IN (...)`` of fixed, known words (never user input)."""
    return ", ".join(f"'{value}'" for value in values)


CP_STATES_SQL = sql_list(CP_STATES)
SESSION_STATUSES_SQL = sql_list(SESSION_STATUSES)


class Cursor(Protocol):
    """The part of a DB-API cursor the shared code uses."""

    rowcount: int

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Any: ...

    def executemany(self, sql: str, params: Sequence[Mapping[str, Any]]) -> Any: ...

    def fetchall(self) -> list[Sequence[Any]]: ...


#: One step of a schema version: a statement, or a function that runs its own statements
#: (used to make a step that has no ``IF NOT EXISTS`` form idempotent).
Step = Union[str, Callable[[Cursor], None]]


# -- common SQL ---------------------------------------------------------------------------

SELECT_VERSIONS = "SELECT version FROM schema_version ORDER BY version"
SELECT_VERSION = "SELECT version FROM schema_version WHERE version = :version"
INSERT_VERSION = (
    "INSERT INTO schema_version (version, description, applied_at)"
    " VALUES (:version, :description, :applied_at)"
)
#: charging_points' columns written by the upsert, in CPRow's order; the primary key first
#: and ``version`` last (MySQL assigns ON DUPLICATE KEY UPDATE's columns left to right).
CP_COLUMNS = ("cp_id", "location", "price_eur_kwh", "state", "stopped", "updated_at", "version")
INSERT_CP = (
    f"INSERT INTO charging_points ({', '.join(CP_COLUMNS)})"
    f" VALUES ({', '.join(':' + c for c in CP_COLUMNS)})"
)
SELECT_CPS = f"SELECT {', '.join(CP_COLUMNS)} FROM charging_points ORDER BY cp_id"
MARK_ALL_DISCONNECTED = "UPDATE charging_points SET state = 'DESCONECTADO', updated_at = :at"
COUNT_CPS = "SELECT COUNT(*) FROM charging_points"
DELETE_DRIVER = "DELETE FROM drivers WHERE driver_id = :driver_id"
SELECT_DRIVERS = (
    "SELECT driver_id, name, registered_at, account_id FROM drivers ORDER BY driver_id"
)
SELECT_DRIVER = "SELECT 1 FROM drivers WHERE driver_id = :driver_id"
SELECT_DRIVERS_PAGE = (
    "SELECT driver_id, name, registered_at, account_id FROM drivers WHERE driver_id > :after"
    " ORDER BY driver_id LIMIT :limit"
)
SELECT_ONE = "SELECT 1"

#: charging_sessions' columns, in SessionRow's order except ``version``: the primary key
#: first and ``version`` last.
SESSION_COLUMNS = (
    "session_id", "request_id", "cp_id", "driver_id", "price_eur_kwh", "started_at",
    "ended_at", "kwh", "amount_eur", "status", "end_reason", "ticket_sent", "last_seq",
    "engine_final", "corrected", "tag_uid", "account_id", "version",
)  # fmt: skip
#: The insert both backends' session upserts start with (params: SESSION_COLUMNS).
INSERT_SESSION = (
    f"INSERT INTO charging_sessions ({', '.join(SESSION_COLUMNS)})"
    f" VALUES ({', '.join(':' + c for c in SESSION_COLUMNS)})"
)
_SELECT_SESSIONS = f"SELECT {', '.join(SESSION_COLUMNS)} FROM charging_sessions"
SELECT_SESSION = f"{_SELECT_SESSIONS} WHERE session_id = :session_id"


def _in(name: str, values: Sequence[str]) -> tuple[str, dict[str, str]]:
    """``(:name0, :name1)`` and its parameters, for ``col IN (...)``."""
    params = {f"{name}{i}": value for i, value in enumerate(values)}
    return "(" + ", ".join(f":{key}" for key in params) + ")", params


_OPEN_IN, OPEN_PARAMS = _in("status", OPEN_STATUSES)
_ENDED_IN, ENDED_PARAMS = _in("status", ENDED_STATUSES)
# Both are served by ix_charging_sessions_status (status, ticket_sent, started_at).
SELECT_OPEN_SESSIONS = (
    f"{_SELECT_SESSIONS} WHERE status IN {_OPEN_IN} ORDER BY started_at, session_id"
)
SELECT_UNSENT_TICKETS = (
    f"{_SELECT_SESSIONS} WHERE status IN {_ENDED_IN} AND ticket_sent = :unsent"
    " ORDER BY started_at, session_id"
)
UNSENT_PARAMS = {**ENDED_PARAMS, "unsent": 0}
SELECT_ACCOUNT_SESSIONS = f"{_SELECT_SESSIONS} WHERE account_id = :account_id"
ACCOUNT_SESSIONS_ORDER = " ORDER BY started_at, session_id"

# -- accounts, tags and the drivers' accounts (schema version 4) --------------------------

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # account ids, as CP and driver ids
ACCOUNT_NAME_MAX = 100
TAG_UID_MAX = 20
_ACCOUNT_COLUMNS = "account_id, name, kind, active, created_at"
SELECT_ACCOUNTS = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY account_id"
SELECT_ACCOUNT = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account_id = :account_id"
SELECT_ACCOUNTS_PAGE = (
    f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE account_id > :after ORDER BY account_id LIMIT :limit"
)
SET_ACCOUNT_ACTIVE = "UPDATE accounts SET active = :active WHERE account_id = :account_id"
_TAG_COLUMNS = "tag_uid, account_id, active, created_at"
SELECT_TAGS = f"SELECT {_TAG_COLUMNS} FROM rfid_tags ORDER BY tag_uid"
SELECT_ACCOUNT_TAGS = (
    f"SELECT {_TAG_COLUMNS} FROM rfid_tags WHERE account_id = :account_id ORDER BY tag_uid"
)
SELECT_TAG = f"SELECT {_TAG_COLUMNS} FROM rfid_tags WHERE tag_uid = :tag_uid"
SELECT_TAG_AND_ACCOUNT = (
    "SELECT t.tag_uid, t.account_id, t.active, t.created_at,"
    " a.account_id, a.name, a.kind, a.active, a.created_at"
    " FROM rfid_tags t JOIN accounts a ON a.account_id = t.account_id"
    " WHERE t.tag_uid = :tag_uid"
)
SET_TAG_ACTIVE = "UPDATE rfid_tags SET active = :active WHERE tag_uid = :tag_uid"
SET_DRIVER_ACCOUNT = "UPDATE drivers SET account_id = :account_id WHERE driver_id = :driver_id"
SELECT_DRIVER_ACCOUNT = (
    "SELECT a.account_id, a.name, a.kind, a.active, a.created_at"
    " FROM drivers d JOIN accounts a ON a.account_id = d.account_id"
    " WHERE d.driver_id = :driver_id"
)

# -- registrations, keys and the audit log (schema version 5) -----------------------------

LOCATION_MAX = 200
CREDENTIAL_HASH_MAX = 255
KEY_SEALED_MAX = 200
_REGISTRATION_COLUMNS = "cp_id, location, price_eur_kwh, credential_hash, registered_at, deregistered_at"
SELECT_REGISTRATION = f"SELECT {_REGISTRATION_COLUMNS} FROM cp_registrations WHERE cp_id = :cp_id"
SELECT_REGISTRATIONS = f"SELECT {_REGISTRATION_COLUMNS} FROM cp_registrations ORDER BY cp_id"
SELECT_SOME_REGISTRATIONS = f"SELECT {_REGISTRATION_COLUMNS} FROM cp_registrations WHERE cp_id IN"  # + (...)
REGISTRATIONS_PER_READ = 500  # ids in one IN (...): a registration storm's batch in one or a few reads
INSERT_REGISTRATION = (
    f"INSERT INTO cp_registrations ({_REGISTRATION_COLUMNS})"
    " VALUES (:cp_id, :location, :price_eur_kwh, :credential_hash, :registered_at, NULL)"
)
UPDATE_REGISTRATION = (
    "UPDATE cp_registrations SET location = :location, price_eur_kwh = :price_eur_kwh,"
    " credential_hash = :credential_hash, registered_at = :registered_at, deregistered_at = NULL"
    " WHERE cp_id = :cp_id"
)
DEREGISTER = (
    "UPDATE cp_registrations SET credential_hash = NULL, deregistered_at = :at"
    " WHERE cp_id = :cp_id AND credential_hash IS NOT NULL"
)
_KEY_COLUMNS = "cp_id, version, key_sealed, issued_at, revoked_at"
SELECT_LAST_KEY_VERSION = "SELECT MAX(version) FROM cp_keys WHERE cp_id = :cp_id"
INSERT_KEY = (
    f"INSERT INTO cp_keys ({_KEY_COLUMNS}) VALUES (:cp_id, :version, :key_sealed, :issued_at, NULL)"
)
SELECT_CURRENT_KEY = (
    f"SELECT {_KEY_COLUMNS} FROM cp_keys WHERE cp_id = :cp_id AND revoked_at IS NULL"
    " ORDER BY version DESC LIMIT 1"
)
SELECT_LIVE_KEYS = f"SELECT {_KEY_COLUMNS} FROM cp_keys WHERE revoked_at IS NULL ORDER BY cp_id, version"
REVOKE_KEYS = "UPDATE cp_keys SET revoked_at = :at WHERE cp_id = :cp_id AND revoked_at IS NULL"
_AUDIT_COLUMNS = "seq, at, actor, source_ip, action, details, outcome, prev_hash, hash"
INSERT_AUDIT = (
    f"INSERT INTO audit_log ({_AUDIT_COLUMNS})"
    " VALUES (:seq, :at, :actor, :source_ip, :action, :details, :outcome, :prev_hash, :hash)"
)
UPDATE_AUDIT_HEAD = "UPDATE audit_head SET last_seq = :seq, last_hash = :hash WHERE id = 1"
SELECT_AUDIT_HEAD = "SELECT last_seq, last_hash FROM audit_head WHERE id = 1"

# -- weather alerts (schema version 6) ----------------------------------------------------

#: A CP ids list as stored: ids joined by commas (an id never holds one), at most this long.
WEATHER_CP_IDS_MAX = WEATHER_CPS_MAX * 65
_WEATHER_COLUMNS = "city, cp_ids, temperature, since"
SELECT_WEATHER_ALERTS = f"SELECT {_WEATHER_COLUMNS} FROM weather_alerts ORDER BY city"
DELETE_WEATHER_ALERT = "DELETE FROM weather_alerts WHERE city = :city"
INSERT_WEATHER_ALERT = (
    f"INSERT INTO weather_alerts ({_WEATHER_COLUMNS}) VALUES (:city, :cp_ids, :temperature, :since)"
)

INT_MAX = 2**31 - 1  # INTEGER in MySQL
VERSION_MAX = 2**63 - 1  # BIGINT

REJECTED_ROW_ID_MAX, REJECTED_REASON_MAX, REJECTED_JSON_MAX = 200, 1000, 60_000
INSERT_REJECTED = (
    "INSERT INTO rejected_rows (at, kind, row_id, reason, row_json)"
    " VALUES (:at, :kind, :row_id, :reason, :row_json)"
)
SELECT_REJECTED = (
    "SELECT id, at, kind, row_id, reason, row_json FROM rejected_rows"
    " ORDER BY id DESC LIMIT :limit"
)


def upsert_assignments(columns: Sequence[str], value: Callable[[str], str],
                       current: Callable[[str], str]) -> str:
    """MySQL's ``ON DUPLICATE KEY UPDATE`` list that replaces a stored row only by one of
    the same or a higher version: ``col = IF(new version >= version, new col, col)`` for
    every column but the key, ``version`` last, since the assignments run left to right
    and each one sees the columns already assigned."""
    assert columns[-1] == "version"
    keep = f"{value('version')} >= {current('version')}"
    return ", ".join(
        f"{c} = IF({keep}, {value(c)}, {current(c)})" for c in columns[1:]
    )


# -- values -------------------------------------------------------------------------------

PRICE_DIGITS, MONEY_PLACES = 10, 4  # DECIMAL(10,4)
ENERGY_DIGITS = 12  # kwh and amount_eur: DECIMAL(12,4)


def to_decimal(value: Any, name: str, digits: int = PRICE_DIGITS) -> str:
    """``value`` as the text of a DECIMAL(digits, 4), rounded half away from zero as MySQL
    does; ``StoreError`` if it is not a finite number or does not fit."""
    try:
        number = Decimal(value) if not isinstance(value, float) else Decimal(str(value))
    except (InvalidOperation, TypeError, ValueError):
        raise StoreRefused(f"{name} is not a number: {value!r}") from None
    if not number.is_finite():
        raise StoreRefused(f"{name} is not a finite number: {value!r}")
    if abs(number) >= Decimal(10) ** (digits - MONEY_PLACES):
        raise StoreRefused(f"{name} {value} does not fit DECIMAL({digits},{MONEY_PLACES})")
    number = number.quantize(Decimal(1).scaleb(-MONEY_PLACES), rounding=ROUND_HALF_UP)
    if abs(number) >= Decimal(10) ** (digits - MONEY_PLACES):
        raise StoreRefused(f"{name} {value} does not fit DECIMAL({digits},{MONEY_PLACES})")
    return str(number)


def to_count(value: Any, name: str) -> int:
    """``value`` as a non-negative INTEGER; ``StoreError`` otherwise (on both backends,
    although SQLite's INTEGER would take more)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT_MAX:
        raise StoreRefused(f"{name} is not an integer from 0 to {INT_MAX}: {value!r}")
    return value


def to_version(value: Any, name: str) -> int:
    """``value`` as a row version: a BIGINT from 0; ``StoreRefused`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= VERSION_MAX:
        raise StoreRefused(f"{name} is not an integer from 0 to {VERSION_MAX}: {value!r}")
    return value


def to_identifier(value: Any, name: str) -> str:
    """``value`` as an id of 1-64 characters from ``A-Z a-z 0-9 _ -``; ``StoreRefused``
    otherwise."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise StoreRefused(f"{name} is not an id of 1-64 characters from A-Z a-z 0-9 _ -: {value!r}")
    return value


def to_text(value: Any, name: str, limit: int) -> str:
    """``value`` as a text of at most ``limit`` printable characters; ``StoreRefused``
    otherwise."""
    if not isinstance(value, str):
        raise StoreRefused(f"{name} is not text: {value!r}")
    if len(value) > limit:
        raise StoreRefused(f"{name} is longer than {limit} characters ({len(value)})")
    if not value.isprintable():
        raise StoreRefused(f"{name} holds a character that is not printable: {value!r}")
    return value


def to_kind(value: Any) -> str:
    """An account's kind: a word matching ``ACCOUNT_KIND_PATTERN``; ``StoreRefused``
    otherwise."""
    if not isinstance(value, str) or not ACCOUNT_KIND_PATTERN.fullmatch(value):
        raise StoreRefused(
            f"account kind must be a word of 1-32 characters from a-z 0-9 _ -, starting with a"
            f" letter (such as apartment or company), not {value!r}"
        )
    return value


def to_flag(value: Any, name: str) -> int:
    if not isinstance(value, bool):
        raise StoreRefused(f"{name} is not True or False: {value!r}")
    return 1 if value else 0


def to_tag_uid(value: Any) -> str:
    """A tag UID in any accepted form, normalised; ``StoreRefused`` if malformed."""
    try:
        return normalise_tag_uid(value)
    except ValueError as exc:
        raise StoreRefused(str(exc)) from None


def to_stored_uid(value: Any) -> str:
    """A session's ``tag_uid``, which must already be normalised; ``StoreRefused``
    otherwise."""
    if to_tag_uid(value) != value:
        raise StoreRefused(f"tag_uid {value!r} is not normalised ({normalise_tag_uid(value)!r})")
    return value


def storable(text: Any, limit: int) -> str:
    """``text`` as a string any text column takes: at most ``limit`` characters, and what
    UTF-8 cannot encode (lone surrogates) escaped."""
    text = text if isinstance(text, str) else str(text)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def from_decimal(value: Any) -> Decimal:
    """A DECIMAL column's value (Decimal from MySQL, text from SQLite) as a Decimal."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def utc(value: datetime) -> datetime:
    """An aware datetime converted to UTC; a naive one is a programming error."""
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: the store takes timezone-aware datetimes")
    return value.astimezone(timezone.utc)


def from_time(value: Any) -> datetime:
    """A stored time (datetime from MySQL, ISO-8601 text from SQLite) as aware UTC."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    if isinstance(value, str):
        text = value.strip()
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


# -- the store ----------------------------------------------------------------------------


class DatabaseBusy(StoreUnavailable):
    """A call waited ``lock_timeout`` for the store's connection, held by a slow call."""


class SQLStore(Store):
    """The ``Store`` methods written once over a backend's ``_run`` and dialect."""

    #: Per-backend dialect, set by each subclass.
    TIME_FORMAT: str  # strftime form of a UTC time in a bound parameter
    SCHEMA_VERSION_DDL: str  # creates schema_version if missing
    DDL: Mapping[int, Sequence[Step]]  # version -> steps
    UPSERT_CP: str  # params: cp_id, location, price_eur_kwh, state, stopped, updated_at
    INSERT_DRIVER: str  # params: driver_id, name, registered_at; rowcount 0 if present
    INSERT_ACCOUNT: str  # params: account_id, name, kind, created_at; rowcount 0 if present
    INSERT_TAG: str  # params: tag_uid, account_id, created_at; rowcount 0 if present
    UPSERT_SESSION: str  # INSERT_SESSION plus the dialect's update of every other column
    #: The same, for ``executemany`` of many rows at once (where the dialect needs another form).
    UPSERT_CP_MANY: str | None = None
    UPSERT_SESSION_MANY: str | None = None

    def __init__(self, lock_timeout: float) -> None:
        if set(self.DDL) != set(MIGRATIONS):
            raise RuntimeError(f"{type(self).__name__}.DDL does not cover {sorted(MIGRATIONS)}")
        if not lock_timeout > 0:
            raise ValueError(f"lock_timeout must be > 0, not {lock_timeout!r}")
        self._lock = threading.RLock()
        self.lock_timeout = lock_timeout
        self._closed = False

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's lock, waiting at most ``lock_timeout`` seconds for it: a caller
        never queues for long behind a slow call; it gets ``StoreUnavailable`` instead."""
        if not self._lock.acquire(timeout=self.lock_timeout):
            raise DatabaseBusy(
                f"{self.description}: database busy (waited {self.lock_timeout:g} s for the"
                " connection)"
            )
        try:
            yield
        finally:
            self._lock.release()

    @abc.abstractmethod
    def _run(self, work: Callable[[Cursor], T], *, write: bool = True) -> T:
        """Run ``work(cursor)`` in one transaction holding the lock; commit, or roll back
        and raise ``StoreError``/``StoreUnavailable``."""

    def _time(self, value: datetime) -> str:
        return utc(value).strftime(self.TIME_FORMAT)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.description}: the store is closed")

    # -- schema ---------------------------------------------------------------------------

    def migrate(self) -> int:
        self._run(lambda cur: cur.execute(self.SCHEMA_VERSION_DDL))
        self._refuse_newer_schema()
        for version, description in sorted(MIGRATIONS.items()):
            self._run(lambda cur, v=version, d=description: self._apply(cur, v, d))
        return LATEST_VERSION

    def _refuse_newer_schema(self) -> None:
        versions = self._run(lambda cur: _column(cur, SELECT_VERSIONS), write=False)
        newest = max(versions, default=0)
        if newest > LATEST_VERSION:
            raise StoreError(
                f"{self.description}: the database schema is version {newest}, newer than "
                f"version {LATEST_VERSION} known to this program; run a newer EV_Central"
            )

    def _apply(self, cur: Cursor, version: int, description: str) -> None:
        cur.execute(SELECT_VERSION, {"version": version})
        if cur.fetchall():
            return
        for step in self.DDL[version]:
            if callable(step):
                step(cur)
            else:
                cur.execute(step)
        cur.execute(
            INSERT_VERSION,
            {"version": version, "description": description, "applied_at": self._time(now_utc())},
        )

    def schema_versions(self) -> list[int]:
        """Every applied schema version, ascending (one row each in ``schema_version``)."""
        return self._run(lambda cur: _column(cur, SELECT_VERSIONS), write=False)

    def ping(self) -> None:
        self._run(lambda cur: _rows(cur, SELECT_ONE), write=False)

    # -- charging points ------------------------------------------------------------------

    def load_charging_points(self) -> list[CPRow]:
        rows = self._run(lambda cur: _rows(cur, SELECT_CPS), write=False)
        return [
            CPRow(
                cp_id=cp_id,
                location=location,
                price_eur_kwh=from_decimal(price),
                state=state,
                stopped=bool(stopped),
                updated_at=from_time(updated_at),
                version=int(version),
            )
            for cp_id, location, price, state, stopped, updated_at, version in rows
        ]

    def save_charging_points(self, rows: Iterable[CPRow]) -> None:
        self._save(self.UPSERT_CP, [(row.cp_id, self._cp_params(row)) for row in rows], self.UPSERT_CP_MANY)

    def _save(self, sql: str, keyed: list[tuple[str, dict[str, Any]]], many: str | None = None) -> None:
        """Run ``sql`` with each row's parameters in one transaction; a refusal names the
        row the database refused. Several rows go as one statement first (``many``, or
        ``sql``, through ``executemany``: one round trip); when the database refuses that
        statement, they go again one statement each, in one transaction, to name the row
        (and nothing of the batch is saved)."""
        if not keyed:
            return
        if len(keyed) > 1:
            try:
                self._run(lambda cur: cur.executemany(many or sql, [params for _, params in keyed]))
                return
            except StoreRefused:
                pass  # which row? below
        current: list[str | None] = [None]

        def work(cur: Cursor) -> None:
            for key, params in keyed:
                current[0] = key
                cur.execute(sql, params)

        try:
            self._run(work)
        except StoreRefused as exc:
            if current[0] is None:
                raise
            raise exc.for_row(current[0]) from None

    def _cp_params(self, row: CPRow) -> dict[str, Any]:
        try:
            return {
                "cp_id": row.cp_id,
                "location": row.location,
                "price_eur_kwh": to_decimal(row.price_eur_kwh, "price_eur_kwh"),
                "state": row.state,
                "stopped": 1 if row.stopped else 0,
                "updated_at": self._time(row.updated_at),
                "version": to_version(row.version, "version"),
            }
        except StoreRefused as exc:
            raise exc.for_row(row.cp_id) from None

    def mark_all_disconnected(self, at: datetime) -> int:
        params = {"at": self._time(at)}

        def work(cur: Cursor) -> int:
            cur.execute(MARK_ALL_DISCONNECTED, params)
            return int(_rows(cur, COUNT_CPS)[0][0])

        return self._run(work)

    # -- drivers --------------------------------------------------------------------------

    def add_driver(self, driver_id: str, name: str = "") -> bool:
        params = {"driver_id": driver_id, "name": name, "registered_at": self._time(now_utc())}

        def work(cur: Cursor) -> bool:
            cur.execute(self.INSERT_DRIVER, params)
            return cur.rowcount == 1

        return self._run(work)

    def remove_driver(self, driver_id: str) -> bool:
        def work(cur: Cursor) -> bool:
            cur.execute(DELETE_DRIVER, {"driver_id": driver_id})
            return cur.rowcount > 0

        return self._run(work)

    def list_drivers(self) -> list[DriverRow]:
        rows = self._run(lambda cur: _rows(cur, SELECT_DRIVERS), write=False)
        return [
            DriverRow(driver_id=driver_id, name=name, registered_at=from_time(registered_at),
                      account_id=account_id)
            for driver_id, name, registered_at, account_id in rows
        ]

    def driver_exists(self, driver_id: str) -> bool:
        rows = self._run(
            lambda cur: _rows(cur, SELECT_DRIVER, {"driver_id": driver_id}), write=False
        )
        return bool(rows)

    def set_driver_account(self, driver_id: str, account_id: str | None) -> bool:
        if account_id is not None:
            account_id = to_identifier(account_id, "account id")

        def work(cur: Cursor) -> bool:
            if not _rows(cur, SELECT_DRIVER, {"driver_id": driver_id}):
                return False
            if account_id is not None:
                _usable_account(cur, account_id)
            cur.execute(SET_DRIVER_ACCOUNT, {"driver_id": driver_id, "account_id": account_id})
            return True

        return self._run(work)

    def account_of_driver(self, driver_id: str) -> AccountRow | None:
        rows = self._run(
            lambda cur: _rows(cur, SELECT_DRIVER_ACCOUNT, {"driver_id": driver_id}), write=False
        )
        return _account(rows[0]) if rows else None

    # -- accounts and RFID tags -----------------------------------------------------------

    def add_account(self, account_id: str, name: str = "",
                    kind: str = DEFAULT_ACCOUNT_KIND) -> bool:
        params = {
            "account_id": to_identifier(account_id, "account id"),
            "name": to_text(name, "account name", ACCOUNT_NAME_MAX),
            "kind": to_kind(kind),
            "created_at": self._time(now_utc()),
        }

        def work(cur: Cursor) -> bool:
            cur.execute(self.INSERT_ACCOUNT, params)
            return cur.rowcount == 1

        return self._run(work)

    def get_account(self, account_id: str) -> AccountRow | None:
        rows = self._run(
            lambda cur: _rows(cur, SELECT_ACCOUNT, {"account_id": account_id}), write=False
        )
        return _account(rows[0]) if rows else None

    def list_accounts(self) -> list[AccountRow]:
        rows = self._run(lambda cur: _rows(cur, SELECT_ACCOUNTS), write=False)
        return [_account(row) for row in rows]

    def set_account_active(self, account_id: str, active: bool) -> bool:
        params = {"account_id": account_id, "active": to_flag(active, "active")}

        def work(cur: Cursor) -> bool:
            if not _rows(cur, SELECT_ACCOUNT, {"account_id": account_id}):
                return False
            cur.execute(SET_ACCOUNT_ACTIVE, params)
            return True

        return self._run(work)

    def add_tag(self, tag_uid: str, account_id: str) -> bool:
        params = {
            "tag_uid": to_tag_uid(tag_uid),
            "account_id": to_identifier(account_id, "account id"),
            "created_at": self._time(now_utc()),
        }

        def work(cur: Cursor) -> bool:
            _usable_account(cur, params["account_id"])
            cur.execute(self.INSERT_TAG, params)
            return cur.rowcount == 1

        return self._run(work)

    def get_tag(self, tag_uid: str) -> TagRow | None:
        uid = _uid_or_none(tag_uid)
        if uid is None:
            return None
        rows = self._run(lambda cur: _rows(cur, SELECT_TAG, {"tag_uid": uid}), write=False)
        return _tag(rows[0]) if rows else None

    def find_tag(self, tag_uid: str) -> tuple[TagRow, AccountRow] | None:
        uid = _uid_or_none(tag_uid)
        if uid is None:
            return None
        rows = self._run(
            lambda cur: _rows(cur, SELECT_TAG_AND_ACCOUNT, {"tag_uid": uid}), write=False
        )
        return (_tag(rows[0][:4]), _account(rows[0][4:])) if rows else None

    def list_tags(self, account_id: str | None = None) -> list[TagRow]:
        if account_id is None:
            rows = self._run(lambda cur: _rows(cur, SELECT_TAGS), write=False)
        else:
            params = {"account_id": account_id}
            rows = self._run(lambda cur: _rows(cur, SELECT_ACCOUNT_TAGS, params), write=False)
        return [_tag(row) for row in rows]

    def set_tag_active(self, tag_uid: str, active: bool) -> bool:
        uid = _uid_or_none(tag_uid)
        if uid is None:
            return False
        params = {"tag_uid": uid, "active": to_flag(active, "active")}

        def work(cur: Cursor) -> bool:
            if not _rows(cur, SELECT_TAG, {"tag_uid": uid}):
                return False
            cur.execute(SET_TAG_ACTIVE, params)
            return True

        return self._run(work)

    # -- charging sessions ----------------------------------------------------------------

    def save_sessions(self, rows: Iterable[SessionRow]) -> None:
        # every row checked before the database is used
        self._save(self.UPSERT_SESSION, [(r.session_id, self._session_params(r)) for r in rows],
                   self.UPSERT_SESSION_MANY)

    def _session_params(self, row: SessionRow) -> dict[str, Any]:
        try:
            if row.status not in SESSION_STATUSES:
                raise StoreRefused(
                    f"unknown status {row.status!r} (one of {', '.join(SESSION_STATUSES)})"
                )
            return {
                "session_id": row.session_id,
                "request_id": row.request_id,
                "cp_id": row.cp_id,
                "driver_id": row.driver_id,
                "price_eur_kwh": to_decimal(row.price_eur_kwh, "price_eur_kwh"),
                "started_at": self._time(row.started_at),
                "ended_at": None if row.ended_at is None else self._time(row.ended_at),
                "kwh": to_decimal(row.kwh, "kwh", ENERGY_DIGITS),
                "amount_eur": to_decimal(row.amount_eur, "amount_eur", ENERGY_DIGITS),
                "status": row.status,
                "end_reason": row.end_reason,
                "ticket_sent": 1 if row.ticket_sent else 0,
                "last_seq": to_count(row.last_seq, "last_seq"),
                "engine_final": 1 if row.engine_final else 0,
                "corrected": 1 if row.corrected else 0,
                "tag_uid": None if row.tag_uid is None else to_stored_uid(row.tag_uid),
                "account_id": (
                    None if row.account_id is None else to_identifier(row.account_id, "account_id")
                ),
                "version": to_version(row.version, "version"),
            }
        except StoreRefused as exc:
            raise exc.for_row(row.session_id) from None

    def get_session(self, session_id: str) -> SessionRow | None:
        rows = self._run(
            lambda cur: _rows(cur, SELECT_SESSION, {"session_id": session_id}), write=False
        )
        return _session(rows[0]) if rows else None

    def load_open_sessions(self) -> list[SessionRow]:
        return self._sessions(SELECT_OPEN_SESSIONS, OPEN_PARAMS)

    def load_unsent_tickets(self) -> list[SessionRow]:
        return self._sessions(SELECT_UNSENT_TICKETS, UNSENT_PARAMS)

    def list_sessions(
        self, cp_id: str | None = None, driver_id: str | None = None, limit: int = 100
    ) -> list[SessionRow]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an integer >= 0, not {limit!r}")
        conditions, params = [], {"limit": limit}
        if cp_id is not None:
            conditions.append("cp_id = :cp_id")
            params["cp_id"] = cp_id
        if driver_id is not None:
            conditions.append("driver_id = :driver_id")
            params["driver_id"] = driver_id
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        return self._sessions(
            f"{_SELECT_SESSIONS}{where}"
            " ORDER BY started_at DESC, session_id DESC LIMIT :limit",
            params,
        )

    def sessions_of_account(self, account_id: str, start: datetime | None = None,
                            end: datetime | None = None) -> list[SessionRow]:
        sql, params = self._account_sessions_query(account_id, start, end)
        return self._sessions(sql, params)

    # -- pages for Central's API ------------------------------------------------------------

    def list_sessions_page(self, cp_id: str | None = None, driver_id: str | None = None,
                           after: str | None = None, limit: int = 100) -> list[SessionRow]:
        conditions, params = [], {"limit": to_count(limit, "limit")}
        if cp_id is not None:
            conditions.append("cp_id = :cp_id")
            params["cp_id"] = cp_id
        if driver_id is not None:
            conditions.append("driver_id = :driver_id")
            params["driver_id"] = driver_id
        if after is not None:
            conditions.append(
                "(started_at < (SELECT started_at FROM charging_sessions WHERE session_id = :after)"
                " OR (started_at = (SELECT started_at FROM charging_sessions WHERE session_id = :after)"
                " AND session_id < :after))")
            params["after"] = after
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        return self._sessions(
            f"{_SELECT_SESSIONS}{where} ORDER BY started_at DESC, session_id DESC LIMIT :limit", params)

    def list_drivers_page(self, after: str | None = None, limit: int = 100) -> list[DriverRow]:
        params = {"after": after or "", "limit": to_count(limit, "limit")}
        rows = self._run(lambda cur: _rows(cur, SELECT_DRIVERS_PAGE, params), write=False)
        return [DriverRow(driver_id=driver_id, name=name, registered_at=from_time(registered_at),
                          account_id=account_id)
                for driver_id, name, registered_at, account_id in rows]

    def list_accounts_page(self, after: str | None = None, limit: int = 100) -> list[AccountRow]:
        params = {"after": after or "", "limit": to_count(limit, "limit")}
        return [_account(row) for row in self._run(lambda cur: _rows(cur, SELECT_ACCOUNTS_PAGE, params),
                                                   write=False)]

    def account_statement(self, account_id: str, start: datetime | None = None,
                          end: datetime | None = None) -> AccountStatement | None:
        sql, params = self._account_sessions_query(account_id, start, end)

        def work(cur: Cursor) -> AccountStatement | None:
            accounts = _rows(cur, SELECT_ACCOUNT, {"account_id": account_id})
            if not accounts:
                return None
            sessions = tuple(_session(row) for row in _rows(cur, sql, params))
            return AccountStatement(_account(accounts[0]), start, end, sessions)

        return self._run(work, write=False)

    def _account_sessions_query(self, account_id: str, start: datetime | None,
                                end: datetime | None) -> tuple[str, dict[str, Any]]:
        """Served by ix_charging_sessions_account_id (account_id, started_at)."""
        sql, params = SELECT_ACCOUNT_SESSIONS, {"account_id": account_id}
        if start is not None:
            sql += " AND started_at >= :start"
            params["start"] = self._time(start)
        if end is not None:
            sql += " AND started_at < :end"
            params["end"] = self._time(end)
        return sql + ACCOUNT_SESSIONS_ORDER, params

    def _sessions(self, sql: str, params: Mapping[str, Any]) -> list[SessionRow]:
        rows = self._run(lambda cur: _rows(cur, sql, params), write=False)
        return [_session(row) for row in rows]

    # -- rows the database refused --------------------------------------------------------

    # -- registrations, keys, audit (schema version 5) ---------------------------------------

    #: Per backend: the head of the audit chain, read for update (locks it until commit).
    LOCK_AUDIT_HEAD: str

    def register_cp(self, cp_id: str, location: str, price_eur_kwh, credential_hash: str) -> bool:
        params = {
            "cp_id": to_identifier(cp_id, "cp id"),
            "location": to_text(location, "location", LOCATION_MAX),
            "price_eur_kwh": to_decimal(price_eur_kwh, "price_eur_kwh"),
            "credential_hash": to_text(credential_hash, "credential hash", CREDENTIAL_HASH_MAX),
            "registered_at": self._time(now_utc()),
        }

        def work(cur: Cursor) -> bool:
            if _rows(cur, SELECT_REGISTRATION, {"cp_id": cp_id}):
                cur.execute(UPDATE_REGISTRATION, params)
                return False
            cur.execute(INSERT_REGISTRATION, params)
            return True

        return self._run(work)

    def deregister_cp(self, cp_id: str) -> bool:
        def work(cur: Cursor) -> bool:
            cur.execute(DEREGISTER, {"cp_id": cp_id, "at": self._time(now_utc())})
            return cur.rowcount == 1

        return self._run(work)

    def get_registration(self, cp_id: str) -> RegistrationRow | None:
        rows = self._run(lambda cur: _rows(cur, SELECT_REGISTRATION, {"cp_id": cp_id}), write=False)
        return _registration(rows[0]) if rows else None

    def get_registrations(self, cp_ids: Sequence[str]) -> dict[str, RegistrationRow]:
        found: dict[str, RegistrationRow] = {}
        wanted = sorted(set(cp_ids))
        for start in range(0, len(wanted), REGISTRATIONS_PER_READ):
            where, params = _in("cp", wanted[start:start + REGISTRATIONS_PER_READ])
            rows = self._run(lambda cur: _rows(cur, f"{SELECT_SOME_REGISTRATIONS} {where}", params), write=False)
            found.update((row.cp_id, row) for row in map(_registration, rows))
        return found

    def list_registrations(self) -> list[RegistrationRow]:
        return [_registration(row) for row in self._run(lambda cur: _rows(cur, SELECT_REGISTRATIONS), write=False)]

    def issue_cp_key(self, cp_id: str, seal: Callable[[int], str], *, keep_current: bool = False) -> CPKeyRow:
        cp_id = to_identifier(cp_id, "cp id")
        at = now_utc()

        def work(cur: Cursor) -> CPKeyRow:
            if keep_current:
                current = _rows(cur, SELECT_CURRENT_KEY, {"cp_id": cp_id})
                if current:
                    return _key(current[0])
            last = _rows(cur, SELECT_LAST_KEY_VERSION, {"cp_id": cp_id})[0][0]
            version = int(last or 0) + 1
            key_sealed = to_text(seal(version), "sealed key", KEY_SEALED_MAX)
            cur.execute(INSERT_KEY, {"cp_id": cp_id, "key_sealed": key_sealed, "version": version,
                                     "issued_at": self._time(at)})
            return CPKeyRow(cp_id, version, key_sealed, at)

        return self._run(work)

    def current_cp_key(self, cp_id: str) -> CPKeyRow | None:
        rows = self._run(lambda cur: _rows(cur, SELECT_CURRENT_KEY, {"cp_id": cp_id}), write=False)
        return _key(rows[0]) if rows else None

    def load_cp_keys(self) -> list[CPKeyRow]:
        return [_key(row) for row in self._run(lambda cur: _rows(cur, SELECT_LIVE_KEYS), write=False)]

    def revoke_cp_keys(self, cp_id: str) -> int:
        def work(cur: Cursor) -> int:
            cur.execute(REVOKE_KEYS, {"cp_id": cp_id, "at": self._time(now_utc())})
            return cur.rowcount

        return self._run(work)

    def append_audit(self, entries: Iterable[AuditEntry]) -> list[AuditRow]:
        entries = [_audit_entry(entry) for entry in entries]
        if not entries:
            return []

        def work(cur: Cursor) -> list[AuditRow]:
            head = _rows(cur, self.LOCK_AUDIT_HEAD)
            if not head:
                raise StoreError("the audit log has no head row (audit_head): the schema is damaged")
            seq, prev = int(head[0][0]), head[0][1]
            appended, params = [], []
            for entry in entries:
                seq += 1
                digest = entry_hash(prev, seq, entry)
                params.append({
                    "seq": seq, "at": self._time(entry.at), "actor": entry.actor, "source_ip": entry.source_ip,
                    "action": entry.action, "details": entry.details, "outcome": entry.outcome,
                    "prev_hash": prev, "hash": digest})
                appended.append(AuditRow(seq, entry, prev, digest))
                prev = digest
            if params:
                cur.executemany(INSERT_AUDIT, params)  # one statement for the batch
            cur.execute(UPDATE_AUDIT_HEAD, {"seq": seq, "hash": prev})
            return appended

        return self._run(work)

    def list_audit(self, since: datetime | None = None, action: str | None = None,
                   after_seq: int = 0, limit: int = 1000) -> list[AuditRow]:
        where, params = ["seq > :after"], {"after": after_seq, "limit": to_count(limit, "limit")}
        if since is not None:
            where.append("at >= :since")
            params["since"] = self._time(since)
        if action:
            if action.endswith("."):  # a family: "key." is key.issue, key.revoke...
                where.append("SUBSTR(action, 1, :action_len) = :action")
                params["action"], params["action_len"] = action, len(action)
            else:
                where.append("action = :action")
                params["action"] = action
        sql = f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq LIMIT :limit"
        return [_audit_row(row) for row in self._run(lambda cur: _rows(cur, sql, params), write=False)]

    def list_audit_before(self, before_seq: int, action: str | None = None, limit: int = 100) -> list[AuditRow]:
        """(newest first in SQL, served by the primary key or ix_audit_log_action; oldest first
        in the answer)"""
        where, params = ["seq < :before"], {"before": to_count(before_seq, "before_seq"),
                                            "limit": to_count(limit, "limit")}
        if action and action.endswith("."):  # a family, as list_audit takes it
            where.append("SUBSTR(action, 1, :action_len) = :action")
            params["action"], params["action_len"] = action, len(action)
        elif action:
            where.append("action = :action")
            params["action"] = action
        sql = f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT :limit"
        return [_audit_row(row) for row in reversed(self._run(lambda cur: _rows(cur, sql, params), write=False))]

    def audit_head(self) -> tuple[int, str]:
        rows = self._run(lambda cur: _rows(cur, SELECT_AUDIT_HEAD), write=False)
        return (int(rows[0][0]), rows[0][1]) if rows else (0, GENESIS)

    def add_rejected(self, kind: str, row_id: str, reason: str, row_json: str,
                     at: datetime | None = None) -> None:
        if kind not in REJECTED_KINDS:
            raise ValueError(f"kind must be one of {', '.join(REJECTED_KINDS)}, not {kind!r}")
        params = {
            "at": self._time(at if at is not None else now_utc()),
            "kind": kind,
            "row_id": storable(row_id, REJECTED_ROW_ID_MAX),
            "reason": storable(reason, REJECTED_REASON_MAX),
            "row_json": storable(row_json, REJECTED_JSON_MAX),
        }
        self._run(lambda cur: cur.execute(INSERT_REJECTED, params))

    def list_rejected(self, limit: int = 100) -> list[RejectedRow]:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an integer >= 0, not {limit!r}")
        rows = self._run(lambda cur: _rows(cur, SELECT_REJECTED, {"limit": limit}), write=False)
        return [
            RejectedRow(id=int(id_), at=from_time(at), kind=kind, row_id=row_id, reason=reason,
                        row_json=row_json)
            for id_, at, kind, row_id, reason, row_json in rows
        ]

    # -- weather alerts (schema version 6) ------------------------------------------------

    def load_weather_alerts(self) -> list[WeatherAlertRow]:
        rows = self._run(lambda cur: _rows(cur, SELECT_WEATHER_ALERTS), write=False)
        return [
            WeatherAlertRow(city, tuple(c for c in cp_ids.split(",") if c), from_decimal(temperature),
                            from_time(since))
            for city, cp_ids, temperature, since in rows
        ]

    def save_weather_alert(self, row: WeatherAlertRow) -> None:
        city = to_text(row.city, "city", WEATHER_CITY_MAX)
        if not city.strip():
            raise StoreRefused("a weather alert's city is empty")
        cp_ids = list(row.cp_ids)
        if len(cp_ids) > WEATHER_CPS_MAX:
            raise StoreRefused(f"a weather alert holds at most {WEATHER_CPS_MAX} CPs, not {len(cp_ids)}")
        params = {
            "city": city,
            "cp_ids": ",".join(to_identifier(cp_id, "cp id") for cp_id in cp_ids),
            "temperature": to_decimal(row.temperature, "temperature"),
            "since": self._time(row.since),
        }

        def work(cur: Cursor) -> None:  # the same on both backends: no dialect's upsert
            cur.execute(DELETE_WEATHER_ALERT, {"city": city})
            cur.execute(INSERT_WEATHER_ALERT, params)

        try:
            self._run(work)
        except StoreRefused as exc:
            raise exc.for_row(city) from None

    def delete_weather_alert(self, city: str) -> bool:
        def work(cur: Cursor) -> bool:
            cur.execute(DELETE_WEATHER_ALERT, {"city": city})
            return cur.rowcount > 0

        return self._run(work)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


# -- migration steps ------------------------------------------------------------------------
# Neither SQLite nor MySQL has ADD COLUMN IF NOT EXISTS (nor MySQL CREATE INDEX IF NOT
# EXISTS), and MySQL's DDL is not transactional: a version whose DDL ran but whose
# schema_version row was never written is applied again. These steps make that harmless.


def add_column(exists_sql: str, table: str, column: str, definition: str) -> Step:
    """Add ``column`` to ``table`` unless ``exists_sql`` (params: table, column) finds it."""

    def step(cur: Cursor) -> None:
        if not _rows(cur, exists_sql, {"table": table, "column": column}):
            cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    return step


def create_index(exists_sql: str, table: str, index: str, columns: str) -> Step:
    """Create ``index`` on ``table (columns)`` unless ``exists_sql`` (params: table, index)
    finds it."""

    def step(cur: Cursor) -> None:
        if not _rows(cur, exists_sql, {"table": table, "index": index}):
            cur.execute(f"CREATE INDEX {index} ON {table} ({columns})")

    return step


def _usable_account(cur: Cursor, account_id: str) -> None:
    """``UnknownAccount`` or ``AccountDisabled`` unless ``account_id`` is an active account."""
    rows = _rows(cur, SELECT_ACCOUNT, {"account_id": account_id})
    if not rows:
        raise UnknownAccount(account_id)
    if not _account(rows[0]).active:
        raise AccountDisabled(account_id)


def _account(row: Sequence[Any]) -> AccountRow:
    account_id, name, kind, active, created_at = row
    return AccountRow(account_id=account_id, name=name, kind=kind, active=bool(active),
                      created_at=from_time(created_at))


def _registration(row: Sequence[Any]) -> RegistrationRow:
    cp_id, location, price, credential_hash, registered_at, deregistered_at = row
    return RegistrationRow(cp_id, location, from_decimal(price), credential_hash, from_time(registered_at),
                           from_time(deregistered_at) if deregistered_at is not None else None)


def _key(row: Sequence[Any]) -> CPKeyRow:
    cp_id, version, key_sealed, issued_at, revoked_at = row
    return CPKeyRow(cp_id, int(version), key_sealed, from_time(issued_at),
                    from_time(revoked_at) if revoked_at is not None else None)


def _audit_entry(entry: AuditEntry) -> AuditEntry:
    """The entry as it will be stored (and hashed): texts cut to their columns, printable."""
    return AuditEntry(
        at=utc(entry.at),
        actor=_printable(entry.actor, AUDIT_ACTOR_MAX),
        source_ip=_printable(entry.source_ip, AUDIT_SOURCE_MAX),
        action=_printable(entry.action, AUDIT_ACTION_MAX),
        details=_printable(entry.details, AUDIT_DETAILS_MAX),
        outcome=_printable(entry.outcome, AUDIT_OUTCOME_MAX),
    )


def _printable(text: Any, limit: int) -> str:
    text = storable(text, 10 * limit)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def _audit_row(row: Sequence[Any]) -> AuditRow:
    seq, at, actor, source_ip, action, details, outcome, prev_hash, digest = row
    return AuditRow(int(seq), AuditEntry(from_time(at), actor, source_ip, action, details, outcome),
                    prev_hash, digest)


def _tag(row: Sequence[Any]) -> TagRow:
    tag_uid, account_id, active, created_at = row
    return TagRow(tag_uid=tag_uid, account_id=account_id, active=bool(active),
                  created_at=from_time(created_at))


def _uid_or_none(text: Any) -> str | None:
    try:
        return normalise_tag_uid(text)
    except ValueError:
        return None


def _session(row: Sequence[Any]) -> SessionRow:
    (session_id, request_id, cp_id, driver_id, price, started_at, ended_at, kwh, amount,
     status, end_reason, ticket_sent, last_seq, engine_final, corrected, tag_uid, account_id,
     version) = row  # fmt: skip
    return SessionRow(
        session_id=session_id,
        request_id=request_id,
        cp_id=cp_id,
        driver_id=driver_id,
        price_eur_kwh=from_decimal(price),
        started_at=from_time(started_at),
        ended_at=None if ended_at is None else from_time(ended_at),
        kwh=from_decimal(kwh),
        amount_eur=from_decimal(amount),
        status=status,
        end_reason=end_reason,
        ticket_sent=bool(ticket_sent),
        last_seq=int(last_seq),
        engine_final=bool(engine_final),
        corrected=bool(corrected),
        version=int(version),
        tag_uid=tag_uid,
        account_id=account_id,
    )


def _rows(cur: Cursor, sql: str, params: Mapping[str, Any] | None = None) -> list[Sequence[Any]]:
    if params is None:
        cur.execute(sql)
    else:
        cur.execute(sql, params)
    return list(cur.fetchall())


def _column(cur: Cursor, sql: str) -> list[Any]:
    return [row[0] for row in _rows(cur, sql)]
