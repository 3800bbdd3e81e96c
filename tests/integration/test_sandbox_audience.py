"""The sandbox's expected audiences and links come from its configured base URL, never from ``Host``."""

from __future__ import annotations

from collections.abc import Callable

import jwt
import pytest
import requests

from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.sandbox.state import SandboxConfig
from tests.sandbox_fixtures import JWT_BEARER, SmartClient

pytestmark = pytest.mark.integration
FORGED = "attacker.example:8443"


def _token(client: SmartClient, assertion: str, host: str | None = None) -> requests.Response:
    return requests.post(
        client.server.token_url,
        data={
            "grant_type": "client_credentials",
            "scope": client.scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        },
        headers={"Host": host} if host else {},
        timeout=30,
    )


def test_forged_host_does_not_change_the_expected_assertion_audience(smart_client: SmartClient) -> None:
    server = smart_client.server
    # An assertion made for the forged host's token URL is refused even when Host claims to be that host.
    forged_aud = smart_client.assertion(aud=f"http://{FORGED}/auth/token")
    refused = _token(smart_client, forged_aud, host=FORGED)
    assert refused.status_code == 401, refused.text
    assert server.token_url in refused.json()["error_description"]
    # The real audience still works whatever Host says, and the token names the configured FHIR base.
    ok = _token(smart_client, smart_client.assertion(), host=FORGED)
    assert ok.status_code == 200, ok.text
    claims = jwt.decode(ok.json()["access_token"], options={"verify_signature": False})
    assert claims["aud"] == server.fhir_base and claims["iss"] == server.base_url


def test_forged_host_does_not_reach_discovery_or_links(smart_client: SmartClient) -> None:
    server = smart_client.server
    config = requests.get(
        f"{server.fhir_base}/.well-known/smart-configuration", headers={"Host": FORGED}, timeout=10
    ).json()
    assert config["token_endpoint"] == server.token_url
    session = smart_client.session()
    page = session.get(f"{server.fhir_base}/Patient", params={"_count": 2}, headers={"Host": FORGED}, timeout=10)
    assert page.status_code == 200, page.text
    links = [link["url"] for link in page.json()["link"]]
    assert links and all(url.startswith(server.fhir_base + "/") for url in links), links
    # A token is checked against the configured audience: a forged Host does not make it foreign.
    assert session.get(f"{server.fhir_base}/Patient/pat-1", headers={"Host": FORGED}, timeout=10).status_code == 200


def test_configured_base_url_is_the_audience(sandbox_factory: Callable[..., SandboxServer]) -> None:
    server = sandbox_factory(SandboxConfig(patients=1, base_url="http://fhir.example.test:9999/"))
    config = requests.get(f"{server.fhir_base}/.well-known/smart-configuration", timeout=10).json()
    assert config["token_endpoint"] == "http://fhir.example.test:9999/auth/token"
    assert config["issuer"] == "http://fhir.example.test:9999"


def test_cli_base_url_is_printed_and_served(capsys: pytest.CaptureFixture[str]) -> None:
    import re
    import threading

    from airflow_provider_smart.sandbox.cli import main

    stop = threading.Event()
    result: list[int] = []
    argv = ["--port", "0", "--patients", "1", "--base-url", "http://sandbox.example:18080"]
    thread = threading.Thread(target=lambda: result.append(main(argv, stop=stop)))
    thread.start()
    out = ""
    try:
        for _ in range(400):
            out += capsys.readouterr().out
            if "Press Ctrl+C" in out:
                break
            threading.Event().wait(0.05)
        listening = re.search(r"listening on (http://127\.0\.0\.1:\d+)", out)
        assert listening, out
        assert re.search(r"FHIR base:\s+http://sandbox\.example:18080/fhir\n", out), out
        config = requests.get(f"{listening[1]}/fhir/.well-known/smart-configuration", timeout=10).json()
        assert config["token_endpoint"] == "http://sandbox.example:18080/auth/token"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result == [0]
