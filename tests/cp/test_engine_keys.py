"""The Engine in secure mode, with fakes: records sealed once its Monitor gave it a key, in
clear in open mode, held after a restart until the key comes again, and a revocation that
ends the supply and holds its end until the next key. And the KEY and RVK frames on its socket."""

from __future__ import annotations

import base64
import json
import logging
from decimal import Decimal
from pathlib import Path

import pytest

from ev_common.envelope import open_envelope
from ev_common.link import Link
from ev_common.protocol import Chk, Health, Key, Rvk
from ev_common.records import SupplyEnd, SupplyRequest, Telemetry, decode, encode
from ev_cp_engine.engine import KEYS_REVOKED, Engine, NoKey, Phase
from ev_cp_engine.health_server import HealthServer
from ev_cp_engine.journal import SupplyJournal
from ev_cp_engine.screen import EngineStatus, flags_line, links_line
from ev_cp_engine.secure_mode import SecureMark
from tests.cp.fakes import FAST
from tests.support.clock import FakeClock
from tests.support.waiting import wait_until

TELEMETRY, REQUESTS = "evt-k-ev.cp.telemetry", "evt-k-ev.driver.requests"
KEY3, KEY4 = bytes(range(32)), bytes(range(50, 82))
CP = "CP1"


class Sent(list):
    """A fake ``emit`` that produces like cli.py's: each record's value on its topic, sealed when
    the Engine passes ``seal``; the delivery callbacks wait for the test."""

    def __init__(self) -> None:
        super().__init__()
        self.callbacks: list = []

    def __call__(self, record, on_delivery=None, seal=None) -> None:
        topic = REQUESTS if isinstance(record, SupplyRequest) else TELEMETRY
        value = encode(record) if seal is None else seal(topic, record)
        self.append((topic, record, value, seal is not None))
        if on_delivery is not None:
            self.callbacks.append((record, on_delivery))

    def confirm_all(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for _record, on_delivery in callbacks:
            on_delivery(True)

    def records(self, kind=object) -> list:
        return [record for _t, record, _v, _s in self if isinstance(record, kind)]


def key_for(cp_id: str, kv: int) -> bytes | None:
    return {(CP, 3): KEY3, (CP, 4): KEY4}.get((cp_id, kv))


@pytest.fixture
def clock():
    return FakeClock(100.0)


@pytest.fixture
def sent():
    return Sent()


@pytest.fixture
def said():
    return []


def make(clock, sent, said, tmp_path: Path | None = None, **kwargs) -> Engine:
    if tmp_path is not None:
        kwargs.setdefault("journal", SupplyJournal(tmp_path / "engine.journal.json"))
        kwargs.setdefault("secure_mark", SecureMark(tmp_path / "engine.secure.json"))
    engine = Engine(sent, power_kw=Decimal("36"), clock=clock, say=said.append, **kwargs)
    engine.monitor_connected("127.0.0.1:1")
    engine.health(CP)
    return engine


def supply(engine: Engine, clock, session_id: str = "s1", seconds: int = 2) -> None:
    assert engine.authorise(session_id, "D1", Decimal("0.50")) == (True, "")
    engine.plug()
    for _ in range(seconds):
        clock.now += 1
        engine.tick()


def opened(value: bytes, topic: str):
    return open_envelope(topic, value, key_for)


# -- open mode: as in Release 1 ----------------------------------------------------------------------------


def test_an_engine_never_given_a_key_emits_as_in_release_1(clock, said):
    calls = []

    def emit(record, on_delivery=None):  # today's emit: no seal argument
        calls.append(record)

    engine = make(clock, emit, said)
    supply(engine, clock)
    engine.unplug()
    engine.request_supply("D7")
    assert [type(r) for r in calls] == [Telemetry, Telemetry, SupplyEnd, SupplyRequest]
    status = EngineStatus.read(engine)
    assert engine.records_mode is None and flags_line(status) == "Fault: off | Central: in service"


def test_key_version_0_is_open_mode_records_in_clear(clock, sent, said, tmp_path):
    engine = make(clock, sent, said, tmp_path)
    engine.set_key(0, None, cp_id=CP)
    supply(engine, clock)
    engine.unplug()
    assert [sealed for *_, sealed in sent] == [False, False, False]
    assert all(decode(value) == record for _t, record, value, _s in sent)
    assert engine.records_mode == "open mode"
    assert flags_line(EngineStatus.read(engine)) == "Fault: off | Central: in service | open mode"
    assert not (tmp_path / "engine.secure.json").exists()


# -- sealed -------------------------------------------------------------------------------------------------


def test_after_a_key_every_record_is_sealed_for_its_topic(clock, sent, said, tmp_path):
    engine = make(clock, sent, said, tmp_path)
    engine.set_key(3, KEY3, cp_id=CP)
    assert "records sealed with key v3 (secure mode: no record leaves this CP in clear)" in said
    supply(engine, clock)
    engine.unplug()
    engine.request_supply("D7")
    assert [sealed for *_, sealed in sent] == [True] * 4
    for topic, record, value, _ in sent:
        assert json.loads(value)["type"] == "sealed" and json.loads(value)["kv"] == 3
        assert opened(value, topic) == record
    assert [type(r) for r in sent.records()] == [Telemetry, Telemetry, SupplyEnd, SupplyRequest]
    status = EngineStatus.read(engine)
    assert flags_line(status) == "Fault: off | Central: in service | records sealed with key v3"
    assert links_line(status) == "Links: Kafka OK | Monitor OK"
    mark = json.loads((tmp_path / "engine.secure.json").read_text())
    assert mark == {"secure": True, "cp_id": CP, "key_version": 3}  # the key is never written
    assert base64.urlsafe_b64encode(KEY3).decode().rstrip("=") not in (tmp_path / "engine.secure.json").read_text()


def test_a_new_key_seals_from_then_on(clock, sent, said, tmp_path):
    engine = make(clock, sent, said, tmp_path)
    engine.set_key(3, KEY3, cp_id=CP)
    supply(engine, clock, seconds=1)
    engine.set_key(4, KEY4, cp_id=CP)
    clock.now += 1
    engine.tick()
    kvs = [json.loads(value)["kv"] for *_, value, _ in sent]
    assert kvs == [3, 4]
    assert opened(sent[-1][2], TELEMETRY).seq == 2


def test_bad_keys_are_refused_without_showing_them(clock, sent, said):
    engine = make(clock, sent, said)
    for version, key in [(3, KEY3[:16]), (0, KEY3), (3, None), (-1, KEY3)]:
        with pytest.raises(ValueError) as caught:
            engine.set_key(version, key, cp_id=CP)
        assert KEY3.hex() not in str(caught.value)
    assert engine.records_mode is None


# -- a restart in secure mode --------------------------------------------------------------------------------


def test_after_a_restart_in_secure_mode_nothing_leaves_before_the_key(clock, sent, said, tmp_path):
    first = make(clock, sent, said, tmp_path)
    first.set_key(3, KEY3, cp_id=CP)
    supply(first, clock, "s-old")
    first.unplug()  # its end is not confirmed before the "crash"
    supply(first, clock, "s-running")  # running at the crash: reported at the restart
    sent.clear()

    again = Sent()
    engine = Engine(again, power_kw=Decimal("36"), clock=clock, say=said.append,
                    journal=SupplyJournal(tmp_path / "engine.journal.json"),
                    secure_mark=SecureMark(tmp_path / "engine.secure.json"))
    assert engine.waiting_for_key and engine.records_mode == "waiting for this CP's key"
    said.clear()
    line = engine.recover()
    assert again == []  # nothing in clear
    assert "they wait for this CP's key" in line
    assert engine.unconfirmed_ends() == 2
    engine.monitor_connected("127.0.0.1:2")
    engine.health(CP)
    assert engine.request_supply("D7") == "cannot request a supply: secure mode: waiting for this CP's key"
    ok, why = engine.authorise("s-new", "D1", Decimal("0.5"))
    assert not ok and why == "secure mode: waiting for this CP's key"
    status = EngineStatus.read(engine)
    assert "NO KEY: waiting for this CP's key" in links_line(status)
    for _ in range(100):  # time passes: still nothing
        clock.now += 1
        engine.tick()
    assert again == []

    engine.set_key(3, KEY3, cp_id=CP)  # its Monitor passes the key again
    ends = {record.session_id: record for record in again.records(SupplyEnd)}
    assert set(ends) == {"s-old", "s-running"} and ends["s-running"].reason == "engine restarted"
    assert all(sealed and opened(value, topic) == record for topic, record, value, sealed in again)
    assert any("sending the 2 supply end(s) that waited for a key" in line for line in said)
    again.confirm_all()
    assert engine.unconfirmed_ends() == 0 and not (tmp_path / "engine.journal.json").exists()


def test_open_mode_after_secure_mode_sends_the_held_ends_in_clear(clock, sent, said, tmp_path):
    SecureMark(tmp_path / "engine.secure.json").set(CP, 3)
    journal = SupplyJournal(tmp_path / "engine.journal.json")
    journal.ended("s1", SupplyEnd(CP, "s1", "D1", 3, Decimal("1"), Decimal("0.5"), "unplugged").to_json())
    engine = make(clock, sent, said, tmp_path, journal=journal)
    engine.recover()
    assert sent == []
    engine.set_key(0, None, cp_id=CP)  # Central runs in open mode now
    assert [(type(r), s) for _t, r, _v, s in sent] == [(SupplyEnd, False)]
    assert not (tmp_path / "engine.secure.json").exists()


# -- revocation --------------------------------------------------------------------------------------------------


def test_a_revocation_ends_the_supply_and_holds_its_end_until_the_next_key(clock, sent, said, tmp_path):
    engine = make(clock, sent, said, tmp_path)
    engine.set_key(3, KEY3, cp_id=CP)
    supply(engine, clock)
    before = len(sent)
    line = engine.revoke("suspected breach")
    assert engine.phase is Phase.IDLE
    assert line.startswith("Central REVOKED this CP's keys (suspected breach): its supply ended")
    assert any("ended (keys revoked)" in s for s in said)
    assert len(sent) == before  # its end waits: nothing in clear, nothing with the revoked key
    assert [e["reason"] for e in SupplyJournal(tmp_path / "engine.journal.json").ends()] == [KEYS_REVOKED]
    assert engine.records_mode == "keys revoked: waiting for this CP's key"
    assert flags_line(EngineStatus.read(engine)).endswith("| keys revoked: waiting for this CP's key")
    ok, why = engine.authorise("s2", "D1", Decimal("0.5"))
    assert not ok and why == "this CP's keys were revoked (suspected breach); waiting for this CP's key"
    assert "keys were revoked" in engine.request_supply("D7")
    with pytest.raises(NoKey):
        engine.seal(TELEMETRY, sent.records(Telemetry)[0])  # a record produced again now: not in clear
    assert json.loads((tmp_path / "engine.secure.json").read_text())["key_version"] is None

    engine.set_key(4, KEY4, cp_id=CP)  # the Monitor authenticated again
    topic, end, value, sealed = sent[-1]
    assert isinstance(end, SupplyEnd) and end.reason == KEYS_REVOKED and sealed
    assert json.loads(value)["kv"] == 4 and opened(value, topic) == end
    assert engine.authorise("s3", "D1", Decimal("0.5")) == (True, "")


def test_a_record_produced_again_after_a_revocation_is_undelivered_and_waits(clock, sent, said, tmp_path):
    """A supply end queued with the key, whose producer failed and produces it again after the
    revocation: sealing fails (NoKey), the end is reported undelivered and waits for a key."""
    engine = make(clock, sent, said, tmp_path)
    engine.set_key(3, KEY3, cp_id=CP)
    supply(engine, clock)
    engine.unplug()
    (end, delivered) = sent.callbacks.pop()
    engine.revoke("breach")
    with pytest.raises(NoKey):
        engine.seal(TELEMETRY, end)
    delivered(False)  # what the publisher reports when the encoder raises
    clock.now += 600
    sent.clear()
    engine.tick()  # its resend time came: still no key, so it waits
    assert sent == [] and engine.unconfirmed_ends() == 1
    engine.set_key(4, KEY4, cp_id=CP)
    assert [json.loads(v)["kv"] for _t, r, v, _s in sent if isinstance(r, SupplyEnd)] == [4]


# -- the frames on the Engine's socket ----------------------------------------------------------------------------


def test_key_and_rvk_frames_reach_the_engine_and_no_key_is_logged(clock, said, caplog):
    caplog.set_level(logging.DEBUG)
    sent = Sent()
    engine = Engine(sent, clock=clock, say=said.append)
    server = HealthServer(engine, "127.0.0.1", 0).start()
    text = base64.urlsafe_b64encode(KEY3).decode().rstrip("=")
    try:
        with Link.connect(*server.address, FAST) as link:
            link.send(Chk(CP))
            assert isinstance(link.recv(timeout=3), Health)
            link.send(Key(CP, 3, text))
            wait_until(lambda: engine.key_version == 3, 5, "the key")
            assert engine.seal(TELEMETRY, Telemetry(CP, "s", "D", 1, Decimal(0), Decimal(0), Decimal(0)))
            link.send(Rvk(CP, "operator revoked the keys"))
            wait_until(lambda: engine.revoked == "operator revoked the keys", 5, "the revocation")
            link.send(Key(CP, 0))
            wait_until(lambda: engine.records_mode == "open mode", 5, "open mode")
    finally:
        server.stop()
    assert text not in caplog.text and all(text not in line for line in said)
