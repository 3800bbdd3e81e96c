"""Errors raised by the FHIR layer, and readable text from OperationOutcome resources."""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_smart.transport.retry import is_transient_outcome, operation_outcome_issues
from airflow_provider_smart.transport.sanitize import safe_text

__all__ = [
    "FhirError",
    "TransientFhirError",
    "describe_error_body",
    "is_transient_outcome",
    "issue_text",
    "operation_outcome_issues",
    "operation_outcome_text",
]

_MAX_BODY_IN_MESSAGE = 500


class OverLimitError(Exception):
    """A bound from the settings was exceeded (the message names the setting): the same request, sent again,
    exceeds it again, so no retry can help (``failures.retry_cannot_fix``)."""


class FhirError(Exception):
    """A FHIR server answered with an error. The message is safe to log: it never holds a token."""

    def __init__(self, message: str, *, status: int | None = None, outcome: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.outcome = outcome

    @property
    def retryable(self) -> bool:
        """Worth trying again: no HTTP answer at all (a failed connection); subclasses say more."""
        return self.status is None


class TransientFhirError(FhirError):
    """An error worth trying again (throttling, 5xx, an OperationOutcome with code ``transient``)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        outcome: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, status=status, outcome=outcome)
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return True


def issue_text(issue: dict[str, Any]) -> str:
    """One line for one OperationOutcome.issue: ``severity/code: text``."""
    severity = issue.get("severity", "error")
    code = issue.get("code", "unknown")
    details = issue.get("details") if isinstance(issue.get("details"), dict) else {}
    text = issue.get("diagnostics") or (details or {}).get("text")
    if not text:
        codings = (details or {}).get("coding") or []
        text = next((c.get("display") or c.get("code") for c in codings if isinstance(c, dict)), None)
    where = issue.get("expression") or issue.get("location")
    suffix = f" (at {', '.join(map(str, where))})" if isinstance(where, list) and where else ""
    return f"{severity}/{code}: {text or 'no details given'}{suffix}"


def operation_outcome_text(outcome: dict[str, Any]) -> str:
    """All issues of an OperationOutcome joined into one readable string."""
    issues = operation_outcome_issues(outcome)
    if not issues:
        return "OperationOutcome with no issues"
    return safe_text("; ".join(issue_text(i) for i in issues), limit=_MAX_BODY_IN_MESSAGE * 4)


def describe_error_body(body: bytes | str, content_type: str | None = None) -> str:
    """Best readable text of an error body: OperationOutcome text, OAuth error, or a short excerpt.

    Always made safe (:func:`~..transport.sanitize.safe_text`): servers echo our Authorization header back.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        if data.get("resourceType") == "OperationOutcome":
            return operation_outcome_text(data)
        if "error" in data and isinstance(data["error"], str):
            desc = data.get("error_description")
            return safe_text(f"{data['error']}: {desc}" if desc else data["error"])
    excerpt = safe_text(text, limit=_MAX_BODY_IN_MESSAGE)
    kind = f" ({content_type})" if content_type else ""
    return f"non-JSON answer{kind}: {excerpt!r}" if excerpt else f"empty answer{kind}"
