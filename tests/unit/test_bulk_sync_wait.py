"""In-process polling (sync mode) waits like the trigger: throttling capped by max_retry_after."""

from __future__ import annotations

import pytest
import responses

from airflow_provider_smart.fhir.bulk.status import ExportFailed, PollPolicy
from airflow_provider_smart.fhir.bulk.sync import poll_once, wait_for_export
from airflow_provider_smart.fhir.http import FhirHttpClient

BASE = "http://fhir.test/fhir"
STATUS = f"{BASE}/status/1"
MANIFEST = {"transactionTime": "2024-01-01T00:00:00Z", "requiresAccessToken": False, "output": []}


@responses.activate
def test_throttled_polls_wait_at_most_the_clients_max_retry_after() -> None:
    responses.get(STATUS, status=429, headers={"Retry-After": "3600"})
    responses.get(STATUS, status=202, headers={"Retry-After": "900"})
    responses.get(STATUS, json=MANIFEST)
    slept: list[float] = []
    client = FhirHttpClient(None, BASE, max_retry_after=45, sleep=slept.append)
    policy = PollPolicy(interval=1, min_interval=0, max_interval=1200)
    result = wait_for_export(client, STATUS, policy=policy, sleep=slept.append)
    assert result.manifest == MANIFEST
    # The 429 waits the connection's cap, not an hour; the 202's pace stays the server's.
    assert slept == [45.0, 900.0]
    assert len(responses.calls) == 3


@responses.activate
def test_an_oversized_manifest_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_smart.fhir.bulk import sync

    monkeypatch.setattr(sync, "MAX_MANIFEST_BODY", 1024)
    huge = dict(MANIFEST, output=[{"type": "Patient", "url": f"{BASE}/f{n}"} for n in range(100)])
    responses.get(STATUS, json=huge)
    responses.get(STATUS, json=MANIFEST)
    client = FhirHttpClient(None, BASE)
    refused = poll_once(client, STATUS)
    assert isinstance(refused, ExportFailed) and "manifest larger than 1024 bytes" in refused.message
    assert poll_once(client, STATUS).manifest == MANIFEST  # a small one is read
