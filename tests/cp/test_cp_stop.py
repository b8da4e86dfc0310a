"""A clean stop of an Engine or a Monitor, as real processes: what it means for the supply.

The Engine ends its supply ("engine stopped"), waits a bounded time for the broker to confirm
that end and keeps it in its journal if it was not confirmed (sent again at its next start).
The Monitor closes its Central session with EOT and its Engine link, so the Engine ends the
supply as "monitor lost". Both exit 0."""

from __future__ import annotations

import signal
import time
from decimal import Decimal

import pytest

from ev_common.protocol import Sst, Sup, Supr
from ev_cp_engine.engine import Engine
from ev_cp_engine.health_server import HealthServer
from tests.cp.engine_process import CP, CuttableBroker, EngineUnderTest, supply_ends
from tests.cp.fakes import FAST, HOST, FakeCentral
from tests.support.waiting import wait_until

def test_engine_stopped_without_the_broker_keeps_its_supply_end_and_exits_0(runner, tmp_path, tansu_factory,
                                                                              kafka_topic_prefix):
    broker = CuttableBroker(tansu_factory, kafka_topic_prefix)
    cp = EngineUnderTest(runner, tmp_path, broker.bootstrap, kafka_topic_prefix)
    try:
        engine = cp.start()
        cp.supply("s-unconfirmed")
        mark = engine.mark()
        broker.cut()  # the broker goes away during the supply
        engine.wait_for_output(r"Kafka unreachable: this CP cannot report supplies: the supply in course goes on",
                               timeout=25, after=mark)
        stopped = time.monotonic()
        assert engine.stop(signal.SIGTERM, timeout=15) == 0, engine.output()
        assert time.monotonic() - stopped < 10
        out = engine.output()
        assert "supply of driver D001 ended (engine stopped)" in out, out
        assert "not confirmed by Kafka: kept in the journal" in out, out
        [end] = cp.journal_ends()
        assert (end["session_id"], end["reason"], end["type"]) == ("s-unconfirmed", "engine stopped", "supply.end")
    finally:
        cp.close()
        broker.close()


def test_engine_clean_stop_reports_its_supply_and_a_kept_end_goes_out_at_the_next_start(
        runner, tmp_path, tansu_factory, kafka_topic_prefix):
    broker = CuttableBroker(tansu_factory, kafka_topic_prefix)
    topic = broker.topics.cp_telemetry
    cp = EngineUnderTest(runner, tmp_path, broker.bootstrap, kafka_topic_prefix)
    try:
        # 1. the broker goes away mid-supply: the end of the supply stopped with the Engine is kept
        engine = cp.start()
        cp.supply("s-1")
        mark = engine.mark()
        broker.cut()
        engine.wait_for_output(r"Kafka unreachable", timeout=25, after=mark)
        assert engine.stop(signal.SIGTERM, timeout=15) == 0, engine.output()
        assert [e["session_id"] for e in cp.journal_ends()] == ["s-1"]
        # 2. started again with the broker back: that end goes out, then leaves the journal
        broker.restore()
        engine = cp.start()
        engine.wait_for_output(r"sending again 1 supply end", timeout=10)
        wait_until(lambda: not cp.journal.exists(), 15, "the confirmed end to leave the journal")
        # 3. a clean stop (Ctrl+C) with the broker: the supply ends as "engine stopped", confirmed
        cp.supply("s-2")
        assert engine.stop(signal.SIGINT, timeout=15) == 0, engine.output()
        assert "supply of driver D001 ended (engine stopped)" in engine.output()
        assert not cp.journal.exists() and "not confirmed by Kafka" not in engine.output()
        ends = {e.session_id: e for e in supply_ends(broker.bootstrap, topic, 2)}
        assert {sid: e.reason for sid, e in ends.items()} == {"s-1": "engine stopped", "s-2": "engine stopped"}
        assert ends["s-2"].kwh > 0 or ends["s-2"].seq >= 1
    finally:
        cp.close()
        broker.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_monitor_clean_stop_closes_its_sessions_so_the_engine_ends_the_supply(runner, tmp_path, sig):
    central = FakeCentral().start()
    engine = Engine(say=lambda text: None)
    server = HealthServer(engine, HOST, 0, config=FAST).start()
    try:
        monitor = runner.start("monitor", [
            "--cp_id", CP, "--central_ip", HOST, "--central_port", str(central.port),
            "--engine_ip", HOST, "--engine_port", str(server.address[1])], script="ev_cp_monitor/EV_CP_M.py")
        central.wait_for(Sst, 15)
        central.send(Sup(CP, "s-m", "D001", Decimal("0.48")))
        assert central.wait_for(Supr, 5).ok
        engine.plug()
        assert monitor.stop(sig, timeout=15) == 0, monitor.output()
        central.wait(lambda: central.endings, 5, "the Central session to end")
        assert central.endings == ["EOT"]  # closed, not broken
        wait_until(lambda: engine.monitor is None and engine.supply is None, 5, "the Engine to end the supply")
        assert engine.unconfirmed_ends() == 1  # its end went out (no broker here to confirm it)
    finally:
        server.stop()
        central.stop()
