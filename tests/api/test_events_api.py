"""``GET /api/events`` over a real socket: the snapshot first, a fake Monitor's fault as a ``cp``
event within 2 s, telemetry, messages, health and weather; a CP registered, deregistered and
registered again at EV_Registry as a ``cp`` event at the next read of the registrations; a reader back with its
``Last-Event-ID`` gets what it missed; a reader that stops reading is dropped without slowing
the others nor Central; too many readers are refused; Central stopping ends every stream."""

from __future__ import annotations

import logging
import time
from decimal import Decimal

from ev_central.core.states import Event
from ev_central.events import EventHub
from ev_central.weather import CityReport
from ev_common.protocol import Avr, Rec
from ev_common.records import Telemetry
from tests.support.waiting import wait_until

from .conftest import EventReader, register_cp


def test_the_stream_opens_with_a_snapshot_then_a_fault_comes_as_a_cp_event_within_2_s(running, events):
    monitor = running.monitor("CP1")
    reader = events()
    assert reader.status == 200 and reader.headers["content-type"].startswith("text/event-stream")
    assert reader.headers["cache-control"] == "no-store"
    snapshot = reader.next()
    assert snapshot.event == "snapshot" and snapshot.id.endswith("-" + str(running.central.events.last_id))
    assert [cp["cp_id"] for cp in snapshot.data["cps"]] == ["CP1"]
    assert set(snapshot.data) == {"cps", "requests", "messages", "weather", "health"}

    sent = time.monotonic()
    monitor.send(Avr("CP1", "Engine does not answer"))
    event = reader.until(lambda e: e.event == "cp" and e.data["state"] == "AVERIADO", 2.0, "CP1 AVERIADO")
    assert time.monotonic() - sent < 2.0
    assert event.data == running.http().get("/api/cps/CP1").json()
    alert = next(e for e in reader.events if e.event == "alert")  # made at once; the cp event batched after it
    assert (alert.data["kind"], alert.data["cp_id"], alert.data["state"]) == ("cp_out_of_service", "CP1", "AVERIADO")
    assert any(e.event == "message" and "ACTIVADO -> AVERIADO" in e.data["text"] for e in reader.events)
    health = reader.until(lambda e: e.event == "health", 3.0, "the health event")
    assert health.data["text"] == running.view.health().text

    monitor.send(Rec("CP1"))
    reader.until(lambda e: e.event == "cp" and e.data["state"] == "ACTIVADO", 2.0, "CP1 back")
    ids = [int(e.id.rsplit("-", 1)[1]) for e in reader.events if e.id]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_a_change_of_registration_comes_as_a_cp_event_at_the_next_read(start_api):
    running = start_api(registrations_interval=0.2)
    store = running.central.store
    running.monitor("CP1")
    running.monitor("CP2")
    reader = EventReader(running.url)
    try:
        snapshot = reader.next()
        assert snapshot.event == "snapshot"
        assert {cp["cp_id"]: cp["registration"]["state"] for cp in snapshot.data["cps"]} == {
            "CP1": "not registered", "CP2": "not registered"}

        def registration(state: str, what: str):
            event = reader.until(lambda e: e.event == "cp" and e.data["cp_id"] == "CP1"
                                 and e.data["registration"]["state"] == state, 3.0, what)
            return event.data["registration"]

        register_cp(store, "CP1")  # as EV_Registry does: straight into the database
        registered = registration("registered", "CP1 registered")
        assert registered["since"] is not None
        store.deregister_cp("CP1")
        deregistered = registration("deregistered", "CP1 deregistered")
        assert deregistered["since"] is not None
        time.sleep(0.01)
        register_cp(store, "CP1")  # registered again: a new credential, since now
        again = registration("registered", "CP1 registered again")
        assert again["since"] > registered["since"]
        assert again == running.http().get("/api/cps/CP1").json()["registration"] | {
            "checked_at": again["checked_at"]}

        time.sleep(0.5)  # a few reads more: nothing changed, no event
        logging.getLogger("ev_central.test").warning("the end of the test")
        reader.until(lambda e: e.event == "message" and "the end of the test" in e.data["text"], 3.0, "the end")
        # the changes the cp events told, from the snapshot's states on (a cp event may also repeat a
        # state: the first read of the registrations, when it comes after the snapshot, tells every CP's)
        states, changes = {"CP1": "not registered", "CP2": "not registered"}, []
        for event in (e for e in reader.events if e.event == "cp"):
            cp_id, state = event.data["cp_id"], event.data["registration"]["state"]
            if state != states[cp_id]:
                changes.append((cp_id, state))
                states[cp_id] = state
        assert changes == [("CP1", "registered"), ("CP1", "deregistered"), ("CP1", "registered")]  # CP2: none
    finally:
        reader.close()


def test_telemetry_supply_interruption_and_weather_events(running, events):
    running.monitor("CP1")
    reader = events()
    reader.next()  # the snapshot
    central = running.central
    central.book.open("s1", "r1", "CP1", "D1", Decimal("0.48"))
    central.network.apply("CP1", Event.SUPPLY_STARTED, "supply s1 started")
    central.supplies.on_telemetry(Telemetry("CP1", "s1", "D1", 1, Decimal("2.5"), Decimal("1.2"), Decimal("11")))
    telemetry = reader.until(lambda e: e.event == "telemetry", 2.0, "telemetry")
    assert telemetry.data == {"session_id": "s1", "cp_id": "CP1", "seq": 1, "kwh": "2.5", "amount_eur": "1.2000",
                              "driver_id": "D1", "account_id": None, "tag": None}

    running.operator().post("/api/cps/CP1/stop").raise_for_status()
    interrupted = reader.until(lambda e: e.event == "alert" and e.data["kind"] == "supply_interrupted", 2.0,
                               "the supply interrupted")
    reader.until(lambda e: e.event == "cp" and e.data["state"] == "PARADO", 2.0, "CP1 stopped")
    assert interrupted.data["session_id"] == "s1" and "stopped by the operator" in interrupted.data["text"]
    running.operator().post("/api/cps/CP1/resume").raise_for_status()

    office = central.weather
    office.report([CityReport("Teruel,ES", Decimal("-3"), ["CP1"], None, False)], source_ip="10.0.0.9")
    reader.until(lambda e: e.event == "weather" and e.data["cities"] and e.data["cities"][0]["city"] == "Teruel,ES",
                 3.0, "the weather")
    office.alert("Teruel,ES", Decimal("-3"), ["CP1"], source_ip="10.0.0.9")
    alert = reader.until(lambda e: e.event == "alert" and e.data["kind"] == "weather_alert", 3.0, "the alert")
    assert (alert.data["city"], alert.data["cp_ids"]) == ("Teruel,ES", ["CP1"])
    held = [e.data for e in reader.events if e.event == "cp" and e.data["weather_hold"]]  # came first
    assert held and held[-1]["reason"] == "Out of Order: weather alert (Teruel,ES)"


def test_a_supply_the_cp_accepts_after_its_cp_event_went_out_comes_in_a_second_cp_event(running, events):
    """The CP turns SUMINISTRANDO when it is asked; its supply opens when it answers. A page that
    got the first ``cp`` event (no supply yet) gets another one with the supply, whatever the
    CP's delay (it would not learn of it from telemetry, which only updates a supply it knows)."""
    import threading

    from ev_common.protocol import Sup, Supr
    from ev_common.records import SupplyRequest

    monitor = running.monitor("CP1")
    central = running.central
    central.store.add_driver("D1")
    reader = events()
    reader.next()  # the snapshot
    deciding = threading.Thread(target=central.supplies.on_request, args=(SupplyRequest("r1", "D1", "CP1"),),
                                daemon=True)
    deciding.start()
    sup = monitor.answer()
    assert isinstance(sup, Sup) and sup.driver_id == "D1"
    asked = reader.until(lambda e: e.event == "cp" and e.data["state"] == "SUMINISTRANDO", 3.0, "CP1 being asked")
    assert asked.data["supply"] is None
    monitor.send(Supr("CP1", sup.session_id, "OK", ""))
    opened = reader.until(lambda e: e.event == "cp" and e.data["supply"] is not None, 3.0, "CP1 with its supply")
    assert (opened.data["supply"]["session_id"], opened.data["supply"]["driver_id"]) == (sup.session_id, "D1")
    deciding.join(5)
    assert not deciding.is_alive()


def test_a_reader_back_with_its_last_event_id_gets_what_it_missed_and_no_snapshot(running, events):
    monitor = running.monitor("CP1")
    reader, witness = events(), events()  # the witness stays, to see each change published
    reader.next(), witness.next()
    monitor.send(Avr("CP1", "first"))
    seen = reader.until(lambda e: e.event == "cp" and e.data["state"] == "AVERIADO", 2.0, "the fault")
    reader.close()
    wait_until(lambda: running.central.events.subscribers == 1, 3, "the reader gone")

    for change, state in ((Rec("CP1"), "ACTIVADO"), (Avr("CP1", "second"), "AVERIADO")):  # missed by the reader
        monitor.send(change)
        witness.until(lambda e: e.event == "cp" and e.data["state"] == state and int(e.id.rsplit("-", 1)[1])
                      > int(seen.id.rsplit("-", 1)[1]), 2.0, f"CP1 {state} published")

    back = events(seen.id)
    first = back.next()
    assert first.event != "snapshot"
    missed = [first]
    while len([e for e in missed if e.event == "cp"]) < 2:
        missed.append(back.next(2.0))
    assert [e.data["state"] for e in missed if e.event == "cp"] == ["ACTIVADO", "AVERIADO"]
    assert all(int(e.id.rsplit("-", 1)[1]) > int(seen.id.rsplit("-", 1)[1]) for e in missed)
    assert any(e.event == "message" and "second" in e.data["text"] for e in missed)

    stale = events("0123abcd-5")  # an id of another run of Central: the state is sent again
    assert stale.next().event == "snapshot"
    assert running.http().get("/api/events", headers={"Last-Event-ID": "x" * 65}).status_code == 422


def test_heartbeats_while_nothing_happens(start_api):
    running = start_api(heartbeat=0.2)
    reader = EventReader(running.url)
    try:
        reader.next()
        deadline = time.monotonic() + 3
        while reader.comments < 2 and time.monotonic() < deadline:
            try:
                reader.next(0.5)
            except AssertionError:
                pass
        assert reader.comments >= 2
    finally:
        reader.close()


def test_a_reader_that_stops_reading_is_dropped_and_never_slows_the_others(start_api):
    hub = EventHub(queue_limit=64)
    running = start_api(hub=hub, send_timeout=30)
    slow = EventReader(running.url, rcvbuf=4096, read=False)  # sends its request, then reads nothing
    fast = EventReader(running.url)
    try:
        fast.next()
        wait_until(lambda: hub.subscribers == 2, 3, "both readers subscribed")
        payload = "x" * 8000
        slowest = 0.0
        for batch in range(60):
            for n in range(50):
                started = time.perf_counter()
                hub.publish("test", {"n": batch * 50 + n, "pad": payload})
                slowest = max(slowest, time.perf_counter() - started)
            last = batch * 50 + 49
            fast.until(lambda e: e.event == "test" and e.data["n"] == last, 5.0, f"event {last}")
        assert slowest < 0.05, f"a publish took {slowest * 1000:.1f} ms"
        assert hub.dropped == 1
        wait_until(lambda: hub.subscribers == 1, 3, "the slow reader dropped")
        got = [e.data["n"] for e in fast.events if e.event == "test"]
        assert got == list(range(3000))  # the fast reader lost nothing

        connections = running.api.server.server_state.connections
        wait_until(lambda: len(connections) == 1, 3, "the slow reader's connection cut (the fast one's stays)")
    finally:
        slow.close()
        fast.close()


def test_too_many_readers_are_refused_and_central_stopping_ends_every_stream(start_api):
    running = start_api(hub=EventHub(max_subscribers=2))
    first, second = EventReader(running.url), EventReader(running.url)
    try:
        first.next(), second.next()
        refused = running.http().get("/api/events")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "10"
        assert refused.json()["error"] == "unavailable"
        started = time.monotonic()
        running.api.stop()
        for reader in (first, second):
            end = reader.until(lambda e: e.event == "overflow", 3.0, "the end of the stream")
            assert end.data["reason"] == "Central is stopping"
        assert time.monotonic() - started < 5
    finally:
        first.close()
        second.close()


def test_a_reader_that_falls_behind_gets_a_last_overflow_event(start_api):
    hub = EventHub(queue_limit=10)
    running = start_api(hub=hub)
    reader = EventReader(running.url)
    try:
        reader.next()
        for n in range(50):  # in one round of the pump: more than the reader's queue
            hub.publish("test", {"n": n})
        end = reader.until(lambda e: e.event == "overflow", 3.0, "the overflow event")
        assert end.data["reason"] == "this reader fell behind"
        assert reader.next(3.0) is None  # and the stream ends
        last = [e for e in reader.events if e.event == "test"][-1]
        back = EventReader(running.url, last.id)  # as the browser comes back: it misses nothing
        missed = [back.next() for _ in range(49 - last.data["n"])]
        assert [e.data["n"] for e in missed] == list(range(last.data["n"] + 1, 50))
        back.close()
    finally:
        reader.close()
