"""Central with real sockets and a real database (SQLite and MySQL/MariaDB).

Fake Monitors are real ``Link`` clients on loopback sending real frames. Every wait is
on a condition with a deadline; timeouts are short and set through public constructors.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Callable, ClassVar, Iterator

import pytest

from ev_central.app import Central
from ev_central.core.states import Event
from ev_central.store import CPRow, open_store
from ev_common.link import Link, LinkConfig, LinkError
from ev_common.protocol import Auth, Avr, Err, Hb, Key, Message, Rec, Reg, wire
from ev_common.protocol.fields import Text
from tests.support.waiting import wait_until

HOST = "127.0.0.1"
SILENCE = 0.6  # Central's silence timeout in these tests
FAST = LinkConfig(connect_timeout=1.0, handshake_timeout=1.0, ack_timeout=0.3, max_retries=3,
                  write_timeout=1.0)
ANSWER_TIMEOUT = 3.0
DB_TIMEOUT = 5.0


# -- helpers ---------------------------------------------------------------------------------


# Test-only messages, NOT registered: they build REG frames that ``Reg`` refuses to build.
@dataclass(frozen=True)
class LooseReg(Message):
    OPCODE: ClassVar[str] = "REG"
    cp_id: str = wire(Text(max_len=1000, allow_empty=True))
    location: str = wire(Text(max_len=1000, allow_empty=True))
    price_eur_kwh: str = wire(Text(max_len=1000, allow_empty=True))


@dataclass(frozen=True)
class ShortReg(Message):
    OPCODE: ClassVar[str] = "REG"
    cp_id: str = wire(Text(allow_empty=True))
    location: str = wire(Text(allow_empty=True))


@dataclass(frozen=True)
class Zap(Message):
    OPCODE: ClassVar[str] = "ZAP"
    what: str = wire(Text(allow_empty=True))


class FakeMonitor:
    """A Monitor reduced to its link: send frames, read answers."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.link = Link.connect(address[0], address[1], FAST)

    def send(self, message: Message) -> None:
        self.link.send(message)

    def answer(self, timeout: float = ANSWER_TIMEOUT) -> Message:
        message = self.link.recv(timeout=timeout)
        assert message is not None, f"no answer within {timeout:g} s"
        return message

    def ask(self, message: Message) -> Message:
        self.send(message)
        return self.answer()

    def register(self, cp_id: str, location: str = "C/Mayor, 45", price: str = "0.48") -> Auth:
        answer = self.ask(Reg(cp_id, location, Decimal(price)))
        assert isinstance(answer, Auth), answer
        if answer.ok:  # open mode: KEY#<cp>#0 follows every AUTH#OK (records in clear)
            key = self.answer()
            assert key == Key(cp_id, 0), key
        return answer

    def expect_closed(self, timeout: float = ANSWER_TIMEOUT) -> LinkError:
        """Read until Central closes the session; fail if it stays open past ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.link.recv(timeout=max(0.0, deadline - time.monotonic()))
            except LinkError as exc:
                return exc
        pytest.fail(f"Central did not close the session within {timeout:g} s", pytrace=False)

    def close(self, send_eot: bool = True) -> None:
        self.link.close("test over", send_eot=send_eot)


def state(central: Central, cp_id: str) -> str | None:
    row = central.network.get(cp_id)
    return row.state if row else None


def db_rows(central: Central) -> dict[str, CPRow]:
    assert central.writer.wait_idle(DB_TIMEOUT), "the state writer did not catch up"
    return {row.cp_id: row for row in central.store.load_charging_points()}


def wait_state(central: Central, cp_id: str, expected: str, timeout: float = 2.0) -> None:
    wait_until(lambda: state(central, cp_id) == expected, timeout,
               f"{cp_id} {expected} in memory (is {state(central, cp_id)})")


def wait_db(central: Central, cp_id: str, expected: str, timeout: float = DB_TIMEOUT) -> CPRow:
    """The CP's stored row once its state is ``expected`` (the write-behind may lag)."""

    def stored() -> CPRow | None:
        row = db_rows(central).get(cp_id)
        return row if row is not None and row.state == expected else None

    return wait_until(stored, timeout, f"{cp_id} {expected} in the database "
                                       f"(is {db_rows(central).get(cp_id)})", interval=0.02)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new empty database on each backend."""
    if request.param == "mysql":
        return request.getfixturevalue("fresh_mysql_url")
    return f"sqlite:///{tmp_path / 'central.db'}"


@pytest.fixture
def start_central(db_url: str) -> Iterator[Callable[..., Central]]:
    """``start_central(silence_timeout=SILENCE)``: a started Central on a new store object
    opened on the test's database. Every Central is stopped after the test."""
    started: list[Central] = []

    def start(silence_timeout: float = SILENCE) -> Central:
        store = open_store(db_url)
        try:
            central = Central(store, HOST, 0, silence_timeout=silence_timeout, link_config=FAST)
        except BaseException:
            store.close()
            raise
        started.append(central)
        return central.start()

    yield start
    for central in reversed(started):
        central.stop()  # idempotent: also after a test stopped it


@pytest.fixture
def central(start_central: Callable[..., Central]) -> Central:
    return start_central()


@pytest.fixture
def connect() -> Iterator[Callable[[Central], FakeMonitor]]:
    """``connect(central)``: a FakeMonitor with an open session; all closed after the test."""
    opened: list[FakeMonitor] = []
    lock = threading.Lock()

    def open_one(central: Central) -> FakeMonitor:
        monitor = FakeMonitor(central.address)
        with lock:
            opened.append(monitor)
        return monitor

    yield open_one
    for monitor in opened:
        monitor.close()


# -- 1. registration -------------------------------------------------------------------------


def test_registration_is_authorised_and_stored(central: Central, connect) -> None:
    monitor = connect(central)
    answer = monitor.register("CP001", "C/Mayor, 45", "0.48")
    assert answer.ok and answer.status == "OK"
    assert state(central, "CP001") == "ACTIVADO"
    row = wait_db(central, "CP001", "ACTIVADO")
    assert row.location == "C/Mayor, 45"
    assert isinstance(row.price_eur_kwh, Decimal)
    assert row.price_eur_kwh == Decimal("0.48")
    assert row.stopped is False

    # REG again on the same session updates location and price.
    assert monitor.register("CP001", "Plaza Nueva 1", "0.5").ok
    wait_until(lambda: db_rows(central)["CP001"].location == "Plaza Nueva 1", DB_TIMEOUT,
               "the new location stored")
    row = db_rows(central)["CP001"]
    assert (row.state, row.price_eur_kwh) == ("ACTIVADO", Decimal("0.5"))


# -- 2. AUTH#KO --------------------------------------------------------------------------------


INVALID_REGISTRATIONS = [
    # (what is wrong, REG fields, the field the refusal must name)
    ("id with a space", ("CP 001", "C/Mayor, 45", "0.48"), "cp_id"),
    ("id of 65 characters", ("C" * 65, "C/Mayor, 45", "0.48"), "cp_id"),
    ("negative price", ("CP001", "C/Mayor, 45", "-1"), "price_eur_kwh"),
    ("non-numeric price", ("CP001", "C/Mayor, 45", "cheap"), "price_eur_kwh"),
    ("empty location", ("CP001", "", "0.48"), "location"),
]


def test_invalid_registrations_are_refused_and_the_session_goes_on(central: Central, connect) -> None:
    monitor = connect(central)  # one session for every case: none of them ends it
    for what, fields, field in INVALID_REGISTRATIONS:
        answer = monitor.ask(LooseReg(*fields))
        assert isinstance(answer, Auth), f"{what}: {answer}"
        assert answer.status == "KO", f"{what}: {answer}"
        assert f"REG.{field}" in answer.text, f"{what}: the refusal does not name {field}: {answer.text!r}"

    answer = monitor.ask(ShortReg("CP001", "C/Mayor, 45"))  # wrong field count
    assert isinstance(answer, Auth) and answer.status == "KO", answer
    assert "field" in answer.text, answer.text

    assert central.network.snapshot() == []  # nothing registered
    assert not monitor.link.closed
    assert monitor.register("CP001").ok  # the same session can still register
    wait_state(central, "CP001", "ACTIVADO")
    wait_db(central, "CP001", "ACTIVADO")


# -- 3. errors before and after registration ---------------------------------------------------


def test_messages_before_registration_and_unknown_opcodes_get_err(central: Central, connect) -> None:
    monitor = connect(central)

    answer = monitor.ask(Hb("CP001"))
    assert isinstance(answer, Err) and answer.code == "NOT_REGISTERED", answer
    assert central.network.get("CP001") is None

    answer = monitor.ask(Zap("x"))
    assert isinstance(answer, Err) and answer.code == "UNKNOWN_OPCODE", answer
    assert "ZAP" in answer.text

    assert monitor.register("CP001").ok  # still the same, open session
    wait_state(central, "CP001", "ACTIVADO")

    answer = monitor.ask(Zap("again"))  # also after registration
    assert isinstance(answer, Err) and answer.code == "UNKNOWN_OPCODE", answer
    monitor.send(Avr("CP001", "still here?"))  # the session is still served
    wait_state(central, "CP001", "AVERIADO")
    assert not monitor.link.closed


# -- 4. fault and recovery --------------------------------------------------------------------------


def test_fault_and_recovery(central: Central, connect) -> None:
    monitor = connect(central)
    assert monitor.register("CP001").ok
    wait_db(central, "CP001", "ACTIVADO")

    monitor.send(Avr("CP001", "Engine answers KO (simulated fault)"))
    wait_state(central, "CP001", "AVERIADO")
    assert central.network.fault_of("CP001") == "Engine answers KO (simulated fault)"
    wait_db(central, "CP001", "AVERIADO")

    monitor.send(Rec("CP001"))
    wait_state(central, "CP001", "ACTIVADO")
    assert central.network.fault_of("CP001") is None
    wait_db(central, "CP001", "ACTIVADO")


# -- 5. the Monitor closes its socket ----------------------------------------------------------------


def test_closed_socket_disconnects_at_once(central: Central, connect) -> None:
    with_eot, bare = connect(central), connect(central)
    assert with_eot.register("CP001").ok
    assert bare.register("CP002").ok
    wait_db(central, "CP001", "ACTIVADO")
    wait_db(central, "CP002", "ACTIVADO")

    for monitor, cp_id, send_eot in ((with_eot, "CP001", True), (bare, "CP002", False)):
        closed_at = time.monotonic()
        monitor.close(send_eot=send_eot)
        wait_state(central, cp_id, "DESCONECTADO", timeout=0.5)
        assert time.monotonic() - closed_at < 0.5
    wait_db(central, "CP001", "DESCONECTADO")
    wait_db(central, "CP002", "DESCONECTADO")


# -- 6. silence ------------------------------------------------------------------------------------------


def test_silent_session_is_disconnected_and_closed(central: Central, connect) -> None:
    monitor = connect(central)
    assert monitor.register("CP001").ok
    registered_at = time.monotonic()

    wait_state(central, "CP001", "DESCONECTADO", timeout=SILENCE + 0.5)
    elapsed = time.monotonic() - registered_at
    assert elapsed >= SILENCE - 0.1, f"disconnected after {elapsed:.2f} s, before the silence timeout"
    assert isinstance(monitor.expect_closed(timeout=1.0), LinkError)
    wait_db(central, "CP001", "DESCONECTADO")


def test_heartbeats_keep_the_cp_activado(central: Central, connect) -> None:
    monitor = connect(central)
    assert monitor.register("CP001").ok
    until = time.monotonic() + 3 * SILENCE
    beats = 0
    while time.monotonic() < until:
        monitor.send(Hb("CP001"))
        beats += 1
        # 0.2 s between beats, during which Central must send nothing (and the link stays open)
        assert monitor.link.recv(timeout=0.2) is None
        assert state(central, "CP001") == "ACTIVADO"
    assert beats >= 8
    assert not monitor.link.closed
    assert db_rows(central)["CP001"].state == "ACTIVADO"


# -- 7. duplicate cp_id, foreign cp_id ---------------------------------------------------------------------


def test_newer_session_replaces_the_older_one(central: Central, connect) -> None:
    first = connect(central)
    assert first.register("CP001").ok
    wait_state(central, "CP001", "ACTIVADO")
    first_owner = central.network.owner("CP001")

    second = connect(central)
    assert second.register("CP001", "Otra calle 2", "0.30").ok
    assert isinstance(first.expect_closed(timeout=2.0), LinkError)
    # The replaced session's handler has ended (without disconnecting the CP).
    wait_until(lambda: central.monitors.session_count() == 1, 2.0,
               "the replaced session's handler to end")
    owner = central.network.owner("CP001")
    assert owner is not None and owner is not first_owner
    assert state(central, "CP001") == "ACTIVADO"
    wait_until(lambda: db_rows(central)["CP001"].location == "Otra calle 2", DB_TIMEOUT,
               "the newer registration's location stored", interval=0.02)
    row = db_rows(central)["CP001"]
    assert (row.state, row.price_eur_kwh) == ("ACTIVADO", Decimal("0.30"))

    second.send(Avr("CP001", "fault"))  # the newer session speaks for the CP
    wait_state(central, "CP001", "AVERIADO")


def test_state_message_for_another_cp_is_unexpected(central: Central, connect) -> None:
    monitor = connect(central)
    assert monitor.register("CP001").ok
    other = connect(central)
    assert other.register("CP002").ok

    answer = monitor.ask(Hb("CP002"))
    assert isinstance(answer, Err) and answer.code == "UNEXPECTED", answer
    answer = monitor.ask(Avr("CP002", "not mine"))
    assert isinstance(answer, Err) and answer.code == "UNEXPECTED", answer
    assert state(central, "CP002") == "ACTIVADO"  # CP002 untouched

    monitor.send(Hb("CP001"))  # the session goes on
    monitor.send(Avr("CP001", "mine"))
    wait_state(central, "CP001", "AVERIADO")
    assert not monitor.link.closed


# -- 8. restart of Central ---------------------------------------------------------------------------------


def test_restart_loads_cps_disconnected_and_monitors_register_again(start_central, db_url: str,
                                                                    connect) -> None:
    central = start_central()
    monitor = connect(central)
    assert monitor.register("CP001", "C/Mayor, 45", "0.48").ok
    wait_db(central, "CP001", "ACTIVADO")
    central.stop()
    monitor.expect_closed()

    # Simulate a crash that left the row ACTIVADO in the database.
    store = open_store(db_url)
    try:
        (row,) = store.load_charging_points()
        store.save_charging_points([replace(row, state="ACTIVADO")])
        assert store.load_charging_points()[0].state == "ACTIVADO"
    finally:
        store.close()

    restarted = start_central()
    assert state(restarted, "CP001") == "DESCONECTADO"
    stored = db_rows(restarted)["CP001"]
    assert (stored.state, stored.location, stored.price_eur_kwh, stored.stopped) == (
        "DESCONECTADO", "C/Mayor, 45", Decimal("0.48"), False)

    again = connect(restarted)
    assert again.register("CP001", "C/Mayor, 45", "0.48").ok
    wait_state(restarted, "CP001", "ACTIVADO")
    wait_db(restarted, "CP001", "ACTIVADO")


def test_stop_flag_survives_a_restart(start_central, connect) -> None:
    central = start_central()
    monitor = connect(central)
    assert monitor.register("CP001").ok
    wait_db(central, "CP001", "ACTIVADO")

    change = central.network.apply("CP001", Event.STOP, "test")
    assert change.row is not None and change.row.stopped
    central.writer.put(change.row)  # what Central does with every change
    row = wait_db(central, "CP001", "PARADO")
    assert row.stopped is True
    central.stop()

    restarted = start_central()
    row = db_rows(restarted)["CP001"]
    assert (row.state, row.stopped) == ("DESCONECTADO", True)
    again = connect(restarted)
    assert again.register("CP001").ok
    wait_state(restarted, "CP001", "PARADO")
    row = wait_db(restarted, "CP001", "PARADO")
    assert row.stopped is True


# -- 9. many Monitors at once ---------------------------------------------------------------------------------


def test_fifty_monitors_register_concurrently(start_central, connect) -> None:
    central = start_central(silence_timeout=30.0)  # these clients send no heartbeat
    count = 50
    barrier = threading.Barrier(count)
    answers: dict[str, Auth] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        cp_id = f"CP{n:03d}"
        try:
            barrier.wait(5)
            monitor = connect(central)
            answer = monitor.register(cp_id, f"Calle {n}", f"0.{n:02d}")
            with lock:
                answers[cp_id] = answer
        except BaseException as exc:  # reported below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert not any(thread.is_alive() for thread in threads), "some Monitors never finished"
    assert errors == []
    assert len(answers) == count and all(answer.ok for answer in answers.values())

    expected = {f"CP{n:03d}" for n in range(count)}
    assert {row.cp_id for row in central.network.snapshot() if row.state == "ACTIVADO"} == expected

    def all_stored() -> bool:
        rows = db_rows(central)
        return set(rows) == expected and all(row.state == "ACTIVADO" for row in rows.values())

    wait_until(all_stored, DB_TIMEOUT, "50 CPs ACTIVADO in the database", interval=0.05)
    rows = db_rows(central)
    assert rows["CP007"].location == "Calle 7" and rows["CP007"].price_eur_kwh == Decimal("0.07")
