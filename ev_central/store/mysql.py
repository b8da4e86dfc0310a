"""The server backend: MySQL (8.0.16+) or MariaDB (10.2+) through mysql-connector-python.

One connection, shared by every thread under a lock, opened on first use. Autocommit is
off: each call is one transaction, committed or rolled back before the lock is released.
A connection that fails (server restarted, connection killed, network cut) is dropped
and a new one is opened by the next call; a call that finds its reused connection dead
before anything was committed is retried once on a new connection, so a stale
connection is replaced transparently.

Nothing waits without a bound (docs/schema.md, "timeouts"): connecting
(``connect_timeout``), each read and write on the socket (``io_timeout``), each
statement on the server (``statement_timeout``: MariaDB's ``max_statement_time``,
MySQL's ``max_execution_time`` for SELECTs; row locks wait at most
``innodb_lock_wait_timeout``) and the wait for the connection, held by another thread's
call (``lock_timeout``). After a call finds the database unreachable, a circuit breaker
(``breaker.py``) makes the following calls fail at once until one probe call finds it
back.

The session runs in UTC (``time_zone = '+00:00'``) so ``CURRENT_TIMESTAMP(6)`` defaults
are UTC too, and with strict SQL mode so that a value that does not fit is refused, as
SQLite's CHECKs refuse it.
"""

from __future__ import annotations

import logging
import math
import re
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import mysql.connector
from mysql.connector import errorcode, errors
from mysql.connector.constants import ClientFlag

from ev_central.core.audit import GENESIS
from ev_central.core.entities import DEFAULT_ACCOUNT_KIND, TAG_UID_LENGTHS, WEATHER_CITY_MAX
from ev_common.retry import Backoff

from .base import REJECTED_KINDS, StoreError, StoreRefused, StoreUnavailable
from .breaker import CircuitBreaker
from .sql import (
    SELECT_AUDIT_HEAD,
    ACCOUNT_NAME_MAX,
    CP_COLUMNS,
    CP_STATES_SQL,
    INSERT_CP,
    INSERT_SESSION,
    REJECTED_REASON_MAX,
    REJECTED_ROW_ID_MAX,
    SESSION_COLUMNS,
    SESSION_STATUSES_SQL,
    TAG_UID_MAX,
    Cursor,
    DatabaseBusy,
    SQLStore,
    T,
    add_column,
    create_index,
    sql_list,
    upsert_assignments,
)
from .url import DatabaseURL, parse_db_url

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5  # connecting, handshake and login included
IO_TIMEOUT_S = 10  # each read and each write on the socket (mysql-connector-python >= 9.2)
LOCK_TIMEOUT_S = 5.0  # the longest a caller waits for the connection held by another call
#: The server's limit on one statement: 80 % of io_timeout unless given, so the server
#: stops a slow statement (and the connection stays usable) before the client gives up.
STATEMENT_TIMEOUT_SHARE = 0.8
BREAKER_INITIAL_S, BREAKER_CAP_S = 1.0, 10.0  # fail-fast period after a failure, doubling
MIGRATION_LOCK_WAIT_S = 10
#: While migrating (DDL on a large table may take minutes): the socket timeouts, and no
#: server statement limit.
MIGRATION_IO_TIMEOUT_S = 600

_TABLE_OPTIONS = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

_DDL_V1 = (
    f"""CREATE TABLE IF NOT EXISTS charging_points (
    cp_id VARCHAR(64) NOT NULL,
    location VARCHAR(200) NOT NULL,
    price_eur_kwh DECIMAL(10,4) NOT NULL,
    state VARCHAR(16) NOT NULL DEFAULT 'DESCONECTADO',
    stopped BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (cp_id),
    CONSTRAINT ck_charging_points_state CHECK (state IN ({CP_STATES_SQL}))
) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS drivers (
    driver_id VARCHAR(64) NOT NULL,
    name VARCHAR(100) NOT NULL DEFAULT '',
    registered_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (driver_id)
) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS charging_sessions (
    session_id VARCHAR(64) NOT NULL,
    cp_id VARCHAR(64) NOT NULL,
    driver_id VARCHAR(64) NOT NULL,
    price_eur_kwh DECIMAL(10,4) NOT NULL,
    started_at DATETIME(6) NOT NULL,
    ended_at DATETIME(6) NULL,
    kwh DECIMAL(12,4) NOT NULL DEFAULT 0,
    amount_eur DECIMAL(12,4) NOT NULL DEFAULT 0,
    status VARCHAR(16) NOT NULL,
    end_reason VARCHAR(200) NULL,
    ticket_sent BOOLEAN NOT NULL DEFAULT FALSE,
    last_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id),
    INDEX ix_charging_sessions_cp_id (cp_id),
    INDEX ix_charging_sessions_driver_id (driver_id),
    CONSTRAINT ck_charging_sessions_status CHECK (status IN ({SESSION_STATUSES_SQL}))
) {_TABLE_OPTIONS}""",
)

_COLUMN_EXISTS = (
    "SELECT 1 FROM information_schema.columns WHERE table_schema = DATABASE()"
    " AND table_name = :table AND column_name = :column"
)
_INDEX_EXISTS = (
    "SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE()"
    " AND table_name = :table AND index_name = :index"
)

_DDL_V2 = (
    add_column(
        _COLUMN_EXISTS, "charging_sessions", "request_id", "VARCHAR(64) NOT NULL DEFAULT ''"
    ),
    create_index(
        _INDEX_EXISTS,
        "charging_sessions",
        "ix_charging_sessions_status",
        "status, ticket_sent, started_at",
    ),
)

# Server errors that mean "the connection or the server is gone or busy", not "bad input".
_UNAVAILABLE_ERRNOS = {
    errorcode.ER_CON_COUNT_ERROR,  # 1040 too many connections
    errorcode.ER_BAD_HOST_ERROR,  # 1042
    errorcode.ER_HANDSHAKE_ERROR,  # 1043
    errorcode.ER_DBACCESS_DENIED_ERROR,  # 1044
    errorcode.ER_ACCESS_DENIED_ERROR,  # 1045
    errorcode.ER_BAD_DB_ERROR,  # 1049 unknown database
    errorcode.ER_SERVER_SHUTDOWN,  # 1053
    errorcode.ER_ABORTING_CONNECTION,  # 1152
    errorcode.ER_NET_READ_ERROR,  # 1158
    errorcode.ER_NET_READ_INTERRUPTED,  # 1159
    errorcode.ER_NET_ERROR_ON_WRITE,  # 1160
    errorcode.ER_NET_WRITE_INTERRUPTED,  # 1161
    errorcode.ER_LOCK_WAIT_TIMEOUT,  # 1205
    errorcode.ER_LOCK_DEADLOCK,  # 1213
    1969,  # MariaDB ER_STATEMENT_TIMEOUT (max_statement_time)
    3024,  # MySQL ER_QUERY_TIMEOUT (max_execution_time); also the connector's read timeout
    1927,  # MariaDB ER_CONNECTION_KILLED
    3169,  # MySQL ER_SESSION_WAS_KILLED
    4031,  # MySQL ER_CLIENT_INTERACTION_TIMEOUT
}
_CONNECTION_ERRORS = (
    errors.InterfaceError,
    errors.OperationalError,
    errors.ConnectionTimeoutError,
    errors.ReadTimeoutError,
    errors.WriteTimeoutError,
    OSError,
)


def _unavailable(exc: BaseException) -> bool:
    errno = getattr(exc, "errno", None) or 0
    return (
        isinstance(exc, _CONNECTION_ERRORS)
        or errno in _UNAVAILABLE_ERRNOS
        or 2000 <= errno < 3000  # client-side errors: CR_CONNECTION_ERROR, CR_SERVER_LOST...
    )


@lru_cache(maxsize=64)
def _pyformat(sql: str) -> str:
    """Shared SQL's ``:name`` parameters as the connector's ``%(name)s``."""
    return re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", sql)


class _Cursor:
    """A connector cursor that takes the shared SQL's ``:name`` parameters."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        if params is None:
            self._cursor.execute(sql)
        else:
            self._cursor.execute(_pyformat(sql), dict(params))

    def executemany(self, sql: str, params: Sequence[Mapping[str, Any]]) -> None:
        """One statement for every row of an ``INSERT ... VALUES``: the connector sends one
        multi-row INSERT (one round trip, the statement parsed once)."""
        self._cursor.executemany(_pyformat(sql), [dict(p) for p in params])

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


_DDL_V3 = (
    add_column(_COLUMN_EXISTS, "charging_points", "version", "BIGINT NOT NULL DEFAULT 0"),
    add_column(_COLUMN_EXISTS, "charging_sessions", "version", "BIGINT NOT NULL DEFAULT 0"),
    add_column(
        _COLUMN_EXISTS, "charging_sessions", "engine_final", "BOOLEAN NOT NULL DEFAULT FALSE"
    ),
    add_column(_COLUMN_EXISTS, "charging_sessions", "corrected", "BOOLEAN NOT NULL DEFAULT FALSE"),
    f"""CREATE TABLE IF NOT EXISTS rejected_rows (
    id BIGINT NOT NULL AUTO_INCREMENT,
    at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    kind VARCHAR(16) NOT NULL,
    row_id VARCHAR({REJECTED_ROW_ID_MAX}) NOT NULL,
    reason VARCHAR({REJECTED_REASON_MAX}) NOT NULL,
    row_json TEXT NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT ck_rejected_rows_kind CHECK (kind IN ({sql_list(REJECTED_KINDS)}))
) {_TABLE_OPTIONS}""",
)

_DDL_V4 = (
    f"""CREATE TABLE IF NOT EXISTS accounts (
    account_id VARCHAR(64) NOT NULL,
    name VARCHAR({ACCOUNT_NAME_MAX}) NOT NULL DEFAULT '',
    kind VARCHAR(32) NOT NULL DEFAULT '{DEFAULT_ACCOUNT_KIND}',
    active BOOLEAN NOT NULL DEFAULT TRUE,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (account_id)
) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS rfid_tags (
    tag_uid VARCHAR({TAG_UID_MAX}) NOT NULL,
    account_id VARCHAR(64) NOT NULL,
    active BOOLEAN NOT NULL DEFAULT TRUE,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (tag_uid),
    INDEX ix_rfid_tags_account_id (account_id, tag_uid),
    CONSTRAINT ck_rfid_tags_uid CHECK (
        CHAR_LENGTH(tag_uid) IN ({', '.join(map(str, TAG_UID_LENGTHS))})
        AND tag_uid REGEXP '^[0-9A-F]+$')
) {_TABLE_OPTIONS}""",
    add_column(_COLUMN_EXISTS, "drivers", "account_id", "VARCHAR(64) NULL"),
    create_index(_INDEX_EXISTS, "drivers", "ix_drivers_account_id", "account_id"),
    add_column(_COLUMN_EXISTS, "charging_sessions", "tag_uid", f"VARCHAR({TAG_UID_MAX}) NULL"),
    add_column(_COLUMN_EXISTS, "charging_sessions", "account_id", "VARCHAR(64) NULL"),
    create_index(
        _INDEX_EXISTS,
        "charging_sessions",
        "ix_charging_sessions_account_id",
        "account_id, started_at",
    ),
)

_DDL_V5 = (
    f"""CREATE TABLE IF NOT EXISTS cp_registrations (
    cp_id VARCHAR(64) NOT NULL,
    location VARCHAR(200) NOT NULL,
    price_eur_kwh DECIMAL(10,4) NOT NULL,
    credential_hash VARCHAR(255) NULL,
    registered_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    deregistered_at DATETIME(6) NULL,
    PRIMARY KEY (cp_id)
) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS cp_keys (
    cp_id VARCHAR(64) NOT NULL,
    version INT NOT NULL,
    key_sealed VARCHAR(200) NOT NULL,
    issued_at DATETIME(6) NOT NULL,
    revoked_at DATETIME(6) NULL,
    PRIMARY KEY (cp_id, version),
    CONSTRAINT ck_cp_keys_version CHECK (version >= 1)
) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS audit_log (
    seq BIGINT NOT NULL,
    at DATETIME(6) NOT NULL,
    actor VARCHAR(100) NOT NULL,
    source_ip VARCHAR(64) NOT NULL DEFAULT '',
    action VARCHAR(64) NOT NULL,
    details VARCHAR(1000) NOT NULL DEFAULT '',
    outcome VARCHAR(32) NOT NULL,
    prev_hash CHAR(64) NOT NULL,
    hash CHAR(64) NOT NULL,
    PRIMARY KEY (seq),
    INDEX ix_audit_log_at (at),
    INDEX ix_audit_log_action (action, seq)
) {_TABLE_OPTIONS}""",
    f"""CREATE TABLE IF NOT EXISTS audit_head (
    id INT NOT NULL,
    last_seq BIGINT NOT NULL,
    last_hash CHAR(64) NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT ck_audit_head_one CHECK (id = 1)
) {_TABLE_OPTIONS}""",
    f"INSERT IGNORE INTO audit_head (id, last_seq, last_hash) VALUES (1, 0, '{GENESIS}')",
)

_DDL_V6 = (
    f"""CREATE TABLE IF NOT EXISTS weather_alerts (
    city VARCHAR({WEATHER_CITY_MAX}) NOT NULL,
    cp_ids TEXT NOT NULL,
    temperature DECIMAL(10,4) NOT NULL,
    since DATETIME(6) NOT NULL,
    PRIMARY KEY (city),
    CONSTRAINT ck_weather_alerts_city CHECK (CHAR_LENGTH(city) >= 1)
) {_TABLE_OPTIONS}""",
)

# The API's pages of sessions, newest first (ORDER BY started_at DESC, session_id DESC).
_DDL_V7 = (
    create_index(_INDEX_EXISTS, "charging_sessions", "ix_charging_sessions_started", "started_at, session_id"),
)

# Errors about the data itself: the same row is refused again, other rows are not.
_REFUSED_ERRNOS = {
    errorcode.ER_BAD_NULL_ERROR,  # 1048 column cannot be null
    errorcode.ER_DUP_ENTRY,  # 1062
    errorcode.ER_WARN_DATA_OUT_OF_RANGE,  # 1264
    errorcode.WARN_DATA_TRUNCATED,  # 1265
    errorcode.ER_TRUNCATED_WRONG_VALUE,  # 1292 incorrect datetime value...
    errorcode.ER_INVALID_CHARACTER_STRING,  # 1300
    errorcode.ER_NO_DEFAULT_FOR_FIELD,  # 1364
    errorcode.ER_TRUNCATED_WRONG_VALUE_FOR_FIELD,  # 1366 incorrect string value
    errorcode.ER_ILLEGAL_VALUE_FOR_TYPE,  # 1367
    errorcode.ER_DATA_TOO_LONG,  # 1406
    errorcode.ER_WRONG_VALUE_FOR_TYPE,  # 1411
    errorcode.ER_ROW_IS_REFERENCED_2,  # 1451
    errorcode.ER_NO_REFERENCED_ROW_2,  # 1452
    errorcode.ER_DATA_OUT_OF_RANGE,  # 1690
    3819,  # MySQL ER_CHECK_CONSTRAINT_VIOLATED
    4025,  # MariaDB ER_CONSTRAINT_FAILED (a CHECK)
}


def _refused(exc: BaseException) -> bool:
    errno = getattr(exc, "errno", None) or 0
    if errno in _REFUSED_ERRNOS or isinstance(exc, (errors.DataError, errors.IntegrityError)):
        return True
    # a value the connector cannot convert for the server (no server errno)
    return isinstance(exc, errors.ProgrammingError) and errno <= 0


def _timed_out(exc: BaseException) -> bool:
    return isinstance(
        exc, (errors.ReadTimeoutError, errors.WriteTimeoutError, errors.ConnectionTimeoutError,
              TimeoutError)
    )


class MySQLStore(SQLStore):
    """Central's store in a MySQL or MariaDB database (which must exist)."""

    TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
    SCHEMA_VERSION_DDL = f"""CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL,
    description VARCHAR(200) NOT NULL DEFAULT '',
    applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (version)
) {_TABLE_OPTIONS}"""
    DDL = {1: _DDL_V1, 2: _DDL_V2, 3: _DDL_V3, 4: _DDL_V4, 5: _DDL_V5, 6: _DDL_V6, 7: _DDL_V7}
    LOCK_AUDIT_HEAD = f"{SELECT_AUDIT_HEAD} FOR UPDATE"
    # A stored row is replaced only by one of the same or a higher version; ``version`` is
    # assigned last (upsert_assignments).
    UPSERT_CP = (
        f"{INSERT_CP}\nON DUPLICATE KEY UPDATE "
        + upsert_assignments(CP_COLUMNS, lambda c: f":{c}", lambda c: c)
    )
    # Without CLIENT_FOUND_ROWS the no-op update counts 0 rows, an insert 1.
    INSERT_DRIVER = """INSERT INTO drivers (driver_id, name, registered_at)
VALUES (:driver_id, :name, :registered_at)
ON DUPLICATE KEY UPDATE driver_id = driver_id"""
    INSERT_ACCOUNT = """INSERT INTO accounts (account_id, name, kind, active, created_at)
VALUES (:account_id, :name, :kind, TRUE, :created_at)
ON DUPLICATE KEY UPDATE account_id = account_id"""
    INSERT_TAG = """INSERT INTO rfid_tags (tag_uid, account_id, active, created_at)
VALUES (:tag_uid, :account_id, TRUE, :created_at)
ON DUPLICATE KEY UPDATE tag_uid = tag_uid"""
    UPSERT_SESSION = (
        f"{INSERT_SESSION}\nON DUPLICATE KEY UPDATE "
        + upsert_assignments(SESSION_COLUMNS, lambda c: f":{c}", lambda c: c)
    )
    # The same for many rows in one statement: the connector sends one multi-row INSERT, each
    # row's assignments reading its own values with VALUES(col) (MariaDB, MySQL 8; MySQL 8.0.20+
    # calls VALUES() in this place deprecated, with a warning, and still runs it).
    UPSERT_CP_MANY = f"{INSERT_CP}\nON DUPLICATE KEY UPDATE " + upsert_assignments(
        CP_COLUMNS, lambda c: f"VALUES({c})", lambda c: c)
    UPSERT_SESSION_MANY = f"{INSERT_SESSION}\nON DUPLICATE KEY UPDATE " + upsert_assignments(
        SESSION_COLUMNS, lambda c: f"VALUES({c})", lambda c: c)
    STRICT_MODE = (
        "SET SESSION sql_mode = IF(@@SESSION.sql_mode LIKE '%STRICT_ALL_TABLES%',"
        " @@SESSION.sql_mode, CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'STRICT_ALL_TABLES'))"
    )
    GET_LOCK = "SELECT GET_LOCK(:name, :wait)"
    RELEASE_LOCK = "SELECT RELEASE_LOCK(:name)"

    def __init__(
        self,
        url: str | DatabaseURL,
        *,
        connect_timeout: int = CONNECT_TIMEOUT_S,
        io_timeout: int = IO_TIMEOUT_S,
        statement_timeout: float | None = None,
        lock_timeout: float = LOCK_TIMEOUT_S,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        """``connect_timeout`` and ``io_timeout`` are whole seconds (as the connector takes
        them), ``statement_timeout`` (default: 80 % of ``io_timeout``) and ``lock_timeout``
        seconds; ``breaker`` defaults to 1 s of failing fast after a failure, doubling up
        to 10 s, with jitter."""
        super().__init__(lock_timeout)
        self.url = parse_db_url(url) if isinstance(url, str) else url
        if self.url.scheme != "mysql":
            raise ValueError(f"not a MySQL URL: {self.url.redacted()}")
        for name, value in (("connect_timeout", connect_timeout), ("io_timeout", io_timeout)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of seconds >= 1, not {value!r}")
        self.description = self.url.describe()
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.statement_timeout = (
            io_timeout * STATEMENT_TIMEOUT_SHARE if statement_timeout is None else statement_timeout
        )
        self.breaker = breaker or CircuitBreaker(
            self.description, Backoff(initial=BREAKER_INITIAL_S, cap=BREAKER_CAP_S)
        )
        self._conn: Any = None
        self._migrating = False

    # -- connection -----------------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "host": self.url.host,
            "port": self.url.port,
            "user": self.url.user,
            "password": self.url.password or "",
            "database": self.url.database,
            "connection_timeout": self.connect_timeout,
            "read_timeout": self._io_timeout(),
            "write_timeout": self._io_timeout(),
            "autocommit": False,
            "time_zone": "+00:00",
            "charset": "utf8mb4",
            # The pure-Python protocol: the same behaviour and errors whether or not
            # the optional C extension is installed.
            "use_pure": True,
            # rowcount counts changed rows (INSERT_DRIVER relies on it).
            "client_flags": [-ClientFlag.FOUND_ROWS],
        }
        return kwargs

    def _io_timeout(self) -> int:
        return MIGRATION_IO_TIMEOUT_S if self._migrating else self.io_timeout

    def _open(self) -> Any:
        try:
            conn = mysql.connector.connect(**self._connect_kwargs())
        except (errors.Error, OSError) as exc:
            raise StoreUnavailable(
                f"cannot connect to the MySQL database {self.url.redacted()}: {_reason(exc)}"
            ) from None
        try:
            cur = conn.cursor()
            cur.execute(self.STRICT_MODE)
            cur.close()
            self._set_limits(conn)
        except (errors.Error, OSError) as exc:
            _close_quietly(conn)
            raise StoreUnavailable(
                f"cannot set up the session on the MySQL database {self.url.redacted()}: "
                f"{_reason(exc)}"
            ) from None
        return conn

    def _set_limits(self, conn: Any) -> None:
        """The socket timeouts and the server's statement limits of the current mode
        (normal, or migrating: long timeouts and no statement limit)."""
        conn.read_timeout = conn.write_timeout = self._io_timeout()
        statement = 0.0 if self._migrating else self.statement_timeout
        cur = conn.cursor()
        try:
            if "mariadb" in (conn.server_info or "").lower():
                cur.execute("SET SESSION max_statement_time = %s", (statement,))
            else:  # MySQL limits SELECTs only
                cur.execute("SET SESSION max_execution_time = %s", (int(statement * 1000),))
            lock_wait = max(1, math.ceil(statement)) if statement else 50
            cur.execute("SET SESSION innodb_lock_wait_timeout = %s", (lock_wait,))
        finally:
            cur.close()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _close_quietly(conn)

    def connection_id(self) -> int | None:
        """The server's id of the current connection (None when not connected)."""
        with self._locked():
            return self._conn.connection_id if self._conn is not None else None

    # -- transactions ---------------------------------------------------------------------

    def _run(self, work: Callable[[Cursor], T], *, write: bool = True) -> T:
        self.breaker.before()  # fails at once while the database is known to be away
        try:
            with self._locked():
                self._check_open()
                result = self._run_locked(work)
        except DatabaseBusy:
            self.breaker.released()
            raise
        except StoreUnavailable as exc:
            self.breaker.failed(exc)
            raise
        except StoreError:
            self.breaker.succeeded()  # the database answered: it refused
            raise
        except BaseException:
            self.breaker.released()
            raise
        self.breaker.succeeded()
        return result

    def _run_locked(self, work: Callable[[Cursor], T]) -> T:
        reused = self._conn is not None
        try:
            return self._attempt(work)
        except _Lost as lost:
            if not reused or not lost.retryable:
                raise lost.error from None
        return self._attempt(work)  # once more, on a new connection

    def _attempt(self, work: Callable[[Cursor], T]) -> T:
        if self._conn is None:
            self._conn = self._open()
        conn = self._conn
        committing = False
        try:
            cursor = conn.cursor(buffered=True)
            try:
                result = work(_Cursor(cursor))
                committing = True
                conn.commit()
            finally:
                _close_quietly(cursor)
        except (errors.Error, OSError) as exc:
            # A failed commit may still have reached the server: never repeat that work.
            # Nor a call that timed out: the database is slow or away, not just the
            # connection stale, and a retry would double the wait.
            raise self._failure(exc, retryable=not committing and not _timed_out(exc)) from None
        except UnicodeError as exc:  # text the connector cannot encode
            self._rollback()
            raise StoreRefused(f"{self.description}: {exc}") from None
        except BaseException:
            self._rollback()
            raise
        return result

    def _failure(self, exc: BaseException, *, retryable: bool) -> Exception:
        """Roll back, or drop the connection if it failed; the exception to raise."""
        if _unavailable(exc):
            self._drop()
            error = StoreUnavailable(
                f"lost the MySQL database {self.url.redacted()}: {_reason(exc)}"
            )
            return _Lost(error, retryable)
        self._rollback()
        if _refused(exc):
            return StoreRefused(_reason(exc), errno=getattr(exc, "errno", None))
        return StoreError(f"{self.description}: {_reason(exc)}")

    def _rollback(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.rollback()
        except (errors.Error, OSError):
            self._drop()

    # -- schema ---------------------------------------------------------------------------

    def migrate(self) -> int:
        """Migrate under a server-side named lock, so concurrent Centrals take turns."""
        name = f"ev_central.migrate.{self.url.database}"[:64]
        with self._locked():
            self._migration_mode(True)
            try:
                return self._migrate_locked(name)
            finally:
                self._migration_mode(False)

    def _migration_mode(self, on: bool) -> None:
        """Long socket timeouts and no statement limit while migrating; on the current
        connection, and on the next one opened."""
        self._migrating = on
        if self._conn is None:
            return
        try:
            self._set_limits(self._conn)
        except (errors.Error, OSError) as exc:
            log.warning("dropping the connection to %s: cannot set its limits (%s)",
                        self.url.redacted(), _reason(exc))
            self._drop()

    def _migrate_locked(self, name: str) -> int:
        wait = {"name": name, "wait": MIGRATION_LOCK_WAIT_S}
        got = self._run(lambda cur: _scalar(cur, self.GET_LOCK, wait))
        if got != 1:
            raise StoreUnavailable(
                f"{self.description}: another process has been migrating the schema for "
                f"{MIGRATION_LOCK_WAIT_S} s; try again"
            )
        try:
            return super().migrate()
        finally:
            try:
                self._run(lambda cur: _scalar(cur, self.RELEASE_LOCK, {"name": name}))
            except StoreError:
                pass  # a lost connection has released it already

    def close(self) -> None:
        with self._lock:  # waits for a call in progress (bounded by its timeouts)
            self._closed = True
            self._drop()


class _Lost(Exception):
    """Internal: the connection failed; ``error`` is what the caller sees."""

    def __init__(self, error: StoreUnavailable, retryable: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.retryable = retryable


def _scalar(cur: Cursor, sql: str, params: Mapping[str, Any]) -> Any:
    cur.execute(sql, params)
    rows = cur.fetchall()
    return rows[0][0] if rows else None


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _close_quietly(resource: Any) -> None:
    try:
        resource.close()
    except Exception:
        pass
