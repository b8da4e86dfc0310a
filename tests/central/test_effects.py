"""Effects: one thread carries out, in order, what Central's decisions cause outside; no
Kafka call runs on the reactor thread."""

from __future__ import annotations

import threading

from ev_central.app import Central
from ev_central.effects import Effects
from ev_central.store import open_store
from ev_common.protocol import Avr, Rec
from tests.central.test_central_integration import FakeMonitor
from tests.support.waiting import wait_until


def test_effects_run_in_the_order_submitted_on_one_thread():
    effects = Effects().start()
    seen: list[tuple[int, str]] = []
    try:
        for n in range(500):
            effects.submit(lambda n=n: seen.append((n, threading.current_thread().name)))
        assert effects.wait_idle(5)
    finally:
        effects.stop()
    assert [n for n, _ in seen] == list(range(500))
    assert {name for _, name in seen} == {"effects"}


def test_a_failing_effect_does_not_stop_the_others(caplog):
    effects = Effects().start()
    seen = []
    try:
        effects.submit(lambda: 1 / 0)
        effects.submit(seen.append, "after")
        assert effects.wait_idle(5)
    finally:
        effects.stop()
    assert seen == ["after"] and "failed" in caplog.text


def test_a_full_queue_runs_the_effect_on_the_callers_thread_instead_of_dropping_it():
    gate = threading.Event()
    effects = Effects(max_queued=1, full_wait=0.01).start()
    seen = []
    try:
        effects.submit(gate.wait, 5)  # the thread is busy
        effects.submit(seen.append, "queued")
        effects.submit(seen.append, "inline")  # no room: run here
        assert seen == ["inline"]
        gate.set()
        assert effects.wait_idle(5)
    finally:
        effects.stop()
    assert seen == ["inline", "queued"]


def test_stop_carries_out_what_was_queued():
    effects = Effects().start()
    seen = []
    for n in range(100):
        effects.submit(seen.append, n)
    effects.stop()
    assert seen == list(range(100))


class ThreadRecorder:
    """A notifier that notes which thread publishes."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.states: list[str] = []

    def to_driver(self, driver_id, record, on_delivery=None) -> None:
        self.threads.append(threading.current_thread().name)

    def cp_status(self, record) -> None:
        self.threads.append(threading.current_thread().name)
        self.states.append(record.state)


def test_cp_changes_are_published_by_the_effects_thread_in_order(tmp_path):
    central = Central(open_store(f"sqlite:///{tmp_path / 'c.db'}"), "127.0.0.1", 0)
    recorder = ThreadRecorder()
    central.supplies.notifier = recorder
    central.start()
    monitor = FakeMonitor(central.address)
    try:
        assert monitor.register("CP001").ok
        for message, state in ((Avr("CP001", "Engine answers KO"), "AVERIADO"), (Rec("CP001"), "ACTIVADO")):
            monitor.send(message)
            wait_until(lambda: central.network.get("CP001").state == state, 5, state)
            assert central.effects.wait_idle(5)  # each status is read when published: the newest
        monitor.close()  # the session ends on the reactor thread
        wait_until(lambda: central.network.get("CP001").state == "DESCONECTADO", 5, "the CP disconnected")
        assert central.effects.wait_idle(5)
    finally:
        central.stop()
    assert recorder.states == ["ACTIVADO", "AVERIADO", "ACTIVADO", "DESCONECTADO"]
    assert set(recorder.threads) == {"effects"}

