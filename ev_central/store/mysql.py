"""The server backend: MySQL (8.0.16+) or MariaDB (10.2+) through mysql-connector-python.

One connection, shared by every thread under a lock, opened on first use. Autocommit is
off: each call is one transaction, committed or rolled back before the lock is released.
A connection that fails (server restarted, connection killed, network cut) is dropped
and a new one is opened by the next call; a call that finds its reused connection dead
before anything was committed is retried once on a new connection, so a stale
connection is replaced transparently.

The session runs in UTC (``time_zone = '+00:00'``) so ``CURRENT_TIMESTAMP(6)`` defaults
are UTC too, and with strict SQL mode so that a value that does not fit is refused, as
SQLite's CHECKs refuse it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable, Mapping

import mysql.connector
from mysql.connector import errorcode, errors
from mysql.connector.constants import DEFAULT_CONFIGURATION, ClientFlag

from .base import StoreError, StoreUnavailable
from .sql import (
    CP_STATES_SQL,
    INSERT_SESSION,
    SESSION_COLUMNS,
    SESSION_STATUSES_SQL,
    Cursor,
    SQLStore,
    T,
    add_column,
    create_index,
)
from .url import DatabaseURL, parse_db_url

CONNECT_TIMEOUT_S = 5
IO_TIMEOUT_S = 15  # read and write timeouts, where the connector has them (>= 9.2)
MIGRATION_LOCK_WAIT_S = 10

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

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


class MySQLStore(SQLStore):
    """Central's store in a MySQL or MariaDB database (which must exist)."""

    TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
    SCHEMA_VERSION_DDL = f"""CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL,
    description VARCHAR(200) NOT NULL DEFAULT '',
    applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (version)
) {_TABLE_OPTIONS}"""
    DDL = {1: _DDL_V1, 2: _DDL_V2}
    UPSERT_CP = """INSERT INTO charging_points
    (cp_id, location, price_eur_kwh, state, stopped, updated_at)
VALUES (:cp_id, :location, :price_eur_kwh, :state, :stopped, :updated_at)
ON DUPLICATE KEY UPDATE
    location = :location, price_eur_kwh = :price_eur_kwh,
    state = :state, stopped = :stopped, updated_at = :updated_at"""
    # Without CLIENT_FOUND_ROWS the no-op update counts 0 rows, an insert 1.
    INSERT_DRIVER = """INSERT INTO drivers (driver_id, name, registered_at)
VALUES (:driver_id, :name, :registered_at)
ON DUPLICATE KEY UPDATE driver_id = driver_id"""
    UPSERT_SESSION = f"""{INSERT_SESSION}
ON DUPLICATE KEY UPDATE
    {", ".join(f"{c} = :{c}" for c in SESSION_COLUMNS[1:])}"""
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
    ) -> None:
        super().__init__()
        self.url = parse_db_url(url) if isinstance(url, str) else url
        if self.url.scheme != "mysql":
            raise ValueError(f"not a MySQL URL: {self.url.redacted()}")
        self.description = self.url.describe()
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self._conn: Any = None

    # -- connection -----------------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "host": self.url.host,
            "port": self.url.port,
            "user": self.url.user,
            "password": self.url.password or "",
            "database": self.url.database,
            "connection_timeout": self.connect_timeout,
            "autocommit": False,
            "time_zone": "+00:00",
            "charset": "utf8mb4",
            # The pure-Python protocol: the same behaviour and errors whether or not
            # the optional C extension is installed.
            "use_pure": True,
            # rowcount counts changed rows (INSERT_DRIVER relies on it).
            "client_flags": [-ClientFlag.FOUND_ROWS],
        }
        if "read_timeout" in DEFAULT_CONFIGURATION:  # mysql-connector-python >= 9.2
            kwargs["read_timeout"] = self.io_timeout
            kwargs["write_timeout"] = self.io_timeout
        return kwargs

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
        except (errors.Error, OSError) as exc:
            _close_quietly(conn)
            raise StoreUnavailable(
                f"cannot set up the session on the MySQL database {self.url.redacted()}: "
                f"{_reason(exc)}"
            ) from None
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _close_quietly(conn)

    def connection_id(self) -> int | None:
        """The server's id of the current connection (None when not connected)."""
        with self._lock:
            return self._conn.connection_id if self._conn is not None else None

    # -- transactions ---------------------------------------------------------------------

    def _run(self, work: Callable[[Cursor], T], *, write: bool = True) -> T:
        with self._lock:
            self._check_open()
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
            raise self._failure(exc, retryable=not committing) from None
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
        with self._lock:
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
        with self._lock:
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
