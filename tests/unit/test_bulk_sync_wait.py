"""In-process polling (sync mode) waits like the trigger: throttling capped by max_retry_after."""

from __future__ import annotations

from typing import Any

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
def test_an_oversized_manifest_is_refused() -> None:
    from airflow_provider_smart.fhir.bulk.body import StreamLimits

    huge = dict(MANIFEST, output=[{"type": "Patient", "url": f"{BASE}/f{n}"} for n in range(100)])
    responses.get(STATUS, json=huge)
    responses.get(STATUS, json=MANIFEST)
    client = FhirHttpClient(None, BASE)
    refused = poll_once(client, STATUS, limits=StreamLimits(max_manifest_bytes=1024))
    assert isinstance(refused, ExportFailed)
    assert "larger than max_manifest_bytes=1024 bytes" in refused.message and "download_limits" in refused.message
    assert poll_once(client, STATUS, limits=StreamLimits(max_manifest_bytes=1024)).manifest == MANIFEST


@responses.activate
def test_a_manifest_listing_too_many_files_over_its_pages_is_refused() -> None:
    from airflow_provider_smart.fhir.bulk.body import StreamLimits
    from airflow_provider_smart.fhir.bulk.manifest import ManifestError
    from airflow_provider_smart.fhir.bulk.sync import fetch_manifest

    def page(n: int, next_page: int | None) -> dict[str, Any]:
        files = [{"type": "Patient", "url": f"{BASE}/p{n}-{i}"} for i in range(40)]
        link = [{"relation": "next", "url": f"{STATUS}?page={next_page}"}] if next_page else []
        return dict(MANIFEST, output=files, link=link)

    for n in (2, 3):
        responses.get(f"{STATUS}?page={n}", json=page(n, n + 1 if n < 3 else None))
    client = FhirHttpClient(None, BASE)
    limits = StreamLimits(max_manifest_files=100)
    with pytest.raises(ManifestError, match=r"more than max_manifest_files=100 files.*download_limits"):
        fetch_manifest(client, page(1, 2), STATUS, limits=limits, sleep=lambda _s: None)
    assert len(responses.calls) == 2  # refused at the third page, before its entries were parsed
    assert len(fetch_manifest(client, page(1, 2), STATUS, sleep=lambda _s: None).output) == 120


@responses.activate
def test_exponential_backoff_doubles_the_wait_while_no_retry_after_is_given() -> None:
    for _ in range(4):
        responses.get(STATUS, status=202)
    responses.get(STATUS, status=202, headers={"Retry-After": "7"})  # the server's pace still wins
    responses.get(STATUS, json=MANIFEST)
    slept: list[float] = []
    client = FhirHttpClient(None, BASE)
    policy = PollPolicy(interval=2, min_interval=0, max_interval=10, backoff=2.0)
    wait_for_export(client, STATUS, policy=policy, sleep=slept.append)
    assert slept == [2.0, 4.0, 8.0, 10.0, 7.0]  # doubled, capped by max_interval
    plain: list[float] = []
    for _ in range(3):
        responses.get(STATUS, status=202)
    responses.get(STATUS, json=MANIFEST)
    wait_for_export(client, STATUS, policy=PollPolicy(interval=2, min_interval=0), sleep=plain.append)
    assert plain[-3:] == [2.0, 2.0, 2.0]
