"""The blocking I/O side of ``$export`` over a FhirHttpClient: kick-off, poll, manifest pages, DELETE.

Decisions come from ``kickoff.py``/``status.py``/``manifest.py``; this module only moves bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import requests

from airflow_provider_smart.fhir.bulk.body import StreamLimits
from airflow_provider_smart.fhir.bulk.kickoff import ExportRequest, build_kickoff
from airflow_provider_smart.fhir.bulk.manifest import (
    Manifest,
    ManifestError,
    ManifestTooLargeError,
    merge_pages,
    parse_manifest,
)
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
from airflow_provider_smart.fhir.client import FhirClient
from airflow_provider_smart.fhir.errors import FhirError, OverLimitError
from airflow_provider_smart.transport.bodies import MAX_ERROR_BODY, read_bounded, read_limited
from airflow_provider_smart.transport.retry import DEFAULT_MAX_RETRY_AFTER, log_wait
from airflow_provider_smart.transport.sanitize import safe_text
from airflow_provider_smart.transport.urls import redact_url

log = logging.getLogger(__name__)

#: Manifests are small; a hard cap on pages stops a server that links a page to itself.
MAX_MANIFEST_PAGES = 10_000


#: The Bulk Data code takes the one client interface (kept under its old name for existing imports).
RequestClient = FhirClient

#: A completed manifest page is read up to this size unless ``download_limits`` says otherwise
#: (``max_manifest_bytes``; a 100,000-file manifest with presigned URLs is about 31 MB).
MAX_MANIFEST_BODY = StreamLimits().max_manifest_bytes


class ExportFailedError(FhirError):
    """The export failed on the server, or the server no longer knows it."""


class ManifestPageTooLargeError(ExportFailedError, OverLimitError):
    """A manifest page is larger than ``max_manifest_bytes``: not retried."""


def failed_error(result: ExportFailed, prefix: str = "") -> ExportFailedError:
    """The exception for a failed status answer (a bound from the settings keeps its kind)."""
    kind = ManifestPageTooLargeError if result.over_limit else ExportFailedError
    return kind(prefix + result.message, status=result.status, outcome=result.outcome)


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
        stream=True,
    )
    with response:
        body = read_limited(response, MAX_ERROR_BODY)
    result = interpret_kickoff(
        response.status_code,
        response.headers,
        body,
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
    # The outcome travels along: a refused parameter (400 with an OperationOutcome) fails without retries.
    raise FhirError(result.message, status=result.status, outcome=getattr(result, "outcome", None))


def poll_once(
    client: RequestClient,
    status_url: str,
    *,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    limits: StreamLimits | None = None,
) -> ExportStatus:
    """One status request, classified. Transport errors count as transient.

    The client does not retry here (``retries=0``): the polling loop is the one place that waits, so a
    429 costs one wait, not the client's retries times the loop's. Bodies are read up to a cap: a 202
    or error body to 64 KiB, a completed manifest page to ``limits.max_manifest_bytes``.
    """
    max_manifest_bytes = (limits or StreamLimits()).max_manifest_bytes
    try:
        response = client.request(
            "GET",
            status_url,
            headers={"Accept": "application/json"},
            raise_for_status=False,
            retries=0,
            stream=True,
        )
        with response:
            limit = max_manifest_bytes if response.status_code == 200 else MAX_ERROR_BODY
            body, too_big = read_bounded(response, limit)
    except FhirError as exc:
        if not exc.retryable:
            return ExportFailed(str(exc), exc.status or 0)
        return ExportTransientError(str(exc), exc.status or 0, getattr(exc, "retry_after", None))
    except requests.RequestException as exc:
        return ExportTransientError(f"status request failed: {type(exc).__name__}", 0, None)
    if too_big and response.status_code == 200:
        return ExportFailed(
            f"status {redact_url(status_url)} answered with a manifest page larger than max_manifest_bytes={limit} "
            "bytes; refusing to read it. Raise download_limits={'max_manifest_bytes': ...} if the server's "
            "manifests are this big (memory grows with it: about 20 times the page's size)",
            response.status_code,
            over_limit=True,
        )
    return interpret_status(
        response.status_code,
        response.headers,
        body,
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
    limits: StreamLimits | None = None,
    on_status: Callable[[ExportStatus], None] | None = None,
) -> ExportComplete:
    """Poll in-process until the export completes, fails, or ``deadline`` (epoch seconds) passes.

    ``on_status`` sees every answer (the export log's ``status_progress``/``status_error`` events).

    A 202's ``Retry-After`` is the server's polling pace (capped by ``policy.max_interval``); a throttled
    or failed poll waits at most the client's ``max_retry_after`` (the connection extra), like the trigger.
    """
    cap = float(getattr(client, "max_retry_after", DEFAULT_MAX_RETRY_AFTER))
    errors = 0
    pending = 0
    last_progress: str | None = None
    while True:
        result = poll_once(client, status_url, max_retry_after=policy.max_interval, limits=limits)
        if on_status is not None:
            on_status(result)
        if isinstance(result, ExportComplete):
            return result
        if isinstance(result, ExportFailed):
            raise failed_error(result)
        if isinstance(result, ExportPending):
            errors = 0
            pending += 1
            if result.progress and result.progress != last_progress:
                log.info("export in progress: %s", safe_text(result.progress, limit=200))
                last_progress = result.progress
        else:
            errors += 1
            if errors > policy.max_transient_errors:
                raise ExportFailedError(f"giving up after {errors} failed status polls in a row: {result.message}")
        delay = policy.delay(result, errors, pending)
        if not isinstance(result, ExportPending):
            delay = min(delay, max(cap, policy.min_interval))
        if deadline is not None and clock() + delay > deadline:
            raise ExportTimeoutError(f"export at {redact_url(status_url)} did not complete before its deadline")
        if not isinstance(result, ExportPending) or result.retry_after is not None:
            log_wait(
                log,
                f"status {redact_url(status_url)}",
                poll_reason(result),
                delay,
                now=clock(),
                attention=poll_needs_attention(result),
            )
        sleep(delay)


def fetch_manifest(
    client: RequestClient,
    first_page: dict[str, Any],
    status_url: str,
    *,
    policy: PollPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    limits: StreamLimits | None = None,
) -> Manifest:
    """The whole manifest: the first page plus every ``link`` next page, merged.

    Bounded: each page is read up to ``limits.max_manifest_bytes``, and the pages together may list at
    most ``limits.max_manifest_files`` files (counted before a page's entries are parsed), so memory
    follows the caps whatever the server lists.
    """
    policy = policy or PollPolicy()
    limits = limits or StreamLimits()
    listed = _count_files(first_page, 0, limits)
    pages = [parse_manifest(first_page, base_url=status_url)]
    seen = {status_url}
    while pages[-1].next_url:
        url = pages[-1].next_url
        if url in seen or len(pages) >= MAX_MANIFEST_PAGES:
            raise ManifestError(f"manifest paging loops or never ends (at {redact_url(url)})")
        seen.add(url)
        page = _fetch_page(client, url, policy, sleep, limits)
        listed = _count_files(page, listed, limits)
        pages.append(parse_manifest(page, base_url=url))
    return merge_pages(pages)


def _count_files(page: Any, listed: int, limits: StreamLimits) -> int:
    """Files listed so far plus this page's, refused past ``max_manifest_files``."""
    if isinstance(page, dict):
        listed += sum(len(v) for k in ("output", "error", "outcome", "deleted") if isinstance(v := page.get(k), list))
    if listed > limits.max_manifest_files:
        raise ManifestTooLargeError(
            f"the manifest lists more than max_manifest_files={limits.max_manifest_files} files; refusing it before "
            "reading them all. Raise download_limits={'max_manifest_files': ...} if the server's exports are "
            "this big, or export fewer types or a shorter _since window per run"
        )
    return listed


def fetch_completed_page(
    client: RequestClient,
    status_url: str,
    *,
    policy: PollPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    limits: StreamLimits | None = None,
) -> dict[str, Any]:
    """The first manifest page of a completed export, fetched from its status URL.

    The trigger's event carries only the status URL (never the manifest or its presigned URLs); the
    worker reads the manifest from the server with this.
    """
    return _fetch_page(client, status_url, policy or PollPolicy(), sleep, limits)


def poll_needs_attention(result: ExportStatus) -> bool:
    """A wait worth a WARNING: throttling or a failed poll. A running export's 202 is the normal pace (INFO)."""
    return not isinstance(result, ExportPending)


def poll_reason(result: ExportStatus) -> str:
    """Why the poller waits, for the one log line of that wait."""
    if isinstance(result, ExportPending):
        return "export still running (202 with Retry-After)"
    return getattr(result, "message", type(result).__name__)


def _fetch_page(
    client: RequestClient,
    url: str,
    policy: PollPolicy,
    sleep: Callable[[float], None],
    limits: StreamLimits | None = None,
) -> dict[str, Any]:
    errors = 0
    while True:
        result = poll_once(client, url, max_retry_after=policy.max_interval, limits=limits)
        if isinstance(result, ExportComplete):
            return result.manifest
        if isinstance(result, ExportFailed):
            raise failed_error(result, "manifest page: ")
        if not isinstance(result, ExportPending):
            errors += 1
            if errors > policy.max_transient_errors:
                raise ExportFailedError(f"manifest page kept failing: {result.message}")
        delay = policy.delay(result, errors)
        log_wait(
            log, f"manifest page {redact_url(url)}", poll_reason(result), delay, attention=poll_needs_attention(result)
        )
        sleep(delay)


def delete_export(client: RequestClient, status_url: str) -> bool:
    """Ask the server to cancel/forget the export (frees the slot on servers that allow one export at a time).

    Never raises: a failed DELETE is logged, since the data (if any) has already landed.
    """
    try:
        response = client.request("DELETE", status_url, raise_for_status=False)
    except (FhirError, requests.RequestException) as exc:
        log.warning("DELETE of export %s failed: %s", redact_url(status_url), safe_text(exc))
        return False
    if response.status_code in (200, 202, 204, 404, 410):
        log.info("export %s deleted on the server (HTTP %d)", redact_url(status_url), response.status_code)
        return True
    log.warning("DELETE of export %s answered HTTP %d", redact_url(status_url), response.status_code)
    return False
