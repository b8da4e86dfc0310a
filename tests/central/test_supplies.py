"""The supply book with injected clocks: telemetry order, exactly-once close, grace and staleness."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from ev_central.core.supplies import SupplyBook, amount_for
from tests.support.clock import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
PRICE = Decimal("0.48")


@pytest.fixture
def clock():
    return FakeClock(0.0)


@pytest.fixture
def book(clock):
    ids = iter(f"s{i}" for i in range(1, 100))
    return SupplyBook(clock=clock, utcnow=lambda: T0 + timedelta(seconds=clock.now), new_id=lambda: next(ids),
                      end_grace=5, stale_after=90)


def open_one(book, cp="CP1", driver="D1"):
    return book.open(book.new_id(), "r1", cp, driver, PRICE)


def test_open_session_is_authorised_with_frozen_price(book):
    row = open_one(book)
    assert (row.status, row.price_eur_kwh, row.kwh, row.last_seq) == ("AUTHORISED", PRICE, 0, 0)
    assert book.active_for_cp("CP1") == row and book.active_for_driver("D1") == row
    assert book.active_for_cp("CP2") is None


def test_telemetry_applies_in_order_and_never_moves_backwards(book):
    row = open_one(book)
    first = book.telemetry(row.session_id, 1, Decimal("0.5"))
    assert (first.status, first.kwh, first.amount_eur) == ("SUPPLYING", Decimal("0.5"), Decimal("0.2400"))
    assert book.telemetry(row.session_id, 3, Decimal("1.5")).kwh == Decimal("1.5")
    assert book.telemetry(row.session_id, 2, Decimal("1.0")) is None  # late
    assert book.telemetry(row.session_id, 3, Decimal("1.5")) is None  # twice
    assert book.telemetry("unknown", 1, Decimal("1")) is None


def test_normal_end_completes_once_and_rounds_to_cents(book):
    row = open_one(book)
    book.telemetry(row.session_id, 1, Decimal("1.2345"))
    ticket = book.end(row.session_id, 2, Decimal("1.3333"), "unplugged")
    assert (ticket.status, ticket.end_reason, ticket.kwh) == ("COMPLETED", "unplugged", Decimal("1.3333"))
    assert ticket.amount_eur == Decimal("0.64") and ticket.ended_at is not None
    assert book.end(row.session_id, 2, Decimal("1.3333"), "unplugged") is None  # a copy: no second ticket
    assert book.active_for_cp("CP1") is None


def test_engine_fault_end_is_interrupted(book):
    row = open_one(book)
    assert book.end(row.session_id, 1, Decimal("0.1"), "fault").status == "INTERRUPTED"


def test_central_interruption_waits_for_the_engine_then_uses_its_figures(book, clock):
    row = open_one(book)
    book.telemetry(row.session_id, 4, Decimal("2"))
    assert book.interrupt("CP1", "stopped by Central").session_id == row.session_id
    clock.now = 4.9
    assert book.due() == []
    ticket = book.end(row.session_id, 5, Decimal("2.1"), "stopped")
    assert (ticket.status, ticket.end_reason, ticket.kwh) == ("INTERRUPTED", "stopped by Central", Decimal("2.1"))


def test_central_interruption_closes_after_grace_with_last_telemetry(book, clock):
    row = open_one(book)
    book.telemetry(row.session_id, 1, Decimal("0.7"))
    book.interrupt("CP1", "Monitor lost")
    clock.now = 5.0
    [ticket] = book.due()
    assert (ticket.status, ticket.end_reason, ticket.kwh) == ("INTERRUPTED", "Monitor lost", Decimal("0.7"))
    assert not ticket.engine_final


def test_the_engines_late_final_figures_correct_the_ticket_once(book, clock):
    row = open_one(book)
    book.telemetry(row.session_id, 1, Decimal("0.7"))
    book.interrupt("CP1", "Monitor lost")
    clock.now = 5.0
    [ticket] = book.due()
    corrected = book.end(row.session_id, 9, Decimal("2.75"), "monitor lost")
    assert (corrected.status, corrected.kwh, corrected.amount_eur) == ("INTERRUPTED", Decimal("2.75"), Decimal("1.32"))
    assert corrected.corrected and corrected.engine_final and not corrected.ticket_sent
    assert corrected.version > ticket.version
    assert book.end(row.session_id, 9, Decimal("2.75"), "monitor lost") is None  # once
    assert book.end(row.session_id, 10, Decimal("3.0"), "monitor lost") is None  # final is final


def test_late_final_figures_equal_to_the_tickets_need_no_correction(book, clock):
    row = open_one(book)
    book.telemetry(row.session_id, 1, Decimal("0.7"))
    book.interrupt("CP1", "CP fault")
    clock.now = 5.0
    book.due()
    assert book.end(row.session_id, 2, Decimal("0.7"), "fault") is None
    assert book.closed(row.session_id).engine_final


def test_a_session_the_cp_reports_again_is_readopted_and_not_closed(book, clock):
    row = open_one(book)
    book.telemetry(row.session_id, 1, Decimal("0.7"))
    book.interrupt("CP1", "Monitor lost")
    clock.now = 3.0
    again = book.readopt(row.session_id, "CP1", 4, Decimal("1.1"))
    assert again.kwh == Decimal("1.1") and again.status == "SUPPLYING"
    clock.now = 20.0
    assert book.due() == []
    assert book.running_for_cp("CP1") is not None
    assert book.readopt(row.session_id, "CP2", 5, Decimal("1.2")) is None  # not there
    assert book.readopt("unknown", "CP1", 5, Decimal("1.2")) is None


def test_every_change_raises_the_rows_version(book, clock):
    row = open_one(book)
    versions = [row.version, book.telemetry(row.session_id, 1, Decimal("0.1")).version,
                book.telemetry(row.session_id, 2, Decimal("0.2")).version,
                book.end(row.session_id, 3, Decimal("0.3"), "unplugged").version]
    assert versions == sorted(set(versions))


def test_a_request_already_decided_is_recognised(book):
    row = open_one(book)
    assert book.decided(row.request_id) == row
    book.end(row.session_id, 1, Decimal("0.1"), "unplugged")
    assert book.decided(row.request_id).status == "COMPLETED"
    assert book.decided("another") is None


def test_a_normal_end_after_an_interruption_stays_interrupted(book):
    row = open_one(book)
    book.interrupt("CP1", "CP fault")
    assert book.end(row.session_id, 1, Decimal("0.1"), "unplugged").status == "INTERRUPTED"


def test_stale_session_closes_after_silence(book, clock):
    row = open_one(book)
    clock.now = 89
    book.telemetry(row.session_id, 1, Decimal("0.1"))  # news resets the clock
    clock.now = 178
    assert book.due() == []
    clock.now = 179
    [ticket] = book.due()
    assert ticket.status == "INTERRUPTED" and "no news" in ticket.end_reason


def test_loaded_open_sessions_continue(book):
    row = open_one(book)
    other = SupplyBook()
    other.load([row])
    assert other.active_for_cp("CP1") == row
    assert other.end(row.session_id, 1, Decimal("0"), "unplugged").status == "COMPLETED"


def test_interrupting_a_cp_without_supply_is_nothing(book):
    assert book.interrupt("CP9", "x") is None


def test_amount_rounding():
    assert amount_for(Decimal("1.005"), Decimal("1"), Decimal("0.01")) == Decimal("1.01")


def test_running_for_cp_excludes_interrupted_sessions(book):
    row = open_one(book)
    assert book.running_for_cp("CP1") == row
    book.interrupt("CP1", "Monitor lost")
    assert book.running_for_cp("CP1") is None and book.active_for_cp("CP1") is not None
