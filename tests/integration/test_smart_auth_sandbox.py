"""SMART Backend Services end to end over 127.0.0.1: the hook, the JWKS plugin's app and the sandbox."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator

import pytest

from airflow_provider_smart.auth.errors import TokenRequestError
from airflow_provider_smart.auth.keys import SigningKey, generate_private_key, private_key_pem
from airflow_provider_smart.fhir.errors import FhirError
from airflow_provider_smart.hooks.smart import SmartFhirHook
from airflow_provider_smart.plugins.jwks import URL_PREFIX, create_jwks_app, env_connections
from tests.loopback import serve
from tests.sandbox_fixtures import register_client

pytestmark = pytest.mark.integration

JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+")


def patient_path(server) -> str:
    """A readable Patient of the sandbox (read needs a bearer token with Patient read scope)."""
    _key, patient = next(iter(server.state.store.iter_entries("Patient")))
    return f"Patient/{patient['id']}"


def set_connection(monkeypatch, conn_id: str, server, client_id: str, password: str, **extra) -> None:
    conn = {"conn_type": "smart_fhir", "host": server.fhir_base, "login": client_id, "password": password}
    if extra:
        conn["extra"] = extra
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


@pytest.fixture
def plugin_jwks_url() -> Iterator[Callable[[str], str]]:
    """The plugin's app, mounted at /.well-known as Airflow mounts it, serving env connections: a function
    giving a connection's own JWKS URL (the one its client registers)."""
    from fastapi import FastAPI

    root = FastAPI()
    root.mount(URL_PREFIX, create_jwks_app(env_connections))
    with serve(root) as base:
        yield lambda conn_id: f"{base}{URL_PREFIX}/jwks/{conn_id}.json"


def test_tokens_with_rs384_and_es384_keys_registered_through_the_plugin_jwks_uri(sandbox, monkeypatch, plugin_jwks_url):
    """The must-show test: jwks_uri served by the plugin, tokens through the hook, granted scopes read."""
    pems = {alg: private_key_pem(generate_private_key(alg)).decode() for alg in ("RS384", "ES384")}
    for alg, key_pem in pems.items():
        set_connection(monkeypatch, f"smart_{alg.lower()}", sandbox, f"plugin-client-{alg.lower()}", key_pem)
    for alg in pems:
        register_client(
            sandbox,
            f"plugin-client-{alg.lower()}",
            jwks_uri=plugin_jwks_url(f"smart_{alg.lower()}"),
            scope="system/Patient.read system/Observation.read system/Encounter.read",
        )
    for alg in pems:
        hook = SmartFhirHook(f"smart_{alg.lower()}", scope="system/Patient.read system/Observation.read")
        assert hook.get_auth_client().signing_key.algorithm == alg
        token = hook.get_token()
        assert token.scopes == ("system/Patient.read", "system/Observation.read")
        assert token.token_type == "Bearer" and token.expires_in() > 60
        assert hook.request("GET", patient_path(sandbox)).json()["resourceType"] == "Patient"
    assert sandbox.state.tokens_issued >= 2


def test_rotation_publishes_both_keys_and_signs_with_the_current_kid(sandbox, monkeypatch, plugin_jwks_url):
    current, nxt = generate_private_key("RS384"), generate_private_key("ES384")
    jwk_current = SigningKey(current, kid="rot-current").public_jwk()
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    private_jwks = json.dumps(
        {
            "keys": [
                RSAAlgorithm.to_jwk(current, as_dict=True) | {"kid": "rot-current"},
                ECAlgorithm.to_jwk(nxt, as_dict=True) | {"kid": "rot-next"},
            ]
        }
    )
    set_connection(monkeypatch, "smart_rotating", sandbox, "rotating-client", private_jwks, kid="rot-current")
    register_client(sandbox, "rotating-client", jwks_uri=plugin_jwks_url("smart_rotating"), scope="system/*.read")
    import requests

    published = requests.get(plugin_jwks_url("smart_rotating"), timeout=10).json()["keys"]
    assert {"rot-current", "rot-next"} <= {k["kid"] for k in published}
    assert jwk_current in published

    hook = SmartFhirHook("smart_rotating")
    assert hook.get_auth_client().signing_key.kid == "rot-current"
    assert hook.get_token().scopes

    # Step 2 of the rotation: the next key becomes current (only the kid extra changes).
    set_connection(monkeypatch, "smart_rotating", sandbox, "rotating-client", private_jwks, kid="rot-next")
    rotated = SmartFhirHook("smart_rotating")
    assert rotated.get_auth_client().signing_key.kid == "rot-next"
    assert rotated.get_auth_client().signing_key.algorithm == "ES384"
    assert rotated.get_token().scopes


def test_unregistered_key_gives_the_invalid_client_message(sandbox, smart_client, monkeypatch):
    other = private_key_pem(generate_private_key("RS384")).decode()
    set_connection(monkeypatch, "smart_wrong_key", sandbox, smart_client.client_id, other)
    with pytest.raises(TokenRequestError) as info:
        SmartFhirHook("smart_wrong_key").get_token()
    text = str(info.value)
    assert info.value.error == "invalid_client"
    assert "check that the public key (kid=" in text and smart_client.client_id in text
    assert sandbox.token_url in text


def test_scope_outside_the_registration_gives_invalid_scope(sandbox, smart_client_factory):
    client = smart_client_factory(scope="system/Patient.read")
    with pytest.raises(TokenRequestError) as info:
        SmartFhirHook(client.conn_id, scope="system/Observation.write").get_token()
    assert info.value.error == "invalid_scope"
    assert "request only scopes registered for client_id" in str(info.value)


def test_many_token_requests_never_reuse_a_jti(sandbox, smart_client):
    """The sandbox refuses a replayed jti, so 15 fresh tokens in a row prove every jti is new."""
    auth = SmartFhirHook(smart_client.conn_id).get_auth_client()
    values = {auth.get_token(force_refresh=True).value for _ in range(15)}
    assert len(values) == 15


def test_expiry_driven_refresh_against_the_sandbox(sandbox, smart_client):
    sandbox.state.faults.expire_tokens_after(8)
    # The client and the server read one frozen clock, so "seconds pass" is exact on a busy machine.
    clock = sandbox.state.clock
    clock.freeze()
    hook = SmartFhirHook(smart_client.conn_id)
    auth = hook.get_auth_client()
    auth._clock = clock.time
    first = auth.get_token()
    assert first.lifetime == 8
    hook.request("GET", patient_path(sandbox))
    clock.advance(3.5)
    hook.request("GET", patient_path(sandbox))
    assert auth.get_token() is first  # 4.5 s left, more than the margin (half of an 8 s lifetime): cached
    clock.advance(1)  # 3.5 s left: less than the margin
    requests_before = auth.token_requests
    hook.request("GET", patient_path(sandbox))
    assert auth.token_requests == requests_before + 1
    second = auth.get_token()
    assert second is not first and second.lifetime == 8
    clock.advance(3.6)  # the first token has expired on the server: only the renewed one is accepted
    hook.request("GET", patient_path(sandbox))
    assert auth.token_requests == requests_before + 1


def test_one_reauthentication_after_401_then_a_clear_failure(sandbox, smart_client):
    hook = SmartFhirHook(smart_client.conn_id)
    auth = hook.get_auth_client()
    hook.request("GET", patient_path(sandbox))
    sandbox.state.faults.invalidate_tokens()
    assert hook.request("GET", patient_path(sandbox)).status_code == 200
    assert auth.token_requests == 2

    # A server that refuses every token: one re-authentication, then the error.
    sandbox.state.faults.expire_tokens_after(0)
    sandbox.state.faults.invalidate_tokens()
    before = auth.token_requests
    with pytest.raises(FhirError) as info:
        hook.request("GET", patient_path(sandbox))
    assert info.value.status == 401
    assert "even after getting a new access token" in str(info.value)
    assert auth.token_requests - before == 1  # exactly one re-authentication


def test_no_token_sent_to_another_origin(sandbox, smart_client_factory, sandbox_factory):
    other = sandbox_factory(patients=1)
    # The other origin is another loopback port: the connection allows it, so the request does go there.
    client = smart_client_factory(extra={"allowed_internal_hosts": other.base_url})
    hook = SmartFhirHook(client.conn_id)
    hook.request("GET", patient_path(sandbox))
    hook.request("GET", other.fhir_base + "/metadata")
    assert other.state.faults.count("/fhir/metadata") == 1
    assert all(value is None for value in other.state.faults.authorization.get("/fhir/metadata", []))
    assert any(
        value
        for value in [
            v for p, vs in sandbox.state.faults.authorization.items() if p.startswith("/fhir/Patient/") for v in vs
        ]
    )


def test_retry_after_from_the_sandbox_is_honoured(sandbox, smart_client):
    sandbox.state.faults.throttle("/fhir/Patient/*", times=1, retry_after=1)
    hook = SmartFhirHook(smart_client.conn_id)
    started = time.monotonic()
    assert hook.request("GET", patient_path(sandbox)).status_code == 200
    assert time.monotonic() - started >= 0.9
    assert sandbox.state.faults.count("/fhir/Patient/*") == 2


def test_no_log_line_holds_the_key_the_assertion_or_the_token(sandbox, smart_client, caplog, monkeypatch):
    import airflow_provider_smart.hooks.smart as hook_module

    secrets: list[str] = []
    original = hook_module.mask

    def recording_mask(value):
        if value:
            secrets.append(value)
        original(value)

    monkeypatch.setattr(hook_module, "mask", recording_mask)
    caplog.set_level(logging.DEBUG)
    hook = SmartFhirHook(smart_client.conn_id)
    ok, message = hook.test_connection()
    assert ok, message
    hook.request("GET", patient_path(sandbox))
    sandbox.state.faults.invalidate_tokens()
    hook.request("GET", patient_path(sandbox))  # 401, re-authentication
    token = hook.get_access_token()
    assertions = [s for s in secrets if JWT_PATTERN.fullmatch(s) and s != token]
    assert len(assertions) >= 2 and token in secrets
    key_lines = [line for line in smart_client.private_key_pem.splitlines() if not line.startswith("-----")]
    text = caplog.text + "\n".join(str(r.args) for r in caplog.records) + message
    assert len(caplog.records) > 5
    assert not JWT_PATTERN.search(text)
    for secret in [token, *assertions, *key_lines]:
        assert secret not in text


def test_test_connection_reports_discovery_and_granted_scopes(sandbox, smart_client_factory):
    client = smart_client_factory(algorithm="ES384", scope="system/Patient.read system/Observation.read")
    hook = SmartFhirHook(client.conn_id, scope="system/Patient.read system/Observation.read system/Encounter.read")
    ok, message = hook.test_connection()
    assert not ok  # Encounter is outside the registration: the sandbox refuses with invalid_scope
    assert "invalid_scope" in message
    ok, message = SmartFhirHook(client.conn_id).test_connection()
    assert ok, message
    assert f"token endpoint {sandbox.token_url}" in message
    assert "signing algorithm ES384 (supported)" in message
    assert "granted scopes: system/Patient.read system/Observation.read" in message
