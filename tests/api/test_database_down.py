"""The database down or hanging: the paths that read it answer 503 with a clear JSON error
within their deadline, while every path served from Central's memory keeps answering. Once
with a store that fails on demand (SQLite), once with a real MySQL connection cut by a proxy."""

from __future__ import annotations

import threading
import time

from ev_central.store import StoreUnavailable, open_store
from tests.support.proxy import CuttableProxy
from tests.support.services import parse_mysql_url
from tests.support.waiting import wait_until

DB_PATHS = ["/api/drivers", "/api/accounts", "/api/sessions", "/api/audit"]
MEMORY_PATHS = ["/api/cps", "/api/cps/CP1", "/api/requests", "/api/messages", "/api/weather", "/api/health"]


class FailingStore:
    """A real store that, on demand, fails (``down``) or hangs (``hang``) on every read the API makes."""

    def __init__(self, store) -> None:
        self._store = store
        self.down = False
        self.hang = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name):
        target = getattr(self._store, name)
        if not callable(target) or name == "close":
            return target

        def call(*args, **kwargs):
            if self.hang.is_set():
                self.release.wait(30)
            if self.down:
                raise StoreUnavailable("database unreachable (the test cut it)")
            return target(*args, **kwargs)

        call.__name__ = name
        return call


def test_a_database_outage_is_503_on_its_paths_only(start_api, tmp_path):
    api_store = FailingStore(open_store(f"sqlite:///{tmp_path / 'central.db'}"))
    running = start_api(api_store=api_store, db_timeout=0.5)
    running.api.api.db.cache_seconds = 0  # (pages of drivers and accounts are kept 2 s otherwise)
    running.monitor("CP1")
    client = running.http()
    for path in DB_PATHS + MEMORY_PATHS:
        assert client.get(path).status_code == 200, path

    api_store.down = True
    for path in DB_PATHS:
        answer = client.get(path)
        assert answer.status_code == 503, path
        assert answer.json() == {"error": "unavailable", "message": "the database is unavailable now; try again "
                                                                    "later (what Central holds in memory is still "
                                                                    "served)"}
        assert answer.headers["retry-after"] == "5"
    for path in MEMORY_PATHS:
        assert client.get(path).status_code == 200, path
    running.api.api.registrations.refresh()  # fails: the CPs keep the registrations read before
    assert client.get("/api/cps/CP1").json()["registration"]["state"] == "not registered"

    api_store.down = False
    api_store.hang.set()  # now it hangs: each read waits past its deadline
    try:
        started = time.monotonic()
        hung = [client.get(path) for path in DB_PATHS * 2]  # more than the API's database threads
        assert {answer.status_code for answer in hung} == {503}
        assert "did not answer within 0.5 s" in hung[0].json()["message"]
        assert time.monotonic() - started < 8 * 0.5 + 3
        quick = time.monotonic()
        for path in MEMORY_PATHS:  # the threads stuck on the database do not hold these up
            assert client.get(path).status_code == 200, path
        assert time.monotonic() - quick < 2
    finally:
        api_store.release.set()
        api_store.hang.clear()
    wait_until(lambda: client.get("/api/drivers").status_code == 200, 10, "the database back")
    api_store._store.close()


def test_a_real_mysql_outage(start_api, fresh_mysql_url):
    url = parse_mysql_url(fresh_mysql_url)
    proxy = CuttableProxy(url.host, url.port)
    proxied = fresh_mysql_url.replace(f"{url.host}:{url.port}", f"127.0.0.1:{proxy.port}")
    api_store = open_store(proxied)
    try:
        running = start_api(db_url=fresh_mysql_url, api_store=api_store, db_timeout=8.0)
        running.api.api.db.cache_seconds = 0
        running.central.store.add_driver("D1")
        running.monitor("CP1")
        client = running.http(timeout=20)
        assert [d["driver_id"] for d in client.get("/api/drivers").json()["drivers"]] == ["D1"]

        proxy.cut()
        for path in DB_PATHS:
            answer = client.get(path)
            assert answer.status_code == 503 and answer.json()["error"] == "unavailable", path
        for path in MEMORY_PATHS:
            assert client.get(path).status_code == 200, path
        proxy.restore()
        wait_until(lambda: client.get("/api/sessions").status_code == 200, 20, "MySQL back")
    finally:
        proxy.close()
        api_store.close()
