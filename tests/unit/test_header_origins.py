"""The connection's ``headers`` follow the token: FHIR origin only, plus ``header_origins``; redirects too.

Also the settings that carry the two new extras, and redaction of secrets in URL paths.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
import requests
import responses

from airflow_provider_smart.auth.client import SmartAuthClient
from airflow_provider_smart.auth.discovery import discover
from airflow_provider_smart.auth.keys import load_keys
from airflow_provider_smart.auth.settings import ConnectionSettingsError, SmartConnectionSettings
from airflow_provider_smart.fhir.bulk.status import ExportFailed, KickoffAccepted, interpret_kickoff
from airflow_provider_smart.fhir.http import FhirHttpClient
from airflow_provider_smart.transport.sanitize import forget_secrets, remember_secret
from airflow_provider_smart.transport.urls import may_carry_headers, redact_url
from tests.smart_keys import ec_key, pem

BASE = "https://ehr.example.org/fhir"
KEY = {"X-Api-Key": "k-1234567890"}
OPAQUE_TOKEN = "opaque+token/value=0123456789abcdef"


def test_may_carry_headers_is_the_token_rule_plus_named_origins() -> None:
    assert may_carry_headers(BASE + "/Patient", BASE)
    assert not may_carry_headers("https://bucket.example.com/f", BASE)
    assert not may_carry_headers("https://ehr.example.org:8443/fhir", BASE)  # another port
    assert may_carry_headers("https://bucket.example.com/f", BASE, ["https://bucket.example.com"])
    assert not may_carry_headers("http://bucket.example.com/f", BASE, ["https://bucket.example.com"])


@responses.activate
def test_fhir_client_sends_the_headers_home_only_and_decides_again_at_each_hop() -> None:
    client = FhirHttpClient(None, BASE, headers=KEY, max_retries=0)
    responses.get(BASE + "/Binary/1", status=302, headers={"Location": "https://cdn.example.net/blob/1"})
    responses.get("https://cdn.example.net/blob/1", body="x")
    responses.get("https://cdn.example.net/blob/2", status=302, headers={"Location": BASE + "/Binary/2"})
    responses.get(BASE + "/Binary/2", body="y")

    client.get("Binary/1")
    client.get("https://cdn.example.net/blob/2")

    sent = [(call.request.url, call.request.headers.get("X-Api-Key")) for call in responses.calls]
    assert sent == [
        (BASE + "/Binary/1", KEY["X-Api-Key"]),
        ("https://cdn.example.net/blob/1", None),
        ("https://cdn.example.net/blob/2", None),
        (BASE + "/Binary/2", KEY["X-Api-Key"]),
    ]


@responses.activate
def test_named_header_origins_get_them_too() -> None:
    client = FhirHttpClient(None, BASE, headers=KEY, header_origins=["https://cdn.example.net"], max_retries=0)
    responses.get("https://cdn.example.net/blob/1", body="x")
    client.get("https://cdn.example.net/blob/1")
    assert responses.calls[0].request.headers.get("X-Api-Key") == KEY["X-Api-Key"]


@responses.activate
def test_token_request_and_discovery_redirects_follow_the_rule() -> None:
    auth = SmartAuthClient(BASE, "c", load_keys(pem(ec_key())), headers=KEY, sleep=lambda _s: None)
    responses.get(
        BASE + "/.well-known/smart-configuration",
        status=301,
        headers={"Location": "https://config.example.net/smart.json"},
    )
    responses.get("https://config.example.net/smart.json", json={"token_endpoint": "https://auth.example.net/t"})
    responses.post(
        "https://auth.example.net/t", json={"access_token": "t" * 20, "token_type": "bearer", "expires_in": 300}
    )

    auth.get_token()

    sent = [(call.request.url, call.request.headers.get("X-Api-Key")) for call in responses.calls]
    assert sent == [
        (BASE + "/.well-known/smart-configuration", KEY["X-Api-Key"]),
        ("https://config.example.net/smart.json", None),
        ("https://auth.example.net/t", None),
    ]


@responses.activate
def test_discovery_names_the_header_origin_of_a_gateway() -> None:
    responses.get(BASE + "/.well-known/smart-configuration", status=307, headers={"Location": "https://gw.example/c"})
    responses.get("https://gw.example/c", json={"token_endpoint": "https://gw.example/t"})
    discover(requests.Session(), BASE, headers=KEY, header_origins=["https://gw.example"])
    assert responses.calls[1].request.headers.get("X-Api-Key") == KEY["X-Api-Key"]


def _settings(**extra: object) -> SmartConnectionSettings:
    return SmartConnectionSettings.from_fields("c", host=BASE, login="client", password="k", extra=extra)


def test_settings_read_both_extras_as_lists_or_comma_separated_text() -> None:
    settings = _settings(
        allowed_internal_hosts="https://minio.internal:9000, 10.1.0.0/16",
        header_origins=["https://gw.example"],
    )
    assert settings.allowed_internal_hosts == ("https://minio.internal:9000", "10.1.0.0/16")
    assert settings.header_origins == ("https://gw.example",)
    assert _settings(allowed_internal_hosts=None, header_origins="").allowed_internal_hosts == ()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"allowed_internal_hosts": "intranet"}, "neither an origin"),
        ({"allowed_internal_hosts": {"a": 1}}, "list of strings"),
        ({"header_origins": "gw.example"}, "header_origins"),
        ({"header_origins": "[not json"}, "not a valid JSON list"),
    ],
)
def test_bad_values_name_the_connection_and_the_extra(extra: dict[str, object], needle: str) -> None:
    with pytest.raises(ConnectionSettingsError, match=needle) as info:
        _settings(**extra)
    assert "'c'" in str(info.value)


@pytest.fixture
def remembered() -> object:
    remember_secret(OPAQUE_TOKEN)
    yield
    forget_secrets()


@pytest.mark.usefixtures("remembered")
@pytest.mark.parametrize(
    "path",
    [
        f"/fhir/$bulk-status/{OPAQUE_TOKEN}",
        f"/fhir/$bulk-status/{quote(OPAQUE_TOKEN, safe='')}",  # percent-encoded in the URL
        "/fhir/$bulk-status/eyJhbGciOiJSUzM4NCJ9.eyJzdWIiOiJjIn0.c2lnbmF0dXJl",  # JWT-shaped
    ],
)
def test_redact_url_hides_tokens_in_the_path(path: str) -> None:
    shown = redact_url(f"https://ehr.example.org{path}?_outputFormat=x")
    assert "<redacted>" in shown and "0123456789abcdef" not in shown and "c2lnbmF0dXJl" not in shown
    assert shown.startswith("https://ehr.example.org/fhir/$bulk-status/")


def test_redact_url_leaves_ordinary_paths_alone() -> None:
    assert redact_url("https://ehr.example.org/fhir/$bulk-status/4a335c77c3714875") == (
        "https://ehr.example.org/fhir/$bulk-status/4a335c77c3714875"
    )


@pytest.mark.usefixtures("remembered")
def test_a_kickoff_whose_status_url_carries_our_token_fails() -> None:
    location = {"Content-Location": f"{BASE}/$bulk-status/{quote(OPAQUE_TOKEN, safe='')}"}
    result = interpret_kickoff(202, location, b"", request_url=BASE + "/$export")
    assert isinstance(result, ExportFailed) and "carries this client's access token" in result.message
    assert "0123456789abcdef" not in result.message
    fine = interpret_kickoff(202, {"Content-Location": f"{BASE}/$bulk-status/42"}, b"", request_url=BASE + "/$export")
    assert isinstance(fine, KickoffAccepted)
