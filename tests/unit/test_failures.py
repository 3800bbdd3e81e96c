"""retry_cannot_fix: the one rule for which failures skip a task's retries."""

from __future__ import annotations

import pytest

from airflow_provider_smart.auth.errors import DiscoveryError, KeyLoadError, TokenRequestError
from airflow_provider_smart.auth.settings import ConnectionSettingsError
from airflow_provider_smart.failures import retry_cannot_fix
from airflow_provider_smart.fhir.bulk.manifest import ManifestError, ManifestTooLargeError
from airflow_provider_smart.fhir.bulk.sync import ExportFailedError, ManifestPageTooLargeError
from airflow_provider_smart.fhir.download import DownloadError, ExportTooLargeError, FileTooLargeError
from airflow_provider_smart.fhir.errors import FhirError, TransientFhirError
from airflow_provider_smart.fhir.http import RefusedRequestError
from airflow_provider_smart.fhir.instants import WatermarkError
from airflow_provider_smart.storage.export_landing import ExportOutcomeError
from tests.fhir_fakes import outcome


def _aggregate(first: Exception) -> DownloadError:
    """What a download step raises when several files failed: "N of M files failed", from the first."""
    try:
        raise DownloadError(f"2 of 4 files failed; first: {first}") from first
    except DownloadError as exc:
        return exc


@pytest.mark.parametrize(
    "exc",
    [
        TokenRequestError("invalid_client: ...", error="invalid_client", status=401),
        TokenRequestError("unauthorized_client: ...", error="unauthorized_client", status=400),
        TokenRequestError("invalid_scope: ...", error="invalid_scope", status=400),
        KeyLoadError("the connection password is neither PEM nor JWK"),
        ConnectionSettingsError("the connection has no host"),
        FhirError("kick-off answered HTTP 400: error/invalid: _type", status=400, outcome=outcome("bad _type")),
        FhirError("HTTP 403: forbidden", status=403),
        FhirError("HTTP 422", status=422, outcome=outcome("unprocessable")),
        RefusedRequestError("redirect to another origin refused"),
        _aggregate(RefusedRequestError("Patient.00000: loopback address refused")),
        ExportTooLargeError("the files hold more than max_export_bytes"),
        FileTooLargeError("Patient.00000: more than max_file_bytes=4194304 bytes"),
        ManifestTooLargeError("the manifest lists more than max_manifest_files=1 files"),
        ManifestPageTooLargeError("a manifest page larger than max_manifest_bytes=200 bytes", status=200),
    ],
    ids=lambda e: type(e).__name__ + ":" + str(getattr(e, "error", None) or getattr(e, "status", None)),
)
def test_failures_no_retry_can_fix(exc: BaseException) -> None:
    reason = retry_cannot_fix(exc)
    assert reason is not None and len(reason) > 20


@pytest.mark.parametrize(
    "exc",
    [
        TokenRequestError("cannot reach the token endpoint", status=None),
        TokenRequestError("invalid_grant: clock", error="invalid_grant", status=400),  # often a clock: retry
        TokenRequestError("HTTP 503", status=503),
        DiscoveryError("no token endpoint (server down?)"),
        FhirError("connection refused"),  # no answer at all
        FhirError("HTTP 500", status=500),
        FhirError("HTTP 404: gone", status=404),
        TransientFhirError("HTTP 429", status=429),
        FhirError("HTTP 400 transient", status=400, outcome=outcome("busy", code="transient")),
        TimeoutError("read timed out"),
        OSError("disk full"),
        _aggregate(DownloadError("Patient.00000 answered HTTP 500", status=500)),
        DownloadError("Patient.00000: gave up after 5 attempts"),
        # This export cannot be rescued (it is cancelled), but a new one, on a retry, may well succeed.
        ManifestError("output[0].url is not a URL"),
        ExportFailedError("the export failed on the server", status=500),
        ExportOutcomeError("error files hold 3 issues of severity error"),
        WatermarkError("transactionTime is in the future"),
    ],
    ids=lambda e: type(e).__name__ + ":" + str(e)[:20],
)
def test_failures_a_retry_may_fix(exc: BaseException) -> None:
    assert retry_cannot_fix(exc) is None


def test_fail_fast_error_keeps_the_message_and_adds_the_reason() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_provider_smart.operators._failfast import failing_fast

    with pytest.raises(AirflowFailException) as failed, failing_fast():
        raise TokenRequestError("invalid_client (revoked): check the key", error="invalid_client", status=401)
    assert str(failed.value).startswith("invalid_client (revoked): check the key. No retry: ")
    assert isinstance(failed.value.__cause__, TokenRequestError)
    with pytest.raises(TimeoutError), failing_fast():
        raise TimeoutError("slow")
