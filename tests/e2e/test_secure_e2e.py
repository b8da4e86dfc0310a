"""End to end in secure mode, every program a real process, the real broker and MySQL: a forged,
a replayed and a wrongly keyed record during a supply are dropped and audited and the ticket
carries the Engine's energy; an operator revokes a CP's keys mid-supply, and the CP is back once
its Monitor authenticates again."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal

import pytest
from confluent_kafka import Consumer, Producer

from ev_common.envelope import Sealer
from ev_common.records import SupplyEnd, Telemetry, encode
from ev_common.words import KEYS_REVOKED
from tests.support.processes import ROOT
from tests.support.services import consumer_config
from tests.support.system import EVSystem
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def system(runner, kafka_bootstrap, kafka_topic_prefix, fresh_mysql_url):
    system = EVSystem(runner, kafka_bootstrap, fresh_mysql_url, kafka_topic_prefix, secure=True)
    system.register_drivers("D001", "D002")
    system.start_central()
    yield system
    runner.stop_all()
    system.close()


def audit(system: EVSystem, *args: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "ev_central", "audit", *args, "--json", "--db", system.db_url],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def sealed_copy(system: EVSystem, session_id: str) -> bytes:
    """A genuine sealed record of the session, read back from the broker (to replay it)."""
    consumer = Consumer(consumer_config(system.kafka, f"{system.prefix}spy"))
    consumer.subscribe([system.prefix + "ev.cp.telemetry"])
    try:
        found = None

        def one():
            nonlocal found
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error() and b'"sealed"' in msg.value():
                found = msg.value()
            return found

        return wait_until(one, 30, "a sealed telemetry record on the broker")
    finally:
        consumer.close()


def test_forged_replayed_and_wrongly_keyed_records_are_dropped_and_audited(system):
    cp = system.start_cp("CP001", "--auto", "--auto-seconds", "8", price="0.50")
    driver = system.start_driver("D001", "--cp", "CP001")
    driver.wait_for_output(r"Charging at CP001", timeout=30)
    [session] = system.sessions(driver_id="D001")
    replay = sealed_copy(system, session.session_id)
    topic = system.prefix + "ev.cp.telemetry"
    producer = Producer({"bootstrap.servers": system.kafka})
    forged_end = SupplyEnd("CP001", session.session_id, "D001", 999, Decimal("0.05"), Decimal("0.03"), "unplugged")
    producer.produce(topic, key=b"CP001", value=encode(forged_end))  # plain: Release 1's attack
    wrong_key = Sealer("CP001", 1, bytes(32)).seal(topic, Telemetry("CP001", session.session_id, "D001", 998,
                                                                   Decimal("99"), Decimal("49.5"), Decimal("11")))
    producer.produce(topic, key=b"CP001", value=wrong_key)
    producer.produce(topic, key=b"CP001", value=replay)
    producer.produce(topic, key=b"CP001", value=replay[:-20] + b'"}')  # truncated
    assert producer.flush(10) == 0

    assert driver.wait_exit(60) == 0, driver.output()
    cp.engine.wait_for_output(r"supply of driver D001 ended \(unplugged\): ([\d.]+) kWh")
    delivered = Decimal(re.findall(r"supply of driver D001 ended \(unplugged\): ([\d.]+) kWh", cp.engine.output())[-1])
    [ended] = [s for s in system.sessions(driver_id="D001") if s.ended_at]
    assert ended.status == "COMPLETED" and ended.kwh.quantize(Decimal("0.001"), ROUND_HALF_UP) == delivered  # not 0.05, not 99
    assert re.search(r"TICKET of your supply at CP001: COMPLETED", driver.output())
    def four_rejected():
        entries = audit(system, "--action", "record.rejected")
        return entries if len(entries) >= 4 else None

    rejected = wait_until(four_rejected, 30, "four record.rejected entries in the audit log", interval=1)
    assert {e["outcome"] for e in rejected} == {"dropped"}
    reasons = sorted(re.search(r"refused: ([a-z ]+):", e["details"])[1] for e in rejected)
    # the forged plain end; the wrongly keyed record and the truncated copy; the replayed copy
    assert reasons == ["not authentic", "not authentic", "replayed", "unsealed"], rejected
    assert system.central.output().count("refused:") >= 4
    assert any(e["action"] == "auth" and e["actor"] == "CP001" and e["outcome"] == "ok" for e in audit(system))
    verify = subprocess.run([sys.executable, "-m", "ev_central", "audit", "verify", "--db", system.db_url], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr


def test_keys_revoked_mid_supply_then_the_monitor_authenticates_again(system):
    cp = system.start_cp("CP001", "--auto", "--auto-seconds", "60")
    driver = system.start_driver("D001", "--cp", "CP001")
    driver.wait_for_output(r"Charging at CP001", timeout=30)
    wait_until(lambda: [s for s in system.sessions(driver_id="D001") if s.kwh > 0], 15, "telemetry at Central")
    system.operator("keys revoke CP001")
    system.wait_cp_state("CP001", "DESCONECTADO", 5)
    cp.monitor.wait_for_output(r"keys revoked by Central", timeout=10)
    cp.engine.wait_for_output(r"keys revoked", timeout=10)
    assert driver.wait_exit(60) == 1
    assert re.search(r"TICKET of your supply at CP001: INTERRUPTED", driver.output()), driver.output()
    [first] = [s for s in system.sessions(driver_id="D001") if s.ended_at]
    assert first.status == "INTERRUPTED" and first.end_reason == KEYS_REVOKED and first.kwh > 0
    assert [e["details"] for e in audit(system, "--action", "key.revoke")] == ["CP001: 1 key(s) revoked"]

    # the Monitor does not come back by itself; restarted ("authenticate again"), it gets key v2
    mark = system.central.mark()
    cp.monitor.kill()
    cp.monitor = system.runner.start("monitor-CP001-again", cp.monitor.argv[2:], script="ev_cp_monitor/EV_CP_M.py")
    system.wait_cp_state("CP001", "ACTIVADO", 20)
    system.central.wait_for_output(r"issued key v2 to CP001", after=mark)
    again = system.start_driver("D002", "--cp", "CP001", name="driver-D002")
    again.wait_for_output(r"Charging at CP001", timeout=30)  # the CP is back: sealed with the new key
    issued = [e for e in audit(system, "--action", "key.issue") if e["actor"] == "CP001"]
    assert [e["details"] for e in issued] == ["key v1", "key v2"]


def test_a_monitor_back_after_central_restarts_is_checked_with_its_ticket_not_an_scrypt(system):
    """10,000 CPs coming back after a restart would cost 10,000 scrypt checks (about 7 minutes of
    one core); each Monitor's resumption ticket makes its check an HMAC (docs/security.md)."""
    cp = system.start_cp("CP001")

    def auths() -> list[str]:
        return [e["details"] for e in audit(system, "--action", "auth") if e["actor"] == "CP001"]

    wait_until(lambda: auths() == ["authenticated; key v1"], 30, "CP001's first authentication audited")
    system.central.kill()
    mark = cp.monitor.mark()
    system.start_central()
    cp.monitor.wait_for_output(r"Registered at Central as CP001", timeout=30, after=mark)
    wait_until(lambda: len(auths()) == 2, 15, "CP001's second authentication audited")
    assert auths() == ["authenticated; key v1", "authenticated with its resumption ticket; key v1"]
    system.wait_cp_state("CP001", "ACTIVADO", 10)
    assert "evc1_" not in cp.monitor.output() and "ticket" not in system.central.output()
