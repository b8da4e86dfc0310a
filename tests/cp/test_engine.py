"""The Engine's state machine with an injected clock: what it emits and when."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ev_common.records import SupplyEnd, SupplyRequest, Telemetry
from ev_cp_engine.engine import Engine, Phase
from tests.support.clock import FakeClock


@pytest.fixture
def clock():
    return FakeClock(100.0)


class Emitted(list):
    """A fake ``emit``: keeps the records, and the delivery callbacks to call when the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.callbacks: list = []  # (record, on_delivery)

    def __call__(self, record, on_delivery=None) -> None:
        self.append(record)
        if on_delivery is not None:
            self.callbacks.append((record, on_delivery))


@pytest.fixture
def emitted():
    return Emitted()


def make(clock, emitted, **kwargs):
    engine = Engine(emitted, power_kw=Decimal("36"), clock=clock, **kwargs)
    engine.monitor_connected("127.0.0.1:1")
    engine.health("CP1")
    return engine


def test_authorise_plug_tick_unplug(clock, emitted):
    engine = make(clock, emitted)
    assert engine.authorise("s1", "D1", Decimal("0.50")) == (True, "")
    assert engine.phase is Phase.AUTHORISED
    engine.plug()
    assert engine.phase is Phase.SUPPLYING
    for _ in range(3):
        clock.now += 1
        engine.tick()
    telemetry = [r for r in emitted if isinstance(r, Telemetry)]
    assert [t.seq for t in telemetry] == [1, 2, 3]
    assert telemetry[-1].kwh == Decimal("0.0300")  # 36 kW for 3 s
    assert telemetry[-1].amount_eur == Decimal("0.0150")
    clock.now += 0.5
    engine.unplug()
    end = emitted[-1]
    assert isinstance(end, SupplyEnd) and (end.reason, end.seq, end.kwh) == ("unplugged", 4, Decimal("0.0350"))
    assert engine.phase is Phase.IDLE


@pytest.mark.parametrize("setup,reason", [
    (lambda e: setattr(e, "faulty", True), "the CP is faulty"),
    (lambda e: setattr(e, "stopped", True), "stopped by Central"),
    (lambda e: e.monitor_lost("gone"), "no Monitor connected"),
    (lambda e: e.authorise("s0", "D0", Decimal(1)), "busy"),
])
def test_refusals(clock, emitted, setup, reason):
    engine = make(clock, emitted)
    setup(engine)
    ok, why = engine.authorise("s1", "D1", Decimal("0.5"))
    assert not ok and reason in why


@pytest.mark.parametrize("event,reason", [
    (lambda e: e.toggle_fault(), "fault"),
    (lambda e: e.stop(), "stopped"),
    (lambda e: e.monitor_lost("closed"), "monitor lost"),
])
def test_a_supply_ends_at_once_on_fault_stop_or_lost_monitor(clock, emitted, event, reason):
    engine = make(clock, emitted)
    engine.authorise("s1", "D1", Decimal("0.5"))
    engine.plug()
    clock.now += 1
    engine.tick()
    clock.now += 0.5  # half a second after the last telemetry: that energy was delivered too
    event(engine)
    assert isinstance(emitted[-1], SupplyEnd) and emitted[-1].reason == reason
    assert emitted[-1].kwh == Decimal("0.0150")  # 36 kW for 1.5 s
    assert engine.phase is Phase.IDLE


def test_auto_mode_plugs_and_unplugs_by_itself(clock, emitted):
    engine = make(clock, emitted, auto_seconds=3)
    engine.authorise("s1", "D1", Decimal("0.5"))
    for _ in range(6):
        clock.now += 1
        engine.tick()
    ends = [r for r in emitted if isinstance(r, SupplyEnd)]
    assert len(ends) == 1 and ends[0].reason == "unplugged"


def test_plug_timeout_cancels(clock, emitted):
    engine = make(clock, emitted, plug_timeout=10)
    engine.authorise("s1", "D1", Decimal("0.5"))
    clock.now += 11
    engine.tick()
    assert emitted[-1].reason == "not plugged in" and engine.phase is Phase.IDLE


def test_request_at_the_cp(clock, emitted):
    engine = make(clock, emitted)
    engine.request_supply("D7")
    assert isinstance(emitted[-1], SupplyRequest) and emitted[-1].source == "cp" and emitted[-1].cp_id == "CP1"
    engine.monitor_lost("gone")
    assert "no Monitor" in engine.request_supply("D7")
    assert len([r for r in emitted if isinstance(r, SupplyRequest)]) == 1


def test_stop_then_resume(clock, emitted):
    engine = make(clock, emitted)
    engine.stop()
    assert not engine.authorise("s1", "D1", Decimal(1))[0]
    engine.resume()
    assert engine.authorise("s1", "D1", Decimal(1))[0]


def test_journal_survives_a_crash_and_is_reported_once(clock, emitted, tmp_path):
    from ev_cp_engine.journal import SupplyJournal

    journal = SupplyJournal(tmp_path / "engine.journal.json")
    engine = make(clock, emitted, journal=journal)
    engine.authorise("s1", "D1", Decimal("0.50"))
    engine.plug()
    for _ in range(2):
        clock.now += 1
        engine.tick()
    last = [r for r in emitted if isinstance(r, Telemetry)][-1]
    assert journal.read()["seq"] == 2  # written every second
    # the process dies here: a new Engine with the same journal reports the supply
    after = Emitted()
    restarted = Engine(after, clock=clock, journal=SupplyJournal(tmp_path / "engine.journal.json"))
    assert "reported the supply" in restarted.recover()
    [end] = after
    assert isinstance(end, SupplyEnd) and end.reason == "engine restarted"
    assert (end.session_id, end.seq, end.kwh) == ("s1", 3, last.kwh)
    [(_, confirm)] = after.callbacks
    confirm(True)  # the broker has it: it leaves the journal
    assert restarted.recover() is None and not (tmp_path / "engine.journal.json").exists()


def test_journal_keeps_the_end_until_the_broker_confirms_it(clock, emitted, tmp_path):
    from ev_cp_engine.journal import SupplyJournal

    journal = SupplyJournal(tmp_path / "j.json")
    engine = make(clock, emitted, journal=journal)
    engine.authorise("s1", "D1", Decimal("0.50"))
    assert journal.read()["session_id"] == "s1"
    engine.plug()
    clock.now += 1
    engine.unplug()
    assert journal.read() is None  # no longer in progress...
    assert [e["session_id"] for e in SupplyJournal(tmp_path / "j.json").ends()] == ["s1"]  # ...but kept, on disk
    assert engine.unconfirmed_ends() == 1
    [(end, confirm)] = emitted.callbacks
    assert end.reason == "unplugged"
    confirm(True)
    assert journal.ends() == [] and engine.unconfirmed_ends() == 0 and not (tmp_path / "j.json").exists()


def test_an_end_the_broker_refused_is_sent_again_and_survives_a_restart(clock, emitted, tmp_path):
    from ev_cp_engine.journal import SupplyJournal

    path = tmp_path / "j.json"
    engine = make(clock, emitted, journal=SupplyJournal(path))
    engine.authorise("s1", "D1", Decimal("0.50"))
    engine.toggle_fault()  # ends it: supply.end "fault"
    [(end, refused)] = emitted.callbacks
    refused(False)  # undelivered
    clock.now += 0.01
    engine.tick()
    assert len(emitted.callbacks) == 1  # not at once: after a backoff
    clock.now += 61  # past the largest backoff
    engine.tick()
    assert len(emitted.callbacks) == 2 and emitted.callbacks[1][0] == end  # sent again, same record
    # the Engine dies before the broker answers: a new one sends it again at start
    again = Emitted()
    restarted = Engine(again, clock=clock, journal=SupplyJournal(path))
    assert "sending again 1 supply end" in restarted.recover()
    [(resent, confirm)] = again.callbacks
    assert (resent.session_id, resent.reason, resent.kwh) == ("s1", "fault", end.kwh)
    assert SupplyJournal(path).ends() != []  # still kept until confirmed
    confirm(True)
    assert SupplyJournal(path).ends() == [] and not path.exists()


def test_restart_sends_the_running_supply_and_the_unconfirmed_ends(clock, emitted, tmp_path):
    from ev_cp_engine.journal import SupplyJournal

    path = tmp_path / "j.json"
    engine = make(clock, emitted, journal=SupplyJournal(path))
    for n in range(3):
        engine.authorise(f"s{n}", "D1", Decimal("0.50"))
        engine.plug()
        clock.now += 1
        engine.tick()
        if n < 2:
            engine.unplug()  # never confirmed: the broker is away
    again = Emitted()
    restarted = Engine(again, clock=clock, journal=SupplyJournal(path))
    said = restarted.recover()
    assert "reported the supply interrupted by the last stop" in said and "sending again 2" in said
    assert sorted((e.session_id, e.reason) for e in again) == [
        ("s0", "unplugged"), ("s1", "unplugged"), ("s2", "engine restarted")]
    for _, confirm in again.callbacks[:2]:
        confirm(True)
    assert [e["session_id"] for e in SupplyJournal(path).ends()] == [again.callbacks[2][0].session_id]


def test_the_journal_keeps_a_bounded_number_of_ends(tmp_path):
    from ev_cp_engine.journal import SupplyJournal

    journal = SupplyJournal(tmp_path / "j.json", max_ends=3)
    for n in range(5):
        journal.ended(f"s{n}", {"session_id": f"s{n}"})
    assert [e["session_id"] for e in SupplyJournal(tmp_path / "j.json").ends()] == ["s2", "s3", "s4"]


def test_a_journal_of_the_earlier_form_is_still_reported(clock, tmp_path):
    import json

    from ev_cp_engine.journal import SupplyJournal

    path = tmp_path / "j.json"
    path.write_text(json.dumps({"cp_id": "CP1", "session_id": "s1", "driver_id": "D1", "price": "0.5",
                                "seq": 4, "kwh": "0.0400", "amount_eur": "0.0200"}))
    out = Emitted()
    assert "reported the supply" in Engine(out, clock=clock, journal=SupplyJournal(path)).recover()
    assert (out[0].session_id, out[0].seq, out[0].kwh) == ("s1", 5, Decimal("0.0400"))


def test_shut_down_ends_the_supply_as_engine_stopped_and_takes_no_other(clock, emitted):
    engine = make(clock, emitted)
    engine.authorise("s1", "D1", Decimal("0.50"))
    engine.plug()
    assert "engine stopped" in engine.shut_down()
    assert emitted[-1].reason == "engine stopped" and engine.phase is Phase.IDLE
    ok, why = engine.authorise("s2", "D1", Decimal("0.50"))
    assert not ok and "stopping" in why


def test_damaged_journal_is_set_aside(tmp_path, caplog):
    from ev_cp_engine.journal import SupplyJournal

    path = tmp_path / "j.json"
    path.write_text("{not json")
    assert SupplyJournal(path).read() is None
    assert (tmp_path / "j.json.damaged").exists() and "damaged" in caplog.text


# -- the supply it holds (SQ -> SST) and cancellations (CAN) ----------------------------------------


def test_supply_state_idle_authorised_supplying(clock, emitted):
    engine = make(clock, emitted)
    assert engine.supply_state() == ("IDLE", "", 0, Decimal(0))
    engine.authorise("s1", "D1", Decimal("0.5"))
    assert engine.supply_state() == ("AUTHORISED", "s1", 0, Decimal(0))
    engine.plug()
    clock.now += 1.3
    engine.tick()
    phase, session_id, seq, kwh = engine.supply_state()
    assert (phase, session_id, seq) == ("SUPPLYING", "s1", 1)
    assert kwh == Decimal("0.0130") and kwh.as_tuple().exponent == -4  # quantised to 4 places


def test_cancel_ends_the_supply_held_and_refuses_it_later(clock, emitted):
    engine = make(clock, emitted)
    engine.authorise("s1", "D1", Decimal("0.5"))
    engine.plug()
    clock.now += 1
    engine.tick()
    engine.cancel("s1", "not known to Central")
    [end] = [r for r in emitted if isinstance(r, SupplyEnd)]
    assert (end.session_id, end.reason) == ("s1", "cancelled by Central: not known to Central")
    assert end.kwh == Decimal("0.0100") and engine.phase is Phase.IDLE
    ok, why = engine.authorise("s1", "D1", Decimal("0.5"))
    assert not ok and "cancelled" in why
    engine.cancel("s1", "again")  # idempotent: nothing more happens
    assert len([r for r in emitted if isinstance(r, SupplyEnd)]) == 1 and engine.phase is Phase.IDLE


def test_cancel_before_the_late_sup_refuses_it_and_leaves_other_supplies_alone(clock, emitted):
    engine = make(clock, emitted)
    engine.authorise("s2", "D2", Decimal("0.5"))
    engine.cancel("s1", "Central gave up")  # not held: only remembered
    assert engine.supply_state()[1] == "s2" and not [r for r in emitted if isinstance(r, SupplyEnd)]
    engine.unplug()
    engine.cancel("s2", "x")
    ok, why = engine.authorise("s1", "D1", Decimal("0.5"))
    assert not ok and "cancelled" in why


def test_cancelled_sessions_are_remembered_up_to_a_bound(clock, emitted):
    from ev_cp_engine.engine import CANCELLED_KEPT

    engine = make(clock, emitted)
    for n in range(CANCELLED_KEPT + 1):
        engine.cancel(f"c{n}", "gone")
    assert engine.authorise("c0", "D1", Decimal("0.5"))[0]  # the oldest was forgotten
    engine.cancel("c0", "gone")
    assert not engine.authorise(f"c{CANCELLED_KEPT}", "D1", Decimal("0.5"))[0]


def test_the_same_sup_twice_is_accepted_once(clock, emitted):
    engine = make(clock, emitted)
    assert engine.authorise("s1", "D1", Decimal("0.5")) == (True, "")
    assert engine.authorise("s1", "D1", Decimal("0.5")) == (True, "")  # a retransmission
    assert not engine.authorise("s2", "D2", Decimal("0.5"))[0]


def test_the_engine_answers_sq_and_serves_can_over_its_socket(clock, emitted):
    from ev_common.link import Link
    from ev_common.protocol import Can, Chk, Health, Sq, Sst, Sup, Supr
    from ev_cp_engine.health_server import HealthServer
    from tests.cp.fakes import FAST, HOST

    engine = Engine(emitted, clock=clock, say=lambda text: None)
    server = HealthServer(engine, HOST, 0, config=FAST).start()
    link = Link.connect(HOST, server.address[1], FAST)
    try:
        link.send(Chk("CP1"))
        assert isinstance(link.recv(timeout=2), Health)
        link.send(Sq("CP1"))
        assert link.recv(timeout=2) == Sst.idle("CP1")
        link.send(Sup("CP1", "s1", "D1", Decimal("0.5")))
        assert link.recv(timeout=2).ok
        link.send(Sq("CP1"))
        assert link.recv(timeout=2) == Sst("CP1", "AUTHORISED", "s1", 0, Decimal(0))
        link.send(Can("CP1", "s1", "the Engine did not answer in time"))
        link.send(Sq("CP1"))
        assert link.recv(timeout=2).phase == "IDLE"
        assert emitted[-1].reason == "cancelled by Central: the Engine did not answer in time"
        link.send(Sup("CP1", "s1", "D1", Decimal("0.5")))
        late = link.recv(timeout=2)
        assert isinstance(late, Supr) and not late.ok and "cancelled" in late.reason
    finally:
        link.close()
        server.stop()


def test_every_message_twice_at_the_engine_has_the_outcome_of_once(clock, emitted):
    """A retransmitted frame may be delivered twice: the Engine serves each opcode it accepts
    twice with the outcome of once, and its session with the Monitor goes on."""
    from ev_common.link import Link
    from ev_common.protocol import Can, Chk, Health, Resume, Sq, Sst, Stop, Sup, Supr
    from ev_cp_engine.health_server import HealthServer
    from tests.cp.fakes import FAST, HOST

    engine = Engine(emitted, clock=clock, say=lambda text: None)
    server = HealthServer(engine, HOST, 0, config=FAST).start()
    link = Link.connect(HOST, server.address[1], FAST)

    def twice(message, answer_type=None):
        answers = []
        for _ in range(2):
            link.send(message)
            if answer_type is not None:
                answer = link.recv(timeout=2)
                assert isinstance(answer, answer_type), answer
                answers.append(answer)
        return answers

    try:
        assert [a.ok for a in twice(Chk("CP1"), Health)] == [True, True]
        assert [a.ok for a in twice(Sup("CP1", "s1", "D1", Decimal("0.5")), Supr)] == [True, True]
        assert twice(Sq("CP1"), Sst) == [Sst("CP1", "AUTHORISED", "s1", 0, Decimal(0))] * 2
        twice(Stop("CP1"))
        assert engine.stopped and engine.supply is None
        assert [e.reason for e in emitted if isinstance(e, SupplyEnd)] == ["stopped"]  # ended once
        twice(Resume("CP1"))
        assert not engine.stopped
        twice(Can("CP1", "s1", "gone"))  # already ended: nothing more
        assert [e.session_id for e in emitted if isinstance(e, SupplyEnd)] == ["s1"]
        assert twice(Sq("CP1"), Sst) == [Sst.idle("CP1")] * 2
    finally:
        link.close()
        server.stop()


# -- the broker: a CP that cannot report supplies takes none ---------------------------------------------------


def test_an_idle_engine_that_cannot_reach_kafka_answers_ko_and_refuses_supplies(clock, emitted):
    from ev_cp_engine.engine import KAFKA_DOWN

    said = []
    engine = make(clock, emitted, say=said.append)
    assert engine.health("CP1") == (True, "")
    engine.kafka_ok(False)
    assert engine.health("CP1") == (False, KAFKA_DOWN)
    assert KAFKA_DOWN == "Kafka unreachable: this CP cannot report supplies"
    assert engine.authorise("s1", "D1", Decimal("0.5")) == (False, KAFKA_DOWN)
    assert engine.request_supply("D1") == f"cannot request a supply: {KAFKA_DOWN}"
    assert not [r for r in emitted if isinstance(r, SupplyRequest)] and engine.phase is Phase.IDLE
    engine.kafka_ok(False)  # said once per change
    assert [line for line in said if line.startswith(KAFKA_DOWN)] == [
        f"{KAFKA_DOWN}: refusing supplies until Kafka is back"]
    engine.kafka_ok(True)
    assert engine.health("CP1") == (True, "")
    assert engine.authorise("s1", "D1", Decimal("0.5")) == (True, "")
    assert said[-2] == "Kafka reachable again: this CP reports its supplies"


def test_the_simulated_fault_is_reported_before_the_broker(clock, emitted):
    engine = make(clock, emitted)
    engine.kafka_ok(False)
    engine.toggle_fault()
    assert engine.health("CP1") == (False, "simulated fault")


def test_a_supply_held_goes_on_through_a_kafka_outage_and_its_end_waits_for_the_broker(clock, emitted, tmp_path):
    """The outage does not end the supply nor make the CP faulty; once it ended, the idle CP is
    KO until the broker is back; the end is kept (journal) until the broker confirms it."""
    from ev_cp_engine.engine import KAFKA_DOWN
    from ev_cp_engine.journal import SupplyJournal

    path = tmp_path / "j.json"
    engine = make(clock, emitted, journal=SupplyJournal(path))
    engine.authorise("s1", "D1", Decimal("0.50"))
    engine.kafka_ok(False)
    assert engine.health("CP1") == (True, "")  # authorised, not plugged yet: held, goes on
    engine.plug()
    for _ in range(3):
        clock.now += 1
        engine.tick()
        assert engine.health("CP1") == (True, "")
    assert engine.phase is Phase.SUPPLYING
    assert [t.seq for t in emitted if isinstance(t, Telemetry)] == [1, 2, 3]  # queued in the producer
    engine.unplug()
    [(end, delivered)] = emitted.callbacks
    assert (end.session_id, end.reason, end.kwh) == ("s1", "unplugged", Decimal("0.0300"))
    assert engine.health("CP1") == (False, KAFKA_DOWN)  # idle now: no new supply until Kafka is back
    assert [e["session_id"] for e in SupplyJournal(path).ends()] == ["s1"]
    engine.kafka_ok(True)  # the broker is back and takes the end the producer held
    delivered(True)
    assert engine.health("CP1") == (True, "")
    assert engine.unconfirmed_ends() == 0 and not path.exists()


def test_finish_ends_the_supply_held_as_an_unplug_once(clock, emitted):
    engine = make(clock, emitted)
    engine.authorise("s1", "FLAT3B", Decimal("0.5"))
    engine.plug()
    clock.now += 2
    engine.tick()
    clock.now += 0.5
    engine.finish("s2")  # not held: nothing happens
    assert engine.phase is Phase.SUPPLYING and not [r for r in emitted if isinstance(r, SupplyEnd)]
    engine.finish("s1")
    [end] = [r for r in emitted if isinstance(r, SupplyEnd)]
    assert (end.session_id, end.reason, end.kwh) == ("s1", "unplugged", Decimal("0.0250"))  # 36 kW, 2.5 s
    engine.finish("s1")  # idempotent
    assert len([r for r in emitted if isinstance(r, SupplyEnd)]) == 1 and engine.phase is Phase.IDLE
    assert engine.authorise("s3", "D1", Decimal("0.5"))[0]  # the CP is free; s1 is not remembered as cancelled


def test_finish_before_the_plug_ends_with_no_energy(clock, emitted):
    engine = make(clock, emitted)
    engine.authorise("s1", "FLAT3B", Decimal("0.5"))
    clock.now += 0.5
    engine.finish("s1")
    [end] = [r for r in emitted if isinstance(r, SupplyEnd)]
    assert (end.reason, end.kwh, end.amount_eur) == ("unplugged", Decimal("0.0000"), Decimal("0.0000"))
