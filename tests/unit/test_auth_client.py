"""SmartAuthClient: the token request, the cache, proactive refresh, concurrency and failures."""

from __future__ import annotations

import threading
import time
from urllib.parse import parse_qs

import jwt
import pytest
import responses

from airflow_provider_smart.auth.client import SmartAuthClient, refresh_margin
from airflow_provider_smart.auth.errors import DiscoveryError, TokenRequestError
from airflow_provider_smart.auth.keys import load_keys
from tests.smart_keys import ec_key, pem, rsa_key

BASE = "https://ehr.example.org/fhir"
TOKEN_URL = "https://ehr.example.org/auth/token"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_client(keys=None, **kwargs):
    kwargs.setdefault("token_url", TOKEN_URL)
    kwargs.setdefault("sleep", lambda _s: None)
    return SmartAuthClient(BASE, "my-client", keys or load_keys(pem(rsa_key())), **kwargs)


def token_body(value="tok", expires_in=300, scope="system/*.read"):
    return {"access_token": value, "token_type": "bearer", "expires_in": expires_in, "scope": scope}


@responses.activate
def test_token_request_follows_the_spec():
    keys = load_keys(pem(ec_key("P-384")))
    responses.post(TOKEN_URL, json=token_body())
    client = make_client(keys, scope="system/Patient.read system/Observation.read", headers={"Epic-Client-ID": "abc"})
    token = client.get_token()
    assert token.value == "tok"
    request = responses.calls[0].request
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Epic-Client-ID"] == "abc"
    form = {k: v[0] for k, v in parse_qs(request.body).items()}
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == "system/Patient.read system/Observation.read"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    header = jwt.get_unverified_header(form["client_assertion"])
    assert header == {"alg": "ES384", "kid": keys.signing_key.kid, "typ": "JWT"}
    claims = jwt.decode(
        form["client_assertion"], keys.signing_key.private_key.public_key(), ["ES384"], audience=TOKEN_URL
    )
    assert claims["iss"] == claims["sub"] == "my-client"


@responses.activate
def test_discovery_gives_the_token_url_and_is_cached():
    responses.get(BASE + "/.well-known/smart-configuration", json={"token_endpoint": TOKEN_URL})
    responses.post(TOKEN_URL, json=token_body())
    client = make_client(token_url=None)
    client.get_token()
    client.get_token(force_refresh=True)
    assert client.discover().token_endpoint == TOKEN_URL
    assert len([c for c in responses.calls if "smart-configuration" in c.request.url]) == 1
    claims = jwt.decode(
        parse_qs(responses.calls[-1].request.body)["client_assertion"][0], options={"verify_signature": False}
    )
    assert claims["aud"] == TOKEN_URL


@responses.activate
def test_discovery_failure_says_set_token_url():
    responses.get(BASE + "/.well-known/smart-configuration", status=404)
    responses.get(BASE + "/metadata", status=404)
    with pytest.raises(DiscoveryError, match="set the token_url extra"):
        make_client(token_url=None).get_token()


@responses.activate
def test_cache_and_expiry_driven_refresh():
    clock = Clock()
    responses.post(TOKEN_URL, json=token_body("first", 300))
    responses.post(TOKEN_URL, json=token_body("second", 300))
    client = make_client(clock=clock)
    assert client.get_token().value == "first"
    clock.now += 200  # 100 s left > max(30, 10 % of 300)
    assert client.get_token().value == "first"
    assert client.token_requests == 1
    clock.now += 75  # 25 s left: refresh before it expires
    assert client.get_token().value == "second"
    assert client.token_requests == 2


def test_refresh_margin():
    assert refresh_margin(300) == 30
    assert refresh_margin(3600) == 360
    assert refresh_margin(20) == 10  # short-lived tokens are still used for half their life


@responses.activate
def test_concurrent_callers_share_one_token_request():
    started = threading.Event()

    def slow_token(request):
        started.set()
        time.sleep(0.3)
        return (
            200,
            {"Content-Type": "application/json"},
            '{"access_token": "shared", "token_type": "bearer", "expires_in": 300}',
        )

    responses.add_callback(responses.POST, TOKEN_URL, callback=slow_token)
    client = make_client()
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(client.get_token().value)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["shared"] * 8
    assert len(responses.calls) == 1


@responses.activate
def test_invalidate_only_drops_the_named_token():
    responses.post(TOKEN_URL, json=token_body("one"))
    responses.post(TOKEN_URL, json=token_body("two"))
    client = make_client()
    one = client.get_token()
    client.invalidate("some-older-token")
    assert client.get_token() is one
    client.invalidate(one)
    assert client.get_token().value == "two"
    client.invalidate()
    assert client._token is None


@responses.activate
def test_retry_after_on_the_token_endpoint():
    slept: list[float] = []
    responses.post(TOKEN_URL, status=503, headers={"Retry-After": "7"}, json={"error": "temporarily_unavailable"})
    responses.post(TOKEN_URL, json=token_body())
    client = make_client(sleep=slept.append)
    assert client.get_token().value == "tok"
    assert len(slept) == 1 and 7.0 <= slept[0] <= 7.0 + 0.6  # the server's wait plus a little jitter
    jtis = {
        jwt.decode(parse_qs(c.request.body)["client_assertion"][0], options={"verify_signature": False})["jti"]
        for c in responses.calls
    }
    assert len(jtis) == 2  # every attempt signs a fresh assertion


def test_unreachable_token_endpoint():
    client = SmartAuthClient(
        BASE,
        "c",
        load_keys(pem(ec_key())),
        token_url="http://127.0.0.1:9/auth/token",
        timeout=2,
        sleep=lambda _s: None,
        allow_insecure_http=True,  # an https FHIR server with an http token endpoint needs the opt-in
    )
    with pytest.raises(TokenRequestError) as info:
        client.get_token()
    text = str(info.value)
    assert text.startswith("cannot reach the token endpoint http://127.0.0.1:9/auth/token (ConnectionError)")
    assert "token_url extra" in text
    assert client.token_requests == 3  # two retries, then the clear error


@responses.activate
def test_invalid_client_names_kid_client_and_aud():
    keys = load_keys(pem(rsa_key()))
    responses.post(TOKEN_URL, status=401, json={"error": "invalid_client", "error_description": "unknown key"})
    with pytest.raises(TokenRequestError) as info:
        make_client(keys).get_token()
    text = str(info.value)
    assert info.value.error == "invalid_client"
    assert f"kid={keys.signing_key.kid}" in text and "'my-client'" in text and TOKEN_URL in text


@responses.activate
def test_redirect_from_the_token_endpoint_is_not_followed():
    responses.post(TOKEN_URL, status=307, headers={"Location": "https://elsewhere.example.com/token"})
    with pytest.raises(TokenRequestError, match=r"redirected .*set the token_url extra to the final URL"):
        make_client().get_token()
    assert len(responses.calls) == 1


@responses.activate
def test_secrets_reported_as_soon_as_they_exist_and_never_logged(caplog):
    seen: list[str] = []
    responses.post(TOKEN_URL, json=token_body("the-access-token-value"))
    client = make_client(on_secret=seen.append)
    import logging

    with caplog.at_level(logging.DEBUG):
        client.get_token()
    assertion = parse_qs(responses.calls[0].request.body)["client_assertion"][0]
    assert seen == [assertion, "the-access-token-value"]
    assert assertion not in caplog.text and "the-access-token-value" not in caplog.text
    assert "the-access-token-value" not in repr(client)


@responses.activate
def test_token_endpoint_retry_after_is_capped_by_max_retry_after_and_budgeted(caplog):
    slept: list[float] = []
    for _ in range(5):
        responses.post(TOKEN_URL, status=429, headers={"Retry-After": "3600"}, json={"error": "slow_down"})
    client = make_client(sleep=slept.append, max_retry_after=20, token_retries=2)
    with caplog.at_level("WARNING"), pytest.raises(TokenRequestError):
        client.get_token()
    assert client.token_requests == 3  # the first try plus token_retries, never more
    assert len(slept) == 2 and all(20 <= s <= 21.5 for s in slept)  # capped, not an hour
    waits = [r for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waits) == 2 and "capped at max_retry_after=20s" in waits[0].getMessage()


@responses.activate
def test_token_endpoint_non_retryable_500_fails_at_once():
    responses.post(TOKEN_URL, status=500, json={"error": "server_error"})
    client = make_client()
    with pytest.raises(TokenRequestError):
        client.get_token()
    assert client.token_requests == 1


@responses.activate
def test_token_and_assertion_are_remembered_for_safe_text():
    from airflow_provider_smart.transport.sanitize import forget_secrets, safe_text

    forget_secrets()
    responses.post(TOKEN_URL, json=token_body("opaque-token-value-0123456789"))
    client = make_client()
    token = client.get_token()
    assertion = parse_qs(responses.calls[0].request.body)["client_assertion"][0]
    echoed = f"server says: you sent {token.value} after {assertion[:40]}"
    assert token.value not in safe_text(echoed)
    # An opaque token (no JWT shape, no Bearer prefix) is redacted only because it was remembered.
    forget_secrets()
    assert token.value in safe_text(echoed)


@responses.activate
def test_http_token_endpoint_of_an_https_server_is_refused():
    responses.get(BASE + "/.well-known/smart-configuration", json={"token_endpoint": "http://ehr.example.org/token"})
    responses.post("http://ehr.example.org/token", json=token_body())
    client = make_client(token_url=None)
    with pytest.raises(DiscoveryError) as info:
        client.get_token()
    text = str(info.value)
    assert "http://ehr.example.org/token" in text and "allow_insecure_http" in text
    assert all(c.request.method == "GET" for c in responses.calls)  # no assertion was posted
    # The explicit token_url extra is held to the same rule.
    with pytest.raises(DiscoveryError, match="token_url extra"):
        make_client(token_url="http://ehr.example.org/token").get_token()
    # Allowed explicitly: the token is fetched (and the downgrade logged by check_transport).
    allowed = make_client(token_url=None, allow_insecure_http=True)
    assert allowed.get_token().value == "tok"


@responses.activate
def test_shared_state_reuses_discovery_and_token_across_clients():
    from airflow_provider_smart.auth.cache import AuthState

    responses.get(BASE + "/.well-known/smart-configuration", json={"token_endpoint": TOKEN_URL})
    responses.post(TOKEN_URL, json=token_body("shared"))
    state = AuthState()
    keys = load_keys(pem(rsa_key()))
    first = make_client(keys, token_url=None, state=state)
    assert first.get_token().value == "shared"
    second = make_client(keys, token_url=None, state=state)
    assert second.get_token().value == "shared"
    assert second.token_requests == 0
    assert [c.request.method for c in responses.calls] == ["GET", "POST"]
    second.invalidate("shared")
    assert first._token is None  # a 401 seen by one client renews for all


@responses.activate
def test_an_endless_token_body_is_read_up_to_the_cap_and_refused(monkeypatch):
    from airflow_provider_smart.auth import client as module

    monkeypatch.setattr(module, "MAX_TOKEN_BODY", 4096)
    responses.post(TOKEN_URL, body=b'{"access_token": "' + b"x" * 100_000 + b'"}', content_type="application/json")
    with pytest.raises(TokenRequestError, match="body over 4,096 bytes") as raised:
        make_client().get_token()
    assert raised.value.status == 200 and "xxxx" not in str(raised.value)
