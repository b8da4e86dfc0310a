"""A real MySQL outage (the connection cut by a proxy): Central keeps serving from
memory, says so, and writes the latest state of every CP when the database is back."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from ev_central.app import Central
from ev_central.store import open_store
from ev_common.link import Link, LinkConfig
from ev_common.protocol import Auth, Avr, Reg
from tests.support.proxy import CuttableProxy
from tests.support.services import parse_mysql_url
from tests.support.waiting import wait_until

FAST = LinkConfig(ack_timeout=0.5)


@pytest.fixture
def proxied(fresh_mysql_url):
    url = parse_mysql_url(fresh_mysql_url)
    proxy = CuttableProxy(url.host, url.port)
    yield fresh_mysql_url, fresh_mysql_url.replace(f"{url.host}:{url.port}", f"127.0.0.1:{proxy.port}"), proxy
    proxy.close()


def db_states(url):
    store = open_store(url)
    try:
        return {row.cp_id: row.state for row in store.load_charging_points()}
    finally:
        store.close()


def register(central, cp_id):
    link = Link.connect(*central.address, config=FAST)
    link.send(Reg(cp_id, "Calle 1", Decimal("0.40")))
    answer = link.recv(timeout=5)
    assert isinstance(answer, Auth) and answer.ok, answer
    return link


def test_central_serves_through_a_database_outage(proxied, caplog):
    direct_url, proxied_url, proxy = proxied
    caplog.set_level(logging.INFO)
    central = Central(open_store(proxied_url), "127.0.0.1", 0).start()
    links = []
    try:
        links.append(register(central, "CP1"))
        wait_until(lambda: db_states(direct_url).get("CP1") == "ACTIVADO", 5, "CP1 ACTIVADO in the DB")

        proxy.cut()
        links[0].send(Avr("CP1", "Engine answers KO"))
        links.append(register(central, "CP2"))  # registration goes on while the DB is down
        wait_until(lambda: not central.writer.db_ok, 10, "Central to notice the outage")
        assert central.network.get("CP1").state == "AVERIADO"
        assert "database unreachable" in caplog.text
        assert db_states(direct_url).get("CP1") == "ACTIVADO"  # not written yet
        assert "CP2" not in db_states(direct_url)

        proxy.restore()
        wait_until(lambda: db_states(direct_url) == {"CP1": "AVERIADO", "CP2": "ACTIVADO"}, 20,
                   "the pending states to be written")
        assert "database back" in caplog.text
    finally:
        for link in links:
            link.close()
        proxy.restore()
        central.stop()
