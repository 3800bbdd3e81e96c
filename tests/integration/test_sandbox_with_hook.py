"""The provider's own hook against the sandbox over loopback: the fixtures' connections work end to end."""

from __future__ import annotations

import pytest

from airflow_provider_smart.hooks.smart import SmartFhirHook

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("algorithm", "jwks_uri"), [("RS384", False), ("ES384", True)])
def test_hook_gets_tokens_and_reads(smart_client_factory, sandbox, algorithm, jwks_uri):
    client = smart_client_factory(algorithm=algorithm, jwks_uri=jwks_uri)
    hook = SmartFhirHook()
    token = hook.get_token()
    assert "system/Observation.read" in token.scopes
    response = hook.request("GET", "Patient/pat-0")
    assert response.json()["id"] == "pat-0"
    # The token went to the FHIR server; discovery and the token request carried none.
    assert sandbox.state.faults.authorization["/fhir/Patient/pat-0"] == [f"Bearer {token.value}"]
    assert all(value is None for value in sandbox.state.faults.authorization["/auth/token"])
    ok, message = hook.test_connection()
    assert ok, message
    assert client.client_id in repr(sandbox.state.clients)


def test_hook_survives_a_revoked_token_and_a_throttled_page(smart_client, sandbox):
    hook = SmartFhirHook()
    assert hook.request("GET", "Patient/pat-1").status_code == 200
    sandbox.state.faults.invalidate_tokens()
    sandbox.state.faults.throttle("/fhir/Patient/pat-2", retry_after=0)
    assert hook.request("GET", "Patient/pat-2").json()["id"] == "pat-2"
    assert sandbox.state.faults.requests["/auth/token"] == 2  # exactly one re-authentication after the 401
