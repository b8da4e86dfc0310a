"""The Engine as a real process with ``--auto --mcsp --rfid-tag``: its reader taps the tag by
itself, over a fake MCSP port whose Central authorises through a real Monitor (SUP) and ends
the supply there (FIN); the supply's end reaches Kafka as any other."""

from __future__ import annotations

import re
from decimal import Decimal

from ev_common.bus import Topics
from ev_common.mcsp import EndOk, ErrorAnswer, StartOk, StartRequest
from ev_common.protocol import Fin, Hb, Sup, Supr
from tests.cp.engine_process import CP, EngineUnderTest, supply_ends
from tests.rfid.fake_mcsp import FakeMCSP
from tests.support.services import create_topics
from tests.support.waiting import wait_until

KEY = "16AC936B1692E73A"


def test_auto_engine_taps_its_tag_through_central_and_ends_it_with_end(runner, tmp_path, kafka_bootstrap,
                                                                        kafka_topic_prefix):
    topics = Topics(kafka_topic_prefix)
    create_topics(kafka_bootstrap, [topics.cp_telemetry, topics.driver_requests])
    cp = EngineUnderTest(runner, tmp_path, kafka_bootstrap, kafka_topic_prefix)

    def central(request, connection, index):
        """Central's MCSP port in short: SUP to the CP for START, FIN for END, then the answer."""
        if isinstance(request, StartRequest):
            session_id = f"T{index}"
            cp.central.send(Sup(CP, session_id, "FLAT3B", Decimal("0.48")))
            supr = cp.central.wait_for(Supr, 5, where=lambda m: m.session_id == session_id)
            return StartOk(session_id) if supr.ok else ErrorAnswer(409, f"CP refused: {supr.reason}")
        cp.central.send(Fin(CP, request.session_id))
        cp.engine.wait_for_output(r"supply of account FLAT3B ended \(unplugged\)", 10)
        return EndOk(Decimal("0.25"), Decimal("0.12"))

    with FakeMCSP(central) as mcsp:
        try:
            engine = cp.start("--auto", "--auto-seconds", "2", "--mcsp", mcsp.address, "--rfid-tag", KEY,
                              "--rfid-every", "1")
            cp.central.wait(lambda: cp.monitor.probe.connected and cp.central.of(Hb), 10, "a registered Monitor")
            engine.wait_for_output(r"tag \.\.\.E73A: session T1 opened", 20)
            engine.wait_for_output(r"plugged in: supplying account FLAT3B", 10)
            engine.wait_for_output(r"tag \.\.\.E73A presented: asking Central to end session T1", 10)
            engine.wait_for_output(r"tag \.\.\.E73A: session T1 ended: 0\.2500 kWh, 0\.12 EUR", 10)
            wait_until(lambda: len(re.findall(r"tag \.\.\.E73A: session T\d+ opened", engine.output())) >= 2, 20,
                       "the next tag supply, --rfid-every after the first")
            assert KEY not in engine.output()
            [end] = supply_ends(cp.kafka, topics.cp_telemetry, 1)
            assert (end.session_id, end.driver_id, end.reason) == ("T1", "FLAT3B", "unplugged")
            assert [type(r).__name__ for _, r in mcsp.requests[:2]] == ["StartRequest", "EndRequest"]
            assert mcsp.connections == 1  # one connection for every exchange
        finally:
            cp.close()
