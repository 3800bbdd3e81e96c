"""Which failures no retry can fix: the one place that decides, for every operator (above both auth/ and
fhir/, whose errors it reads).

A retry sends the same credentials, the same scopes and the same parameters again, so a refusal of any of
them comes back the same way; retrying only delays the failure (``retries=2`` five minutes apart: ten
minutes to learn what the first answer said). Operators turn a failure this module names into Airflow's
fail-now exception; everything else (timeouts, throttling, 5xx, lost connections) keeps its retries.

This is about the task, not one export: ``export.wait.is_unfixable`` names failures after which an export
cannot be rescued (a broken manifest, error outcomes), so it is cancelled, but a retry may start a new
export that succeeds, so those keep their retries.
"""

from __future__ import annotations

from airflow_provider_smart.auth.errors import KeyLoadError, TokenRequestError
from airflow_provider_smart.fhir.errors import FhirError, OverLimitError, is_transient_outcome

#: OAuth error codes that say the client itself is refused: the same request gets the same answer.
REFUSED_AUTHORIZATION = frozenset({"invalid_client", "unauthorized_client", "invalid_scope", "unsupported_grant_type"})

#: FHIR answers that refuse the request itself (bad parameter, forbidden, unknown operation).
_REFUSED_REQUEST = frozenset({400, 403, 405, 422})


def retry_cannot_fix(exc: BaseException) -> str | None:
    """Why no retry can fix ``exc`` and what to do instead, or None when a retry might succeed.

    The exception's own message already names the problem (and, for authorization and key errors, the fix):
    this is the sentence that goes after it.
    """
    from airflow_provider_smart.auth.settings import ConnectionSettingsError
    from airflow_provider_smart.fhir.download import DownloadError
    from airflow_provider_smart.fhir.http import RefusedRequestError

    if type(exc) is DownloadError and isinstance(exc.__cause__, Exception):
        # "N of M files failed": as fixable as the failure it names first (a refused file URL comes first).
        return retry_cannot_fix(exc.__cause__)
    if isinstance(exc, RefusedRequestError):
        return "the client refuses to send this request (its message says why); no retry changes that"
    if isinstance(exc, KeyLoadError | ConnectionSettingsError):
        return "the connection's key or settings are unusable; fix the connection, then clear the task"
    if isinstance(exc, OverLimitError):
        return (
            "the export breaks a limit of the operator's download_limits (the message names it), and a new "
            "export of the same request breaks it again; raise that limit or narrow the export (types, "
            "_since), then clear the task"
        )
    if isinstance(exc, TokenRequestError) and exc.error in REFUSED_AUTHORIZATION:
        return (
            f"the authorization server refused the client ({exc.error}); a retry sends the same credentials. "
            "Fix the registration or the connection, then clear the task"
        )
    if isinstance(exc, FhirError) and not exc.retryable and exc.status in _REFUSED_REQUEST:
        if exc.outcome is not None and is_transient_outcome(exc.outcome):
            return None
        if exc.status == 403:
            return (
                "the server forbids this request with the token's scopes; request the scopes it needs (the scope "
                "extra, e.g. system/*.read) and register them for the client, then clear the task"
            )
        return (
            f"the server refused the request itself (HTTP {exc.status}); a retry sends the same parameters. "
            "Correct the parameter the server names (or set lenient=True on a bulk export to have unsupported "
            "parameters ignored), then clear the task"
        )
    return None


__all__ = ["REFUSED_AUTHORIZATION", "retry_cannot_fix"]
