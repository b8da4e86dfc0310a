"""Every message may arrive twice (a late ACK makes the sender retransmit): Central with real
sockets and a real database serves each opcode twice, or out of order, with the same outcome
as once. Also: a late or repeated SUPR, the supply state a CP reports after registering (SST),
and a clean stop of Central that is not reported as the CPs' failure.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from ev_central.app import Central
from ev_central.server import CPUnreachable
from ev_common.protocol import Avr, Can, Hb, Rec, Sst, Sup, Supr
from tests.central.test_central_integration import (  # noqa: F401  (fixtures)
    connect,
    db_url,
    start_central,
    state,
    wait_db,
    wait_state,
)

PRICE = Decimal("0.48")


@pytest.fixture
def central(start_central) -> Central:
    return start_central(silence_timeout=2.0)


def ask_in_background(central: Central, cp_id: str, session_id: str, timeout: float = 3.0):
    pool = ThreadPoolExecutor(1)
    future = pool.submit(central.monitors.ask, cp_id, Sup(cp_id, session_id, "D1", PRICE), timeout)
    pool.shutdown(wait=False)
    return future


def test_every_state_message_twice_has_the_outcome_of_once(central: Central, connect) -> None:
    monitor = connect(central)
    for _ in range(2):
        assert monitor.register("CP001").ok
    assert state(central, "CP001") == "ACTIVADO"
    for message, expected in ((Hb("CP001"), "ACTIVADO"), (Avr("CP001", "Engine answers KO"), "AVERIADO"),
                              (Rec("CP001"), "ACTIVADO"), (Sst.idle("CP001"), "ACTIVADO")):
        monitor.send(message)
        monitor.send(message)
        wait_state(central, "CP001", expected)
    wait_db(central, "CP001", "ACTIVADO")
    monitor.send(Hb("CP001"))  # the session is alive
    assert state(central, "CP001") == "ACTIVADO"


def test_a_repeated_supr_does_not_end_the_session(central: Central, connect) -> None:
    monitor = connect(central)
    assert monitor.register("CP001").ok
    asked = ask_in_background(central, "CP001", "s1")
    sup = monitor.answer()
    assert isinstance(sup, Sup) and sup.session_id == "s1"
    answer = Supr("CP001", "s1", "OK", "")
    monitor.send(answer)
    monitor.send(answer)  # retransmitted: its ACK came late
    assert asked.result(5).ok
    monitor.send(answer)  # and once more after ask returned
    monitor.send(Hb("CP001"))
    assert state(central, "CP001") == "ACTIVADO"
    assert central.monitors.session_count() == 1
    assert monitor.link.recv(timeout=0.3) is None  # no CAN for a supply Central took


def test_an_answer_after_central_gave_up_is_cancelled_at_the_cp(central: Central, connect) -> None:
    monitor = connect(central)
    assert monitor.register("CP001").ok
    asked = ask_in_background(central, "CP001", "s2", timeout=0.3)
    assert isinstance(monitor.answer(), Sup)
    with pytest.raises(CPUnreachable):
        asked.result(5)
    monitor.send(Supr("CP001", "s2", "OK", ""))  # the Engine accepted late
    cancel = monitor.answer()
    assert cancel == Can("CP001", "s2", "Central gave up waiting for the CP's answer")
    monitor.send(Supr("CP001", "s2", "KO", "late refusal"))  # a late refusal needs nothing
    monitor.send(Hb("CP001"))
    assert central.monitors.session_count() == 1


def test_a_supply_the_cp_reports_that_central_does_not_know_is_cancelled(central: Central, connect) -> None:
    monitor = connect(central)
    assert monitor.register("CP001").ok
    report = Sst("CP001", "SUPPLYING", "ghost", 4, Decimal("1.25"))
    for _ in range(2):  # twice: cancelled each time it is reported
        monitor.send(report)
        assert monitor.answer() == Can("CP001", "ghost", "Central has no open supply with this id")
    assert state(central, "CP001") == "ACTIVADO"


def test_a_reply_to_a_message_of_an_older_session_ends_that_session(central: Central, connect) -> None:
    old = connect(central)
    assert old.register("CP001").ok
    new = connect(central)
    assert new.register("CP001").ok
    old.expect_closed()
    new.send(Hb("CP001"))
    assert state(central, "CP001") == "ACTIVADO"


def test_a_clean_stop_of_central_reports_no_cp_as_failed(central: Central, connect) -> None:
    changes = []
    forward = central.monitors.on_change
    central.monitors.on_change = lambda change: (changes.append(change), forward(change))
    monitors = [connect(central) for _ in range(3)]
    for n, monitor in enumerate(monitors):
        assert monitor.register(f"CP00{n}").ok
    wait_db(central, "CP002", "ACTIVADO")
    changes.clear()
    central.stop()
    for monitor in monitors:
        monitor.expect_closed()  # EOT: the Monitors register again when Central is back
    assert [c for c in changes if c.new.value == "DESCONECTADO"] == []
    assert {state(central, f"CP00{n}") for n in range(3)} == {"ACTIVADO"}
