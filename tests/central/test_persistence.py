"""The write-behind of CP state against a store that goes down and comes back."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from decimal import Decimal

from ev_central.persistence import cp_state_writer
from ev_central.store.base import CPRow, StoreUnavailable
from ev_common.retry import Backoff

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def row(cp_id, state="ACTIVADO"):
    return CPRow(cp_id, "x", Decimal("0.4"), state, False, T0)


class FlakyStore:
    """Records saved rows; raises StoreUnavailable while ``down``."""

    description = "fake"

    def __init__(self):
        self.down = False
        self.saved: dict[str, CPRow] = {}
        self.batches = 0
        self.failed = threading.Event()

    def save_charging_points(self, rows):
        if self.down:
            self.failed.set()
            raise StoreUnavailable("connection refused")
        self.batches += 1
        for r in rows:
            self.saved[r.cp_id] = r


def test_changes_are_written_and_coalesced():
    store = FlakyStore()
    writer = cp_state_writer(store).start()
    for state in ("ACTIVADO", "AVERIADO", "ACTIVADO", "PARADO"):
        writer.put(row("CP1", state))
    writer.put(row("CP2"))
    assert writer.wait_idle(5)
    assert store.saved["CP1"].state == "PARADO" and "CP2" in store.saved
    writer.stop()


def test_outage_keeps_latest_state_in_memory_and_writes_it_when_back(caplog):
    store = FlakyStore()
    store.down = True
    writer = cp_state_writer(store, backoff=Backoff(initial=0.05, cap=0.05, floor=0.01)).start()
    writer.put(row("CP1", "AVERIADO"))
    assert store.failed.wait(5)
    writer.put(row("CP1", "ACTIVADO"))  # newer than the one that failed
    writer.put(row("CP2", "PARADO"))
    assert not writer.wait_idle(0.2) and writer.pending() >= 1
    assert not writer.db_ok
    store.down = False
    assert writer.wait_idle(5)
    assert store.saved["CP1"].state == "ACTIVADO" and store.saved["CP2"].state == "PARADO"
    assert writer.db_ok
    assert "database unreachable" in caplog.text and "database back" in caplog.text
    writer.stop()


def test_stop_reports_what_could_not_be_written(caplog):
    store = FlakyStore()
    store.down = True
    writer = cp_state_writer(store, backoff=Backoff(initial=0.05, cap=0.05, floor=0.01)).start()
    writer.put(row("CP1"))
    assert store.failed.wait(5)
    writer.stop(timeout=2)
    assert writer.pending() == 1
    assert "not written" in caplog.text
