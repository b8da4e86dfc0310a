"""Central's database: ``open_store(url)`` gives a ready, migrated ``Store``.

``url`` is ``None`` for the embedded SQLite file, ``sqlite:///path.db`` for another
SQLite file, or ``mysql://user[:password]@host[:port]/database`` for MySQL or MariaDB.
Tables and columns are described in docs/schema.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import (
    OPEN_STATUSES,
    REJECTED_KINDS,
    SESSION_STATUSES,
    AccountDisabled,
    AccountRow,
    AccountStatement,
    CPRow,
    DriverRow,
    RejectedRow,
    SessionRow,
    Store,
    StoreError,
    StoreRefused,
    StoreUnavailable,
    TagRow,
    UnknownAccount,
)
from .url import DatabaseURL, parse_db_url

__all__ = [
    "AccountDisabled",
    "AccountRow",
    "AccountStatement",
    "CPRow",
    "DatabaseURL",
    "DEFAULT_SQLITE_NAME",
    "DriverRow",
    "ENV_DATA_DIR",
    "OPEN_STATUSES",
    "REJECTED_KINDS",
    "RejectedRow",
    "SESSION_STATUSES",
    "SessionRow",
    "Store",
    "StoreError",
    "StoreRefused",
    "StoreUnavailable",
    "TagRow",
    "UnknownAccount",
    "default_sqlite_path",
    "open_store",
    "parse_db_url",
]

DEFAULT_SQLITE_NAME = "ev_central.db"
ENV_DATA_DIR = "EV_DATA_DIR"


def default_sqlite_path(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``ev_central.db`` in ``data_dir``, else in ``$EV_DATA_DIR``, else in the working dir."""
    directory = data_dir or os.environ.get(ENV_DATA_DIR, "").strip() or Path.cwd()
    return Path(directory).expanduser() / DEFAULT_SQLITE_NAME


def open_store(url: str | None, data_dir: str | os.PathLike[str] | None = None) -> Store:
    """Connect to the database, create or upgrade its schema, and return the store.

    Raises ``ValueError`` for a malformed URL, ``StoreUnavailable`` (with a message fit
    to show the user) when the database cannot be reached, and ``StoreError`` when it
    refuses the schema (for example a schema newer than this program)."""
    store = _make_store(url, data_dir)
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


def _make_store(url: str | None, data_dir: str | os.PathLike[str] | None) -> Store:
    if url is None:
        from .sqlite import SQLiteStore

        return SQLiteStore(default_sqlite_path(data_dir))
    target = parse_db_url(url)
    if target.scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(target.path)
    try:
        from .mysql import MySQLStore
    except ImportError as exc:
        raise StoreUnavailable(
            f"cannot use {target.redacted()}: mysql-connector-python is not installed ({exc})"
        ) from None
    return MySQLStore(target)
