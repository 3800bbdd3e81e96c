"""OperationOutcome responses and the error type the sandbox's routes raise."""

from __future__ import annotations

from typing import Any

FHIR_JSON = "application/fhir+json"


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


class FhirHTTPError(Exception):
    """An error answered as an OperationOutcome with the given status (and headers)."""

    def __init__(self, status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.outcome = operation_outcome(code, diagnostics)
        self.headers = headers or {}


class OAuthError(Exception):
    """An OAuth 2.0 error response (RFC 6749 section 5.2)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
