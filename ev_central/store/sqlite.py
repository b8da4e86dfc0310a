"""The embedded backend: one SQLite file through the standard ``sqlite3`` module.

One connection, shared by every thread under a lock; WAL journal, a busy timeout so
that a second process waits instead of failing, foreign keys on. Times are stored as
ISO-8601 UTC text with microseconds (``2025-01-31T12:00:00.123456+00:00``), money as
decimal text (``0.3500``), so nothing goes through a float.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Callable

from ev_central.core.audit import GENESIS
from ev_central.core.entities import DEFAULT_ACCOUNT_KIND, TAG_UID_LENGTHS, WEATHER_CITY_MAX

from .base import REJECTED_KINDS, StoreError, StoreRefused, StoreUnavailable
from .sql import (
    SELECT_AUDIT_HEAD,
    ACCOUNT_NAME_MAX,
    CP_COLUMNS,
    CP_STATES_SQL,
    INSERT_CP,
    INSERT_SESSION,
    REJECTED_JSON_MAX,
    REJECTED_REASON_MAX,
    REJECTED_ROW_ID_MAX,
    SESSION_COLUMNS,
    SESSION_STATUSES_SQL,
    TAG_UID_MAX,
    WEATHER_CP_IDS_MAX,
    Cursor,
    SQLStore,
    T,
    add_column,
    sql_list,
)

BUSY_TIMEOUT_MS = 5000
#: How long a caller waits for the store's lock (another thread's call) before it gets
#: StoreUnavailable("database busy"): the busy timeout plus a margin.
LOCK_TIMEOUT_S = 10.0

# The text form of "now" used in column defaults: the same shape as TIME_FORMAT.
_NOW = "(strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000+00:00')"

_DDL_V1 = (
    f"""CREATE TABLE IF NOT EXISTS charging_points (
    cp_id TEXT NOT NULL PRIMARY KEY CHECK (length(cp_id) <= 64),
    location TEXT NOT NULL CHECK (length(location) <= 200),
    price_eur_kwh TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'DESCONECTADO'
        CONSTRAINT ck_charging_points_state CHECK (state IN ({CP_STATES_SQL})),
    stopped INTEGER NOT NULL DEFAULT 0 CHECK (stopped IN (0, 1)),
    updated_at TEXT NOT NULL DEFAULT {_NOW},
    created_at TEXT NOT NULL DEFAULT {_NOW}
)""",
    f"""CREATE TABLE IF NOT EXISTS drivers (
    driver_id TEXT NOT NULL PRIMARY KEY CHECK (length(driver_id) <= 64),
    name TEXT NOT NULL DEFAULT '' CHECK (length(name) <= 100),
    registered_at TEXT NOT NULL DEFAULT {_NOW}
)""",
    f"""CREATE TABLE IF NOT EXISTS charging_sessions (
    session_id TEXT NOT NULL PRIMARY KEY CHECK (length(session_id) <= 64),
    cp_id TEXT NOT NULL CHECK (length(cp_id) <= 64),
    driver_id TEXT NOT NULL CHECK (length(driver_id) <= 64),
    price_eur_kwh TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT NULL,
    kwh TEXT NOT NULL DEFAULT '0.0000',
    amount_eur TEXT NOT NULL DEFAULT '0.0000',
    status TEXT NOT NULL
        CONSTRAINT ck_charging_sessions_status CHECK (status IN ({SESSION_STATUSES_SQL})),
    end_reason TEXT NULL CHECK (length(end_reason) <= 200),
    ticket_sent INTEGER NOT NULL DEFAULT 0 CHECK (ticket_sent IN (0, 1)),
    last_seq INTEGER NOT NULL DEFAULT 0
)""",
    "CREATE INDEX IF NOT EXISTS ix_charging_sessions_cp_id ON charging_sessions (cp_id)",
    "CREATE INDEX IF NOT EXISTS ix_charging_sessions_driver_id ON charging_sessions (driver_id)",
)

_COLUMN_EXISTS = "SELECT 1 FROM pragma_table_info(:table) WHERE name = :column"

_DDL_V2 = (
    add_column(
        _COLUMN_EXISTS,
        "charging_sessions",
        "request_id",
        "TEXT NOT NULL DEFAULT '' CHECK (length(request_id) <= 64)",
    ),
    "CREATE INDEX IF NOT EXISTS ix_charging_sessions_status"
    " ON charging_sessions (status, ticket_sent, started_at)",
)


_DDL_V3 = (
    add_column(_COLUMN_EXISTS, "charging_points", "version", "INTEGER NOT NULL DEFAULT 0"),
    add_column(_COLUMN_EXISTS, "charging_sessions", "version", "INTEGER NOT NULL DEFAULT 0"),
    add_column(
        _COLUMN_EXISTS,
        "charging_sessions",
        "engine_final",
        "INTEGER NOT NULL DEFAULT 0 CHECK (engine_final IN (0, 1))",
    ),
    add_column(
        _COLUMN_EXISTS,
        "charging_sessions",
        "corrected",
        "INTEGER NOT NULL DEFAULT 0 CHECK (corrected IN (0, 1))",
    ),
    f"""CREATE TABLE IF NOT EXISTS rejected_rows (
    id INTEGER NOT NULL PRIMARY KEY,
    at TEXT NOT NULL DEFAULT {_NOW},
    kind TEXT NOT NULL CONSTRAINT ck_rejected_rows_kind CHECK (kind IN ({sql_list(REJECTED_KINDS)})),
    row_id TEXT NOT NULL CHECK (length(row_id) <= {REJECTED_ROW_ID_MAX}),
    reason TEXT NOT NULL CHECK (length(reason) <= {REJECTED_REASON_MAX}),
    row_json TEXT NOT NULL CHECK (length(row_json) <= {REJECTED_JSON_MAX})
)""",
)


# A UID: upper-case hex digits (GLOB is case-sensitive), of one of the accepted lengths.
_UID_CHECK = (
    f"length(tag_uid) IN ({', '.join(map(str, TAG_UID_LENGTHS))})"
    " AND tag_uid NOT GLOB '*[^0-9A-F]*'"
)

_DDL_V4 = (
    f"""CREATE TABLE IF NOT EXISTS accounts (
    account_id TEXT NOT NULL PRIMARY KEY CHECK (length(account_id) <= 64),
    name TEXT NOT NULL DEFAULT '' CHECK (length(name) <= {ACCOUNT_NAME_MAX}),
    kind TEXT NOT NULL DEFAULT '{DEFAULT_ACCOUNT_KIND}' CHECK (length(kind) <= 32),
    active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    created_at TEXT NOT NULL DEFAULT {_NOW}
)""",
    f"""CREATE TABLE IF NOT EXISTS rfid_tags (
    tag_uid TEXT NOT NULL PRIMARY KEY CONSTRAINT ck_rfid_tags_uid CHECK ({_UID_CHECK}),
    account_id TEXT NOT NULL CHECK (length(account_id) <= 64),
    active INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    created_at TEXT NOT NULL DEFAULT {_NOW}
)""",
    "CREATE INDEX IF NOT EXISTS ix_rfid_tags_account_id ON rfid_tags (account_id, tag_uid)",
    add_column(
        _COLUMN_EXISTS, "drivers", "account_id", "TEXT NULL CHECK (length(account_id) <= 64)"
    ),
    "CREATE INDEX IF NOT EXISTS ix_drivers_account_id ON drivers (account_id)",
    add_column(
        _COLUMN_EXISTS,
        "charging_sessions",
        "tag_uid",
        f"TEXT NULL CHECK (length(tag_uid) <= {TAG_UID_MAX})",
    ),
    add_column(
        _COLUMN_EXISTS,
        "charging_sessions",
        "account_id",
        "TEXT NULL CHECK (length(account_id) <= 64)",
    ),
    "CREATE INDEX IF NOT EXISTS ix_charging_sessions_account_id"
    " ON charging_sessions (account_id, started_at)",
)


_DDL_V5 = (
    f"""CREATE TABLE IF NOT EXISTS cp_registrations (
    cp_id TEXT NOT NULL PRIMARY KEY CHECK (length(cp_id) <= 64),
    location TEXT NOT NULL CHECK (length(location) <= 200),
    price_eur_kwh TEXT NOT NULL,
    credential_hash TEXT NULL CHECK (length(credential_hash) <= 255),
    registered_at TEXT NOT NULL DEFAULT {_NOW},
    deregistered_at TEXT NULL
)""",
    """CREATE TABLE IF NOT EXISTS cp_keys (
    cp_id TEXT NOT NULL CHECK (length(cp_id) <= 64),
    version INTEGER NOT NULL CHECK (version >= 1),
    key_sealed TEXT NOT NULL CHECK (length(key_sealed) <= 200),
    issued_at TEXT NOT NULL,
    revoked_at TEXT NULL,
    PRIMARY KEY (cp_id, version)
)""",
    """CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER NOT NULL PRIMARY KEY CHECK (seq >= 1),
    at TEXT NOT NULL,
    actor TEXT NOT NULL CHECK (length(actor) <= 100),
    source_ip TEXT NOT NULL DEFAULT '' CHECK (length(source_ip) <= 64),
    action TEXT NOT NULL CHECK (length(action) <= 64),
    details TEXT NOT NULL DEFAULT '' CHECK (length(details) <= 1000),
    outcome TEXT NOT NULL CHECK (length(outcome) <= 32),
    prev_hash TEXT NOT NULL CHECK (length(prev_hash) = 64),
    hash TEXT NOT NULL CHECK (length(hash) = 64)
)""",
    "CREATE INDEX IF NOT EXISTS ix_audit_log_at ON audit_log (at)",
    "CREATE INDEX IF NOT EXISTS ix_audit_log_action ON audit_log (action, seq)",
    """CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL,
    last_hash TEXT NOT NULL CHECK (length(last_hash) = 64)
)""",
    f"INSERT OR IGNORE INTO audit_head (id, last_seq, last_hash) VALUES (1, 0, '{GENESIS}')",
)


_DDL_V6 = (
    f"""CREATE TABLE IF NOT EXISTS weather_alerts (
    city TEXT NOT NULL PRIMARY KEY CHECK (length(city) BETWEEN 1 AND {WEATHER_CITY_MAX}),
    cp_ids TEXT NOT NULL CHECK (length(cp_ids) <= {WEATHER_CP_IDS_MAX}),
    temperature TEXT NOT NULL,
    since TEXT NOT NULL
)""",
)


# The API's pages of sessions, newest first (ORDER BY started_at DESC, session_id DESC).
_DDL_V7 = (
    "CREATE INDEX IF NOT EXISTS ix_charging_sessions_started ON charging_sessions (started_at, session_id)",
)


def _keep_newer(table: str, columns: tuple[str, ...]) -> str:
    """The upsert's update of every column but the key, only by a row of the same or a
    higher version."""
    return (
        f"ON CONFLICT ({columns[0]}) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
        + f" WHERE excluded.version >= {table}.version"
    )


class SQLiteStore(SQLStore):
    """Central's store in one SQLite file (created, with its directory, if missing)."""

    TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"
    SCHEMA_VERSION_DDL = f"""CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    applied_at TEXT NOT NULL DEFAULT {_NOW}
)"""
    DDL = {1: _DDL_V1, 2: _DDL_V2, 3: _DDL_V3, 4: _DDL_V4, 5: _DDL_V5, 6: _DDL_V6, 7: _DDL_V7}
    LOCK_AUDIT_HEAD = SELECT_AUDIT_HEAD  # BEGIN IMMEDIATE already holds the write lock
    UPSERT_CP = f"{INSERT_CP}\n{_keep_newer('charging_points', CP_COLUMNS)}"
    INSERT_DRIVER = """INSERT INTO drivers (driver_id, name, registered_at)
VALUES (:driver_id, :name, :registered_at)
ON CONFLICT (driver_id) DO NOTHING"""
    INSERT_ACCOUNT = """INSERT INTO accounts (account_id, name, kind, active, created_at)
VALUES (:account_id, :name, :kind, 1, :created_at)
ON CONFLICT (account_id) DO NOTHING"""
    INSERT_TAG = """INSERT INTO rfid_tags (tag_uid, account_id, active, created_at)
VALUES (:tag_uid, :account_id, 1, :created_at)
ON CONFLICT (tag_uid) DO NOTHING"""
    UPSERT_SESSION = f"{INSERT_SESSION}\n{_keep_newer('charging_sessions', SESSION_COLUMNS)}"

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = LOCK_TIMEOUT_S) -> None:
        super().__init__(lock_timeout)
        self.path = Path(path).expanduser().absolute()
        self.description = f"SQLite {self.path}"
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,  # shared by threads, serialised by self._lock
                isolation_level=None,  # transactions are begun and ended explicitly
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open the SQLite database {self.path}: {exc}") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreUnavailable(f"cannot use the SQLite database {self.path}: {exc}") from None
        return conn

    def _run(self, work: Callable[[Cursor], T], *, write: bool = True) -> T:
        with self._locked():
            self._check_open()
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                result = work(conn.cursor())
                conn.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                self._rollback()
                raise self._error(exc) from None
            except (UnicodeError, OverflowError) as exc:  # a value sqlite3 cannot bind
                self._rollback()
                raise StoreRefused(f"{self.description}: {exc}") from None
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _error(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        busy = ("locked", "busy", "unable to open", "disk i/o error", "readonly database")
        if isinstance(exc, sqlite3.OperationalError) and any(w in text.lower() for w in busy):
            return StoreUnavailable(f"{self.description}: {text}")
        # The data itself: a CHECK, NOT NULL or UNIQUE constraint (IntegrityError), a
        # value too big (DataError, "string or blob too big"), a value it cannot bind.
        if (
            isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError))
            or "too big" in text.lower()
            or (isinstance(exc, (sqlite3.InterfaceError, sqlite3.ProgrammingError))
                and "binding parameter" in text.lower())
        ):
            return StoreRefused(text, errno=getattr(exc, "sqlite_errorcode", None))
        return StoreError(f"{self.description}: {text}")

    def close(self) -> None:
        with self._lock:  # waits for a call in progress: closing is never refused
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
