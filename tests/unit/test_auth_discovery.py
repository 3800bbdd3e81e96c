"""Discovery: smart-configuration first, CapabilityStatement oauth-uris next, a clear error otherwise."""

from __future__ import annotations

import logging

import pytest
import requests
import responses

from airflow_provider_smart.auth.discovery import (
    OAUTH_URIS_EXTENSION,
    SmartConfiguration,
    discover,
    warn_if_algorithm_unsupported,
)
from airflow_provider_smart.auth.errors import DiscoveryError

BASE = "https://ehr.example.org/fhir/r4"


@responses.activate
def test_smart_configuration():
    responses.get(
        BASE + "/.well-known/smart-configuration",
        json={
            "token_endpoint": "https://ehr.example.org/oauth/token",
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
            "capabilities": ["client-confidential-asymmetric", "permission-v2"],
            "scopes_supported": ["system/*.rs"],
        },
    )
    config = discover(requests.Session(), BASE + "/")
    assert config.token_endpoint == "https://ehr.example.org/oauth/token"
    assert config.signing_algs == ("RS384", "ES384")
    assert "client-confidential-asymmetric" in config.capabilities
    assert config.scopes_supported == ("system/*.rs",)
    assert config.supports_algorithm("es384") is True
    assert config.summary()["source"] == BASE + "/.well-known/smart-configuration"


@responses.activate
def test_falls_back_to_capability_statement():
    responses.get(BASE + "/.well-known/smart-configuration", status=404)
    responses.get(
        BASE + "/metadata",
        json={
            "resourceType": "CapabilityStatement",
            "rest": [
                {
                    "mode": "server",
                    "security": {
                        "extension": [
                            {
                                "url": OAUTH_URIS_EXTENSION,
                                "extension": [
                                    {"url": "authorize", "valueUri": "https://ehr.example.org/oauth/authorize"},
                                    {"url": "token", "valueUri": "https://ehr.example.org/oauth/token"},
                                ],
                            }
                        ]
                    },
                }
            ],
        },
    )
    config = discover(requests.Session(), BASE)
    assert config.token_endpoint == "https://ehr.example.org/oauth/token"
    assert config.signing_algs is None
    assert config.supports_algorithm("RS384") is None


@responses.activate
def test_relative_token_endpoint_is_resolved():
    responses.get(BASE + "/.well-known/smart-configuration", json={"token_endpoint": "/auth/token"})
    assert discover(requests.Session(), BASE).token_endpoint == "https://ehr.example.org/auth/token"


@responses.activate
def test_neither_gives_a_token_endpoint():
    responses.get(BASE + "/.well-known/smart-configuration", body="<html>login</html>", content_type="text/html")
    responses.get(BASE + "/metadata", json={"resourceType": "CapabilityStatement", "rest": [{"mode": "server"}]})
    with pytest.raises(DiscoveryError) as info:
        discover(requests.Session(), BASE)
    text = str(info.value)
    assert "could not find the token endpoint" in text
    assert "not JSON (text/html)" in text and "no oauth-uris token extension" in text
    assert "set the token_url extra" in text


def test_unreachable_server():
    with pytest.raises(DiscoveryError, match=r"unreachable \(ConnectionError\).*set the token_url extra"):
        discover(requests.Session(), "http://127.0.0.1:9/fhir", timeout=2)


def test_unsupported_algorithm_warning(caplog):
    config = SmartConfiguration("https://x/token", "https://x", signing_algs=("RS384",))
    with caplog.at_level(logging.WARNING):
        assert warn_if_algorithm_unsupported(config, "ES384") is True
    assert "ES384" in caplog.text and "algorithm extra" in caplog.text
    assert warn_if_algorithm_unsupported(config, "RS384") is False
    assert warn_if_algorithm_unsupported(SmartConfiguration("https://x/token", "https://x"), "ES384") is False


@responses.activate
def test_throttled_discovery_waits_under_the_policy_and_a_404_is_not_retried():
    from airflow_provider_smart.transport.retry import WaitPolicy

    well_known = BASE + "/.well-known/smart-configuration"
    responses.get(well_known, status=429, headers={"Retry-After": "2"})
    responses.get(well_known, status=503)
    responses.get(well_known, json={"token_endpoint": "https://ehr.example.org/oauth/token"})
    slept: list[float] = []
    policy = WaitPolicy(max_retry_after=30, max_attempts=5, backoff_base=0.1)
    config = discover(requests.Session(), BASE, wait_policy=policy, sleep=slept.append)
    assert config.token_endpoint == "https://ehr.example.org/oauth/token"
    assert len(slept) == 2 and 2.0 <= slept[0] <= 2.6  # Retry-After honoured, then a short backoff

    responses.reset()
    responses.get(well_known, status=404)
    responses.get(BASE + "/metadata", status=404)
    slept.clear()
    with pytest.raises(DiscoveryError, match="HTTP 404"):
        discover(requests.Session(), BASE, wait_policy=policy, sleep=slept.append)
    assert slept == [] and len(responses.calls) == 2


@responses.activate
def test_discovery_gives_up_when_the_budget_is_spent_and_says_why():
    from airflow_provider_smart.transport.retry import WaitPolicy

    responses.get(BASE + "/.well-known/smart-configuration", status=429, headers={"Retry-After": "1"})
    responses.get(BASE + "/metadata", status=503)
    policy = WaitPolicy(max_retry_after=1, max_attempts=3)
    with pytest.raises(DiscoveryError, match=r"smart-configuration: HTTP 429.*metadata: HTTP 503"):
        discover(requests.Session(), BASE, wait_policy=policy, sleep=lambda s: None)
    assert len(responses.calls) == 6  # three tries of each document, never more


@responses.activate
def test_an_oversized_discovery_document_is_refused_unread(monkeypatch: pytest.MonkeyPatch):
    from airflow_provider_smart.auth import discovery as module

    monkeypatch.setattr(module, "MAX_DISCOVERY_BYTES", 1024)
    responses.get(BASE + "/.well-known/smart-configuration", body=b"{" + b" " * 5000 + b"}")
    responses.get(BASE + "/metadata", status=404)
    with pytest.raises(DiscoveryError, match="larger than"):
        discover(requests.Session(), BASE)
