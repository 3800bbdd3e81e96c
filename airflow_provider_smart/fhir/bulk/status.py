"""Interpreting kick-off and status responses: a pure function of (status code, headers, body).

The sync operator (requests) and the async trigger (httpx) both feed their responses through here, so
they agree on what "pending", "throttled", "transient", "failed" and "complete" mean.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow_provider_smart.fhir.errors import describe_error_body, operation_outcome_text
from airflow_provider_smart.transport.retry import DEFAULT_MAX_RETRY_AFTER, is_retryable, parse_retry_after
from airflow_provider_smart.transport.sanitize import carries_secret, safe_text
from airflow_provider_smart.transport.urls import redact_url, resolve


@dataclass(frozen=True)
class ExportPending:
    """202: the export is still running."""

    retry_after: float | None
    progress: str | None
    partial_manifest: dict[str, Any] | None = None


@dataclass(frozen=True)
class ExportThrottled:
    """429: poll less often."""

    retry_after: float | None
    message: str


@dataclass(frozen=True)
class ExportTransientError:
    """A failure the server says (or the status suggests) is worth polling through."""

    message: str
    status: int
    retry_after: float | None


@dataclass(frozen=True)
class ExportFailed:
    """The export failed, or is unknown to the server (404/410 after DELETE or expiry)."""

    message: str
    status: int
    outcome: dict[str, Any] | None = None
    #: The answer broke a bound from the settings (a manifest page over ``max_manifest_bytes``).
    over_limit: bool = False

    @property
    def gone(self) -> bool:
        return self.status in (404, 410)


@dataclass(frozen=True)
class ExportComplete:
    """200: the export is done; ``manifest`` is the raw manifest JSON (maybe the first page)."""

    manifest: dict[str, Any]
    expires: str | None


ExportStatus = ExportPending | ExportThrottled | ExportTransientError | ExportFailed | ExportComplete


@dataclass(frozen=True)
class KickoffAccepted:
    """202 with Content-Location: the export started; poll ``status_url``."""

    status_url: str
    message: str | None = None


KickoffResult = KickoffAccepted | ExportThrottled | ExportTransientError | ExportFailed


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # requests and httpx headers are case-insensitive already; plain dicts in tests are not.
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, val in headers.items():
            if key.lower() == lowered:
                return val
    return value


def _json(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, TypeError):
        return None


def _outcome(body: bytes | str) -> dict[str, Any] | None:
    data = _json(body)
    if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
        return data
    return None


def _error_result(
    status: int, headers: Mapping[str, str], body: bytes | str, what: str, *, now: datetime | None, maximum: float
) -> ExportThrottled | ExportTransientError | ExportFailed:
    retry_after = parse_retry_after(_header(headers, "Retry-After"), now=now, maximum=maximum)
    outcome = _outcome(body)
    text = operation_outcome_text(outcome) if outcome else describe_error_body(body, _header(headers, "Content-Type"))
    message = f"{what} answered HTTP {status}: {text}"
    if status == 429:
        return ExportThrottled(retry_after, message)
    # The one retry rule (429/502/503/504 or a transient outcome); a plain 500 fails at once.
    if is_retryable(status, outcome):
        return ExportTransientError(message, status, retry_after)
    return ExportFailed(message, status, outcome)


def interpret_kickoff(
    status: int,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    request_url: str,
    now: datetime | None = None,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
) -> KickoffResult:
    """Classify the answer to a kick-off request."""
    if status == 202:
        location = _header(headers, "Content-Location")
        if not location:
            return ExportFailed(
                f"kick-off to {redact_url(request_url)} answered 202 without a Content-Location header, "
                "so there is no status URL to poll",
                status,
            )
        if carries_secret(location):
            # The status URL is stored in state.json and the trigger's arguments: our token must not be.
            return ExportFailed(
                f"kick-off to {redact_url(request_url)} answered with a status URL that carries this client's "
                "access token or assertion; refusing to store or poll it. The server must not put credentials "
                "into its URLs: report it to the server's operators.",
                status,
            )
        outcome = _outcome(body)
        return KickoffAccepted(
            resolve(request_url, location.strip()), operation_outcome_text(outcome) if outcome else None
        )
    if 200 <= status < 300:
        return ExportFailed(
            f"kick-off to {redact_url(request_url)} answered HTTP {status} instead of 202 Accepted: the server "
            "did not start an asynchronous export (is this a Bulk Data endpoint?)",
            status,
        )
    return _error_result(
        status, headers, body, f"kick-off to {redact_url(request_url)}", now=now, maximum=max_retry_after
    )


def interpret_status(
    status: int,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    status_url: str = "the status URL",
    now: datetime | None = None,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
) -> ExportStatus:
    """Classify the answer to a status poll (Bulk Data "Status Request")."""
    where = redact_url(status_url) if "://" in status_url else status_url
    if status == 202:
        retry_after = parse_retry_after(_header(headers, "Retry-After"), now=now, maximum=max_retry_after)
        progress = _header(headers, "X-Progress")
        data = _json(body) if body else None
        partial = data if isinstance(data, dict) and ("output" in data or "transactionTime" in data) else None
        return ExportPending(retry_after, safe_text(progress, limit=200) if progress else None, partial)
    if status == 200:
        data = _json(body)
        if isinstance(data, dict) and data.get("resourceType") == "OperationOutcome":
            return ExportFailed(f"status {where} answered 200 with {operation_outcome_text(data)}", status, data)
        if not isinstance(data, dict) or "transactionTime" not in data or not isinstance(data.get("output", []), list):
            # A truncated body or a proxy's page: poll again rather than trust it.
            return ExportTransientError(
                f"status {where} answered 200 without a Bulk Data manifest: "
                f"{describe_error_body(body, _header(headers, 'Content-Type'))}",
                status,
                None,
            )
        return ExportComplete(data, _header(headers, "Expires"))
    if 200 < status < 300:
        return ExportTransientError(f"status {where} answered unexpected HTTP {status}", status, None)
    return _error_result(status, headers, body, f"status {where}", now=now, maximum=max_retry_after)


@dataclass(frozen=True)
class PollPolicy:
    """How often to poll. ``Retry-After`` wins, clamped to ``[min_interval, max_interval]``.

    Without a ``Retry-After``, a running export is polled every ``interval`` seconds, or, with
    ``backoff`` above 1 (a vendor asking for exponential backoff), ``interval * backoff**n`` after the
    n-th poll in a row that found it still running.
    """

    interval: float = 10.0
    min_interval: float = 1.0
    max_interval: float = DEFAULT_MAX_RETRY_AFTER
    max_transient_errors: int = 10
    backoff: float = 1.0

    def delay(self, result: ExportStatus, consecutive_errors: int = 0, pending_polls: int = 0) -> float:
        retry_after = getattr(result, "retry_after", None)
        if retry_after is not None:
            wait = float(retry_after)
        elif isinstance(result, ExportThrottled | ExportTransientError):
            wait = self.interval * (2 ** min(max(consecutive_errors - 1, 0), 6))
        else:
            wait = self.interval * self.backoff ** min(max(pending_polls - 1, 0), 16)
        return max(self.min_interval, min(self.max_interval, wait))

    def to_dict(self) -> dict[str, float | int]:
        return {
            "interval": self.interval,
            "min_interval": self.min_interval,
            "max_interval": self.max_interval,
            "max_transient_errors": self.max_transient_errors,
            "backoff": self.backoff,
        }
