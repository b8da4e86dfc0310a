"""An Engine as a real process (``EV_CP_E.py``), with a real Monitor in this process and a fake
Central; and a broker the test can cut off (a Tansu broker behind a ``CuttableProxy``, which it
advertises, so that every connection of every client goes through the proxy)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from ev_common.bus import Topics
from ev_common.protocol import Hb, Sup, Supr
from ev_common.records import SupplyEnd, decode
from tests.cp.fakes import HOST, FakeCentral, MonitorThread
from tests.support.processes import Program, ProgramRunner
from tests.support.proxy import CuttableProxy
from tests.support.services import consumer_config, create_topics, free_port, port_open
from tests.support.waiting import wait_until

CP = "CP001"


class CuttableBroker:
    """A broker of its own for one test, reached only through a proxy: ``cut`` is an outage."""

    def __init__(self, tansu_factory, prefix: str) -> None:
        port = free_port()
        self.proxy = CuttableProxy(HOST, port)
        self.broker = tansu_factory(port=port, advertised_port=self.proxy.port)
        self.bootstrap = f"{HOST}:{self.proxy.port}"
        self.topics = Topics(prefix)
        create_topics(self.bootstrap, [self.topics.cp_telemetry, self.topics.driver_requests])

    def cut(self) -> None:
        self.proxy.cut()

    def restore(self) -> None:
        self.proxy.restore()

    def close(self) -> None:
        self.proxy.close()


class EngineUnderTest:
    """An Engine process, with a real Monitor in this process and a fake Central."""

    def __init__(self, runner: ProgramRunner, tmp_path: Path, kafka: str, prefix: str) -> None:
        self.runner, self.kafka, self.prefix = runner, kafka, prefix
        self.port = free_port()
        self.data_dir = tmp_path / "engine-data"
        self.journal = self.data_dir / f"ev_cp_engine-{self.port}.journal.json"
        self.central = FakeCentral().start()
        self.monitor: MonitorThread | None = None
        self.engine: Program | None = None
        self.runs = 0

    def start(self, *extra: str, kafka: str | None = None, monitor: bool = True) -> Program:
        """``--auto --auto-seconds 600`` unless ``extra`` says otherwise; the Monitor follows."""
        self.runs += 1
        self.engine = self.runner.start(f"engine-{self.runs}", [
            "--port", str(self.port), "--host", HOST, "--kafka", kafka or self.kafka, "--topic-prefix", self.prefix,
            "--data-dir", str(self.data_dir), *(extra or ("--auto", "--auto-seconds", "600"))],
            script="ev_cp_engine/EV_CP_E.py")
        wait_until(lambda: port_open(HOST, self.port) or self.engine.proc.poll() is not None, 20,
                   "the Engine to listen")
        assert self.engine.proc.poll() is None, self.engine.output()
        if monitor:
            self.start_monitor()
        return self.engine

    def start_monitor(self) -> MonitorThread:
        if self.monitor is None:
            self.monitor = MonitorThread(self.central.port, self.port).start()
        return self.monitor

    def press(self, key: str) -> None:
        """A key at the Engine (its keys are read from stdin)."""
        self.engine.proc.stdin.write(key.encode())
        self.engine.proc.stdin.flush()

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
    """The first ``count`` supply ends on ``topic``, read from its start."""
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
