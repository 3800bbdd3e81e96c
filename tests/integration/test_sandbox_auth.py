"""The sandbox's authorization server over real HTTP: registration, discovery, and every token rejection."""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt
import pytest
import requests

from tests.sandbox_fixtures import JWT_BEARER, SmartClient, make_key, register_client

pytestmark = pytest.mark.integration


def _error(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"], body["error_description"]


def test_discovery_documents(sandbox):
    config = requests.get(f"{sandbox.fhir_base}/.well-known/smart-configuration", timeout=10).json()
    assert config["token_endpoint"] == sandbox.token_url
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert {"RS384", "ES384"} <= set(config["token_endpoint_auth_signing_alg_values_supported"])
    assert "client-confidential-asymmetric" in config["capabilities"]
    assert {"permission-v1", "permission-v2"} <= set(config["capabilities"])
    metadata = requests.get(f"{sandbox.fhir_base}/metadata", timeout=10).json()
    oauth = metadata["rest"][0]["security"]["extension"][0]
    assert oauth["url"].endswith("oauth-uris")
    assert {"url": "token", "valueUri": sandbox.token_url} in oauth["extension"]


def test_registration_needs_the_admin_credential(sandbox):
    body = {"active": True, "jwks": {"keys": [make_key()[2]]}, "grant_types": ["client_credentials"]}
    assert requests.put(f"{sandbox.base_url}/Client/x", json=body, timeout=10).status_code == 401
    wrong = (sandbox.admin_auth[0], "not-the-secret")
    assert requests.put(f"{sandbox.base_url}/Client/x", json=body, auth=wrong, timeout=10).status_code == 401
    non_ascii = (b"admin", "pässwörd".encode())
    assert requests.put(f"{sandbox.base_url}/Client/x", json=body, auth=non_ascii, timeout=10).status_code == 401
    ok = requests.put(f"{sandbox.base_url}/Client/x", json=body, auth=sandbox.admin_auth, timeout=10)
    assert ok.status_code == 201
    again = requests.get(f"{sandbox.base_url}/Client/x", auth=sandbox.admin_auth, timeout=10)
    assert again.json()["jwks"] == body["jwks"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"jwks_uri": "https://example.com/jwks.json"}, "loopback"),
        ({}, "jwks_uri"),
        ({"jwks": {"keys": []}}, "non-empty"),
        ({"jwks": {"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB"}]}}, "private key"),
        ({"jwks": {"keys": [{"kty": "RSA"}]}}, "unusable key"),
    ],
)
def test_registration_rejects_bad_keys(sandbox, body, message):
    response = requests.put(f"{sandbox.base_url}/Client/bad", json=body, auth=sandbox.admin_auth, timeout=10)
    assert response.status_code == 422
    assert message in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("algorithm", ["RS384", "ES384", "RS256", "RS512", "ES256", "ES512", "PS384"])
def test_token_is_issued_for_a_good_assertion(smart_client_factory, algorithm):
    client = smart_client_factory(algorithm=algorithm)
    response = client.token_response()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 300
    assert response.headers["cache-control"] == "no-store"
    # Wildcards come back expanded, one scope per resource type.
    granted = body["scope"].split()
    assert "system/Observation.read" in granted and "system/Patient.read" in granted
    assert all(not scope.startswith("system/*") for scope in granted)
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == client.client_id and claims["exp"] - claims["iat"] == 300


def test_scope_syntax_v2_and_narrowing(smart_client_factory):
    client = smart_client_factory(scope="system/Observation.rs system/Patient.read")
    assert client.token_response("system/*.rs").json()["scope"] == "system/Observation.rs system/Patient.rs"
    assert client.token_response("system/Observation.read").json()["scope"] == "system/Observation.read"
    assert client.token_response("system/Patient.r").json()["scope"] == "system/Patient.r"
    status, error, description = _error(client.token_response("system/Condition.read"))
    assert (status, error) == (400, "invalid_scope") and "system/Condition.read" in description
    status, error, _ = _error(client.token_response("system/Observation.write"))
    assert (status, error) == (400, "invalid_scope")


def _form(client: SmartClient, **overrides: str | None) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "scope": "system/*.read",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": client.assertion(),
    }
    form.update(overrides)  # type: ignore[arg-type]
    return {name: value for name, value in form.items() if value is not None}


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"grant_type": None}, "invalid_request"),
        ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
        ({"client_assertion_type": "urn:other"}, "invalid_request"),
        ({"client_assertion": None}, "invalid_request"),
        ({"client_assertion": "not-a-jwt"}, "invalid_client"),
        ({"scope": None}, "invalid_scope"),
        ({"scope": "system/*.write"}, "invalid_scope"),
        ({"scope": "patient/*.read"}, "invalid_scope"),
    ],
)
def test_token_request_form_errors(smart_client, overrides, error):
    response = requests.post(smart_client.server.token_url, data=_form(smart_client, **overrides), timeout=10)
    assert response.json()["error"] == error, response.text
    assert response.status_code == (401 if error == "invalid_client" else 400)
    assert response.json()["error_description"]


def test_token_request_must_be_form_encoded(smart_client):
    response = requests.post(smart_client.server.token_url, json=_form(smart_client), timeout=10)
    assert _error(response)[:2] == (400, "invalid_request")


def _claims_case(client: SmartClient, case: str) -> str:
    now = int(time.time())
    other_key = make_key(client.algorithm)[0]
    cases: dict[str, Callable[[], str]] = {
        "bad signature": lambda: client.assertion(key=other_key),
        "unknown kid": lambda: client.assertion(headers={"kid": "no-such-kid"}),
        "disallowed alg": lambda: jwt.encode(
            {
                "iss": client.client_id,
                "sub": client.client_id,
                "aud": client.server.token_url,
                "exp": now + 60,
                "jti": "x1",
            },
            "a-shared-secret-of-enough-length-for-hs256",
            algorithm="HS256",
            headers={"kid": client.kid, "typ": "JWT"},
        ),
        "no typ": lambda: client.assertion(headers={"typ": None}),
        "iss differs from sub": lambda: client.assertion(sub="someone-else"),
        "wrong aud": lambda: client.assertion(aud=client.server.fhir_base),
        "no exp": lambda: client.assertion(exp=None),
        "exp too far": lambda: client.assertion(exp=now + 3600),
        "expired": lambda: client.assertion(exp=now - 600),
        "no jti": lambda: client.assertion(jti=None),
    }
    return cases[case]()


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("bad signature", "signature"),
        ("unknown kid", "no-such-kid"),
        ("disallowed alg", "HS256"),
        ("no typ", "typ"),
        ("iss differs from sub", "sub"),
        ("wrong aud", "aud"),
        ("no exp", "exp"),
        ("exp too far", "300 seconds ahead"),
        ("expired", "expired"),
        ("no jti", "jti"),
    ],
)
def test_assertion_rejections(smart_client, case, words):
    response = smart_client.token_response(assertion=_claims_case(smart_client, case))
    status, error, description = _error(response)
    assert (status, error) == (401, "invalid_client"), response.text
    assert words in description


def test_replayed_jti_is_refused(smart_client):
    assertion = smart_client.assertion()
    assert smart_client.token_response(assertion=assertion).status_code == 200
    status, error, description = _error(smart_client.token_response(assertion=assertion))
    assert (status, error) == (401, "invalid_client") and "jti" in description


def test_client_state_rejections(sandbox):
    key, _, public = make_key()

    def try_token(client_id: str) -> requests.Response:
        client = SmartClient(sandbox, client_id, "unused", "RS384", key, "", public)
        return client.token_response()

    assert _error(try_token("never-registered"))[:2] == (401, "invalid_client")
    register_client(sandbox, "inactive", jwks={"keys": [public]}, active=False)
    assert "not active" in _error(try_token("inactive"))[2]
    register_client(sandbox, "no-grant", jwks={"keys": [public]}, grant_types=("authorization_code",))
    assert _error(try_token("no-grant"))[:2] == (400, "unauthorized_client")
    register_client(sandbox, "no-policy", jwks={"keys": [public]}, policy=False)
    status, error, description = _error(try_token("no-policy"))
    assert (status, error) == (400, "unauthorized_client") and "AccessPolicy" in description


def test_kid_is_required_when_the_jwks_has_several_keys(sandbox):
    key, _, public = make_key()
    second = make_key()[2]
    register_client(sandbox, "two-keys", jwks={"keys": [public, second]})
    client = SmartClient(sandbox, "two-keys", "unused", "RS384", key, "", public)
    status, error, description = _error(client.token_response(assertion=client.assertion(headers={"kid": None})))
    assert (status, error) == (401, "invalid_client") and "kid" in description
    assert client.token_response().status_code == 200  # with the kid it picks the right key


def test_jwks_uri_is_fetched_and_cached(smart_client_factory, sandbox):
    client = smart_client_factory(algorithm="ES384", jwks_uri=True)
    assert client.token_response().status_code == 200
    assert client.token_response().status_code == 200
    assert sandbox.state.jwks_fetches[client.jwks_uri] == 1


def test_jwks_uri_is_fetched_again_for_a_new_kid(smart_client_factory, sandbox):
    client = smart_client_factory(jwks_uri=True)
    assert client.token_response().status_code == 200
    new_key, _, new_public = make_key()
    client.jwks_server.jwks = {"keys": [client.jwk, new_public]}  # the client publishes its next key
    rotated = client.assertion(key=new_key, headers={"kid": new_public["kid"]})
    assert client.token_response(assertion=rotated).status_code == 200
    assert sandbox.state.jwks_fetches[client.jwks_uri] == 2
    client.jwks_server.jwks = {"keys": [new_public]}  # the old key retired: the cache still has it
    assert client.token_response().status_code == 200


def test_unreachable_jwks_uri_is_an_invalid_client(smart_client_factory, sandbox):
    client = smart_client_factory(jwks_uri=True)
    client.jwks_server.close()
    status, error, description = _error(client.token_response())
    assert (status, error) == (401, "invalid_client") and "jwks_uri" in description


def test_registered_lifetime_and_early_expiry_fault(smart_client, sandbox):
    sandbox.state.faults.expire_tokens_after(1)
    # Frozen on a whole second (the token's exp is whole seconds), so its one second is exactly one second.
    sandbox.state.clock.freeze(at=int(time.time()))
    response = smart_client.token_response()
    assert response.json()["expires_in"] == 1
    token = response.json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{sandbox.fhir_base}/Patient/pat-0", headers=headers, timeout=10).status_code == 200
    sandbox.state.clock.advance(0.5)
    assert requests.get(f"{sandbox.fhir_base}/Patient/pat-0", headers=headers, timeout=10).status_code == 200
    sandbox.state.clock.advance(0.5)
    expired = requests.get(f"{sandbox.fhir_base}/Patient/pat-0", headers=headers, timeout=10)
    assert expired.status_code == 401 and "expired" in expired.json()["issue"][0]["diagnostics"]


def test_invalidated_tokens_are_refused(smart_client, sandbox):
    session = smart_client.session()
    assert session.get(f"{sandbox.fhir_base}/Patient/pat-0", timeout=10).status_code == 200
    sandbox.state.faults.invalidate_tokens()
    assert session.get(f"{sandbox.fhir_base}/Patient/pat-0", timeout=10).status_code == 401
    assert smart_client.session().get(f"{sandbox.fhir_base}/Patient/pat-0", timeout=10).status_code == 200


def test_scope_enforcement_on_reads(smart_client_factory, sandbox):
    client = smart_client_factory(scope="system/Observation.read")
    session = client.session()
    assert session.get(f"{sandbox.fhir_base}/Observation/obs-0-0", timeout=10).status_code == 200
    forbidden = session.get(f"{sandbox.fhir_base}/Patient/pat-0", timeout=10)
    assert forbidden.status_code == 403
    assert forbidden.json()["resourceType"] == "OperationOutcome"
    no_token = requests.get(f"{sandbox.fhir_base}/Observation/obs-0-0", timeout=10)
    assert no_token.status_code == 401 and no_token.headers["www-authenticate"].startswith("Bearer")
    forged = requests.get(
        f"{sandbox.fhir_base}/Observation/obs-0-0",
        headers={
            "Authorization": "Bearer "
            + jwt.encode({"sub": "x", "scope": "system/*.read"}, make_key()[0], algorithm="RS384")
        },
        timeout=10,
    )
    assert forged.status_code == 401


def test_registration_can_shorten_the_token_lifetime(sandbox):
    key, _, public = make_key()
    register_client(sandbox, "short-lived", jwks={"keys": [public]}, access_token_expiration=60)
    client = SmartClient(sandbox, "short-lived", "unused", "RS384", key, "", public)
    assert client.token_response().json()["expires_in"] == 60
