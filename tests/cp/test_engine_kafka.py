"""An Engine and its broker, as real processes: a CP that cannot reach Kafka cannot report a
supply, so while it is idle it answers its Monitor's checks KO (the Monitor reports the fault
to Central, which then authorises nothing there) and refuses supplies; a supply it holds goes
on, and its end reaches Kafka when the broker is back."""

from __future__ import annotations

from decimal import Decimal

from ev_common.link import Link, SessionRefused
from ev_common.protocol import Avr, Chk, Health, Hb, Rec, Sup, Supr
from ev_cp_engine.engine import KAFKA_DOWN
from tests.cp.engine_process import CP, CuttableBroker, EngineUnderTest, supply_ends
from tests.cp.fakes import FAST, HOST
from tests.support.services import free_port
from tests.support.waiting import wait_until

KAFKA_AVR = f"Engine answers KO ({KAFKA_DOWN})"


def connect(port: int) -> Link | None:
    """A Monitor's link, or None while the Engine still serves the session of the port probe."""
    try:
        return Link.connect(HOST, port, FAST)
    except SessionRefused:
        return None


def ask(link: Link, message, answer_type, timeout: float = 3.0):
    link.send(message)
    answer = link.recv(timeout=timeout)
    assert isinstance(answer, answer_type), answer
    return answer


def test_an_engine_with_no_broker_answers_ko_with_the_reason_and_refuses_supplies(runner, tmp_path):
    """The README's command without --kafka, on a machine where no broker listens."""
    cp = EngineUnderTest(runner, tmp_path, f"{HOST}:{free_port()}", "evt-nokafka-")  # nothing listens there
    try:
        engine = cp.start("--auto", monitor=False)
        # a Monitor of its own: the Engine's answers, exactly
        link = wait_until(lambda: connect(cp.port), 5, "the Engine to take its Monitor")  # after the port probe
        try:
            health = ask(link, Chk(CP), Health)
            assert (health.status, health.detail) == ("KO", KAFKA_DOWN)
            assert health.to_data() == b"HEALTH#KO#Kafka unreachable: this CP cannot report supplies"
            supr = ask(link, Sup(CP, "s-1", "D001", Decimal("0.48")), Supr)
            assert (supr.status, supr.reason) == ("KO", KAFKA_DOWN)
        finally:
            link.close("test over")
        engine.wait_for_output(r"Links: PROBLEM: Kafka UNREACHABLE: this CP cannot report supplies", 10)
        # the real Monitor reports it to Central as a fault, with the reason
        cp.start_monitor()
        avr = cp.central.wait_for(Avr, 10)
        assert avr.reason == KAFKA_AVR
    finally:
        cp.close()


def test_an_idle_engine_is_ko_while_kafka_is_away_and_ok_when_it_is_back(runner, tmp_path, tansu_factory,
                                                                         kafka_topic_prefix):
    broker = CuttableBroker(tansu_factory, kafka_topic_prefix)
    cp = EngineUnderTest(runner, tmp_path, broker.bootstrap, kafka_topic_prefix)
    try:
        engine = cp.start()
        # healthy at Central: every AVR answered by a REC (a slow first probe on a loaded machine
        # may have reported the broker late, and recovered)
        cp.central.wait(lambda: cp.central.of(Hb) and cp.monitor.monitor.last and cp.monitor.monitor.last.ok
                        and len(cp.central.of(Avr)) == len(cp.central.of(Rec)),
                        10, "a registered Monitor with a healthy Engine")
        faults, recoveries = len(cp.central.of(Avr)), len(cp.central.of(Rec))
        mark = engine.mark()
        broker.cut()
        avr = cp.central.wait_for(Avr, 25, count=faults + 1)  # the publisher's error: the Engine asks at once
        assert avr.reason == KAFKA_AVR
        engine.wait_for_output(r"Links: PROBLEM: Kafka UNREACHABLE", timeout=5, after=mark)
        broker.restore()  # nothing is published meanwhile: the Engine's probes see the broker back
        cp.central.wait_for(Rec, 15, count=recoveries + 1)
        engine.wait_for_output(r"Kafka reachable again: this CP reports its supplies", timeout=5, after=mark)
    finally:
        cp.close()
        broker.close()


def test_a_supply_that_ends_while_kafka_is_away_reaches_kafka_when_it_is_back(runner, tmp_path, tansu_factory,
                                                                              kafka_topic_prefix):
    """The outage does not stop the supply nor make the CP faulty while it runs; its end waits
    in the producer and the journal; when the broker is back, the end is delivered (with the
    energy supplied) and leaves the journal, and the CP is healthy again."""
    broker = CuttableBroker(tansu_factory, kafka_topic_prefix)
    cp = EngineUnderTest(runner, tmp_path, broker.bootstrap, kafka_topic_prefix)
    try:
        engine = cp.start()
        cp.supply("s-outage")
        mark = engine.mark()
        broker.cut()
        engine.wait_for_output(r"Kafka unreachable: this CP cannot report supplies: the supply in course goes on",
                               timeout=25, after=mark)
        engine.wait_for_output(r"Links: PROBLEM: Kafka UNREACHABLE: the supply goes on", timeout=15, after=mark)
        assert not cp.central.of(Avr) and cp.monitor.monitor.last.ok  # supplying: not a fault
        cp.press("u")  # the driver unplugs during the outage
        ended = engine.wait_for_output(r"supply of driver D001 ended \(unplugged\): ([0-9.]+) kWh", 10, after=mark)
        assert [e["session_id"] for e in cp.journal_ends()] == ["s-outage"]
        assert cp.central.wait_for(Avr, 10).reason == KAFKA_AVR  # idle now: no new supply until Kafka is back
        broker.restore()
        [end] = supply_ends(broker.bootstrap, broker.topics.cp_telemetry, 1, timeout=60)
        assert (end.session_id, end.reason) == ("s-outage", "unplugged")
        assert end.kwh > 0 and f"{end.kwh:.3f}" == ended.group(1)
        wait_until(lambda: not cp.journal.exists(), 15, "the confirmed end to leave the journal")
        cp.central.wait_for(Rec, 15)
    finally:
        cp.close()
        broker.close()
