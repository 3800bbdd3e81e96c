"""ExportLog on local disk: whole lines only, a torn tail cut, the patient never logged, polls mapped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_smart.fhir.bulk.kickoff import ExportRequest, build_kickoff
from airflow_provider_smart.fhir.bulk.status import ExportFailed, ExportPending, ExportTransientError
from airflow_provider_smart.storage.export_log import ExportLog, log_lookups, read_log


def log_at(tmp_path: Path, status_url: str | None = "https://ehr.example/status/42?token=s3cret") -> ExportLog:
    return ExportLog.beside(ObjectStoragePath(f"file://{tmp_path}/_exports/run"), status_url)


def test_export_id_is_the_redacted_status_url_and_lines_are_whole(tmp_path: Path) -> None:
    log = log_at(tmp_path)
    log.status_progress("10%", 5.0)
    log.status_progress("20%", None)
    text = (tmp_path / "_exports/run/log.ndjson").read_text()
    assert text.count("\n") == 2 and text.endswith("\n")
    rows = read_log(log.path)
    assert {r["exportId"] for r in rows} == {"https://ehr.example/status/42?<redacted>"}
    assert "s3cret" not in text
    assert rows[0]["eventDetail"] == {"body": None, "xProgress": "10%", "retryAfter": 5.0}


def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path: Path) -> None:
    log = log_at(tmp_path)
    log.status_progress("10%", None)
    path = tmp_path / "_exports/run/log.ndjson"
    with path.open("a") as handle:
        handle.write('{"exportId": "half a li')
    assert len(read_log(log.path)) == 1  # readers ignore the torn tail
    log_at(tmp_path).status_progress("20%", None)  # a new writer (the retried task)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["eventDetail"]["xProgress"] for line in lines] == ["10%", "20%"]


def test_a_kickoff_never_logs_the_patient_parameter(tmp_path: Path) -> None:
    request = ExportRequest.create(level="patient", types=["Patient"], patients=["pat-secret-id"], method="POST")
    kick = build_kickoff("https://ehr.example/fhir", request)
    log = log_at(tmp_path, None)
    log.kickoff(kick, error_code=400, error_body="bad \x1b[31mrequest\x1b[0m")
    text = (tmp_path / "_exports/run/log.ndjson").read_text()
    assert "pat-secret-id" not in text
    row = read_log(log.path)[0]
    assert row["exportId"].startswith("unstarted-")
    assert row["eventDetail"]["exportUrl"] == "https://ehr.example/fhir/Patient/$export"
    assert row["eventDetail"]["requestParameters"] == {"_outputFormat": "application/fhir+ndjson", "_type": "Patient"}
    assert row["eventDetail"]["errorBody"] == "bad request"  # control characters cleaned
    assert log_lookups(read_log(log.path)) == ("https://ehr.example/fhir/Patient/$export", None)


def test_status_answers_map_to_progress_and_error_events(tmp_path: Path) -> None:
    log = log_at(tmp_path)
    log.polled(ExportPending(retry_after=3.0, progress="busy"))
    log.polled(ExportTransientError("HTTP 503: later", 503, None))
    log.polled(ExportFailed("fatal/exception: boom", 500, {"resourceType": "OperationOutcome"}))
    rows = read_log(log.path)
    assert [r["eventId"] for r in rows] == ["status_progress", "status_error", "status_error"]
    assert rows[2]["eventDetail"]["code"] == 500 and rows[2]["eventDetail"]["body"] == {
        "resourceType": "OperationOutcome"
    }


def test_our_extra_keys_need_a_leading_underscore(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must start with '_'"):
        log_at(tmp_path).event("kickoff", {}, client="x")
