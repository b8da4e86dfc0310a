"""EventHub on its own: numbering, replay after a reconnection, gaps, dropping a reader that
falls behind, and nothing done while nobody listens. The pump is run by hand (``pump_now``)
but in the test of its thread."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from ev_central.events import EventHub, EventLogHandler, TooManySubscribers
from tests.support.clock import FakeClock


def run(coroutine):
    return asyncio.run(coroutine)


def test_nothing_is_made_while_nobody_listens():
    hub = EventHub(pump=False)
    made = []
    hub.publish("cp", lambda: made.append(1) or {})
    hub.pump_now()
    assert made == [] and hub.published == 0 and hub.last_id == 0


def test_a_pump_that_falls_behind_drops_every_reader_who_then_starts_again():
    async def main():
        hub = EventHub(pending_limit=3, pump=False)
        reader = hub.subscribe()
        for n in range(5):
            hub.publish("cp", {"n": n})  # the last two are lost
        hub.pump_now()
        assert reader.dropped and hub.subscribers == 0
        assert hub.subscribe(reader.last_event_id).gap

    run(main())


def test_events_are_numbered_and_queued_for_each_reader():
    async def main():
        hub = EventHub(pump=False)
        first, second = hub.subscribe(), hub.subscribe()
        hub.publish("cp", {"cp_id": "CP1"})
        hub.publish("telemetry", lambda: {"kwh": 1})
        hub.pump_now()
        for reader in (first, second):
            await reader.wait(1)
            events = reader.take()
            assert [(e.kind, e.data) for e in events] == [("cp", '{"cp_id":"CP1"}'), ("telemetry", '{"kwh":1}')]
            assert [e.id for e in events] == [1, 2]
            assert events[0].frame() == f"id: {hub.run}-1\nevent: cp\ndata: {{\"cp_id\":\"CP1\"}}\n\n".encode()
        return hub

    run(main())


def test_a_reader_back_with_its_last_id_gets_what_it_missed():
    async def main():
        hub = EventHub(replay=10, pump=False)
        reader = hub.subscribe()
        hub.publish("cp", {"n": 1})
        hub.pump_now()
        await reader.wait(1)
        seen = reader.take()[-1].event_id
        reader.close()
        hub.publish("cp", {"n": 2})  # nobody listens, but the hub lingers: kept
        hub.publish("cp", {"n": 3})
        hub.pump_now()
        back = hub.subscribe(seen)
        assert not back.gap
        assert [e.data for e in back.take()] == ['{"n":2}', '{"n":3}']
        assert back.last_event_id == f"{hub.run}-3"

    run(main())


@pytest.mark.parametrize("last", ["zzzz-1", "garbage", "", "-5"])
def test_an_id_of_another_run_is_a_gap(last):
    async def main():
        hub = EventHub(pump=False)
        hub.subscribe()
        hub.publish("cp", {})
        hub.pump_now()
        reader = hub.subscribe(last)
        assert reader.gap and reader.take() == []

    run(main())


def test_a_reader_further_behind_than_the_replay_buffer_is_told_of_the_gap():
    async def main():
        hub = EventHub(replay=3, pump=False)
        hub.subscribe()
        for n in range(10):
            hub.publish("cp", {"n": n})
        hub.pump_now()
        assert hub.subscribe(f"{hub.run}-5").gap
        ok = hub.subscribe(f"{hub.run}-7")
        assert not ok.gap and [e.id for e in ok.take()] == [8, 9, 10]

    run(main())


def test_after_the_linger_nothing_is_kept_and_a_returning_reader_has_a_gap():
    async def main():
        clock = FakeClock(100.0)
        hub = EventHub(linger=60, clock=clock, pump=False)
        reader = hub.subscribe()
        hub.publish("cp", {})
        hub.pump_now()
        reader.close()
        clock.advance(61)
        hub.publish("cp", {"lost": True})
        hub.pump_now()
        assert not hub.live
        hub.publish("cp", {"not even made": True})
        back = hub.subscribe(f"{hub.run}-1")
        assert back.gap

    run(main())


def test_a_reader_that_falls_behind_is_dropped_and_the_others_go_on():
    async def main():
        hub = EventHub(queue_limit=5, pump=False)
        slow, fast = hub.subscribe(), hub.subscribe()
        got = []
        for n in range(20):
            hub.publish("cp", {"n": n})
            hub.pump_now()
            got += fast.take()
        assert slow.dropped and not fast.dropped
        assert len(got) == 20 and hub.subscribers == 1 and hub.dropped == 1

    run(main())


def test_publishing_from_threads_wakes_the_reader():
    async def main():
        hub = EventHub()  # with its pump thread
        reader = hub.subscribe()
        threads = [threading.Thread(target=lambda: [hub.publish("cp", {}) for _ in range(100)]) for _ in range(4)]
        for thread in threads:
            thread.start()
        got = []
        while len(got) < 400:
            await reader.wait(2)
            batch = reader.take()
            assert batch or len(got) == 400, "woken with nothing"
            got += batch
        for thread in threads:
            thread.join()
        assert sorted(e.id for e in got) == list(range(1, 401))

    run(main())


def test_too_many_readers_are_refused():
    async def main():
        hub = EventHub(max_subscribers=2, pump=False)
        hub.subscribe(), hub.subscribe()
        with pytest.raises(TooManySubscribers):
            hub.subscribe()

    run(main())


def test_close_all_ends_every_stream():
    async def main():
        hub = EventHub(pump=False)
        reader = hub.subscribe()
        hub.close_all()
        assert reader.dropped and reader.closed and hub.subscribers == 0

    run(main())


def test_log_lines_become_message_events_but_not_the_per_second_figures():
    async def main():
        hub = EventHub(pump=False)
        reader = hub.subscribe()
        handler = EventLogHandler(hub)
        logger = logging.getLogger("ev_central.test_api_events")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            logger.warning("CP%d lost", 7)
            logging.getLogger("ev_central.live").addHandler(handler)
            logging.getLogger("ev_central.live").info("CP1 1.000 kWh")
            logger.debug("not shown")
        finally:
            logger.removeHandler(handler)
            logging.getLogger("ev_central.live").removeHandler(handler)
        hub.pump_now()
        events = reader.take()
        assert [e.kind for e in events] == ["message"]
        assert '"level":"warning"' in events[0].data and '"text":"CP7 lost"' in events[0].data

    run(main())
