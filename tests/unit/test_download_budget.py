"""One retry budget per file: the HTTP client's retries and the downloader's attempts never multiply."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import pytest
import responses

from airflow_provider_smart.fhir.bulk.manifest import PlannedFile, parse_manifest, plan_files
from airflow_provider_smart.fhir.download import BulkDownloader, DownloadError
from airflow_provider_smart.fhir.http import FhirHttpClient
from airflow_provider_smart.transport.retry import WaitPolicy

BASE = "http://fhir.test/fhir"
FILE = f"{BASE}/files/p0"


def one_file() -> PlannedFile:
    manifest = parse_manifest(
        {
            "transactionTime": "2024-01-01T00:00:00Z",
            "requiresAccessToken": False,
            "output": [{"type": "Patient", "url": FILE, "count": 1}],
            "error": [],
        }
    )
    return plan_files(manifest)[0]


@contextmanager
def memory_sink(_planned: PlannedFile) -> Iterator[IO[bytes]]:
    yield io.BytesIO()


def downloader(policy: WaitPolicy, slept: list[float], attempts: int) -> BulkDownloader:
    client = FhirHttpClient(None, BASE, wait_policy=policy, sleep=slept.append)
    d = BulkDownloader(client, requires_access_token=False, max_attempts=attempts, backoff_base=0.01, backoff_max=0.01)
    d._cancel.wait = lambda seconds: slept.append(seconds) or False  # type: ignore[method-assign]
    return d


@responses.activate
@pytest.mark.parametrize("retry_after", [None, "3600"])
def test_a_file_that_always_answers_503_costs_at_most_the_budgets_attempts(retry_after: str | None) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    responses.get(FILE, status=503, body="busy", headers=headers)
    slept: list[float] = []
    # The client alone would try 6 times per request; the downloader 4 times per file: 24 if nested.
    policy = WaitPolicy(max_attempts=6, max_retry_after=30, max_total_wait=1000)
    d = downloader(policy, slept, attempts=4)
    with pytest.raises(DownloadError) as info:
        d.download(one_file(), memory_sink)
    assert len(responses.calls) == 4
    assert len(slept) == 3  # a wait between tries, none after the last
    assert "failed after 4 attempts" in str(info.value)
    if retry_after:
        assert all(30 <= s <= 32 for s in slept)  # capped by max_retry_after, not an hour


@responses.activate
def test_total_planned_wait_never_exceeds_the_budgets_cap() -> None:
    responses.get(FILE, status=429, body="slow down", headers={"Retry-After": "100"})
    slept: list[float] = []
    policy = WaitPolicy(max_attempts=6, max_retry_after=300, max_total_wait=250)
    d = downloader(policy, slept, attempts=50)
    with pytest.raises(DownloadError) as info:
        d.download(one_file(), memory_sink)
    assert sum(slept) <= 250
    assert len(slept) == 2 and len(responses.calls) == 3  # a third wait of ~100 s would pass 250 s
    assert "total wait budget" in str(info.value)


@responses.activate
def test_a_file_that_recovers_reports_its_attempts() -> None:
    responses.get(FILE, status=503, body="busy")
    responses.get(FILE, status=503, body="busy")
    responses.get(FILE, body=b'{"resourceType": "Patient", "id": "1"}\n')
    slept: list[float] = []
    d = downloader(WaitPolicy(max_attempts=6), slept, attempts=5)
    result = d.download(one_file(), memory_sink)
    assert result.attempts == 3 and len(responses.calls) == 3 and result.lines == 1


@responses.activate
def test_a_presigned_url_answering_403_is_refreshed_once_within_the_same_budget() -> None:
    presigned = "http://bucket.test/p0?signature=old"
    fresh = "http://bucket.test/p0?signature=new"
    manifest = parse_manifest(
        {
            "transactionTime": "2024-01-01T00:00:00Z",
            "requiresAccessToken": False,
            "output": [{"type": "Patient", "url": presigned, "count": 1}],
            "error": [],
        }
    )
    planned = plan_files(manifest)[0]
    responses.get(presigned, status=403, body="Request has expired")
    responses.get(fresh, body=b'{"resourceType": "Patient", "id": "1"}\n')
    slept: list[float] = []
    d = downloader(WaitPolicy(), slept, attempts=3)
    d.refresh_urls = lambda: {planned.key: fresh}
    result = d.download(planned, memory_sink)
    assert result.lines == 1 and [c.request.url for c in responses.calls] == [presigned, fresh]
    assert slept == []  # an expired URL is replaced, not waited for
