"""The Bulk Data part of one running sandbox (``state.bulk``): jobs, URL signer, origin log, fault switches.

The generic fault switches (``state.faults``: throttle, fail, drop, token invalidation) apply to the
export endpoints through the path patterns below; ``state.faults.bulk``
(:class:`~airflow_provider_smart.sandbox.bulk_faults.BulkFaults`) adds the export-only ones.
"""

from __future__ import annotations

from airflow_provider_smart.sandbox.bulk_faults import BulkFaults
from airflow_provider_smart.sandbox.bulk_jobs import BulkJobs, BulkSettings
from airflow_provider_smart.sandbox.clock import SandboxClock
from airflow_provider_smart.sandbox.file_origin import OriginLog, UrlSigner

#: Path patterns (for ``state.faults.throttle/fail/drop``) of the export endpoints.
KICKOFF_PATHS = "/fhir/*$export"
STATUS_PATHS = "/fhir/$bulk-status/*"
FHIR_FILE_PATHS = "/fhir/$bulk-file/*"
PRESIGNED_FILE_PATHS = "/bulk-files/*"


class BulkRuntime:
    """Bulk Data state of one sandbox (``state.bulk``)."""

    def __init__(
        self,
        settings: BulkSettings | None = None,
        faults: BulkFaults | None = None,
        clock: SandboxClock | None = None,
    ):
        #: The sandbox's clock (``state.clock``): export completion, poll intervals, expiry.
        self.clock = clock or SandboxClock()
        self.jobs = BulkJobs(settings, self.clock)
        #: The export fault switches: the same object as ``state.faults.bulk``.
        self.faults = faults or BulkFaults()
        self.signer = UrlSigner(clock=self.clock.time)
        self.origins = OriginLog()
        #: Root URL of the presigned file origin, set by the server once that origin listens.
        self.files_base_url: str | None = None

    @property
    def settings(self) -> BulkSettings:
        return self.jobs.settings

    def close(self) -> None:
        self.jobs.close()
