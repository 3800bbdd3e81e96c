"""In-process polling (sync mode) waits like the trigger: throttling capped by max_retry_after."""

from __future__ import annotations

import responses

from airflow_provider_smart.fhir.bulk.status import PollPolicy
from airflow_provider_smart.fhir.bulk.sync import wait_for_export
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
