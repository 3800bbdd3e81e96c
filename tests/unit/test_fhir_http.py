"""FhirHttpClient: token only to our origin, manual redirects, retries, one re-auth, readable errors."""

from __future__ import annotations

import pytest
import requests
import responses

from airflow_provider_smart.auth.client import SmartAuthClient
from airflow_provider_smart.auth.keys import load_keys
from airflow_provider_smart.fhir.errors import FhirError, TransientFhirError
from airflow_provider_smart.fhir.http import FhirHttpClient
from tests.smart_keys import ec_key, pem

BASE = "https://ehr.example.org/fhir"
TOKEN_URL = "https://ehr.example.org/auth/token"


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sleeps):
    auth = SmartAuthClient(BASE, "c", load_keys(pem(ec_key())), token_url=TOKEN_URL, sleep=lambda _s: None)
    return FhirHttpClient(auth, BASE + "/", max_retries=3, sleep=sleeps.append)


def tokens(*values: str) -> None:
    for value in values:
        responses.post(TOKEN_URL, json={"access_token": value, "token_type": "bearer", "expires_in": 3600})


def auth_of(call) -> str | None:
    return call.request.headers.get("Authorization")


@responses.activate
def test_relative_paths_params_and_token(client):
    tokens("t1")
    responses.get(BASE + "/Patient", json={"resourceType": "Bundle"})
    response = client.request(
        "GET", "Patient", params=[("_type", "Patient"), ("_type", "Observation")], headers={"Prefer": "x"}
    )
    assert response.json() == {"resourceType": "Bundle"}
    call = responses.calls[-1]
    assert call.request.url == BASE + "/Patient?_type=Patient&_type=Observation"
    assert auth_of(call) == "Bearer t1"
    assert call.request.headers["Accept"] == "application/fhir+json"
    assert client.base_url == BASE


@responses.activate
def test_no_token_to_another_origin_or_when_not_authorized(client):
    responses.get("https://bucket.s3.example.com/file.ndjson?X-Amz-Signature=abc", body="{}\n")
    responses.get("https://ehr.example.org:8443/fhir/Patient", body="{}")  # other port
    responses.get(BASE + "/Binary/1", body="{}")
    client.request("GET", "https://bucket.s3.example.com/file.ndjson?X-Amz-Signature=abc")
    client.request("GET", "https://ehr.example.org:8443/fhir/Patient")
    client.request("GET", "Binary/1", authorize=False)
    assert [auth_of(c) for c in responses.calls] == [None, None, None]
    assert not [c for c in responses.calls if c.request.url == TOKEN_URL]


@responses.activate
def test_caller_authorization_header_is_never_forwarded(client):
    responses.get("https://other.example.com/x", body="{}")
    client.request("GET", "https://other.example.com/x", headers={"Authorization": "Bearer stolen"})
    assert auth_of(responses.calls[0]) is None


@responses.activate
def test_cross_origin_redirect_drops_the_token(client):
    tokens("t1")
    responses.get(BASE + "/Binary/9", status=302, headers={"Location": "https://cdn.example.net/blob?sig=1"})
    responses.get("https://cdn.example.net/blob?sig=1", body="data")
    response = client.request("GET", "Binary/9")
    assert response.text == "data"
    fhir_call, cdn_call = [c for c in responses.calls if c.request.url != TOKEN_URL]
    assert auth_of(fhir_call) == "Bearer t1"
    assert auth_of(cdn_call) is None


@responses.activate
def test_same_origin_redirect_keeps_the_token(client):
    tokens("t1")
    responses.get(BASE + "/a", status=301, headers={"Location": "/fhir/b"})
    responses.get(BASE + "/b", json={})
    client.request("GET", "a")
    assert auth_of(responses.calls[-1]) == "Bearer t1"


@responses.activate
def test_redirect_loop(client):
    tokens("t1")
    responses.get(BASE + "/loop", status=302, headers={"Location": BASE + "/loop"})
    with pytest.raises(FhirError, match="more than 10 redirects"):
        client.request("GET", "loop")


@responses.activate
def test_exactly_one_reauthentication_after_401(client):
    tokens("old", "new", "newer")
    responses.get(
        BASE + "/Patient",
        status=401,
        json={"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]},
    )
    responses.get(BASE + "/Patient", json={"ok": True})
    assert client.request("GET", "Patient").json() == {"ok": True}
    fhir = [c for c in responses.calls if c.request.url != TOKEN_URL]
    assert [auth_of(c) for c in fhir] == ["Bearer old", "Bearer new"]


@responses.activate
def test_second_401_fails_with_a_clear_message(client):
    tokens("tok-OLD-1", "tok-NEW-2", "tok-NEWER-3")
    responses.get(
        BASE + "/Patient",
        status=401,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "login", "diagnostics": "token expired"}],
        },
    )
    with pytest.raises(FhirError) as info:
        client.request("GET", "Patient")
    text = str(info.value)
    assert info.value.status == 401
    assert "401 Unauthorized even after getting a new access token" in text and "token expired" in text
    assert "Bearer" not in text and "tok-" not in text  # no token in the message
    token_calls = [c for c in responses.calls if c.request.url == TOKEN_URL]
    fhir_calls = [c for c in responses.calls if c.request.url != TOKEN_URL]
    assert len(token_calls) == 2 and len(fhir_calls) == 2


@responses.activate
def test_retry_after_seconds_and_http_date_are_honoured(client, sleeps):
    tokens("t")
    responses.get(BASE + "/Patient", status=429, headers={"Retry-After": "12"})
    responses.get(BASE + "/Patient", status=503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    responses.get(BASE + "/Patient", status=502)
    responses.get(BASE + "/Patient", json={})
    client.request("GET", "Patient")
    assert 12.0 <= sleeps[0] <= 12.0 + 0.85  # the wait asked for, plus a little jitter
    assert 0.0 <= sleeps[1] <= 0.25  # a date in the past means now
    assert 0 < sleeps[2] <= 10  # no header: exponential backoff


@responses.activate
def test_retry_after_is_capped(sleeps):
    client = FhirHttpClient(None, BASE, max_retry_after=120, sleep=sleeps.append)
    responses.get(BASE + "/x", status=429, headers={"Retry-After": "86400"})
    responses.get(BASE + "/x", json={})
    client.request("GET", "x")
    assert len(sleeps) == 1 and 120.0 <= sleeps[0] <= 122.0


@responses.activate
def test_gives_up_after_max_retries_with_transient_error(client, sleeps):
    tokens("t")
    responses.get(
        BASE + "/Patient",
        status=503,
        headers={"Retry-After": "1"},
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "transient", "diagnostics": "busy"}],
        },
    )
    with pytest.raises(TransientFhirError) as info:
        client.request("GET", "Patient")
    assert info.value.retry_after == 1.0 and info.value.status == 503
    assert "error/transient: busy" in str(info.value)
    assert len(sleeps) == 3


@responses.activate
def test_post_is_retried_only_when_the_caller_allows_it(client, sleeps):
    tokens("t")
    responses.post(BASE + "/$export", status=503)
    responses.post(BASE + "/$export", status=202)
    with pytest.raises(TransientFhirError):
        client.request("POST", "$export", json={})
    assert sleeps == []
    assert client.request("POST", "$export", json={}, retry_post=True).status_code == 202


@responses.activate
def test_retries_zero_and_no_raise_returns_the_response(client):
    tokens("t")
    responses.get(BASE + "/status", status=429, headers={"Retry-After": "30"})
    response = client.request("GET", "status", retries=0, raise_for_status=False)
    assert response.status_code == 429


def test_connection_errors_are_retried_then_explained(sleeps):
    client = FhirHttpClient(None, "http://127.0.0.1:9/fhir", max_retries=2, sleep=sleeps.append, timeout=2)
    with pytest.raises(
        FhirError,
        match=r"GET http://127.0.0.1:9/fhir/metadata failed: cannot reach the FHIR server \(ConnectionError, 3 tries",
    ):
        client.request("GET", "metadata")
    assert len(sleeps) == 2


@responses.activate
def test_operation_outcome_text_in_errors(client):
    tokens("t")
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "Unknown search parameter 'foo'"}],
    }
    responses.get(BASE + "/Patient", status=400, json=outcome)
    with pytest.raises(FhirError) as info:
        client.request("GET", "Patient", params={"foo": "1"})
    assert "HTTP 400: error/invalid: Unknown search parameter 'foo'" in str(info.value)
    assert info.value.outcome == outcome


@responses.activate
def test_403_explains_scopes(client):
    tokens("t")
    responses.get(BASE + "/Observation", status=403, body="forbidden")
    with pytest.raises(FhirError, match="403 Forbidden: the token's scopes do not allow this"):
        client.request("GET", "Observation")


@responses.activate
def test_error_echoing_the_token_is_scrubbed(client):
    tokens("secret-token-value")
    responses.get(BASE + "/Patient", status=400, body="bad header: Bearer secret-token-value")
    with pytest.raises(FhirError) as info:
        client.request("GET", "Patient")
    assert "secret-token-value" not in str(info.value)


@responses.activate
def test_query_strings_are_redacted_in_messages():
    client = FhirHttpClient(None, BASE, max_retries=0)
    responses.get("https://bucket.example.com/f?X-Amz-Signature=topsecret", status=404, body="nope")
    with pytest.raises(FhirError) as info:
        client.request("GET", "https://bucket.example.com/f?X-Amz-Signature=topsecret")
    assert "topsecret" not in str(info.value)


@responses.activate
def test_streamed_response(client):
    tokens("t")
    responses.get(BASE + "/file.ndjson", body=b'{"a":1}\n{"a":2}\n')
    response = client.request("GET", "file.ndjson", stream=True)
    assert list(response.iter_lines()) == [b'{"a":1}', b'{"a":2}']
    assert isinstance(response, requests.Response)


@responses.activate
def test_netrc_credentials_never_replace_the_token(client, tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine ehr.example.org login someone password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    tokens("netrc-test-token")
    responses.get(BASE + "/Patient/1", json={})
    client.request("GET", "Patient/1")
    assert auth_of(responses.calls[-1]) == "Bearer netrc-test-token"
    assert "Authorization" not in responses.calls[0].request.headers  # the token request
