from __future__ import annotations

import json
from datetime import UTC, datetime

from airflow_provider_smart.fhir.bulk import (
    ExportComplete,
    ExportFailed,
    ExportPending,
    ExportThrottled,
    ExportTransientError,
    KickoffAccepted,
    PollPolicy,
    interpret_kickoff,
    interpret_status,
)

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


def oo(code: str, severity: str = "error", text: str = "boom") -> bytes:
    return json.dumps(
        {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code, "diagnostics": text}]}
    ).encode()


def test_kickoff_accepted_resolves_relative_content_location() -> None:
    r = interpret_kickoff(202, {"content-location": "../status/42"}, b"", request_url="http://h/fhir/Group/1/$export")
    assert r == KickoffAccepted("http://h/fhir/Group/status/42", None)


def test_kickoff_without_content_location_fails_clearly() -> None:
    r = interpret_kickoff(202, {}, b"", request_url="http://h/fhir/$export")
    assert isinstance(r, ExportFailed) and "Content-Location" in r.message


def test_kickoff_200_is_not_an_async_export() -> None:
    r = interpret_kickoff(200, {}, b"{}", request_url="http://h/fhir/$export")
    assert isinstance(r, ExportFailed) and "202" in r.message


def test_kickoff_429_and_400_with_outcome() -> None:
    r = interpret_kickoff(429, {"Retry-After": "30"}, b"", request_url="http://h/fhir/$export")
    assert isinstance(r, ExportThrottled) and r.retry_after == 30
    r2 = interpret_kickoff(400, {}, oo("not-supported", text="_typeFilter unsupported"), request_url="http://h/$export")
    assert isinstance(r2, ExportFailed) and "_typeFilter unsupported" in r2.message and r2.status == 400


def test_pending_with_seconds_and_progress() -> None:
    r = interpret_status(202, {"Retry-After": "120", "X-Progress": "50% done"}, b"", now=NOW)
    assert r == ExportPending(120.0, "50% done", None)


def test_pending_with_http_date_is_clamped() -> None:
    r = interpret_status(202, {"Retry-After": "Mon, 01 Jan 2024 14:00:00 GMT"}, b"", now=NOW, max_retry_after=600)
    assert isinstance(r, ExportPending) and r.retry_after == 600
    r2 = interpret_status(202, {"Retry-After": "Mon, 01 Jan 2024 12:00:30 GMT"}, b"", now=NOW)
    assert isinstance(r2, ExportPending) and r2.retry_after == 30


def test_pending_nonsense_retry_after_falls_back_to_policy() -> None:
    r = interpret_status(202, {"Retry-After": "soon"}, b"", now=NOW)
    assert isinstance(r, ExportPending) and r.retry_after is None
    assert PollPolicy(interval=7).delay(r) == 7


def test_pending_with_partial_manifest() -> None:
    body = json.dumps({"transactionTime": "2024-01-01T00:00:00Z", "output": []}).encode()
    r = interpret_status(202, {"Content-Type": "application/json"}, body)
    assert isinstance(r, ExportPending) and r.partial_manifest is not None


def test_throttled() -> None:
    r = interpret_status(429, {"Retry-After": "5"}, b"")
    assert isinstance(r, ExportThrottled) and r.retry_after == 5 and "429" in r.message


def test_transient_by_status_and_by_outcome() -> None:
    r = interpret_status(503, {}, b"<html>down</html>")
    assert isinstance(r, ExportTransientError) and r.status == 503
    r2 = interpret_status(500, {"Retry-After": "3"}, oo("transient", text="database busy"))
    assert isinstance(r2, ExportTransientError) and "database busy" in r2.message and r2.retry_after == 3


def test_failed_with_outcome_text_and_gone() -> None:
    r = interpret_status(500, {}, oo("exception", text="export crashed"))
    assert isinstance(r, ExportFailed) and "export crashed" in r.message and not r.gone
    r2 = interpret_status(404, {}, b"")
    assert isinstance(r2, ExportFailed) and r2.gone


def test_complete_with_manifest_and_expires() -> None:
    manifest = {"transactionTime": "2024-01-01T00:00:00Z", "requiresAccessToken": True, "output": []}
    r = interpret_status(200, {"Expires": "Tue, 02 Jan 2024 00:00:00 GMT"}, json.dumps(manifest).encode())
    assert r == ExportComplete(manifest, "Tue, 02 Jan 2024 00:00:00 GMT")


def test_200_without_manifest_is_polled_again() -> None:
    r = interpret_status(200, {"Content-Type": "text/html"}, b"<html>proxy</html>")
    assert isinstance(r, ExportTransientError) and "manifest" in r.message


def test_poll_policy_backoff_and_clamp() -> None:
    p = PollPolicy(interval=2, min_interval=1, max_interval=10)
    t = ExportTransientError("x", 500, None)
    assert [p.delay(t, n) for n in (1, 2, 3, 4)] == [2, 4, 8, 10]
    assert p.delay(ExportPending(0.0, None)) == 1
    assert p.delay(ExportPending(9999.0, None)) == 10
