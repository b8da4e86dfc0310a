"""The API fuzzed from its own OpenAPI document (schemathesis), over real HTTPS with the operator
token: valid and invalid requests of every operation; no answer is a server error, each answer
is one the document declares with the declared content, invalid data is refused, and the
database holds only what valid requests put there."""

from __future__ import annotations

import re
import ssl

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.generation import GenerationMode  # noqa: E402

from ev_common.credentials import verify_credential  # noqa: E402
from tests.registry.conftest import Running  # noqa: E402

EXAMPLES = 40
#: The document's string format "printable" (a location): Python's str.isprintable, not only spaces.
PRINTABLE = st.text(st.characters(categories=("L", "M", "N", "P", "S"), exclude_characters="#") | st.just(" "),
                    min_size=1, max_size=200).filter(lambda text: text.strip())
schemathesis.openapi.format("printable", PRINTABLE)


def _operations(running: Running):
    context = ssl.create_default_context(cafile=str(running.ca_path))
    document = httpx.get(f"{running.url}/openapi.json", verify=context, timeout=10.0, trust_env=False).json()
    schema = schemathesis.openapi.from_dict(document)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_the_api_fuzzed_from_its_openapi_document(sqlite_registry: Running, mode):
    running = sqlite_registry
    operations = _operations(running)
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {
        "GET /cps", "PUT /cps/{cp_id}", "DELETE /cps/{cp_id}", "GET /cps/{cp_id}"}
    credentials: dict[str, str] = {}
    statuses: set[int] = set()
    for operation in operations:
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case):
            response = case.call(base_url=running.url, headers=running.auth(), verify=str(running.ca_path), timeout=10.0)
            statuses.add(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text)
            case.validate_response(response, headers=running.auth(), transport_kwargs={
                "verify": str(running.ca_path), "timeout": 10.0, "base_url": running.url})
            if response.status_code in (200, 201) and case.method.upper() == "PUT":
                credentials[response.json()["cp_id"]] = response.json()["credential"]

        check()
        running.clock.advance(3600)  # never locked out by the checks' own token-less requests
    assert not any(status >= 500 for status in statuses)
    if mode is GenerationMode.POSITIVE:
        assert 201 in statuses and 200 in statuses, statuses  # registrations were made, and read
    else:
        assert 422 in statuses, statuses
    # what the valid registrations left: exactly their CPs, each with the last credential's hash
    rows = {row.cp_id: row for row in running.store.list_registrations()}
    for cp_id, credential in credentials.items():
        row = rows[cp_id]
        assert row.credential_hash is None or verify_credential(credential, row.credential_hash)
    for row in rows.values():
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", row.cp_id)
        assert 1 <= len(row.location) <= 200 and row.location.isprintable() and "#" not in row.location
        assert 0 <= row.price_eur_kwh <= 1000
