"""Central's RecordGate without a broker: what passes and what is refused, in secure and open
mode, and how each refusal is reported and counted."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from ev_central.record_gate import RecordGate, RejectedRecord
from ev_common.bus import Topics
from ev_common.envelope import Counter, Sealer, Unsealed, b64url
from ev_common.records import BadRecord, SupplyEnd, SupplyRequest, Telemetry, encode

TOPICS = Topics("evt-gate-")
TELEMETRY, REQUESTS = TOPICS.cp_telemetry, TOPICS.driver_requests
KEY = bytes(range(32))
TS = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)


def keys(cp_id: str, kv: int) -> bytes | None:
    return KEY if (cp_id, kv) == ("CP001", 2) else None


def telemetry(seq: int = 1) -> Telemetry:
    return Telemetry("CP001", "s1", "D001", seq, Decimal("0.1000"), Decimal("0.0480"), Decimal("11"), ts=TS)


@pytest.fixture
def rejected() -> list[RejectedRecord]:
    return []


def gate(secure: bool, rejected: list, **kwargs) -> RecordGate:
    return RecordGate(secure, keys, rejected.append, topics=TOPICS, **kwargs)


SEALER = Sealer("CP001", 2, KEY)


@pytest.mark.parametrize("secure", [True, False])
def test_sealed_records_open_in_either_mode(secure, rejected):
    g = gate(secure, rejected)
    end = SupplyEnd("CP001", "s1", "D001", 3, Decimal("1"), Decimal("0.48"), "unplugged")
    request = SupplyRequest("r1", "D001", "CP001", source="cp")
    assert g.open(TELEMETRY, SEALER.seal(TELEMETRY, telemetry())).seq == 1
    assert g.open(TELEMETRY, SEALER.seal(TELEMETRY, end)) == end
    assert g.open(REQUESTS, SEALER.seal(REQUESTS, request)) == request
    assert (g.opened, g.rejected, rejected) == (3, 0, [])


def test_secure_mode_refuses_what_a_cp_sends_in_clear_and_lets_drivers_through(rejected):
    g = gate(True, rejected)
    driver = SupplyRequest("r1", "D001", "CP001")
    assert g.open(REQUESTS, encode(driver)) == driver
    for topic, record in [(TELEMETRY, telemetry()),
                          (REQUESTS, SupplyRequest("r2", "D001", "CP001", source="cp")),
                          (TELEMETRY, driver),  # anything plain on the CPs' topic
                          (REQUESTS, telemetry())]:
        with pytest.raises(Unsealed):
            g.open(topic, encode(record), partition=0, offset=7)
    assert [r.reason for r in rejected] == ["unsealed"] * 4
    assert rejected[0] == RejectedRecord(TELEMETRY, "CP001", "unsealed",
                                         "a plain telemetry where a sealed one is required", None, 0, 7)
    assert g.rejected == 4 and g.rejected_by_reason == {"unsealed": 4} and g.passed == 1


def test_garbage_on_the_cp_topic_is_reported_in_secure_mode_only(rejected):
    with pytest.raises(BadRecord):
        gate(True, rejected).open(TELEMETRY, b"not json")
    assert [r.reason for r in rejected] == ["malformed"]
    with pytest.raises(BadRecord):
        gate(True, rejected).open(REQUESTS, b"not json")  # a driver's broken record: skipped as before
    with pytest.raises(BadRecord):
        gate(False, rejected).open(TELEMETRY, b"not json")
    assert len(rejected) == 1


def test_open_mode_lets_plain_records_through_and_refuses_sealed_ones_it_has_no_key_for(rejected):
    g = gate(False, rejected)
    assert g.open(TELEMETRY, encode(telemetry())) == telemetry()
    with pytest.raises(BadRecord):
        g.open(TELEMETRY, Sealer("CP001", 5, KEY).seal(TELEMETRY, telemetry()), partition=1, offset=2)
    assert [(r.reason, r.cp_id, r.kv, r.partition, r.offset) for r in rejected] == [("unknown key", "CP001", 5, 1, 2)]


def test_every_refusal_is_reported_and_counted_by_reason(rejected):
    g = gate(True, rejected)
    good = SEALER.seal(TELEMETRY, telemetry())
    data = json.loads(good)
    tampered = json.dumps({**data, "ct": "A" + data["ct"][1:] if data["ct"][0] != "A" else "B" + data["ct"][1:]})
    truncated = json.dumps({**data, "ct": b64url(b"\0" * 10)})
    assert g.open(TELEMETRY, good).seq == 1
    for raw in (tampered.encode(), truncated.encode(), good, Sealer("CP001", 2, bytes(32)).seal(TELEMETRY, telemetry()),
                b'{"type":"sealed","v":1}'):
        with pytest.raises(BadRecord):
            g.open(TELEMETRY, raw)
    assert [r.reason for r in rejected] == ["not authentic", "not authentic", "replayed", "not authentic", "malformed"]
    assert g.rejected_by_reason == {"not authentic": 3, "replayed": 1, "malformed": 1} and g.rejected == 5
    assert all(KEY.hex() not in r.describe() and b64url(KEY) not in r.describe() for r in rejected)


def test_replays_are_judged_per_topic(rejected):
    """One counter for both topics at the CP; Central reads them at their own pace."""
    g = gate(True, rejected, window_us=1_000_000)
    now = [10**15]
    sealer = Sealer("CP001", 2, KEY, counter=Counter(lambda: now[0]))
    request = sealer.seal(REQUESTS, SupplyRequest("r1", "D001", "CP001", source="cp"))
    now[0] += 500_000
    late, stale = sealer.seal(TELEMETRY, telemetry(2)), sealer.seal(TELEMETRY, telemetry(2))
    now[0] += 700_000
    assert g.open(TELEMETRY, sealer.seal(TELEMETRY, telemetry(3))).seq == 3
    assert g.open(REQUESTS, request).request_id == "r1"  # 1.2 s older than the telemetry, on its own topic
    assert g.open(TELEMETRY, late).seq == 2  # 0.7 s below the highest: within the window
    assert rejected == []
    now[0] += 400_000
    assert g.open(TELEMETRY, sealer.seal(TELEMETRY, telemetry(4))).seq == 4
    with pytest.raises(BadRecord):
        g.open(TELEMETRY, stale)  # never seen, but 1.1 s below the highest: too old
    assert [r.reason for r in rejected] == ["replayed"]


def test_a_failing_report_or_key_store_never_lets_a_record_through(rejected):
    def broken_report(_r):
        raise RuntimeError("audit down")

    def broken_keys(_cp, _kv):
        raise RuntimeError("store down")

    with pytest.raises(Unsealed):
        RecordGate(True, keys, broken_report).open(TELEMETRY, encode(telemetry()))
    g = RecordGate(True, broken_keys, rejected.append)
    with pytest.raises(BadRecord):
        g.open(TELEMETRY, SEALER.seal(TELEMETRY, telemetry()))
    assert [r.reason for r in rejected] == ["unknown key"]
