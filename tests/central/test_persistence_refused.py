"""The write-behind on the real stores (SQLite, and a new database on the real MySQL/MariaDB
server): a row the database refuses is set aside and never blocks the others; an older row
never replaces a newer one; ``on_durable`` tells when a row is in the database."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from ev_central.persistence import WriteBehind, cp_state_writer, row_json, session_writer
from ev_central.store import CPRow, SessionRow, StoreRefused, StoreUnavailable
from ev_central.store.sql import SQLStore
from ev_common.retry import Backoff
from tests.support.waiting import wait_until

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)
FAST = Backoff(initial=0.05, cap=0.05, floor=0.01)


def session(session_id: str, **changes: Any) -> SessionRow:
    values: dict[str, Any] = dict(
        session_id=session_id, request_id="r1", cp_id="CP1", driver_id="D1",
        price_eur_kwh=Decimal("0.4000"), started_at=T0, ended_at=None, kwh=Decimal("0"),
        amount_eur=Decimal("0"), status="SUPPLYING", end_reason=None, ticket_sent=False, last_seq=0,
    )
    values.update(changes)
    return SessionRow(**values)


def cp(cp_id: str, **changes: Any) -> CPRow:
    values: dict[str, Any] = dict(cp_id=cp_id, location="x", price_eur_kwh=Decimal("0.4"),
                                  state="ACTIVADO", stopped=False, updated_at=T0)
    values.update(changes)
    return CPRow(**values)


BAD_SESSIONS = {
    "end_reason of 300 characters": {"status": "INTERRUPTED", "ended_at": T0 + timedelta(hours=1),
                                     "end_reason": "e" * 300},
    "kwh beyond DECIMAL(12,4)": {"kwh": Decimal("123456789.5")},
    "last_seq beyond 2^31-1": {"last_seq": 2**31},
}


@pytest.mark.parametrize("bad", list(BAD_SESSIONS))
def test_a_refused_session_row_never_blocks_the_others(store: SQLStore, bad: str, caplog) -> None:
    writer = session_writer(store, FAST).start()
    try:
        before = [session(f"A{n}") for n in range(3)]
        after = [session(f"B{n}") for n in range(3)]
        for row in before:
            writer.put(row)
        writer.put(session("BAD", **BAD_SESSIONS[bad]))
        for row in after:
            writer.put(row)
        assert writer.wait_idle(10), "the writer is stuck on the refused row"
        assert sorted(r.session_id for r in store.list_sessions()) == sorted(
            r.session_id for r in before + after
        )
        assert writer.db_ok and writer.refused_count == 1
        (refused,) = writer.refused()
        assert (refused.kind, refused.row_id) == ("session", "BAD")
        (kept,) = store.list_rejected()
        assert (kept.kind, kept.row_id) == ("session", "BAD")
        assert json.loads(kept.row_json)["session_id"] == "BAD"
        assert "BAD" in caplog.text and any(
            r.levelno == logging.ERROR and "BAD" in r.getMessage() for r in caplog.records
        )
        # later rows keep being written, also a good version of the refused one
        writer.put(session("C1"))
        writer.put(session("BAD", kwh=Decimal("1.5")))
        assert writer.wait_idle(10)
        assert store.get_session("C1") == session("C1")
        assert store.get_session("BAD") == session("BAD", kwh=Decimal("1.5"))
        assert writer.db_ok and writer.refused_count == 1
    finally:
        writer.stop()


def test_a_refused_cp_row_never_blocks_the_others(store: SQLStore) -> None:
    writer = cp_state_writer(store, FAST).start()
    try:
        writer.put(cp("CP1"))
        writer.put(cp("CP2", location="x" * 201))
        writer.put(cp("CP3", state="ENCENDIDO"))
        writer.put(cp("CP4"))
        assert writer.wait_idle(10)
        assert [r.cp_id for r in store.load_charging_points()] == ["CP1", "CP4"]
        assert sorted(r.row_id for r in store.list_rejected()) == ["CP2", "CP3"]
        assert {r.kind for r in store.list_rejected()} == {"cp"}
        assert writer.refused_count == 2 and writer.db_ok
    finally:
        writer.stop()


def test_an_older_row_put_later_never_replaces_a_newer_one(store: SQLStore) -> None:
    writer = session_writer(store, FAST)  # not started: both rows wait together
    writer.put(session("S1", last_seq=20, version=2))
    writer.put(session("S1", last_seq=10, version=1))
    assert writer.pending() == 1
    writer.start()
    try:
        assert writer.wait_idle(10)
        assert store.get_session("S1") == session("S1", last_seq=20, version=2)
        writer.put(session("S1", last_seq=5, version=1))  # older than the stored row
        assert writer.wait_idle(10)
        assert store.get_session("S1") == session("S1", last_seq=20, version=2)
    finally:
        writer.stop()


def test_on_durable_runs_once_the_row_or_a_newer_one_is_in_the_database(store: SQLStore) -> None:
    writer = session_writer(store, FAST)
    seen: dict[str, SessionRow | None] = {}
    done = threading.Event()

    def durable(name: str):
        def callback() -> None:
            seen[name] = store.get_session("S1")
            if len(seen) == 4:
                done.set()
        return callback

    writer.put(session("S1", last_seq=1, version=1), durable("v1"))
    writer.put(session("S1", last_seq=3, version=3), durable("v3"))
    writer.put(session("S1", last_seq=2, version=2), durable("v2, older than the one waiting"))
    writer.put(session("S1", last_seq=3, version=3), lambda: 1 / 0)  # logged, never raised
    writer.put(session("S1", last_seq=3, version=3), durable("v3 again"))
    writer.put(session("S9", end_reason="e" * 300), lambda: seen.setdefault("refused", None))
    writer.start()
    try:
        assert done.wait(10)
        assert writer.wait_idle(10)
        assert set(seen) == {"v1", "v3", "v2, older than the one waiting", "v3 again", "refused"}
        for name in ("v1", "v3", "v2, older than the one waiting", "v3 again"):
            assert seen[name] == session("S1", last_seq=3, version=3), name
        writer.put(session("S2"))  # put(row) as before
        assert writer.wait_idle(10) and store.get_session("S2") == session("S2")
    finally:
        writer.stop()


# -- with a fake store ---------------------------------------------------------------------


class FakeStore:
    """Refuses rows whose state is "BAD"; unreachable while ``down``; ``add_rejected``
    unreachable while ``rejected_down``."""

    def __init__(self) -> None:
        self.down = False
        self.rejected_down = False
        self.saved: dict[str, CPRow] = {}
        self.rejected: list[tuple] = []
        self.failed = threading.Event()

    def save_charging_points(self, rows) -> None:
        rows = list(rows)
        if self.down:
            self.failed.set()
            raise StoreUnavailable("connection refused")
        for row in rows:
            if row.state == "BAD":
                raise StoreRefused("bad state", row_id=row.cp_id)
        for row in rows:
            self.saved[row.cp_id] = row

    def add_rejected(self, kind, row_id, reason, row_json, at) -> None:
        if self.rejected_down:
            raise StoreUnavailable("connection refused")
        self.rejected.append((kind, row_id, reason))


def test_a_refused_row_is_kept_in_rejected_rows_once_the_database_can_take_it() -> None:
    store = FakeStore()
    store.rejected_down = True
    writer = cp_state_writer(store, FAST).start()  # type: ignore[arg-type]
    try:
        writer.put(cp("CP1", state="BAD"))
        writer.put(cp("CP2"))
        assert writer.wait_idle(5)
        assert store.rejected == [] and [r.row_id for r in writer.refused()] == ["CP1"]
        store.rejected_down = False
        writer.put(cp("CP3"))  # the next write that goes through keeps it
        assert writer.wait_idle(5)
        wait_until(lambda: store.rejected, 5, "the refused row kept in rejected_rows")
        assert store.rejected == [("cp", "CP1", "bad state")]
    finally:
        writer.stop()


def test_refused_rows_in_memory_are_bounded() -> None:
    store = FakeStore()
    writer = WriteBehind(store.save_charging_points, lambda r: r.cp_id, "CP states", FAST,
                         kind="cp", refused_kept=2).start()
    try:
        for n in range(5):
            writer.put(cp(f"CP{n}", state="BAD"))
        assert writer.wait_idle(5)
        assert writer.refused_count == 5
        assert [r.row_id for r in writer.refused()] == ["CP3", "CP4"]
    finally:
        writer.stop()


def test_an_outage_keeps_the_newest_version_and_its_callbacks() -> None:
    store = FakeStore()
    store.down = True
    writer = cp_state_writer(store, FAST).start()  # type: ignore[arg-type]
    called: list[str] = []
    try:
        writer.put(cp("CP1", state="AVERIADO", version=2), lambda: called.append("v2"))
        assert store.failed.wait(5)
        writer.put(cp("CP1", state="ACTIVADO", version=1), lambda: called.append("v1"))
        assert not writer.wait_idle(0.1)
        assert called == []
        store.down = False
        assert writer.wait_idle(5)
        assert store.saved["CP1"].state == "AVERIADO"
        assert sorted(called) == ["v1", "v2"]
    finally:
        writer.stop()


def test_row_json_is_ascii_and_bounded() -> None:
    text = row_json(session("S\ud800" + "x" * 2000, kwh=Decimal("1E+100000")))
    assert text.isascii() and len(text) < 3000
    data = json.loads(text)
    assert data["session_id"].endswith("...") and data["version"] == 0
