"""FHIR Bulk Data ``$export``: kick-off building, status interpretation, manifests and line checks."""

from __future__ import annotations

from airflow_provider_smart.fhir.bulk.kickoff import (
    ExportRequest,
    ExportRequestError,
    KickoffRequest,
    build_kickoff,
    format_instant,
)
from airflow_provider_smart.fhir.bulk.lines import LineChecker, NdjsonCheckError
from airflow_provider_smart.fhir.bulk.manifest import (
    Manifest,
    ManifestError,
    ManifestFile,
    PlannedFile,
    manifest_to_dict,
    merge_pages,
    parse_manifest,
    plan_files,
)
from airflow_provider_smart.fhir.bulk.outcomes import SEVERITIES, OutcomeSummary, severity_rank
from airflow_provider_smart.fhir.bulk.status import (
    ExportComplete,
    ExportFailed,
    ExportPending,
    ExportStatus,
    ExportThrottled,
    ExportTransientError,
    KickoffAccepted,
    KickoffResult,
    PollPolicy,
    interpret_kickoff,
    interpret_status,
)

__all__ = [
    "SEVERITIES",
    "ExportComplete",
    "ExportFailed",
    "ExportPending",
    "ExportRequest",
    "ExportRequestError",
    "ExportStatus",
    "ExportThrottled",
    "ExportTransientError",
    "KickoffAccepted",
    "KickoffRequest",
    "KickoffResult",
    "LineChecker",
    "Manifest",
    "ManifestError",
    "ManifestFile",
    "NdjsonCheckError",
    "OutcomeSummary",
    "PlannedFile",
    "PollPolicy",
    "build_kickoff",
    "format_instant",
    "interpret_kickoff",
    "interpret_status",
    "manifest_to_dict",
    "merge_pages",
    "parse_manifest",
    "plan_files",
    "severity_rank",
]
