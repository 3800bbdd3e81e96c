"""Each fault switch of the sandbox, observed over real HTTP."""

from __future__ import annotations

import http.client
import json
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
import pytest
import requests

pytestmark = pytest.mark.integration


def test_throttle_with_retry_after_seconds_then_recovers(sandbox, smart_client):
    session = smart_client.session()
    sandbox.state.faults.throttle("/fhir/Patient", times=2, retry_after=7)
    for _ in range(2):
        response = session.get(f"{sandbox.fhir_base}/Patient", timeout=10)
        assert response.status_code == 429 and response.headers["retry-after"] == "7"
        assert response.json()["issue"][0]["code"] == "throttled"
    assert session.get(f"{sandbox.fhir_base}/Patient", timeout=10).status_code == 200
    # Other paths were never affected.
    assert sandbox.state.faults.count("/fhir/Patient") == 3


def test_throttle_with_an_http_date(sandbox, smart_client):
    sandbox.state.faults.throttle("/fhir/*", retry_after=120, http_date=True)
    response = smart_client.session().get(f"{sandbox.fhir_base}/Observation", timeout=10)
    when = parsedate_to_datetime(response.headers["retry-after"])
    assert 100 < (when - datetime.now(UTC)).total_seconds() <= 121


@pytest.mark.parametrize("status", [500, 503])
def test_transient_server_errors(sandbox, smart_client, status):
    sandbox.state.faults.fail("/fhir/Observation", status=status, times=1, retry_after=2)
    session = smart_client.session()
    response = session.get(f"{sandbox.fhir_base}/Observation", timeout=10)
    assert response.status_code == status
    assert response.json()["issue"][0]["code"] == "transient"
    assert response.headers["retry-after"] == "2"
    assert session.get(f"{sandbox.fhir_base}/Observation", timeout=10).status_code == 200


def test_faults_hit_the_token_endpoint_too(sandbox, smart_client):
    sandbox.state.faults.fail("/auth/token", status=503)
    assert smart_client.token_response().status_code == 503
    assert smart_client.token_response().status_code == 200


def test_slow_pages(sandbox, smart_client):
    session = smart_client.session()
    sandbox.state.faults.slow("/fhir/Patient", delay=0.6, times=1)
    started = time.monotonic()
    assert session.get(f"{sandbox.fhir_base}/Patient", timeout=10).status_code == 200
    assert time.monotonic() - started >= 0.6
    with pytest.raises(requests.exceptions.ReadTimeout):
        sandbox.state.faults.slow("/fhir/Patient", delay=2, times=1)
        session.get(f"{sandbox.fhir_base}/Patient", timeout=0.5)


def test_connection_dropped_mid_response(sandbox, smart_client):
    token = smart_client.token()
    sandbox.state.faults.drop("/fhir/Observation", times=1, after_bytes=100)
    connection = http.client.HTTPConnection("127.0.0.1", sandbox.port, timeout=10)
    connection.request("GET", "/fhir/Observation", headers={"Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    assert response.status == 200
    declared = int(response.headers["content-length"])
    with pytest.raises(http.client.IncompleteRead) as caught:
        response.read()
    assert len(caught.value.partial) == 100 < declared
    connection.close()
    # Clients see an error, never a short body taken for the whole one; the next request works.
    sandbox.state.faults.drop("/fhir/Observation", times=1)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        requests.get(f"{sandbox.fhir_base}/Observation", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    with pytest.raises(httpx.HTTPError):
        sandbox.state.faults.drop("/fhir/Observation", times=1)
        httpx.get(f"{sandbox.fhir_base}/Observation", headers={"Authorization": f"Bearer {token}"})
    ok = requests.get(f"{sandbox.fhir_base}/Observation", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["resourceType"] == "Bundle"


def test_request_counts_and_authorization_log(sandbox, smart_client):
    token = smart_client.token()
    requests.get(f"{sandbox.fhir_base}/metadata", timeout=10)
    requests.get(f"{sandbox.fhir_base}/Patient/pat-1", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    faults = sandbox.state.faults
    assert faults.requests["/fhir/metadata"] == 1 and faults.requests["/auth/token"] == 1
    assert faults.authorization["/fhir/metadata"] == [None]
    assert faults.authorization["/fhir/Patient/pat-1"] == [f"Bearer {token}"]


def test_admin_endpoint_sets_and_reports_faults(sandbox, smart_client):
    url = f"{sandbox.base_url}/_sandbox/faults"
    body = {"rules": [{"kind": "status", "path": "/fhir/Patient*", "status": 429, "retry_after": 3, "times": 1}]}
    assert requests.put(url, json=body, timeout=10).status_code == 401
    assert requests.put(url, json=body, auth=sandbox.admin_auth, timeout=10).status_code == 200
    session = smart_client.session()
    assert session.get(f"{sandbox.fhir_base}/Patient/pat-1", timeout=10).status_code == 429
    report = requests.get(url, auth=sandbox.admin_auth, timeout=10).json()
    assert report["requests"]["/fhir/Patient/pat-1"] == 1
    assert report["authorized"]["/fhir/Patient/pat-1"] == [True]
    assert "Bearer" not in json.dumps(report)  # never the credential itself
    lifetime = requests.put(url, json={"token_lifetime": 2}, auth=sandbox.admin_auth, timeout=10)
    assert lifetime.status_code == 200 and smart_client.token_response().json()["expires_in"] == 2
    bad = requests.put(url, json={"rules": [{"kind": "explode"}]}, auth=sandbox.admin_auth, timeout=10)
    assert bad.status_code == 400 and "explode" in bad.json()["issue"][0]["diagnostics"]
    requests.put(url, json={"reset": True}, auth=sandbox.admin_auth, timeout=10)
    assert sandbox.state.faults.rules == [] and sandbox.state.faults.token_lifetime is None


def test_admin_resource_writes(fresh_sandbox, smart_client_factory):
    client = smart_client_factory(server=fresh_sandbox)
    session = client.session()
    patient = session.get(f"{fresh_sandbox.fhir_base}/Patient/pat-1", timeout=10).json()
    patient["active"] = False
    url = f"{fresh_sandbox.base_url}/_sandbox/fhir/Patient/pat-1"
    assert requests.put(url, json=patient, timeout=10).status_code == 401
    stored = requests.put(url, json=patient, auth=fresh_sandbox.admin_auth, timeout=10)
    assert stored.status_code == 200 and stored.json()["meta"]["versionId"] == "2"
    assert stored.json()["meta"]["lastUpdated"] > patient["meta"]["lastUpdated"]
    assert session.get(f"{fresh_sandbox.fhir_base}/Patient/pat-1", timeout=10).json()["active"] is False
    assert requests.delete(url, auth=fresh_sandbox.admin_auth, timeout=10).status_code == 204
    assert session.get(f"{fresh_sandbox.fhir_base}/Patient/pat-1", timeout=10).status_code == 404
    deletions = list(fresh_sandbox.state.store.iter_deletions("Patient"))
    assert [(rid, patients) for _, rid, patients in deletions] == [("pat-1", frozenset({"pat-1"}))]


def test_admin_clock_moves_token_expiry_over_http(sandbox, smart_client):
    url = f"{sandbox.base_url}/_sandbox/clock"
    assert requests.put(url, json={"advance": 1}, timeout=10).status_code == 401
    session = smart_client.session()  # a token living the default 300 s
    assert session.get(f"{sandbox.fhir_base}/Patient/pat-1", timeout=10).status_code == 200
    moved = requests.put(url, json={"freeze": True, "advance": 301}, auth=sandbox.admin_auth, timeout=10)
    assert moved.status_code == 200 and moved.json()["frozen"] is True
    expired = session.get(f"{sandbox.fhir_base}/Patient/pat-1", timeout=10)
    assert expired.status_code == 401 and "expired" in expired.json()["issue"][0]["diagnostics"]
    bad = requests.put(url, json={"advance": -5}, auth=sandbox.admin_auth, timeout=10)
    assert bad.status_code == 400 and "only moves forward" in bad.json()["issue"][0]["diagnostics"]
    assert requests.put(url, json={"reset": True}, auth=sandbox.admin_auth, timeout=10).json()["frozen"] is False
