"""The Monitor between Central and its Engine, against scripted peers on real sockets:
signs of life on time while a slow Engine is asked, relays in order, SQ/SST after every
registration and after every new Engine link, CAN relayed and sent after a late Engine."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ev_common.protocol import Avr, Can, Hb, Sq, Sst, Stop, Sup, Supr
from ev_cp_monitor.central_client import ENGINE_LATE
from tests.cp.fakes import FakeCentral, FakeEngine, MonitorThread

CP = "CP001"


@pytest.fixture
def peers():
    started = []

    def make(engine: FakeEngine | None = None):
        central = FakeCentral().start()
        engine = (engine or FakeEngine()).start()
        monitor = MonitorThread(central.port, engine.port).start()
        started.extend([monitor, engine, central])
        return central, engine, monitor

    yield make
    for thing in started:
        thing.stop()


def registered(central: FakeCentral, engine: FakeEngine) -> None:
    central.wait_for(Hb, 5.0)
    central.wait_for(Sst, 5.0)  # the registration's SQ/SST is done


def test_signs_of_life_are_on_time_while_a_slow_engine_is_asked(peers):
    central, engine, monitor = peers(FakeEngine(sup_delay=2.5))
    central.wait_for(Hb, 5.0, count=2)
    central.send(Sup(CP, "s-slow", "D001", Decimal("0.48")))
    asked = engine.wait_for(Sup, 2.0) and engine.times(Sup)[0]
    supr = central.wait_for(Supr, 4.0)
    assert (supr.session_id, supr.status, supr.reason) == ("s-slow", "KO", ENGINE_LATE)
    answered = central.times(Supr)[0]
    central.wait(lambda: [t for t in central.times(Hb) if t > answered + 1.0], 3.0, "an HB after the answer")
    beats = central.times(Hb)
    during = [t for t in beats if asked - 1.5 <= t <= answered + 1.5]
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert len(during) >= 3 and max(gaps) <= 1.5, f"HB gaps {gaps} around a relay of {answered - asked:.2f} s"


def test_after_answering_for_a_late_engine_the_monitor_cancels_that_supply_at_the_engine(peers):
    central, engine, monitor = peers(FakeEngine(sup_delay=2.5))
    registered(central, engine)
    central.send(Sup(CP, "s-late", "D001", Decimal("0.48")))
    central.wait_for(Supr, 4.0)
    can = engine.wait_for(Can, 3.0)
    assert (can.cp_id, can.session_id) == (CP, "s-late") and "did not answer" in can.reason
    assert engine.times(Can)[0] >= central.times(Supr)[0]  # the answer to Central first


def test_central_requests_reach_the_engine_one_at_a_time_in_order(peers):
    central, engine, monitor = peers(FakeEngine(sup_delay=2.5))
    registered(central, engine)
    central.send(Sup(CP, "s-1", "D001", Decimal("0.48")))
    central.send(Stop(CP))
    central.send(Can(CP, "s-0", "Central gave up"))
    engine.wait_for(Can, 5.0, count=2)
    relayed = [m for _, m in engine.received if isinstance(m, (Sup, Stop, Can))]
    assert [(m.OPCODE, getattr(m, "session_id", "")) for m in relayed] == [
        ("SUP", "s-1"), ("CAN", "s-1"), ("STOP", ""), ("CAN", "s-0")]
    assert central.of(Supr)[0].session_id == "s-1"


def test_the_supply_state_goes_to_central_after_every_registration(peers):
    central, engine, monitor = peers()
    engine.sst = lambda cp_id: Sst(cp_id, "SUPPLYING", "s-9", 7, Decimal("1.2345"))
    first = central.wait_for(Sst, 5.0)
    assert (first.phase, first.session_id, first.seq, first.kwh) == ("SUPPLYING", "s-9", 7, Decimal("1.2345"))
    assert engine.of(Sq)[0].cp_id == CP
    central.drop_session()  # Central closes the session: the Monitor registers again
    central.wait(lambda: central.sessions == 2, 5.0, "a second registration")
    central.wait_for(Sst, 5.0, count=2)


def test_no_supply_state_while_the_engine_is_away_then_it_follows_in_the_same_session(peers):
    from tests.support.services import free_port

    port = free_port()
    central = FakeCentral().start()
    monitor = MonitorThread(central.port, port).start()
    engine = None
    try:
        central.wait_for(Avr, 5.0)  # registered; the Engine is unreachable
        assert central.of(Sst) == []
        engine = FakeEngine(port).start()
        sst = central.wait_for(Sst, 5.0)
        assert sst.phase == "IDLE" and central.sessions == 1
    finally:
        monitor.stop()
        if engine is not None:
            engine.stop()
        central.stop()


def test_an_engine_that_does_not_tell_its_supply_is_asked_again(peers):
    central, engine, monitor = peers(FakeEngine(answer_sq=False))
    engine.wait_for(Sq, 5.0)
    central.wait_for(Hb, 5.0, count=2)
    assert central.of(Sst) == []  # nothing said when the Engine does not answer
    engine.answer_sq = True
    central.wait_for(Sst, 8.0)
    assert len(engine.of(Sq)) >= 2 and central.sessions == 1


def test_a_new_engine_link_is_followed_by_its_supply_state(peers):
    central, engine, monitor = peers()
    central.wait_for(Sst, 5.0)
    port = engine.port
    engine.stop()  # the Engine restarts
    central.wait_for(Avr, 5.0)
    again = FakeEngine(port).start()
    try:
        central.wait_for(Sst, 5.0, count=2)
        assert central.sessions == 1
    finally:
        again.stop()


def test_central_cancel_is_relayed_to_the_engine(peers):
    central, engine, monitor = peers()
    registered(central, engine)
    central.send(Can(CP, "s-5", "unknown to Central"))
    can = engine.wait_for(Can, 3.0)
    assert (can.session_id, can.reason) == ("s-5", "unknown to Central")


def test_a_sup_beyond_the_relay_queue_is_refused_at_once():
    from ev_cp_monitor.central_client import BUSY

    central = FakeCentral().start()
    engine = FakeEngine(sup_delay=2.5).start()
    monitor = MonitorThread(central.port, engine.port, relay_queue=1).start()
    try:
        registered(central, engine)
        central.send(Sup(CP, "s-1", "D001", Decimal("0.48")))
        engine.wait_for(Sup, 3.0)  # being relayed
        central.send(Sup(CP, "s-2", "D001", Decimal("0.48")))  # waits in the queue
        central.send(Sup(CP, "s-3", "D001", Decimal("0.48")))  # no room
        busy = central.wait_for(Supr, 1.0, where=lambda m: m.session_id == "s-3")
        assert (busy.status, busy.reason) == ("KO", BUSY)
        assert [m.session_id for m in central.of(Supr)] == ["s-3"]  # before the Engine's answers
        central.wait_for(Supr, 8.0, where=lambda m: m.session_id == "s-2")
        assert "s-3" not in [m.session_id for m in engine.of(Sup)]
    finally:
        monitor.stop()
        engine.stop()
        central.stop()
