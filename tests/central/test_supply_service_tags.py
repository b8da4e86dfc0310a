"""SupplyService for RFID tags (MCSP START/END) and sessions booked to accounts, on the fakes of
test_supply_service: no sockets, no broker, no database."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from ev_central.core.entities import AccountRow, TagRow
from ev_central.core.states import State
from ev_central.server import CPUnreachable
from ev_central.store.base import SessionRow
from ev_central.supply_service import Refusal, Why
from ev_common.protocol import Can, Fin, Sup
from ev_common.records import RequestAuthorised, SupplyEnd, Ticket
from tests.central.test_supply_service import Central

UID = "16AC936B1692E73A"
OTHER = "04A224B2C3D4E5"
T = datetime(2026, 1, 1, tzinfo=timezone.utc)


def account(account_id: str = "FLAT3B", active: bool = True) -> AccountRow:
    return AccountRow(account_id, "Flat 3B", "apartment", active, T)


@pytest.fixture
def central() -> Central:
    c = Central()
    c.add_cp("CP1")
    c.add_cp("CP2", "Plaza 2", Decimal("0.60"))
    c.store.tags[UID] = (TagRow(UID, "FLAT3B", True, T), account())
    c.store.tags[OTHER] = (TagRow(OTHER, "FLAT4A", True, T), account("FLAT4A"))
    return c


def engine_ends_on_fin(central: Central, kwh: str = "2.75") -> None:
    """The fake Monitor side plays the Engine: a FIN is answered by its supply.end at once."""
    original = central.gateway.command

    def command(cp_id, message):
        delivered = original(cp_id, message)
        if delivered and isinstance(message, Fin):
            central.service.on_supply_end(SupplyEnd(cp_id, message.session_id, "FLAT3B", 9, Decimal(kwh),
                                                    Decimal(0), "unplugged"))
        return delivered

    central.gateway.command = command


def test_start_opens_a_session_booked_to_the_tags_account(central):
    row = central.service.start_by_tag("CP1", UID)
    assert isinstance(row, SessionRow)
    assert (row.cp_id, row.driver_id, row.tag_uid, row.account_id, row.status) == ("CP1", "", UID, "FLAT3B",
                                                                                   "AUTHORISED")
    [(cp_id, sup, _)] = central.gateway.asked
    assert isinstance(sup, Sup) and (cp_id, sup.driver_id, sup.session_id) == ("CP1", "FLAT3B", row.session_id)
    assert central.state("CP1") is State.SUMINISTRANDO
    assert central.writer.last(row.session_id).tag_uid == UID
    assert central.notifier.sent == []  # no driver to tell
    assert [s.driver_id for s in central.notifier.statuses if s.cp_id == "CP1"][-1] is None
    assert any("authorised: tag ...E73A of account FLAT3B at CP1" in line for line in central.said)
    assert not any(UID in line for line in central.said)  # the UID is a key: never said whole


@pytest.mark.parametrize("setup, why, words", [
    (lambda c: None, Why.NOT_REGISTERED, "Key is not registered"),
    (lambda c: c.store.tags.__setitem__("AABBCCDD", (TagRow("AABBCCDD", "FLAT3B", False, T), account())),
     Why.DISABLED, "Key is disabled"),
    (lambda c: c.store.tags.__setitem__("AABBCCDD", (TagRow("AABBCCDD", "GONE", True, T), account("GONE", False))),
     Why.DISABLED, "Account GONE is disabled"),
])
def test_unknown_and_disabled_tags_are_refused_before_the_cp_is_asked(central, setup, why, words):
    setup(central)
    outcome = central.service.start_by_tag("CP1", "AABBCCDD")
    assert outcome == Refusal(why, words)
    assert central.gateway.asked == [] and central.state("CP1") is State.ACTIVADO


def test_unknown_busy_stopped_and_disconnected_cps(central):
    assert central.service.start_by_tag("CP9", UID).why is Why.UNKNOWN
    central.service.start_by_tag("CP1", UID)
    busy = central.service.start_by_tag("CP1", OTHER)
    assert busy.why is Why.NOT_AVAILABLE and "SUMINISTRANDO" in busy.reason
    again = central.service.start_by_tag("CP2", UID)  # the same tag, busy elsewhere
    assert again.why is Why.NOT_AVAILABLE and "already has a supply in course at CP1" in again.reason
    central.service.stop("CP2")
    assert central.service.start_by_tag("CP2", OTHER).why is Why.NOT_AVAILABLE
    central.add_cp("CP3")
    central.on_change(central.network.session_ended("CP3", "mon-CP3", "test"))
    lost = central.service.start_by_tag("CP3", OTHER)
    assert lost.why is Why.UNREACHABLE and "DESCONECTADO" in lost.reason


def test_a_cp_that_refuses_or_does_not_answer(central):
    central.gateway.answers["CP1"] = ("KO", "the CP is faulty")
    assert central.service.start_by_tag("CP1", UID) == Refusal(Why.NOT_AVAILABLE, "CP1 refused: the CP is faulty")
    central.gateway.answers["CP1"] = CPUnreachable("no answer within 3 s")
    outcome = central.service.start_by_tag("CP1", UID)
    assert outcome.why is Why.UNREACHABLE
    assert any(isinstance(m, Can) for _, m in central.gateway.commands)  # never supplied unknown to Central
    assert central.state("CP1") is State.ACTIVADO


def test_database_down_uses_remembered_tags_and_refuses_unknown_ones(central):
    central.service.start_by_tag("CP1", UID)  # remembered now
    central.store.down = True
    assert isinstance(central.service.start_by_tag("CP2", OTHER), Refusal)  # never looked up: cannot check
    assert central.service.start_by_tag("CP2", OTHER).why is Why.CANNOT_CHECK
    central.end("s1", 3, "1.0", "unplugged", driver_id="FLAT3B")
    assert isinstance(central.service.start_by_tag("CP2", UID), SessionRow)


def test_end_finishes_at_the_cp_and_answers_the_engines_figures_then_again(central):
    engine_ends_on_fin(central, kwh="2.75")
    row = central.service.start_by_tag("CP1", UID)
    central.telemetry(row.session_id, 1, "1.0", driver_id="FLAT3B")
    closed = central.service.end_by_tag("CP1", row.session_id, UID)
    assert isinstance(closed, SessionRow)
    assert (closed.status, closed.kwh, closed.amount_eur, closed.end_reason) == (
        "COMPLETED", Decimal("2.75"), Decimal("1.32"), "unplugged")
    assert [m for _, m in central.gateway.commands] == [Fin("CP1", row.session_id)]
    assert central.state("CP1") is State.ACTIVADO
    assert central.writer.last(row.session_id).ticket_sent  # a tag's ticket is its END answer
    assert not [r for _, r in central.notifier.sent if isinstance(r, Ticket)]
    again = central.service.end_by_tag("CP1", row.session_id, UID)  # idempotent: the same figures
    assert (again.kwh, again.amount_eur) == (closed.kwh, closed.amount_eur)
    assert len(central.gateway.commands) == 1  # the CP is not asked again


def test_end_refusals(central):
    row = central.service.start_by_tag("CP1", UID)
    assert central.service.end_by_tag("CP1", row.session_id, OTHER).why is Why.NOT_YOURS
    assert central.service.end_by_tag("CP2", row.session_id, UID).why is Why.UNKNOWN
    assert central.service.end_by_tag("CP1", "nope", UID).why is Why.UNKNOWN
    driver_session = central.authorise("D1", "CP2").session_id
    assert central.service.end_by_tag("CP2", driver_session, UID).why is Why.UNKNOWN  # not a tag's session
    central.gateway.delivers = False  # the Monitor is not connected
    unreachable = central.service.end_by_tag("CP1", row.session_id, UID)
    assert unreachable.why is Why.UNREACHABLE and "the session goes on" in unreachable.reason
    assert central.book.is_open(row.session_id)


def test_end_whose_figures_do_not_come_in_time_is_503_and_works_later(central):
    central.service.tag_end_wait = 0.05
    row = central.service.start_by_tag("CP1", UID)
    late = central.service.end_by_tag("CP1", row.session_id, UID)
    assert late.why is Why.UNREACHABLE and "END again" in late.reason
    central.end(row.session_id, 4, "1.5", "unplugged", driver_id="FLAT3B")  # the figures arrive
    closed = central.service.end_by_tag("CP1", row.session_id, UID)
    assert (closed.status, closed.kwh) == ("COMPLETED", Decimal("1.5"))


def test_end_of_a_session_closed_before_a_restart_is_read_from_the_store(central):
    row = central.service.start_by_tag("CP1", UID)
    central.end(row.session_id, 2, "0.5", "unplugged", driver_id="FLAT3B")
    stored = central.store.sessions[row.session_id]
    fresh = Central()  # Central restarted: the session is no longer in memory
    fresh.add_cp("CP1")
    fresh.store.sessions[row.session_id] = stored
    again = fresh.service.end_by_tag("CP1", row.session_id, UID)
    assert (again.session_id, again.kwh, again.status) == (row.session_id, Decimal("0.5"), "COMPLETED")
    fresh.store.down = True
    assert fresh.service.end_by_tag("CP1", "unknown", UID).why is Why.CANNOT_CHECK


def test_a_driver_with_an_account_books_to_it_and_a_disabled_account_refuses(central):
    central.store.accounts["D1"] = account()
    authorised = central.authorise("D1", "CP1")
    assert central.book.active_for_cp("CP1").account_id == "FLAT3B"
    assert isinstance(authorised, RequestAuthorised)
    central.store.accounts["D2"] = account("FLAT9", active=False)
    central.request("D2", "CP2")
    assert "account FLAT9 of driver D2 is disabled" in central.notifier.to("D2")[-1].reason


def test_a_start_being_decided_refuses_a_second_one_of_the_same_tag(central):
    seen = []
    central.gateway.during_ask = lambda cp_id, sup: seen.append(central.service.start_by_tag("CP2", UID))
    central.service.start_by_tag("CP1", UID)
    [second] = seen
    assert second.why is Why.NOT_AVAILABLE and "already has a request being decided" in second.reason
    [pending] = [p for p in [central.service.pending_requests()]]
    assert pending == []  # nothing left pending after the decision
