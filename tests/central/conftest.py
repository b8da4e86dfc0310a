"""Shared by the store tests: the ``store`` fixture on both backends, and raw access to the
store's database outside the store (``raw``, ``columns``, ``index_columns``, ``same_kind``).

Import the helpers with ``from tests.central.conftest import raw`` and so on."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from ev_central.store import open_store
from ev_central.store.mysql import MySQLStore
from ev_central.store.sql import SQLStore
from ev_central.store.sqlite import SQLiteStore
from tests.support.services import MySQLURL, mysql_connect


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLStore]:
    """A migrated, empty store on each backend (SQLite in tmp_path, and a new empty
    database on the real MySQL/MariaDB server)."""
    if request.param == "mysql":
        opened = open_store(request.getfixturevalue("fresh_mysql_url"))
    else:
        opened = open_store(None, data_dir=tmp_path / "data")
    assert isinstance(opened, SQLStore)
    yield opened
    opened.close()


def raw(store: SQLStore, sql: str) -> list[tuple[Any, ...]]:
    """Run one statement on a separate connection (committed) and return its rows."""
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path)
        try:
            rows = conn.execute(sql).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()
    assert isinstance(store, MySQLStore)
    url = store.url
    target = MySQLURL(url.user, url.password, url.host, url.port, url.database)
    conn = mysql_connect(target, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute(sql)
        rows = cur.fetchall() if cur.with_rows else []
        cur.close()
        return [tuple(row) for row in rows]
    finally:
        conn.close()


def columns(store: SQLStore) -> dict[str, set[str]]:
    """table -> column names."""
    if isinstance(store, SQLiteStore):
        tables = [r[0] for r in raw(store, "SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: {r[1] for r in raw(store, f"PRAGMA table_info({t})")} for t in tables}
    found: dict[str, set[str]] = {}
    for table, column in raw(
        store,
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = DATABASE()",
    ):
        found.setdefault(table, set()).add(column)
    return found


def index_columns(store: SQLStore, table: str) -> set[str]:
    """Columns of ``table`` that lead an index other than the primary key."""
    return {columns[0] for columns in indexes(store, table).values()}


def indexes(store: SQLStore, table: str) -> dict[str, tuple[str, ...]]:
    """Index name -> its columns in order, for ``table``'s indexes other than the primary key."""
    if isinstance(store, SQLiteStore):
        found = {}
        for index in raw(store, f"PRAGMA index_list({table})"):
            if index[3] == "c":  # made by CREATE INDEX
                info = sorted(raw(store, f"PRAGMA index_info({index[1]})"))
                found[index[1]] = tuple(r[2] for r in info)
        return found
    rows = raw(
        store,
        "SELECT index_name, column_name FROM information_schema.statistics"
        f" WHERE table_schema = DATABASE() AND table_name = '{table}'"
        " AND index_name <> 'PRIMARY' ORDER BY index_name, seq_in_index",
    )
    grouped: dict[str, tuple[str, ...]] = {}
    for name, column in rows:
        grouped[name] = grouped.get(name, ()) + (column,)
    return grouped


def same_kind(store: SQLStore) -> SQLStore:
    """A new, unmigrated store object on the same database."""
    return SQLiteStore(store.path) if isinstance(store, SQLiteStore) else MySQLStore(store.url)


def migrate_at_once(store, how_many: int) -> list:
    """``how_many`` stores of ``store``'s kind run ``migrate()`` at the same instant, each in a
    thread; returns what each returned (or the exception it raised)."""
    stores = [same_kind(store) for _ in range(how_many)]
    results: list = []
    barrier = threading.Barrier(how_many)

    def migrate(one) -> None:
        barrier.wait(timeout=10)
        try:
            results.append(one.migrate())
        except Exception as exc:  # reported by the caller's assertion
            results.append(exc)

    threads = [threading.Thread(target=migrate, args=(one,)) for one in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for one in stores:
        one.close()
    return results


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new empty database on each backend (not migrated yet)."""
    if request.param == "mysql":
        return request.getfixturevalue("fresh_mysql_url")
    return f"sqlite:///{tmp_path}/ev.db"
