"""EV_Registry's API over real HTTPS, on SQLite and on MySQL: registrations, credentials,
errors, the operator token, and the audit entries."""

from __future__ import annotations

import json
import logging
import re
from decimal import Decimal
from urllib.parse import quote

import pytest

from ev_common.credentials import verify_credential
from tests.registry.conftest import Running

CREDENTIAL = re.compile(r"evc1_[A-Za-z0-9_-]{43}")
BODY = {"location": "C/Mayor, 45", "price_eur_kwh": "0.48"}


def _registrations(running: Running):
    return {row.cp_id: row for row in running.store.list_registrations()}


def _audit(running: Running, action: str = "registry."):
    return running.store.list_audit(action=action)


# -- registering ------------------------------------------------------------------------------------


def test_register_returns_the_credential_once_and_stores_only_its_hash(registry: Running):
    http = registry.http()
    first = http.put("/cps/CP001", json=BODY)
    assert first.status_code == 201, first.text
    assert first.headers["cache-control"] == "no-store"
    answer = first.json()
    assert CREDENTIAL.fullmatch(answer["credential"])
    assert answer["cp_id"] == "CP001" and answer["location"] == "C/Mayor, 45"
    assert answer["price_eur_kwh"] == "0.4800" and answer["registered"] is True
    assert answer["deregistered_at"] is None

    row = registry.store.get_registration("CP001")
    assert row.credential_hash.startswith("scrypt$14$8$1$")
    assert answer["credential"] not in row.credential_hash
    assert verify_credential(answer["credential"], row.credential_hash)

    for path in ("/cps/CP001", "/cps"):  # a GET never shows the credential nor its hash
        shown = http.get(path)
        assert shown.status_code == 200
        assert answer["credential"] not in shown.text
        assert "scrypt" not in shown.text and "credential" not in shown.text
        assert row.credential_hash.split("$")[-1] not in shown.text
    assert http.get("/cps/CP001").json() == {k: v for k, v in answer.items() if k != "credential"}


def test_registering_again_replaces_the_credential(registry: Running):
    http = registry.http()
    old = http.put("/cps/CP001", json=BODY).json()["credential"]
    again = http.put("/cps/CP001", json={"location": "Plaza 1", "price_eur_kwh": 0.5})
    assert again.status_code == 200, again.text
    new = again.json()["credential"]
    assert new != old
    row = registry.store.get_registration("CP001")
    assert verify_credential(new, row.credential_hash)
    assert not verify_credential(old, row.credential_hash)
    assert (row.location, str(row.price_eur_kwh)) == ("Plaza 1", "0.5000")


def test_list_and_get_show_the_registration_state(registry: Running):
    http = registry.http()
    for cp_id in ("CP002", "CP001", "cp-3_x"):
        assert http.put(f"/cps/{cp_id}", json=BODY).status_code == 201
    assert http.delete("/cps/CP002").status_code == 204
    listed = http.get("/cps").json()["cps"]
    assert [cp["cp_id"] for cp in listed] == ["CP001", "CP002", "cp-3_x"]
    assert [cp["registered"] for cp in listed] == [True, False, True]
    assert set(listed[0]) == {"cp_id", "location", "price_eur_kwh", "registered", "registered_at", "deregistered_at"}
    assert listed[1]["deregistered_at"] is not None


# -- deregistering ----------------------------------------------------------------------------------


def test_deregister_keeps_the_history_and_the_credential_stops_working(registry: Running):
    http = registry.http()
    credential = http.put("/cps/CP001", json=BODY).json()["credential"]
    gone = http.delete("/cps/CP001")
    assert gone.status_code == 204 and gone.content == b""
    row = registry.store.get_registration("CP001")
    assert row is not None and row.credential_hash is None and row.deregistered_at is not None
    assert not verify_credential(credential, row.credential_hash)
    state = http.get("/cps/CP001").json()
    assert state["registered"] is False and state["deregistered_at"]

    again = http.delete("/cps/CP001")
    assert again.status_code == 409
    assert again.json()["error"] == "conflict" and "already deregistered" in again.json()["message"]

    back = http.put("/cps/CP001", json=BODY)  # a deregistered CP can be registered again
    assert back.status_code == 200
    assert verify_credential(back.json()["credential"], registry.store.get_registration("CP001").credential_hash)
    assert http.get("/cps/CP001").json()["deregistered_at"] is None


def test_unknown_cps_are_404(registry: Running):
    http = registry.http()
    for method in ("GET", "DELETE"):
        answer = http.request(method, "/cps/NOPE")
        assert answer.status_code == 404
        assert answer.json() == {"error": "not_found", "message": "NOPE is not registered"}
    other = http.get("/nothing/here")
    assert other.status_code == 404 and other.json()["error"] == "not_found"
    assert http.post("/cps/CP001", json=BODY).status_code == 405
    assert _registrations(registry) == {}


# -- the operator token -------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"},
                                     {"Authorization": f"Bearer {'x' * 2000}"}],
                         ids=["none", "wrong", "basic", "empty-bearer", "huge"])
def test_requests_without_the_right_token_are_401_and_change_nothing(registry: Running, headers):
    http = registry.http(authenticated=False)
    for method, path, body in (("PUT", "/cps/CP001", BODY), ("DELETE", "/cps/CP001", None), ("GET", "/cps", None),
                               ("GET", "/cps/CP001", None)):
        answer = http.request(method, path, json=body, headers=headers)
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["error"] == "unauthorized"
        registry.clock.advance(60)  # stay under the lockout
    assert _registrations(registry) == {}
    refused = _audit(registry, "registry.auth")
    assert len(refused) == 4 and all(row.entry.outcome == "refused" for row in refused)


def test_a_wrong_token_says_invalid_token(registry: Running):
    answer = registry.http(token="not-the-operator-token-123").get("/cps")
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


def test_a_wrong_token_is_refused_even_before_a_bad_body_is_looked_at(registry: Running):
    answer = registry.http(authenticated=False).put("/cps/CP001", content=b"{not json", headers={
        "Content-Type": "application/json"})
    assert answer.status_code == 401


def test_failed_tokens_lock_the_address_out_then_it_may_try_again(sqlite_registry: Running):
    running = sqlite_registry
    bad, good = running.http(token="wrong-operator-token-000"), running.http()
    for attempt in range(5):
        assert bad.get("/cps").status_code == 401
    locked = good.get("/cps")  # even the right token: not checked while locked out
    assert locked.status_code == 429
    assert locked.headers["retry-after"] == "30" and locked.json()["error"] == "locked_out"
    assert bad.get("/cps").status_code == 429
    running.clock.advance(30)
    assert good.get("/cps").status_code == 200
    refused = _audit(running, "registry.auth")
    assert len(refused) == 5  # the attempts refused while locked out were not checked nor audited
    assert "locked out for 30 s" in refused[-1].entry.details
    assert all(row.entry.source_ip == "127.0.0.1" and row.entry.actor == "EV_Registry" for row in refused)


def test_the_openapi_document_is_public_and_documents_the_bearer_scheme(registry: Running):
    answer = registry.http(authenticated=False).get("/openapi.json")
    assert answer.status_code == 200
    document = answer.json()
    assert set(document["paths"]) == {"/cps", "/cps/{cp_id}"}
    assert set(document["paths"]["/cps/{cp_id}"]) == {"put", "delete", "get"}
    schemes = document["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"].lower() == "bearer" for s in schemes.values())
    assert document["paths"]["/cps/{cp_id}"]["put"]["security"]


# -- validation ------------------------------------------------------------------------------------


INJECTIONS = ["CP1' OR '1'='1", "CP1; DROP TABLE cp_registrations; --", "CP1\" OR 1=1 --", "' UNION SELECT 1 --",
              "CP1%00", "CP1\\", "CP1/../x", "../../etc/passwd", "CP\u00e9", "CP 1", "x" * 65, ""]


@pytest.mark.parametrize("cp_id", INJECTIONS, ids=range(len(INJECTIONS)))
def test_bad_cp_ids_are_422_and_change_nothing(registry: Running, cp_id):
    http = registry.http()
    http.put("/cps/GOOD", json=BODY)
    before = _registrations(registry)
    path = "/cps/" + quote(cp_id, safe="")  # '/' too: the client would resolve '..' itself
    for method in ("PUT", "GET", "DELETE"):
        answer = http.request(method, path, json=BODY if method == "PUT" else None)
        assert answer.status_code == 422, (method, cp_id, answer.text)
        assert answer.json()["error"] == "invalid"
        assert answer.json()["fields"][0]["field"] == "cp_id"
    assert _registrations(registry) == before


BAD_BODIES = [
    ({"location": "", "price_eur_kwh": "0.48"}, "location"),
    ({"location": "   ", "price_eur_kwh": "0.48"}, "location"),
    ({"location": "x" * 201, "price_eur_kwh": "0.48"}, "location"),
    ({"location": "line\nbreak", "price_eur_kwh": "0.48"}, "location"),
    ({"location": "tab\there", "price_eur_kwh": "0.48"}, "location"),
    ({"location": "a#b", "price_eur_kwh": "0.48"}, "location"),
    ({"location": "x'; DROP TABLE cp_registrations; #", "price_eur_kwh": "0.48"}, "location"),
    ({"location": 45, "price_eur_kwh": "0.48"}, "location"),
    ({"location": None, "price_eur_kwh": "0.48"}, "location"),
    ({"price_eur_kwh": "0.48"}, "location"),
    ({"location": "L", "price_eur_kwh": "-0.01"}, "price_eur_kwh"),
    ({"location": "L", "price_eur_kwh": "1000.0001"}, "price_eur_kwh"),
    ({"location": "L", "price_eur_kwh": 1001}, "price_eur_kwh"),
    ({"location": "L", "price_eur_kwh": "0.00001"}, "price_eur_kwh"),
    ({"location": "L", "price_eur_kwh": 0.123456}, "price_eur_kwh"),
    ({"location": "L", "price_eur_kwh": "abc"}, "price_eur_kwh"),
    ({"location": "L", "price_eur_kwh": "0.48; DROP TABLE cp_registrations"}, "price_eur_kwh"),
    ({"location": "L", "price_eur_kwh": "1 OR 1=1"}, "price_eur_kwh"),
    ({"location": "L", "price_eur_kwh": "NaN"}, "price_eur_kwh"),
    ({"location": "L", "price_eur_kwh": "Infinity"}, "price_eur_kwh"),
    ({"location": "L", "price_eur_kwh": "1e400"}, "price_eur_kwh"),
    ({"location": "L", "price_eur_kwh": True}, "price_eur_kwh"),
    ({"location": "L", "price_eur_kwh": None}, "price_eur_kwh"),
    ({"location": "L", "price_eur_kwh": "9" * 5000}, "price_eur_kwh"),
    ({"location": "L"}, "price_eur_kwh"),
    ({"location": "L", "price_eur_kwh": "0.48", "credential_hash": "scrypt$1"}, "credential_hash"),
    ([1, 2], "body"),
    ("just text", "body"),
]


@pytest.mark.parametrize("body,field", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_bad_fields_are_422_and_change_nothing(registry: Running, body, field):
    http = registry.http()
    assert http.put("/cps/CP001", json=BODY).status_code == 201
    before = _registrations(registry)
    answer = http.put("/cps/CP001", json=body)
    assert answer.status_code == 422, (body, answer.text)
    errors = answer.json()
    assert errors["error"] == "invalid" and field in {f["field"] for f in errors["fields"]}, errors
    assert _registrations(registry) == before
    assert len(_audit(registry, "registry.register")) == 1


def test_a_body_that_is_not_json_is_422(registry: Running):
    http = registry.http()
    for content in (b"{not json", b"", b"\xff\xfe"):
        answer = http.put("/cps/CP001", content=content, headers={"Content-Type": "application/json"})
        assert answer.status_code == 422, answer.text
    assert _registrations(registry) == {}


def test_injection_text_in_a_valid_location_is_kept_as_text(registry: Running):
    http = registry.http()
    http.put("/cps/CP001", json=BODY)
    tricky = "x'); DELETE FROM cp_registrations; -- \" OR 1=1 /* \\ */"
    assert http.put("/cps/CP002", json={"location": tricky, "price_eur_kwh": "0"}).status_code == 201
    rows = _registrations(registry)
    assert rows["CP002"].location == tricky and rows["CP001"].location == "C/Mayor, 45"
    assert http.get("/cps/CP002").json()["location"] == tricky


def test_the_limits_themselves_are_accepted(registry: Running):
    http = registry.http()
    cp_id = "A" * 64
    answer = http.put(f"/cps/{cp_id}", json={"location": "é" * 200, "price_eur_kwh": "1000.0000"})
    assert answer.status_code == 201, answer.text
    assert http.put("/cps/zero", json={"location": "x", "price_eur_kwh": 0}).status_code == 201
    assert http.put("/cps/small", json={"location": "x", "price_eur_kwh": "0.0001"}).status_code == 201
    rows = _registrations(registry)
    assert rows[cp_id].location == "é" * 200 and str(rows[cp_id].price_eur_kwh) == "1000.0000"
    assert str(rows["small"].price_eur_kwh) == "0.0001"


def test_bodies_over_16_kib_are_413(registry: Running):
    http = registry.http()
    big = json.dumps({"location": "x", "price_eur_kwh": "0.48", "pad": "y" * 20000}).encode()
    answer = http.put("/cps/CP001", content=big, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"] == "too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b" " * 1024

    streamed = registry.http().put("/cps/CP001", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert _registrations(registry) == {}


# -- audit -------------------------------------------------------------------------------------------


def test_every_registration_deregistration_and_failed_token_is_audited(registry: Running):
    http = registry.http()
    credential = http.put("/cps/CP001", json=BODY).json()["credential"]
    again = http.put("/cps/CP001", json={"location": "Plaza 1", "price_eur_kwh": "0.5"}).json()["credential"]
    http.delete("/cps/CP001")
    http.delete("/cps/CP001")  # refused: already deregistered
    http.delete("/cps/NOPE")  # refused: never registered
    registry.http(token="a-wrong-token-1234567890").get("/cps")
    rows = _audit(registry)
    seen = [(r.entry.action, r.entry.outcome, r.entry.actor) for r in rows]
    assert seen == [
        ("registry.register", "ok", "operator"),
        ("registry.register", "ok", "operator"),
        ("registry.deregister", "ok", "operator"),
        ("registry.deregister", "refused", "operator"),
        ("registry.deregister", "refused", "operator"),
        ("registry.auth", "refused", "EV_Registry"),
    ]
    assert all(r.entry.source_ip == "127.0.0.1" for r in rows)
    assert "CP001 registered;" in rows[0].entry.details and "C/Mayor, 45" in rows[0].entry.details
    assert "price_eur_kwh=0.48" in rows[0].entry.details
    assert "registered again" in rows[1].entry.details and "Plaza 1" in rows[1].entry.details
    assert "wrong bearer token: GET /cps" == rows[5].entry.details
    text = " ".join(r.entry.details for r in rows)
    stored = registry.store.get_registration("CP001")
    for secret in (credential, again, registry.token, "a-wrong-token-1234567890"):
        assert secret not in text
    assert stored.credential_hash is None
    # the chain holds: each entry's prev_hash is the hash before it
    assert all(b.prev_hash == a.hash for a, b in zip(rows, rows[1:]))


def test_secrets_never_reach_the_log(registry: Running, caplog):
    caplog.set_level(logging.DEBUG)
    http = registry.http()
    first = http.put("/cps/CP001", json=BODY).json()["credential"]
    second = http.put("/cps/CP001", json=BODY).json()["credential"]
    registry.http(token="wrong-token-but-secret-too-42").get("/cps/CP001")
    http.get("/cps")
    http.delete("/cps/CP001")
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "CP001 registered" in text and "refused a request" in text
    for secret in (first, second, registry.token, "wrong-token-but-secret-too-42"):
        assert secret not in text
        assert secret[5:20] not in text
    assert "scrypt$" not in text


# -- the client -----------------------------------------------------------------------------------------


def test_the_client_registers_lists_and_deregisters(registry: Running):
    from ev_registry.client import RegistryError

    client = registry.client()
    credential = client.register("CP001", "C/Mayor, 45", "0.48")
    assert CREDENTIAL.fullmatch(credential)
    assert verify_credential(credential, registry.store.get_registration("CP001").credential_hash)
    assert client.get("CP001")["registered"] is True
    for price, stored in ((Decimal("1E+2"), "100.0000"), (Decimal("0.4800"), "0.4800"), (0.35, "0.3500"), (7, "7.0000")):
        again = client.register_full("CP001", "C/Mayor, 45", price)
        assert again["created"] is False and again["price_eur_kwh"] == stored
    assert [cp["cp_id"] for cp in client.list()] == ["CP001"]
    client.deregister("CP001")
    assert client.get("CP001")["registered"] is False
    with pytest.raises(RegistryError) as conflict:
        client.deregister("CP001")
    assert conflict.value.status == 409 and "already deregistered" in conflict.value.message
    with pytest.raises(RegistryError) as missing:
        client.get("NOPE")
    assert missing.value.status == 404 and missing.value.error == "not_found"
    with pytest.raises(RegistryError) as invalid:
        client.register("CP002", "x", "-1")
    assert invalid.value.status == 422 and "price" in invalid.value.message
    with pytest.raises(RegistryError) as unauthorised:
        registry.client(token="a-wrong-token-000000000").list()
    assert unauthorised.value.status == 401


# -- the database failing ---------------------------------------------------------------------------


def test_database_failures_are_clear_json_errors(sqlite_registry: Running, monkeypatch):
    from ev_central.store import StoreRefused, StoreUnavailable

    http = sqlite_registry.http()

    def unavailable(*_args, **_kwargs):
        raise StoreUnavailable("MySQL db:3306 does not answer")

    def refused(*_args, **_kwargs):
        raise StoreRefused("location is longer than 200 characters (201)")

    def broken(*_args, **_kwargs):
        raise RuntimeError("something unexpected")

    monkeypatch.setattr(sqlite_registry.store, "list_registrations", unavailable)
    answer = http.get("/cps")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert answer.json()["error"] == "unavailable"
    monkeypatch.setattr(sqlite_registry.store, "register_cp", refused)
    answer = http.put("/cps/CP001", json=BODY)
    assert answer.status_code == 422 and "refused the data" in answer.json()["message"]
    monkeypatch.setattr(sqlite_registry.store, "get_registration", broken)
    answer = http.get("/cps/CP001")
    assert answer.status_code == 500 and answer.json() == {"error": "internal",
                                                           "message": "internal error (logged by EV_Registry)"}


def test_an_audit_entry_that_cannot_be_written_does_not_undo_the_registration(sqlite_registry: Running,
                                                                            monkeypatch, caplog):
    from ev_central.store import StoreUnavailable

    def unavailable(*_args, **_kwargs):
        raise StoreUnavailable("the audit log is unreachable")

    monkeypatch.setattr(sqlite_registry.store, "append_audit", unavailable)
    answer = sqlite_registry.http().put("/cps/CP001", json=BODY)
    assert answer.status_code == 201
    assert sqlite_registry.store.get_registration("CP001").registered
    assert any("could not write the audit entry registry.register" in r.getMessage() for r in caplog.records)
    assert answer.json()["credential"] not in caplog.text
