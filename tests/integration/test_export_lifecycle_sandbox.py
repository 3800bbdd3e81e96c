"""Failure paths of exports and searches over loopback against the sandbox: error files, nothing partial
readable, preflight and cancel, watermark checks, one writer per label, paths, included types."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_smart.fhir.bulk.manifest import ManifestError, ManifestTooLargeError
from airflow_provider_smart.fhir.bulk.sync import ManifestPageTooLargeError
from airflow_provider_smart.fhir.download import DownloadError, ExportTooLargeError, FileTooLargeError
from airflow_provider_smart.fhir.instants import WatermarkError
from airflow_provider_smart.operators.bulk_export import FhirBulkExportOperator
from airflow_provider_smart.operators.search import FhirSearchOperator
from airflow_provider_smart.sandbox.bulk_runtime import FHIR_FILE_PATHS
from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.storage.export_landing import ExportOutcomeError
from airflow_provider_smart.storage.export_state import ExportStateError
from airflow_provider_smart.storage.lease import LeaseHeldError
from airflow_provider_smart.storage.preflight import OutputNotWritableError
from tests.integration.bulk_helpers import FakeTI, context, export_operator, kickoffs, landed, run_deferred, store_view
from tests.sandbox_fixtures import SmartClient

pytestmark = pytest.mark.integration
TYPES = ["Patient", "Condition"]


def export_op(out: Path, **kwargs: Any) -> FhirBulkExportOperator:
    return export_operator(out, **{"types": TYPES, "max_download_attempts": 2, **kwargs})


def gone(client: SmartClient, status_url: str) -> bool:
    return client.session().get(status_url, timeout=30).status_code == 404


def visible_files(out: Path) -> list[str]:
    """Files a reader of <output>/<Type>/** could pick up (everything outside _-prefixed trees)."""
    return sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file() and not p.relative_to(out).parts[0].startswith("_")
    )


def watermark_kept(first: dict[str, Any]) -> bool:
    """Whether the watermark is still the one the first (successful) run of a test wrote."""
    wm = json.loads(Path(first["watermark"].removeprefix("file://")).read_text())
    return bool(wm["transaction_time"] == first["transaction_time"])


def state_of(out: Path, label: str = "manual__run1") -> dict[str, Any]:
    return json.loads((out / f"_exports/{label}/state.json").read_text())  # type: ignore[no-any-return]


def test_error_issues_fail_after_landing_unpublished_and_keep_the_watermark(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    server, client = bulk_server()
    out = tmp_path / "out"
    first, _ = run_deferred(export_op(out, since="watermark"), context("scheduled__1"))
    faults = server.state.bulk.faults
    faults.error_file, faults.error_file_severity, faults.error_counts_from_data = True, "error", True
    with pytest.raises(
        ExportOutcomeError,
        match=r"^the export's OperationOutcomes \(its error files, and any output files of type OperationOutcome\) "
        r"report 1 issue\(s\) at severity 'error' or worse",
    ) as info:
        run_deferred(export_op(out), context("scheduled__2"))  # a full export of the same scope
    assert "[error] error/exception: export " in str(info.value)
    assert "a storage node failed while writing part of the export" in str(info.value)
    assert "and the watermark did not move" in str(info.value)
    # Every file landed (the copied error count did not trip the check), but none is published.
    staged = list((out / "_exports/scheduled__2/staging").rglob("*.ndjson"))
    assert any(p.parent.name == "errors" for p in staged) and any(p.parent.name == "Patient" for p in staged)
    assert not any("scheduled__2" in f for f in visible_files(out))
    summary = json.loads((out / "_exports/scheduled__2/summary.json").read_text())
    assert summary["errors"]["by_code"]["error/exception"] == 1 and summary["errors"]["total"] == 2
    assert state_of(out, "scheduled__2")["phase"] == "failed"
    assert gone(client, state_of(out, "scheduled__2")["status_url"])
    assert watermark_kept(first)

    # Accepting error issues, the same kind of export lands and reports them in the summary.
    summary2, _ = run_deferred(export_op(out, fail_on_severity="fatal"), context("scheduled__3"))
    assert summary2["errors"]["counts"]["error"] == 1 and summary2["errors"]["by_code"]["error/exception"] == 1
    assert any("storage node failed" in m for m in summary2["error_messages"])
    assert landed(out, "scheduled__3") == store_view(server, TYPES)


def test_outcomes_listed_under_output_fail_the_run_like_error_files_and_keep_the_watermark(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    server, _ = bulk_server()
    out = tmp_path / "out"
    first, _ = run_deferred(export_op(out, since="watermark"), context("scheduled__1"))
    faults = server.state.bulk.faults
    faults.error_file, faults.error_file_severity, faults.errors_in_output = True, "error", True
    with pytest.raises(ExportOutcomeError, match="storage node failed") as info:
        run_deferred(export_op(out, since="watermark"), context("scheduled__2"))
    assert "OperationOutcome" in str(info.value) and "watermark did not move" in str(info.value)
    manifest = json.loads((out / "_exports/scheduled__2/manifest.json").read_text())
    assert not manifest["error"] and any(f.get("type") == "OperationOutcome" for f in manifest["output"])
    summary = json.loads((out / "_exports/scheduled__2/summary.json").read_text())
    assert summary["failed"] and summary["errors"]["counts"]["error"] == 1 and summary["errors"]["total"] == 2
    assert summary["counts"]["OperationOutcome"] == 2
    assert not any("scheduled__2" in f for f in visible_files(out))
    assert watermark_kept(first)

    # Accepting error issues, the same export lands and counts them as the error[] list would.
    summary3, _ = run_deferred(export_op(out, since="watermark", fail_on_severity="fatal"), context("scheduled__3"))
    assert summary3["errors"]["counts"] == {"fatal": 0, "error": 1, "warning": 0, "information": 1}
    assert any("storage node failed" in m for m in summary3["error_messages"])


@pytest.mark.parametrize("deferrable", [True, False])
@pytest.mark.parametrize(
    ("limit", "words", "error"),
    [
        ({"max_manifest_files": 1}, "more than max_manifest_files=1 files", ManifestTooLargeError),
        ({"max_manifest_bytes": 200}, "larger than max_manifest_bytes=200 bytes", ManifestPageTooLargeError),
    ],
)
def test_a_manifest_over_its_caps_fails_naming_the_setting(
    bulk_server: Callable[..., Any],
    tmp_path: Path,
    limit: dict[str, int],
    words: str,
    error: type[Exception],
    deferrable: bool,
) -> None:
    bulk_server()
    out = tmp_path / "out"
    # A limit from the settings: the same request breaks it again, so the task fails without its retries.
    with pytest.raises(AirflowFailException, match=words) as info:
        run_deferred(export_op(out, download_limits=limit, deferrable=deferrable, retries=2), context())
    assert isinstance(info.value.__cause__, error) and "No retry" in str(info.value)
    assert "download_limits" in str(info.value)
    assert not visible_files(out) and not list(out.glob("_watermarks/*.json"))


@pytest.mark.parametrize(
    ("limits", "words", "error"),
    [
        ({"max_file_bytes": 4 << 20}, "more than max_file_bytes=4194304 bytes", FileTooLargeError),
        # No export of the same request is smaller: the task fails without its retries.
        (
            {"max_file_bytes": None, "max_export_bytes": 8 << 20},
            "more than max_export_bytes=8388608 bytes",
            ExportTooLargeError,
        ),
    ],
)
def test_endless_files_stop_at_the_byte_caps_and_keep_the_watermark(
    bulk_server: Callable[..., Any], tmp_path: Path, limits: dict[str, Any], words: str, error: type[Exception]
) -> None:
    server, _ = bulk_server()
    out = tmp_path / "out"
    first, _ = run_deferred(export_op(out, since="watermark"), context("scheduled__1"))
    # Every data file never ends (the sandbox gives up after 256 MiB per request, so a regression ends).
    server.state.bulk.faults.endless_files = 256 << 20
    with pytest.raises(AirflowFailException, match=words) as info:  # a limit: no retry can help
        run_deferred(export_op(out, download_limits=limits), context("scheduled__2"))  # a full export
    cause = info.value.__cause__
    assert isinstance(cause, error) or isinstance(cause.__cause__, error), cause  # one file, or "N of M failed"
    assert not any("scheduled__2" in f for f in visible_files(out))
    assert not list((out / "_exports/scheduled__2/staging").rglob("*.ndjson"))  # no endless file committed
    assert watermark_kept(first)


@pytest.mark.parametrize(("value", "words"), [("not-a-date", "not a FHIR instant"), ("9999-12-31T00:00:00Z", "later")])
def test_a_garbage_transaction_time_fails_cancels_and_keeps_the_watermark(
    bulk_server: Callable[..., Any], tmp_path: Path, value: str, words: str
) -> None:
    server, client = bulk_server()
    out = tmp_path / "out"
    first, _ = run_deferred(export_op(out, since="watermark"), context("scheduled__1"))
    server.state.bulk.faults.transaction_time = value
    with pytest.raises(WatermarkError, match=words):
        run_deferred(export_op(out), context("scheduled__2"))  # a full export: files to land
    state = state_of(out, "scheduled__2")
    assert state["phase"] == "failed" and gone(client, state["status_url"])
    assert not any("scheduled__2" in f for f in visible_files(out))
    assert not (out / "_exports/scheduled__2/staging").exists()  # refused before any download
    assert watermark_kept(first)


def test_output_organized_by_traversal_writes_nothing_outside_the_root(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    server, client = bulk_server()
    server.state.bulk.faults.output_organized_by = "x/../../../../tmp/ESCAPED"
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(ManifestError, match="outputOrganizedBy") as info:
        run_deferred(export_op(out), context())
    assert "ESCAPED" in str(info.value)
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and out not in p.parents]
    assert outside == []
    assert visible_files(out) == []
    assert gone(client, state_of(out)["status_url"])


def test_a_second_run_with_the_same_label_fails_fast_naming_the_holder(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    server, _ = bulk_server(polls_to_complete=3)
    out = tmp_path / "out"
    with pytest.raises(TaskDeferred):
        export_op(out, export_label="nightly").execute(context("scheduled__1"))
    with pytest.raises(LeaseHeldError, match="scheduled__1"):
        export_op(out, export_label="nightly").execute(context("manual__2"))
    assert kickoffs(server) == 1
    # The holder's retry re-attaches and finishes; afterwards the label is free again.
    summary, _ = run_deferred(export_op(out, export_label="nightly"), context("scheduled__1"))
    assert landed(out, "nightly") == store_view(server, TYPES)
    records = list((out / "_exports/nightly/files").glob("*.json"))
    assert {json.loads(r.read_text())["export_id"] for r in records} == {summary["export_id"]}
    assert kickoffs(server) == 1


def test_a_non_writable_output_fails_before_kick_off(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputNotWritableError, match="is not writable"):
        export_op(blocker / "out").execute(context())
    assert kickoffs(server) == 0


def test_a_failed_state_write_after_kick_off_cancels_the_export(
    bulk_server: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_smart.storage.export_state import ExportLayout

    server, client = bulk_server(seconds_to_complete=60)
    deleted: list[str] = []
    original_write = ExportLayout.write_state

    def failing(self: ExportLayout, state: dict[str, Any]) -> None:
        if state.get("phase") == "pending":
            raise PermissionError("denied by the bucket policy")
        original_write(self, state)

    monkeypatch.setattr(ExportLayout, "write_state", failing)
    import airflow_provider_smart.fhir.bulk.sync as sync

    real_delete = sync.delete_export
    monkeypatch.setattr(sync, "delete_export", lambda c, url: deleted.append(url) or real_delete(c, url))
    with pytest.raises(ExportStateError, match="cancelled with DELETE"):
        export_op(tmp_path / "out").execute(context())
    assert kickoffs(server) == 1 and len(deleted) == 1 and gone(client, deleted[0])


@pytest.mark.parametrize(("try_number", "max_tries", "kept"), [(1, 2, True), (3, 2, False)])
def test_only_the_last_try_deletes_the_export(
    bulk_server: Callable[..., Any], tmp_path: Path, try_number: int, max_tries: int, kept: bool
) -> None:
    server, client = bulk_server(max_file_resources=5)
    server.state.faults.fail(FHIR_FILE_PATHS, status=404, times=None)
    ti = FakeTI()
    ti.try_number, ti.max_tries = try_number, max_tries  # type: ignore[attr-defined]
    with pytest.raises(
        DownloadError,
        match=r"^5 of 5 files failed; first: Patient\.00000 \(http://\S+\) answered HTTP 404: error/exception: "
        r"sandbox fault: status 404 made on purpose$",
    ):
        run_deferred(export_op(tmp_path / "out", retries=2), {"run_id": "manual__run1", "ti": ti})
    state = state_of(tmp_path / "out")
    assert gone(client, state["status_url"]) is not kept
    assert state["phase"] == ("downloading" if kept else "failed")
    assert visible_files(tmp_path / "out") == []


def search_op(out: Path, resource_type: str, params: dict[str, str]) -> FhirSearchOperator:
    return FhirSearchOperator(
        task_id=f"search_{resource_type}",
        resource_type=resource_type,
        search_params=params,
        output=str(out),
        incremental=None,
    )


def test_two_searches_sharing_an_included_type(
    sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    search_op(out, "Patient", {"_count": "50"}).execute({"run_id": "run"})
    patients = (out / "Patient/run/part-00000.ndjson").read_text()
    marker = (out / "Patient/run/_SUCCESS").read_text()
    with pytest.raises(ValueError, match="another search"):
        search_op(out, "Observation", {"code": "http://loinc.org|4548-4", "_include": "Observation:patient"}).execute(
            {"run_id": "run"}
        )
    assert (out / "Patient/run/part-00000.ndjson").read_text() == patients
    assert (out / "Patient/run/_SUCCESS").read_text() == marker
    assert not (out / "Observation/run").exists()
