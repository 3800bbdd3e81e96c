"""download_limits: checked when the DAG is parsed, and carried into the downloader's settings."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_smart.fhir.bulk.body import StreamLimits
from airflow_provider_smart.operators.bulk_export import FhirBulkDownloadOperator, FhirBulkExportOperator


def test_defaults_are_the_documented_ones() -> None:
    limits = StreamLimits()
    assert (limits.max_line_bytes, limits.max_file_bytes, limits.max_export_bytes) == (64 << 20, 16 << 30, 1 << 40)
    assert (limits.stall_timeout, limits.min_bytes_per_second, limits.rate_window) == (120.0, 1024.0, 300.0)
    assert (limits.max_seconds, limits.max_manifest_bytes, limits.max_manifest_files) == (None, 32 << 20, 100_000)


def test_options_override_by_name() -> None:
    limits = StreamLimits.from_options({"max_line_bytes": 1 << 30, "min_bytes_per_second": 0})
    assert (limits.max_line_bytes, limits.min_bytes_per_second, limits.stall_timeout) == (1 << 30, 0, 120.0)
    assert StreamLimits.from_options(None) == StreamLimits()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_line_byte": 10}, r"unknown download_limits \['max_line_byte'\]; the known ones are .*max_line_bytes"),
        ({"stall_timeout": 0}, "stall_timeout and rate_window must be positive"),
        ({"max_file_bytes": 0}, "max_file_bytes must be positive"),
        ({"max_export_bytes": -1}, "max_export_bytes must be positive"),
        ({"max_manifest_files": 0}, "max_manifest_bytes and max_manifest_files must be positive"),
    ],
)
def test_bad_limits_fail_when_the_operator_is_built(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        FhirBulkExportOperator(task_id="t", output="/tmp/x", download_limits=options)
    with pytest.raises(ValueError, match=words):
        FhirBulkDownloadOperator(task_id="d", batch={}, download_limits=options)


def test_the_operators_keep_the_limits() -> None:
    op = FhirBulkExportOperator(task_id="t", output="/tmp/x", download_limits={"stall_timeout": 600})
    assert op.download_limits == {"stall_timeout": 600}
    assert StreamLimits.from_options(op.download_limits).stall_timeout == 600
