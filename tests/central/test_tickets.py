"""Resumption tickets: what a ticket vouches for and what voids it (``TicketBox``), and how
``CPAuthenticator`` takes one: instead of the scrypt check, never instead of the credential,
and a ticket that does not match is no failure. On a real SQLite store."""

from __future__ import annotations

from decimal import Decimal

import pytest

import ev_central.auth as auth_module
from ev_central.auth import Admitted, CPAuthenticator, Refused
from ev_central.keys import KeyRing
from ev_central.store import open_store
from ev_central.tickets import TICKET_LENGTH, TicketBox
from ev_common.credentials import hash_credential, new_credential
from ev_common.protocol import Reg

MASTER = bytes(range(32))
OTHER_MASTER = bytes(range(1, 33))
PEER = "10.0.0.7:5123"


def test_a_ticket_vouches_for_its_cp_credential_and_stored_hash_only():
    box = TicketBox(MASTER)
    credential, stored = new_credential(), "scrypt$14$8$1$c2FsdA$aGFzaA"
    ticket = box.issue("CP001", credential, stored)
    assert len(ticket) == TICKET_LENGTH and ticket == box.issue("CP001", credential, stored)
    assert box.vouches(ticket, "CP001", credential, stored)
    assert TicketBox(MASTER).vouches(ticket, "CP001", credential, stored)  # another process, the same master key
    assert not box.vouches(ticket, "CP002", credential, stored)
    assert not box.vouches(ticket, "CP001", new_credential(), stored)
    assert not box.vouches(ticket, "CP001", credential, stored + "x")  # a new registration at EV_Registry
    assert not TicketBox(OTHER_MASTER).vouches(ticket, "CP001", credential, stored)


@pytest.mark.parametrize("ticket", ["", "A" * TICKET_LENGTH, "A" * (TICKET_LENGTH - 1), "A" * 44, "!" * TICKET_LENGTH,
                                    None, 42])
def test_a_malformed_ticket_vouches_for_nothing(ticket):
    assert not TicketBox(MASTER).vouches(ticket, "CP001", "evc1_x", "scrypt$x")


def test_the_fields_cannot_run_together():
    box = TicketBox(MASTER)
    assert box.issue("CP0", "evc1_x", "1scrypt") != box.issue("CP01", "evc1_x", "scrypt")


class Audit:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, str, str]] = []

    def record(self, action, actor, details="", outcome="ok", source_ip=""):
        self.entries.append((action, actor, details, outcome))


@pytest.fixture
def store(tmp_path):
    opened = open_store(f"sqlite:///{tmp_path}/t.db")
    yield opened
    opened.close()


@pytest.fixture
def scrypt_checks(monkeypatch) -> list[str]:
    """Every scrypt check the authenticator makes (the real one, counted)."""
    calls: list[str] = []
    real = auth_module.verify_credential

    def counted(credential, stored_hash):
        calls.append(credential)
        return real(credential, stored_hash)

    monkeypatch.setattr(auth_module, "verify_credential", counted)
    return calls


def authenticator(store, master=MASTER, tickets=True) -> tuple[CPAuthenticator, Audit]:
    audit = Audit()
    keys = KeyRing(store, master)
    keys.load()
    return CPAuthenticator(store, keys, audit, tickets=TicketBox(master) if tickets else None), audit


def reg(credential: str, ticket: str = "", cp_id: str = "CP001") -> Reg:
    return Reg(cp_id, "x", Decimal("0.40"), credential, ticket)


def test_after_a_restart_a_ticket_spares_the_scrypt_check(store, scrypt_checks):
    credential = new_credential()
    store.register_cp("CP001", "Calle 1", "0.45", hash_credential(credential))
    first, _ = authenticator(store)
    admitted = first.authenticate(reg(credential), PEER)
    assert isinstance(admitted, Admitted) and len(admitted.ticket) == TICKET_LENGTH
    assert len(scrypt_checks) == 1

    second, audit = authenticator(store)  # Central restarted: nothing remembered in memory
    again = second.authenticate(reg(credential, admitted.ticket), PEER)
    assert isinstance(again, Admitted) and again.key == admitted.key and again.ticket == admitted.ticket
    assert len(scrypt_checks) == 1
    assert audit.entries == [("auth", "CP001", "authenticated with its resumption ticket; key v1", "ok")]
    assert second.authenticate(reg(credential, admitted.ticket), PEER).key == admitted.key  # then from memory
    assert len(scrypt_checks) == 1


def test_a_ticket_is_never_taken_instead_of_the_credential(store, scrypt_checks):
    credential = new_credential()
    store.register_cp("CP001", "Calle 1", "0.45", hash_credential(credential))
    ticket = authenticator(store)[0].authenticate(reg(credential), PEER).ticket
    restarted, audit = authenticator(store)
    wrong = restarted.authenticate(reg(new_credential(), ticket), PEER)
    assert wrong == Refused("wrong credential for CP001")
    missing = restarted.authenticate(Reg("CP001", "x", Decimal("0.40"), "", ticket), PEER)
    assert isinstance(missing, Refused) and "must carry the CP's credential" in missing.reason
    other_cp = restarted.authenticate(reg(credential, ticket, cp_id="CP002"), PEER)
    assert other_cp == Refused("CP002 is not registered at EV_Registry")
    assert [entry[3] for entry in audit.entries] == ["refused"] * 3


def test_a_ticket_that_does_not_match_is_no_failure_the_credential_is_checked_with_scrypt(store, scrypt_checks):
    credential = new_credential()
    store.register_cp("CP001", "Calle 1", "0.45", hash_credential(credential))
    foreign = TicketBox(OTHER_MASTER).issue("CP001", credential, "scrypt$whatever")
    restarted, audit = authenticator(store)
    admitted = restarted.authenticate(reg(credential, foreign), PEER)
    assert isinstance(admitted, Admitted) and len(scrypt_checks) == 1
    assert admitted.ticket != foreign  # a good one instead
    assert audit.entries[-1] == ("auth", "CP001", "authenticated; key v1", "ok")
    assert restarted.per_cp.locked("CP001") == 0


def test_a_new_credential_at_ev_registry_voids_the_tickets_made_before(store, scrypt_checks):
    old = new_credential()
    store.register_cp("CP001", "Calle 1", "0.45", hash_credential(old))
    ticket = authenticator(store)[0].authenticate(reg(old), PEER).ticket
    new = new_credential()
    store.register_cp("CP001", "Calle 1", "0.45", hash_credential(new))  # the operator issued a new credential
    restarted, _ = authenticator(store)
    assert restarted.authenticate(reg(old, ticket), PEER) == Refused("wrong credential for CP001")
    assert isinstance(restarted.authenticate(reg(new, ticket), PEER), Admitted)
    assert len(scrypt_checks) == 3  # the first, the old credential refused, the new one


def test_a_deregistered_cp_is_refused_whatever_its_ticket(store, scrypt_checks):
    credential = new_credential()
    store.register_cp("CP001", "Calle 1", "0.45", hash_credential(credential))
    ticket = authenticator(store)[0].authenticate(reg(credential), PEER).ticket
    store.deregister_cp("CP001")
    restarted, _ = authenticator(store)
    assert restarted.authenticate(reg(credential, ticket), PEER) == Refused("CP001 was deregistered at EV_Registry")


def test_without_a_ticket_box_no_ticket_is_given_nor_taken(store, scrypt_checks):
    credential = new_credential()
    store.register_cp("CP001", "Calle 1", "0.45", hash_credential(credential))
    ticket = TicketBox(MASTER).issue("CP001", credential, store.get_registration("CP001").credential_hash)
    plain, _ = authenticator(store, tickets=False)
    admitted = plain.authenticate(reg(credential, ticket), PEER)
    assert isinstance(admitted, Admitted) and admitted.ticket == "" and len(scrypt_checks) == 1


def test_a_batch_reads_its_registrations_at_once_and_each_gets_its_own_answer(store, scrypt_checks, monkeypatch):
    credentials = {cp: new_credential() for cp in ("CP001", "CP002")}
    for cp_id, credential in credentials.items():
        store.register_cp(cp_id, "Calle 1", "0.45", hash_credential(credential))
    first, _ = authenticator(store)
    tickets = {cp: first.authenticate(reg(c, cp_id=cp), PEER).ticket for cp, c in credentials.items()}
    restarted, audit = authenticator(store)
    monkeypatch.setattr(store, "get_registration", lambda cp_id: pytest.fail(f"{cp_id} read alone"))
    outcomes = restarted.authenticate_many([
        (reg(credentials["CP001"], tickets["CP001"], cp_id="CP001"), PEER),
        (reg(credentials["CP001"], tickets["CP002"], cp_id="CP002"), PEER),  # another CP's credential
        (reg(credentials["CP001"], cp_id="CP009"), PEER),
        (Reg("CP002", "x", Decimal("0.40"), "", tickets["CP002"]), PEER),  # no credential
    ])
    assert isinstance(outcomes[0], Admitted) and outcomes[0].ticket == tickets["CP001"]
    assert outcomes[1:3] == [Refused("wrong credential for CP002"), Refused("CP009 is not registered at EV_Registry")]
    assert "must carry the CP's credential" in outcomes[3].reason
    assert [entry[3] for entry in audit.entries if entry[0] == "auth"] == ["ok", "refused", "refused", "refused"]


def test_a_batch_whose_read_fails_is_checked_one_by_one(store, scrypt_checks, monkeypatch):
    from ev_central.store import StoreUnavailable

    credential = new_credential()
    store.register_cp("CP001", "Calle 1", "0.45", hash_credential(credential))
    checker, _ = authenticator(store)

    def away(cp_ids):
        raise StoreUnavailable("the database is away")

    monkeypatch.setattr(store, "get_registrations", away)
    outcomes = checker.authenticate_many([(reg(credential), PEER), (reg(credential, cp_id="CP002"), PEER)])
    assert isinstance(outcomes[0], Admitted)
    assert outcomes[1] == Refused("CP002 is not registered at EV_Registry")
