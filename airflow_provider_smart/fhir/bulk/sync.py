"""The blocking I/O side of ``$export`` over a FhirHttpClient: kick-off, poll, manifest pages, DELETE.

Decisions come from ``kickoff.py``/``status.py``/``manifest.py``; this module only moves bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import requests

from airflow_provider_smart.fhir.bulk.kickoff import ExportRequest, build_kickoff
from airflow_provider_smart.fhir.bulk.manifest import Manifest, ManifestError, merge_pages, parse_manifest
from airflow_provider_smart.fhir.bulk.status import (
    ExportComplete,
    ExportFailed,
    ExportPending,
    ExportStatus,
    ExportThrottled,
    ExportTransientError,
    KickoffAccepted,
    PollPolicy,
    interpret_kickoff,
    interpret_status,
)
from airflow_provider_smart.fhir.errors import FhirError
from airflow_provider_smart.fhir.retry import DEFAULT_MAX_RETRY_AFTER
from airflow_provider_smart.fhir.urls import redact_url

log = logging.getLogger(__name__)

#: Manifests are small; a hard cap on pages stops a server that links a page to itself.
MAX_MANIFEST_PAGES = 10_000


class RequestClient(Protocol):
    @property
    def base_url(self) -> str: ...

    def request(
        self,
        method: str,
        url_or_path: str,
        *,
        params: Any = ...,
        json: Any = ...,
        headers: Any = ...,
        raise_for_status: bool = ...,
    ) -> requests.Response: ...


class ExportFailedError(FhirError):
    """The export failed on the server, or the server no longer knows it."""


class ExportTimeoutError(FhirError):
    """The export did not complete before the deadline."""


def kick_off(client: RequestClient, request: ExportRequest, *, max_retry_after: float = DEFAULT_MAX_RETRY_AFTER) -> str:
    """Start an export and return its status URL. Throttling after the client's own retries is an error."""
    kick = build_kickoff(client.base_url, request)
    response = client.request(
        kick.method,
        kick.url,
        params=kick.params or None,
        json=kick.json,
        headers=kick.headers,
        raise_for_status=False,
    )
    result = interpret_kickoff(
        response.status_code,
        response.headers,
        response.content,
        request_url=response.url or kick.url,
        max_retry_after=max_retry_after,
    )
    if isinstance(result, KickoffAccepted):
        if result.message:
            log.info("kick-off accepted with: %s", result.message)
        return result.status_url
    if isinstance(result, ExportThrottled):
        raise FhirError(
            f"{result.message}. The server is throttling new exports (often: another export by this client "
            "is still running; finish or DELETE it first)",
            status=429,
        )
    raise FhirError(result.message, status=result.status)


def poll_once(
    client: RequestClient, status_url: str, *, max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
) -> ExportStatus:
    """One status request, classified. Transport errors count as transient."""
    try:
        response = client.request("GET", status_url, headers={"Accept": "application/json"}, raise_for_status=False)
    except FhirError as exc:
        return ExportTransientError(str(exc), exc.status or 0, getattr(exc, "retry_after", None))
    except requests.RequestException as exc:
        return ExportTransientError(f"status request failed: {type(exc).__name__}", 0, None)
    return interpret_status(
        response.status_code,
        response.headers,
        response.content,
        status_url=status_url,
        max_retry_after=max_retry_after,
    )


def wait_for_export(
    client: RequestClient,
    status_url: str,
    *,
    policy: PollPolicy,
    deadline: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> ExportComplete:
    """Poll in-process until the export completes, fails, or ``deadline`` (epoch seconds) passes."""
    errors = 0
    last_progress: str | None = None
    while True:
        result = poll_once(client, status_url, max_retry_after=policy.max_interval)
        if isinstance(result, ExportComplete):
            return result
        if isinstance(result, ExportFailed):
            raise ExportFailedError(result.message, status=result.status, outcome=result.outcome)
        if isinstance(result, ExportPending):
            errors = 0
            if result.progress and result.progress != last_progress:
                log.info("export in progress: %s", result.progress)
                last_progress = result.progress
        else:
            errors += 1
            if errors > policy.max_transient_errors:
                raise ExportFailedError(f"giving up after {errors} failed status polls in a row: {result.message}")
            log.warning("status poll: %s", result.message)
        delay = policy.delay(result, errors)
        if deadline is not None and clock() + delay > deadline:
            raise ExportTimeoutError(f"export at {redact_url(status_url)} did not complete before its deadline")
        sleep(delay)


def fetch_manifest(
    client: RequestClient,
    first_page: dict[str, Any],
    status_url: str,
    *,
    policy: PollPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Manifest:
    """The whole manifest: the first page plus every ``link`` next page, merged."""
    policy = policy or PollPolicy()
    pages = [parse_manifest(first_page, base_url=status_url)]
    seen = {status_url}
    while pages[-1].next_url:
        url = pages[-1].next_url
        if url in seen or len(pages) >= MAX_MANIFEST_PAGES:
            raise ManifestError(f"manifest paging loops or never ends (at {redact_url(url)})")
        seen.add(url)
        page = _fetch_page(client, url, policy, sleep)
        pages.append(parse_manifest(page, base_url=url))
    return merge_pages(pages)


def _fetch_page(client: RequestClient, url: str, policy: PollPolicy, sleep: Callable[[float], None]) -> dict[str, Any]:
    errors = 0
    while True:
        result = poll_once(client, url, max_retry_after=policy.max_interval)
        if isinstance(result, ExportComplete):
            return result.manifest
        if isinstance(result, ExportFailed):
            raise ExportFailedError(f"manifest page: {result.message}", status=result.status)
        if not isinstance(result, ExportPending):
            errors += 1
            if errors > policy.max_transient_errors:
                raise ExportFailedError(f"manifest page kept failing: {result.message}")
        sleep(policy.delay(result, errors))


def delete_export(client: RequestClient, status_url: str) -> bool:
    """Ask the server to cancel/forget the export (frees the slot on servers that allow one export at a time).

    Never raises: a failed DELETE is logged, since the data (if any) has already landed.
    """
    try:
        response = client.request("DELETE", status_url, raise_for_status=False)
    except (FhirError, requests.RequestException) as exc:
        log.warning("DELETE of export %s failed: %s", redact_url(status_url), exc)
        return False
    if response.status_code in (200, 202, 204, 404, 410):
        log.info("export %s deleted on the server (HTTP %d)", redact_url(status_url), response.status_code)
        return True
    log.warning("DELETE of export %s answered HTTP %d", redact_url(status_url), response.status_code)
    return False
