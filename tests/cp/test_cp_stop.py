"""A clean stop of an Engine or a Monitor, as real processes: what it means for the supply.

The Engine ends its supply ("engine stopped"), waits a bounded time for the broker to confirm
that end and keeps it in its journal if it was not confirmed (sent again at its next start).
The Monitor closes its Central session with EOT and its Engine link, so the Engine ends the
supply as "monitor lost". Both exit 0."""

from __future__ import annotations

import json
import signal
import time
from decimal import Decimal
from pathlib import Path

import pytest

from ev_common.bus import Topics
from ev_common.protocol import Hb, Sst, Sup, Supr
from ev_common.records import SupplyEnd, decode
from ev_cp_engine.engine import Engine
from ev_cp_engine.health_server import HealthServer
from tests.cp.fakes import FAST, HOST, FakeCentral, MonitorThread
from tests.support.processes import ProgramRunner
from tests.support.services import consumer_config, create_topics, free_port, port_open
from tests.support.waiting import wait_until

CP = "CP001"


class EngineUnderTest:
    """An Engine process (``EV_CP_E.py --auto``), with a real Monitor in this process and a fake Central."""

    def __init__(self, runner: ProgramRunner, tmp_path: Path, kafka: str, prefix: str) -> None:
        self.runner, self.kafka, self.prefix = runner, kafka, prefix
        self.port = free_port()
        self.data_dir = tmp_path / "engine-data"
        self.journal = self.data_dir / f"ev_cp_engine-{self.port}.journal.json"
        self.central = FakeCentral().start()
        self.monitor: MonitorThread | None = None
        self.engine = None
        self.runs = 0

    def start(self, kafka: str | None = None):
        self.runs += 1
        self.engine = self.runner.start(f"engine-{self.runs}", [
            "--port", str(self.port), "--host", HOST, "--kafka", kafka or self.kafka, "--topic-prefix", self.prefix,
            "--data-dir", str(self.data_dir), "--auto", "--auto-seconds", "600"], script="ev_cp_engine/EV_CP_E.py")
        wait_until(lambda: port_open(HOST, self.port) or self.engine.proc.poll() is not None, 20,
                   "the Engine to listen")
        assert self.engine.proc.poll() is None, self.engine.output()
        if self.monitor is None:
            self.monitor = MonitorThread(self.central.port, self.port).start()
        return self.engine

    def supply(self, session_id: str) -> None:
        """Central's SUP through the Monitor; the Engine (--auto) plugs in by itself."""
        mark = self.engine.mark()
        self.central.wait(lambda: self.monitor.probe.connected and self.central.of(Hb), 10, "a registered Monitor")
        self.engine.wait_for_output(r"this Engine is CP CP001", timeout=10)
        self.central.send(Sup(CP, session_id, "D001", Decimal("0.48")))
        supr = self.central.wait_for(Supr, 5, where=lambda m: m.session_id == session_id)
        assert supr.ok, supr
        self.engine.wait_for_output(r"plugged in: supplying driver D001", timeout=10, after=mark)

    def journal_ends(self) -> list[dict]:
        if not self.journal.exists():
            return []
        return json.loads(self.journal.read_text())["ends"]

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        self.central.stop()


def supply_ends(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[SupplyEnd]:
    from confluent_kafka import Consumer

    consumer = Consumer(consumer_config(bootstrap, f"{topic}-reader"))
    consumer.subscribe([topic])
    ends: list[SupplyEnd] = []
    try:
        def got_all() -> bool:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                record = decode(msg.value())
                if isinstance(record, SupplyEnd):
                    ends.append(record)
            return len(ends) >= count

        wait_until(got_all, timeout, f"{count} supply.end on {topic}", interval=0)
    finally:
        consumer.close()
    return ends


def test_engine_stopped_without_the_broker_keeps_its_supply_end_and_exits_0(runner, tmp_path):
    cp = EngineUnderTest(runner, tmp_path, f"{HOST}:{free_port()}", "evt-stop-")  # nothing listens there
    try:
        engine = cp.start()
        cp.supply("s-unconfirmed")
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


def test_engine_clean_stop_reports_its_supply_and_a_kept_end_goes_out_at_the_next_start(
        runner, tmp_path, kafka_bootstrap, kafka_topic_prefix):
    topic = Topics(kafka_topic_prefix).cp_telemetry
    create_topics(kafka_bootstrap, [topic, Topics(kafka_topic_prefix).driver_requests])
    cp = EngineUnderTest(runner, tmp_path, kafka_bootstrap, kafka_topic_prefix)
    try:
        # 1. the broker is unreachable: the end of the supply stopped with the Engine is kept
        engine = cp.start(kafka=f"{HOST}:{free_port()}")
        cp.supply("s-1")
        assert engine.stop(signal.SIGTERM, timeout=15) == 0, engine.output()
        assert [e["session_id"] for e in cp.journal_ends()] == ["s-1"]
        # 2. started again with the broker: that end goes out, then leaves the journal
        engine = cp.start()
        engine.wait_for_output(r"sending again 1 supply end", timeout=10)
        wait_until(lambda: not cp.journal.exists(), 15, "the confirmed end to leave the journal")
        # 3. a clean stop (Ctrl+C) with the broker: the supply ends as "engine stopped", confirmed
        cp.supply("s-2")
        assert engine.stop(signal.SIGINT, timeout=15) == 0, engine.output()
        assert "supply of driver D001 ended (engine stopped)" in engine.output()
        assert not cp.journal.exists() and "not confirmed by Kafka" not in engine.output()
        ends = {e.session_id: e for e in supply_ends(kafka_bootstrap, topic, 2)}
        assert {sid: e.reason for sid, e in ends.items()} == {"s-1": "engine stopped", "s-2": "engine stopped"}
        assert ends["s-2"].kwh > 0 or ends["s-2"].seq >= 1
    finally:
        cp.close()


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
