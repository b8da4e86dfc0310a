"""A real MySQL outage (the connection cut by a proxy): Central keeps serving from
memory, says so, and writes the latest state of every CP when the database is back."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from ev_central.app import Central
from ev_central.persistence import session_writer
from ev_central.store import SessionRow, StoreUnavailable, open_store
from ev_central.store.breaker import CircuitBreaker
from ev_central.store.mysql import MySQLStore
from ev_common.retry import Backoff
from ev_common.link import Link, LinkConfig
from ev_common.protocol import Auth, Avr, Hb, Key, Reg
from ev_common.records import SupplyEnd, Telemetry
from tests.support.clock import FakeClock
from tests.support.proxy import CuttableProxy
from tests.support.services import parse_mysql_url
from tests.support.waiting import wait_until

FAST = LinkConfig(ack_timeout=0.5)
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


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
    """A Monitor's registration: AUTH, then the KEY that follows it, read (and so acknowledged):
    an unacknowledged KEY would end the session after its retransmissions."""
    link = Link.connect(*central.address, config=FAST)
    link.send(Reg(cp_id, "Calle 1", Decimal("0.40")))
    answer = link.recv(timeout=5)
    assert isinstance(answer, Auth) and answer.ok, answer
    assert link.recv(timeout=5) == Key(cp_id, 0)
    return link


def test_central_serves_through_a_database_outage(proxied, caplog):
    direct_url, proxied_url, proxy = proxied
    caplog.set_level(logging.INFO)
    # These links send no signs of life (nor read anything after KEY): with the default silence
    # timeout (2.6 s) a slow outage notice would turn both CPs DESCONECTADO before the database
    # is back, and the test would check the silence sweep instead of the outage.
    central = Central(open_store(proxied_url), "127.0.0.1", 0, silence_timeout=300).start()
    links = []
    try:
        links.append(register(central, "CP1"))
        wait_until(lambda: db_states(direct_url).get("CP1") == "ACTIVADO", 5, "CP1 ACTIVADO in the DB")

        proxy.cut()
        links[0].send(Avr("CP1", "Engine answers KO"))
        links.append(register(central, "CP2"))  # registration goes on while the DB is down
        wait_until(lambda: not central.writer.db_ok, 10, "Central to notice the outage")
        assert central.network.get("CP1").state == "AVERIADO"
        wait_until(lambda: "database unreachable" in caplog.text, 5, "the outage said")  # logged after db_ok
        assert db_states(direct_url).get("CP1") == "ACTIVADO"  # not written yet
        assert "CP2" not in db_states(direct_url)

        proxy.restore()
        wait_until(lambda: db_states(direct_url) == {"CP1": "AVERIADO", "CP2": "ACTIVADO"}, 45,
                   "the pending states to be written")
        wait_until(lambda: "database back" in caplog.text, 5, "the recovery said")
    finally:
        for link in links:
            link.close()
        proxy.restore()
        central.stop()


# -- a database that hangs (answers nothing, closes nothing) -------------------------------

IO_TIMEOUT = 1  # seconds: the store's connect and read/write timeouts in this test
BOUND = IO_TIMEOUT + 2  # the longest any call may take while the database hangs


def session_row(session_id: str) -> SessionRow:
    return SessionRow(session_id, "r1", "CP1", "D1", Decimal("0.4"), T0, None, Decimal("0"), Decimal("0"),
                      "SUPPLYING", None, False, 0)


def test_a_hanging_database_fails_calls_fast_and_the_writer_catches_up(proxied):
    direct_url, proxied_url, proxy = proxied
    clock = FakeClock(1000.0)
    breaker = CircuitBreaker("test database", Backoff(initial=5, cap=5, floor=5), clock=clock)
    store = MySQLStore(proxied_url, connect_timeout=IO_TIMEOUT, io_timeout=IO_TIMEOUT, lock_timeout=0.5,
                       breaker=breaker)
    writer = session_writer(store, Backoff(initial=0.05, cap=0.2, floor=0.01))
    try:
        store.migrate()
        writer.start()
        writer.put(session_row("S0"))
        assert writer.wait_idle(5)

        proxy.freeze()
        took: list[float] = []
        failures: list[BaseException] = []
        barrier = threading.Barrier(6)

        def call(n: int) -> None:
            barrier.wait(timeout=5)
            started = time.monotonic()
            try:
                store.driver_exists("D1") if n % 2 else store.get_session("S0")
            except StoreUnavailable as exc:
                failures.append(exc)
            took.append(time.monotonic() - started)

        threads = [threading.Thread(target=call, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=BOUND + 5)
        assert len(failures) == 6, failures
        assert max(took) <= BOUND, took
        assert breaker.is_open

        # while open, calls fail at once, without touching the connection
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="retrying in"):
            store.ping()
        assert time.monotonic() - started < 0.5

        for n in range(1, 6):
            writer.put(session_row(f"S{n}"))
        wait_until(lambda: not writer.db_ok, BOUND, "the writer to notice the hang")
        assert writer.pending() >= 5

        proxy.thaw()
        clock.advance(5)  # the breaker lets one probe through: the writer's next try
        assert writer.wait_idle(BOUND + 5)
        assert writer.db_ok and not breaker.is_open
        check = open_store(direct_url)
        try:
            assert {row.session_id for row in check.list_sessions()} == {f"S{n}" for n in range(6)}
        finally:
            check.close()
    finally:
        proxy.thaw()
        writer.stop()
        store.close()


def test_a_caller_never_waits_on_the_lock_longer_than_its_bound(proxied):
    _, proxied_url, proxy = proxied
    store = MySQLStore(proxied_url, connect_timeout=3, io_timeout=3, lock_timeout=0.3)
    outcome: list[BaseException] = []

    def hold() -> None:
        try:
            store.ping()  # hangs until the read timeout, holding the connection
        except StoreUnavailable as exc:
            outcome.append(exc)

    try:
        store.migrate()
        proxy.freeze()
        holder = threading.Thread(target=hold)
        holder.start()
        wait_until(lambda: _held(store), 2, "the first call to hold the connection")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="database busy"):
            store.driver_exists("D1")
        assert time.monotonic() - started < 1.5
        assert not store.breaker.is_open  # waiting for the lock is no outage
        holder.join(timeout=10)
        assert len(outcome) == 1 and store.breaker.is_open  # the hang itself is
    finally:
        proxy.thaw()
        store.close()


def _held(store) -> bool:
    """True while another thread holds the store's lock."""
    if store._lock.acquire(blocking=False):
        store._lock.release()
        return False
    return True


def test_a_hanging_database_does_not_stall_the_live_path(proxied):
    """Central on a database that stops answering: signs of life, faults and telemetry go on
    from memory (none waits for the database longer than its bound), and everything is
    written once it answers again."""
    direct_url, proxied_url, proxy = proxied
    store = MySQLStore(proxied_url, connect_timeout=IO_TIMEOUT, io_timeout=IO_TIMEOUT, lock_timeout=0.5)
    store.migrate()
    central = Central(store, "127.0.0.1", 0, silence_timeout=1.5).start()
    link = register(central, "CP1")
    try:
        wait_until(lambda: db_states(direct_url).get("CP1") == "ACTIVADO", 5, "CP1 ACTIVADO in the DB")
        row = central.book.open("S1", "R1", "CP1", "D1", Decimal("0.40"))
        central.session_writer.put(row)
        beating = threading.Event()

        def beat() -> None:  # the Monitor's signs of life, at its own pace
            while not beating.wait(0.3):
                link.send(Hb("CP1"))

        beater = threading.Thread(target=beat, daemon=True)
        beater.start()
        proxy.freeze()
        took = []
        for seq in range(1, 6):  # telemetry applied from memory
            started = time.monotonic()
            central.supplies.on_telemetry(Telemetry("CP1", "S1", "D1", seq, Decimal(seq) / 10, Decimal(0),
                                                    Decimal("7")))
            took.append(time.monotonic() - started)
        for call in (lambda: central.supplies.drivers.is_registered("D9"),  # an authoriser's question
                     lambda: central.supplies.on_supply_end(SupplyEnd("CP1", "S1", "D1", 6, Decimal("0.5"),
                                                                      Decimal("0.2"), "unplugged"))):
            started = time.monotonic()
            call()
            took.append(time.monotonic() - started)
        assert max(took) <= BOUND, took
        assert central.book.closed("S1").engine_final  # the ticket is out, the row waits for the database
        link.send(Avr("CP1", "Engine answers KO"))
        wait_until(lambda: central.network.get("CP1").state == "AVERIADO", 1, "the fault applied from memory")
        assert central.network.get("CP1").state == "AVERIADO"  # never DESCONECTADO: signs of life were served
        proxy.thaw()
        wait_until(lambda: db_states(direct_url).get("CP1") == "AVERIADO", 30, "the fault written")
        beating.set()
        beater.join(2)
        wait_until(lambda: (central.store.get_session("S1") or row).status == "COMPLETED", 30, "the ticket written")
    finally:
        proxy.thaw()
        link.close()
        central.stop()
