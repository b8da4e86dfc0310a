"""Sealed records (ev_common/envelope.py): the round trip, every kind of tampering, unknown and
wrong keys, a CP that seals another CP's record, replays and the window, size bounds; and the
publisher's encoder hook (a record sent again by a new producer is sealed again)."""

from __future__ import annotations

import base64
import json
import logging
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from confluent_kafka import KafkaError

from ev_common.bus import Publisher
from ev_common.envelope import (
    DEFAULT_WINDOW_US,
    MAX_ENVELOPE_BYTES,
    CpMismatch,
    Counter,
    EnvelopeError,
    MalformedEnvelope,
    NotAuthentic,
    Replayed,
    ReplayGuard,
    Sealer,
    UnknownKey,
    Unsealed,
    aad,
    b64url,
    open_envelope,
    parse_envelope,
)
from ev_common.records import BadRecord, SupplyEnd, SupplyRequest, Telemetry, decode, encode

TOPIC = "evt-x-ev.cp.telemetry"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
T0 = 1_764_512_345_123_456
TS = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)


def telemetry(seq: int = 1, cp_id: str = "CP001") -> Telemetry:
    return Telemetry(cp_id, "s1", "D001", seq, Decimal("0.1000"), Decimal("0.0480"), Decimal("11"), ts=TS)


def keys(cp_id: str, kv: int) -> bytes | None:
    return {("CP001", 3): KEY, ("CP002", 1): OTHER_KEY}.get((cp_id, kv))


def clock(start: int = T0):
    now = [start]
    return now, Counter(lambda: now[0])


@pytest.fixture
def sealer() -> Sealer:
    return Sealer("CP001", 3, KEY)


def fields(raw: bytes) -> dict:
    return json.loads(raw)


def dumps(data: dict) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def flip(text: str, byte: int = 0, bit: int = 0) -> str:
    data = bytearray(unb64(text))
    data[byte] ^= 1 << bit
    return b64url(bytes(data))


# -- the round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("record", [
    telemetry(),
    SupplyEnd("CP001", "s1", "D001", 5, Decimal("1.5000"), Decimal("0.7200"), "unplugged"),
    SupplyRequest("r1", "D001", "CP001", source="cp"),
])
def test_a_sealed_record_opens_to_the_same_record(sealer, record):
    raw = sealer.seal(TOPIC, record)
    data = fields(raw)
    assert set(data) == {"type", "v", "cp_id", "kv", "ctr", "nonce", "ct"}
    assert (data["type"], data["v"], data["cp_id"], data["kv"]) == ("sealed", 1, "CP001", 3)
    assert len(unb64(data["nonce"])) == 12
    assert encode(record) not in raw and b"D001" not in raw  # the record travels encrypted
    assert open_envelope(TOPIC, raw, keys) == record


def test_the_associated_data_is_canonical():
    assert aad("CP001", "ev.cp.telemetry", 3, 17) == b'["ev.sealed.v1","CP001","ev.cp.telemetry",3,17]'


def test_each_seal_has_its_own_nonce_and_a_strictly_increasing_counter():
    now, counter = clock()
    sealer = Sealer("CP001", 3, KEY, counter=counter)
    first, second = fields(sealer.seal(TOPIC, telemetry())), fields(sealer.seal(TOPIC, telemetry()))
    assert first["nonce"] != second["nonce"] and first["ct"] != second["ct"]
    assert (first["ctr"], second["ctr"]) == (T0, T0 + 1)  # the clock stood still: last + 1
    now[0] = T0 + 5_000_000
    assert fields(sealer.seal(TOPIC, telemetry()))["ctr"] == T0 + 5_000_000
    now[0] = T0  # the clock went back: still increasing
    assert fields(sealer.seal(TOPIC, telemetry()))["ctr"] == T0 + 5_000_001


def test_a_restarted_sender_counts_on_from_the_clock():
    assert Counter().next() > T0  # microseconds since the epoch, past the example's


def test_a_sealer_refuses_another_cps_record_and_a_bad_key():
    with pytest.raises(ValueError, match="cannot be sealed"):
        Sealer("CP001", 3, KEY).seal(TOPIC, telemetry(cp_id="CP002"))
    with pytest.raises(ValueError, match="32 bytes"):
        Sealer("CP001", 3, KEY[:16])
    with pytest.raises(ValueError, match="key version"):
        Sealer("CP001", 0, KEY)
    assert KEY.hex() not in repr(Sealer("CP001", 3, KEY))


# -- tampering: every field, each refused by the tag check ------------------------------------------------


@pytest.mark.parametrize("tamper", [
    pytest.param(lambda d: d.update(ct=flip(d["ct"])), id="ct first bit"),
    pytest.param(lambda d: d.update(ct=flip(d["ct"], byte=-1, bit=7)), id="ct tag last bit"),
    pytest.param(lambda d: d.update(nonce=flip(d["nonce"], byte=11)), id="nonce"),
    pytest.param(lambda d: d.update(cp_id="CP002"), id="cp_id (a key CP002 has)"),
    pytest.param(lambda d: d.update(kv=1, cp_id="CP002"), id="cp_id and kv"),
    pytest.param(lambda d: d.update(ctr=d["ctr"] ^ 1), id="ctr"),
    pytest.param(lambda d: d.update(ct=b64url(unb64(d["ct"])[:-1])), id="ct truncated by one byte"),
    pytest.param(lambda d: d.update(ct=b64url(unb64(d["ct"])[:20])), id="ct truncated to 20 bytes"),
    pytest.param(lambda d: d.update(ct=b64url(unb64(d["ct"])[:5])), id="ct shorter than the tag"),
    pytest.param(lambda d: d.update(ct=b64url(unb64(d["ct"]) + b"\0")), id="ct with a byte more"),
])
def test_a_tampered_record_does_not_open(sealer, tamper):
    data = fields(sealer.seal(TOPIC, telemetry()))
    tamper(data)
    with pytest.raises(NotAuthentic) as caught:
        open_envelope(TOPIC, dumps(data), lambda cp, kv: KEY if kv == 3 else keys(cp, kv))
    assert caught.value.reason == "not authentic"
    assert isinstance(caught.value, BadRecord)  # every consumer skips and counts it


def test_a_flipped_kv_finds_no_key(sealer):
    data = fields(sealer.seal(TOPIC, telemetry()))
    data["kv"] = 2
    with pytest.raises(UnknownKey) as caught:
        open_envelope(TOPIC, dumps(data), keys)
    assert (caught.value.cp_id, caught.value.kv, caught.value.reason) == ("CP001", 2, "unknown key")


def test_a_record_moved_to_another_topic_does_not_open(sealer):
    raw = sealer.seal(TOPIC, telemetry())
    with pytest.raises(NotAuthentic, match="failed authentication on evt-y-ev.cp.telemetry"):
        open_envelope("evt-y-ev.cp.telemetry", raw, keys)
    with pytest.raises(NotAuthentic):
        open_envelope("evt-x-ev.driver.requests", raw, keys)


def test_the_wrong_key_does_not_open_and_no_key_is_unknown(sealer):
    raw = Sealer("CP001", 3, OTHER_KEY).seal(TOPIC, telemetry())
    with pytest.raises(NotAuthentic):
        open_envelope(TOPIC, raw, keys)
    with pytest.raises(UnknownKey, match="no key v3 in force for CP001"):
        open_envelope(TOPIC, sealer.seal(TOPIC, telemetry()), lambda cp, kv: None)  # revoked
    with pytest.raises(UnknownKey):
        open_envelope(TOPIC, Sealer("CP009", 1, KEY).seal(TOPIC, telemetry(cp_id="CP009")), keys)


def test_a_cp_that_seals_another_cps_record_is_caught():
    """A CP holding its own key cannot speak for another CP: the inner cp_id must be the envelope's."""
    inner = encode(telemetry(cp_id="CP001"))  # CP002 seals a record of CP001 with its own key
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce, ctr = b"\1" * 12, T0
    ct = AESGCM(OTHER_KEY).encrypt(nonce, inner, aad("CP002", TOPIC, 1, ctr))
    raw = dumps({"type": "sealed", "v": 1, "cp_id": "CP002", "kv": 1, "ctr": ctr, "nonce": b64url(nonce),
                 "ct": b64url(ct)})
    with pytest.raises(CpMismatch, match="a telemetry of CP CP001 sealed by CP002"):
        open_envelope(TOPIC, raw, keys)


def test_a_plain_record_is_unsealed_and_garbage_is_malformed():
    with pytest.raises(Unsealed) as caught:
        open_envelope(TOPIC, encode(telemetry()), keys)
    assert (caught.value.reason, caught.value.cp_id) == ("unsealed", "CP001")
    with pytest.raises(MalformedEnvelope):
        open_envelope(TOPIC, b"\xff not json", keys)
    assert parse_envelope(encode(telemetry())) is None
    assert parse_envelope(b"[1, 2]") is None


# -- malformed and oversized ---------------------------------------------------------------------------------


@pytest.mark.parametrize("change,detail", [
    (lambda d: d.pop("ctr"), "lacks ctr"),
    (lambda d: d.update(extra=1), "unexpected extra"),
    (lambda d: d.update(v=2), "unsupported envelope version"),
    (lambda d: d.update(v=True), "unsupported envelope version"),
    (lambda d: d.update(cp_id="CP 1"), "cp_id is not an id"),
    (lambda d: d.update(cp_id="C" * 65), "cp_id is not an id"),
    (lambda d: d.update(kv=0), "kv is not a key version"),
    (lambda d: d.update(kv=2**31), "kv is not a key version"),
    (lambda d: d.update(kv="3"), "kv is not a key version"),
    (lambda d: d.update(ctr=0), "ctr is not a counter"),
    (lambda d: d.update(ctr=2**63), "ctr is not a counter"),
    (lambda d: d.update(ctr=1.5), "ctr is not a counter"),
    (lambda d: d.update(nonce="AAAA"), "nonce is not 12 bytes"),
    (lambda d: d.update(nonce="A" * 40), "nonce is longer than 12 bytes"),
    (lambda d: d.update(nonce="AAAA=="), "nonce is not base64url"),
    (lambda d: d.update(nonce=12), "nonce is not base64url"),
    (lambda d: d.update(ct="A" * 5), "impossible length"),
    (lambda d: d.update(ct=d["ct"][:-1] + "/"), "ct is not base64url"),
    (lambda d: d.update(ct="AB"), "not canonical"),  # 12 bits for one byte: the last 4 must be 0
    (lambda d: d.update(ct="A" * 11_000), "ct is longer than 8208 bytes"),
])
def test_a_malformed_envelope_is_refused_before_any_key_is_asked(sealer, change, detail):
    data = fields(sealer.seal(TOPIC, telemetry()))
    change(data)
    asked = []
    with pytest.raises(MalformedEnvelope, match=detail):
        open_envelope(TOPIC, dumps(data), lambda cp, kv: asked.append(cp) or KEY)
    assert asked == []


def test_an_oversized_envelope_is_refused(sealer):
    data = fields(sealer.seal(TOPIC, telemetry()))
    raw = dumps(data)[:-1] + b"," + b'"pad":"' + b"x" * MAX_ENVELOPE_BYTES + b'"}'
    with pytest.raises(MalformedEnvelope, match="over the 16384-byte limit"):
        open_envelope(TOPIC, raw, keys)


def test_an_authentic_but_malformed_inner_record_is_malformed():
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = b"\2" * 12
    ct = AESGCM(KEY).encrypt(nonce, b'{"type":"telemetry"}', aad("CP001", TOPIC, 3, T0))
    raw = dumps({"type": "sealed", "v": 1, "cp_id": "CP001", "kv": 3, "ctr": T0, "nonce": b64url(nonce),
                 "ct": b64url(ct)})
    with pytest.raises(MalformedEnvelope, match="the record sealed by CP001 .* is malformed"):
        open_envelope(TOPIC, raw, keys)


def test_no_key_material_in_any_error_or_log(sealer, caplog):
    caplog.set_level(logging.DEBUG)
    texts = []
    good = fields(sealer.seal(TOPIC, telemetry()))
    for data in ({**good, "ct": flip(good["ct"])}, {**good, "kv": 9}, {**good, "v": 7}):
        try:
            open_envelope(TOPIC, dumps(data), keys)
        except EnvelopeError as exc:
            texts += [str(exc), repr(exc), repr(exc.raw), exc.detail]
    for secret in (KEY, OTHER_KEY):
        for form in (secret.hex(), b64url(secret), repr(secret)):
            assert all(form not in text for text in texts + [caplog.text])


# -- replays ------------------------------------------------------------------------------------------------


def test_a_replayed_record_is_refused_and_the_guard_learns_only_from_authentic_records():
    guard = ReplayGuard()
    now, counter = clock()
    sealer = Sealer("CP001", 3, KEY, counter=counter)
    raw = sealer.seal(TOPIC, telemetry())
    forged = dumps({**fields(raw), "ctr": fields(raw)["ctr"] + 10, "ct": flip(fields(raw)["ct"])})
    with pytest.raises(NotAuthentic):
        open_envelope(TOPIC, forged, keys, guard=guard)
    assert guard.highest("CP001", 3) is None  # a forgery teaches the guard nothing
    assert open_envelope(TOPIC, raw, keys, guard=guard) == telemetry()
    with pytest.raises(Replayed) as caught:
        open_envelope(TOPIC, raw, keys, guard=guard)
    assert (caught.value.reason, caught.value.cp_id, caught.value.kv) == ("replayed", "CP001", 3)


def test_the_window_takes_late_records_once_and_refuses_older_ones():
    guard = ReplayGuard(window_us=120_000_000)
    assert DEFAULT_WINDOW_US == 120_000_000
    assert guard.accept("CP001", 3, T0 + 200_000_000)
    assert guard.accept("CP001", 3, T0 + 100_000_000)  # 100 s below the highest, not seen: taken
    assert not guard.accept("CP001", 3, T0 + 100_000_000)  # ... once
    assert guard.accept("CP001", 3, T0 + 80_000_001)  # just inside the window
    assert not guard.accept("CP001", 3, T0 + 80_000_000)  # exactly 120 s below: out
    assert not guard.accept("CP001", 3, T0)
    assert guard.accept("CP001", 3, T0 + 200_000_001)  # above the highest
    assert not guard.accept("CP001", 3, T0 + 200_000_000)
    assert guard.accept("CP001", 4, T0) and guard.accept("CP002", 3, T0)  # each (CP, key) on its own


def test_the_guard_is_bounded():
    guard = ReplayGuard(window_us=10**12, max_seen=4, max_keys=3)
    for n in range(1, 9):
        assert guard.accept("CP001", 1, T0 + n * 10)
    # only the last 4 counters are remembered: anything up to the last one forgotten is refused
    assert not guard.accept("CP001", 1, T0 + 35) and not guard.accept("CP001", 1, T0 + 40)
    assert guard.accept("CP001", 1, T0 + 45)  # not seen, above the forgotten ones
    assert not guard.accept("CP001", 1, T0 + 80)
    for cp in ("CP002", "CP003", "CP004"):
        guard.accept(cp, 1, T0)
    assert len(guard) == 3 and guard.highest("CP001", 1) is None  # least recently used, forgotten


# -- the publisher's encoder hook --------------------------------------------------------------------------


class HoldingProducer:
    def __init__(self) -> None:
        self.queue: list = []
        self.delivered: list[bytes] = []

    def produce(self, topic, value, key, on_delivery):
        self.queue.append((value, on_delivery))

    def poll(self, _timeout=0):
        queue, self.queue = self.queue, []
        for value, on_delivery in queue:
            self.delivered.append(value)
            on_delivery(None, None)
        return len(queue)

    def purge(self):
        queue, self.queue = self.queue, []
        for _value, on_delivery in queue:
            on_delivery(KafkaError(KafkaError._PURGE_QUEUE), None)

    def flush(self, timeout=0):
        self.poll()
        return 0


def test_a_record_sent_again_by_a_new_producer_is_sealed_again_with_a_fresh_counter():
    producers: list[HoldingProducer] = []

    def factory(_config):
        producers.append(HoldingProducer())
        return producers[-1]

    publisher = Publisher("unused:9092", "test", producer_factory=factory)
    producers[0].poll = lambda _t=0: None  # the first producer holds the record until it dies
    sealer = Sealer("CP001", 3, KEY)
    outcomes: list[bool] = []
    publisher.publish(TOPIC, "CP001", telemetry(), outcomes.append, encode=lambda r: sealer.seal(TOPIC, r))
    first_value = producers[0].queue[0][0]
    publisher._fatal = "test: the producer died"  # as its error callback would say
    publisher.poll()  # replaced: the held record comes back and goes out again, sealed again
    publisher.poll()
    assert len(producers) == 2 and outcomes == [True]
    (value,) = producers[1].delivered
    assert fields(value)["ctr"] > fields(first_value)["ctr"] and fields(value)["nonce"] != fields(first_value)["nonce"]
    assert open_envelope(TOPIC, value, keys) == telemetry()


def test_a_record_that_cannot_be_encoded_is_reported_undelivered(caplog):
    publisher = Publisher("unused:9092", "test", producer_factory=lambda _c: HoldingProducer())
    outcomes: list[bool] = []

    def no_key(_record):
        raise LookupError("no key for CP001 now")

    publisher.publish(TOPIC, "CP001", telemetry(), outcomes.append, encode=no_key)
    assert outcomes == [False] and publisher.failed == 1
    assert "cannot encode it (no key for CP001 now)" in caplog.text
    publisher.publish(TOPIC, "CP001", telemetry(), outcomes.append)  # the default: records.encode
    publisher.poll()
    assert outcomes == [False, True]
    assert decode(publisher._producer.delivered[0]) == telemetry()
