"""The standard export log (``log.ndjson``) of sandbox exports, checked field by field against the format
bulk-data-client documents ("Bulk Data Export Log Items"), and read the way cumulus-etl's
``BulkExportLogParser`` reads it (the last ``kickoff``'s ``exportUrl``, ``status_complete``'s
``transactionTime``)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.fhir.bulk.manifest import parse_manifest, plan_files
from airflow_provider_smart.fhir.bulk.sync import ExportFailedError
from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.storage.export_landing import ExportOutcomeError
from airflow_provider_smart.transport.urls import redact_url
from tests.integration.bulk_helpers import context, export_operator, kickoffs, run_deferred
from tests.sandbox_fixtures import SmartClient

pytestmark = pytest.mark.integration

TYPES = ["Patient", "Condition"]
#: The four keys of every line; other keys must start with an underscore.
KEYS = {"exportId", "timestamp", "eventId", "eventDetail"}
#: The eventDetail keys of each event, as bulk-data-client writes them.
DETAIL_KEYS = {
    "kickoff": {
        "exportUrl",
        "softwareName",
        "softwareVersion",
        "softwareReleaseDate",
        "fhirVersion",
        "requestParameters",
        "errorCode",
        "errorBody",
        "responseHeaders",
    },
    "status_progress": {"body", "xProgress", "retryAfter"},
    "status_complete": {"transactionTime"},
    "status_page_complete": {"transactionTime", "outputFileCount", "deletedFileCount", "errorFileCount"},
    "manifest_complete": {
        "transactionTime",
        "totalOutputFileCount",
        "totalDeletedFileCount",
        "totalErrorFileCount",
        "totalManifests",
    },
    "status_error": {"body", "code", "message", "responseHeaders"},
    "download_request": {"fileUrl", "itemType", "resourceType"},
    "download_complete": {"fileUrl", "resourceCount", "fileSize"},
    "download_error": {"fileUrl", "body", "code", "message", "responseHeaders"},
    "export_complete": {"files", "resources", "bytes", "attachments", "duration"},
}


@pytest.fixture
def bulk_server(
    bulk_server: Callable[..., tuple[SandboxServer, SmartClient]],
) -> Callable[..., tuple[SandboxServer, SmartClient]]:
    """The shared fixture (tests/sandbox_fixtures.py) on a small data set."""
    return functools.partial(bulk_server, patients=5, seed=26)


def read_events(out: Path, label: str = "manual__run1") -> list[dict[str, Any]]:
    """Every line must be a whole JSON object of the documented shape."""
    text = (out / f"_exports/{label}/log.ndjson").read_text()
    assert text.endswith("\n")
    events = [json.loads(line) for line in text.splitlines()]
    for row in events:
        assert set(row) >= KEYS, row
        assert all(k.startswith("_") for k in set(row) - KEYS), row
        assert set(row["eventDetail"]) == DETAIL_KEYS[row["eventId"]], row
        datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00"))
    return events


def named(events: list[dict[str, Any]], event_id: str) -> list[dict[str, Any]]:
    return [row for row in events if row["eventId"] == event_id]


def cumulus_lookups(events: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """What cumulus-etl's BulkExportLogParser takes from a log: the Group of the last kickoff's exportUrl
    (its ``fhir.parse_group_from_url``: the id after ``/Group/``, or "" for a system export) and the
    ``status_complete`` event's transactionTime. Written out here: cumulus-etl does not install cheaply."""
    group = transaction_time = None
    for row in events:
        if row["eventId"] == "kickoff":
            path = row["eventDetail"]["exportUrl"].split("?")[0]
            match = re.search(r"/Group/([^/]+)/\$export$", path)
            group = match.group(1) if match else ("" if path.endswith("/$export") else None)
        elif row["eventId"] == "status_complete":
            transaction_time = row["eventDetail"]["transactionTime"]
            datetime.fromisoformat(transaction_time.replace("Z", "+00:00"))
    return group, transaction_time


def test_a_group_export_logs_every_event_in_order(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server(polls_to_complete=3, max_file_resources=4)
    out = tmp_path / "out"
    op = export_operator(out, types=TYPES, level="group", group_id="grp-diabetes", deferrable=False)
    summary, _ = run_deferred(op, context())
    events = read_events(out)
    state = json.loads((out / "_exports/manual__run1/state.json").read_text())
    assert {row["exportId"] for row in events} == {redact_url(state["status_url"])}

    order = [row["eventId"] for row in events]
    assert order[0] == "kickoff" and order[-1] == "export_complete"
    assert order.index("status_complete") < order.index("status_page_complete") < order.index("manifest_complete")
    assert order.index("manifest_complete") < order.index("download_request")
    # The worker polled in-process: each pending answer is a status_progress line.
    progress = named(events, "status_progress")
    assert len(progress) >= 2 and all(p["eventDetail"]["body"] is None for p in progress)

    kickoff = named(events, "kickoff")[0]
    detail = kickoff["eventDetail"]
    assert detail["exportUrl"] == f"{server.base_url}/fhir/Group/grp-diabetes/$export"
    assert detail["requestParameters"]["_type"] == "Patient,Condition"
    assert detail["errorCode"] is None and detail["errorBody"] is None
    assert kickoff["_client"] == "airflow-provider-smart" and kickoff["_method"] == "GET"

    manifest = parse_manifest(state["manifest"])
    planned = plan_files(manifest)
    assert named(events, "status_complete")[0]["eventDetail"] == {"transactionTime": summary["transaction_time"]}
    page = named(events, "status_page_complete")[0]["eventDetail"]
    assert (page["outputFileCount"], page["errorFileCount"], page["deletedFileCount"]) == (
        len(manifest.output),
        len(manifest.error),
        len(manifest.deleted),
    )
    assert named(events, "manifest_complete")[0]["eventDetail"]["totalManifests"] == 1

    requests = named(events, "download_request")
    completes = named(events, "download_complete")
    assert sorted(r["_key"] for r in requests) == sorted(c["_key"] for c in completes) == sorted(p.key for p in planned)
    by_key = {p.key: p for p in planned}
    for row in requests:
        assert row["eventDetail"]["itemType"] == by_key[row["_key"]].kind
        assert row["eventDetail"]["resourceType"] == by_key[row["_key"]].resource_type
    landed_lines = sum(c["eventDetail"]["resourceCount"] for c in completes)
    assert landed_lines == sum(summary["counts"].values())
    done = named(events, "export_complete")[0]["eventDetail"]
    assert done["files"] == len(planned) and done["resources"] == landed_lines
    assert done["bytes"] == sum(c["eventDetail"]["fileSize"] for c in completes) == summary["bytes"]
    assert done["duration"] >= 0

    assert cumulus_lookups(events) == ("grp-diabetes", summary["transaction_time"])


def test_no_patient_token_or_signature_reaches_the_log(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    bulk_server(presigned_files=True, allow_files_origin=True)
    out = tmp_path / "out"
    op = export_operator(out, level="patient", patients=["pat-1"], types=["Patient"], kickoff_method="POST")
    run_deferred(op, context())
    text = (out / "_exports/manual__run1/log.ndjson").read_text()
    events = read_events(out)
    assert "pat-1" not in text and "patient" not in named(events, "kickoff")[0]["eventDetail"]["requestParameters"]
    assert named(events, "kickoff")[0]["_method"] == "POST"
    for row in named(events, "download_request") + named(events, "download_complete"):
        url = row["eventDetail"]["fileUrl"]
        assert url.split("?")[1:] == ["<redacted>"], url  # presigned: the query (signature, expiry) is gone
    assert "Bearer" not in text and "eyJ" not in text  # no token or signed assertion anywhere
    # Deferred: the trigger polls (it writes no file); the operator logs the completion on resume.
    assert named(events, "status_complete") and not named(events, "status_progress")


def test_a_reattached_run_continues_the_same_log(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    server, _ = bulk_server(polls_to_complete=3)
    out = tmp_path / "out"
    with pytest.raises(TaskDeferred):
        export_operator(out, types=TYPES).execute(context())
    log = out / "_exports/manual__run1/log.ndjson"
    # A worker killed in the middle of a write leaves a torn last line: the next writer cuts it off.
    with log.open("a") as handle:
        handle.write('{"exportId": "torn')
    summary, _ = run_deferred(export_operator(out, types=TYPES, deferrable=False), context())
    events = read_events(out)  # every line whole
    assert kickoffs(server) == 1 and len(named(events, "kickoff")) == 1
    assert len({row["exportId"] for row in events}) == 1
    # The re-attaching poll found the export still pending.
    assert named(events, "status_progress")
    assert cumulus_lookups(events) == ("", summary["transaction_time"])
    assert [row["eventId"] for row in events][-1] == "export_complete"


def test_a_failed_export_logs_its_error_and_no_completion(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server()
    server.state.bulk.faults.fail_exports = True
    out = tmp_path / "out"
    with pytest.raises(ExportFailedError):
        run_deferred(export_operator(out, types=["Patient"], deferrable=False), context())
    events = read_events(out)
    error = named(events, "status_error")[-1]["eventDetail"]
    assert error["code"] == 500 and "the export failed in the sandbox" in error["message"]
    assert not named(events, "status_complete") and not named(events, "export_complete")
    # A retry is a new export: a second kickoff with another exportId, appended to the same log.
    server.state.bulk.faults.fail_exports = False
    summary, _ = run_deferred(export_operator(out, types=["Patient"], deferrable=False), context())
    events = read_events(out)
    assert len(named(events, "kickoff")) == 2 and len({row["exportId"] for row in events}) == 2
    assert cumulus_lookups(events) == ("", summary["transaction_time"])


def test_error_files_are_downloaded_and_logged_but_the_export_never_completes(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    server, _ = bulk_server()
    server.state.bulk.faults.error_file = True
    out = tmp_path / "out"
    with pytest.raises(ExportOutcomeError):
        run_deferred(export_operator(out, types=TYPES), context())
    events = read_events(out)
    page = named(events, "status_page_complete")[0]["eventDetail"]
    assert page["errorFileCount"] >= 1
    errors = [r for r in named(events, "download_request") if r["eventDetail"]["itemType"] == "error"]
    assert len(errors) == page["errorFileCount"]
    completed = {r["_key"] for r in named(events, "download_complete")}
    assert {r["_key"] for r in errors} <= completed
    assert not named(events, "export_complete")


def test_a_failed_download_logs_download_error(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    from airflow_provider_smart.fhir.download import DownloadError
    from airflow_provider_smart.sandbox.bulk_runtime import FHIR_FILE_PATHS

    server, _ = bulk_server()
    server.state.faults.fail(FHIR_FILE_PATHS, status=404, times=1000)
    out = tmp_path / "out"
    with pytest.raises(DownloadError):
        run_deferred(export_operator(out, types=["Patient"], max_download_attempts=1, deferrable=False), context())
    events = read_events(out)
    failed = named(events, "download_error")
    assert failed and all(r["eventDetail"]["code"] == 404 for r in failed)
    assert all(r["eventDetail"]["fileUrl"].split("?")[0].endswith(".ndjson") for r in failed)
    assert all("404" in r["eventDetail"]["message"] for r in failed)
    assert not named(events, "export_complete")


def test_a_worker_killed_mid_download_leaves_a_valid_log_the_resume_continues(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:

    from airflow_provider_smart.sandbox.bulk_runtime import FHIR_FILE_PATHS
    from airflow_provider_smart.storage.export_log import read_log
    from tests.integration.bulk_helpers import committed_records, kill_worker_when, start_worker
    from tests.integration.test_bulk_export_operator import _WORKER

    server, _ = bulk_server(max_file_resources=3, seconds_to_complete=0)
    out = tmp_path / "out"
    server.state.faults.slow(FHIR_FILE_PATHS, delay=1.0)
    files = out / "_exports/manual__run1/files"
    kill_worker_when(start_worker(_WORKER, str(out)), lambda: len(committed_records(files)) >= 2)
    log = out / "_exports/manual__run1/log.ndjson"
    before = read_log(log)  # whole lines only (a torn tail, if the kill left one, is not a line)
    assert before[0]["eventId"] == "kickoff" and named(before, "status_progress")
    assert named(before, "manifest_complete") and not named(before, "export_complete")
    server.state.faults.reset()
    summary, _ = run_deferred(export_operator(out, deferrable=False), context())
    events = read_events(out)  # after the resume every line is whole
    assert len(named(events, "kickoff")) == 1 and len({row["exportId"] for row in events}) == 1
    assert events[: len(before)] == before
    completed = [row["_key"] for row in named(events, "download_complete")]
    assert len(completed) == len(set(completed))  # the resume fetched only what was missing
    done = named(events, "export_complete")[0]["eventDetail"]
    assert done["resources"] == sum(summary["counts"].values())
    assert cumulus_lookups(events) == ("", summary["transaction_time"])
