"""Failure paths of the export and search lifecycle: names that become paths, watermark instants, the
label lease, error-file summaries, the staged commit, preflight, and included-type guards."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import responses

from airflow_provider_smart.fhir.bulk import ManifestError, OutcomeSummary, parse_manifest, plan_files
from airflow_provider_smart.fhir.instants import WatermarkError, check_watermark_instant
from airflow_provider_smart.fhir.names import UnsafeNameError, checked_resource_type
from airflow_provider_smart.storage.export_landing import ExportOutcomeError, finalize, land_files
from airflow_provider_smart.storage.export_state import ExportLayout, write_watermark
from airflow_provider_smart.storage.lease import ExportLease, LeaseHeldError
from airflow_provider_smart.storage.ndjson import NdjsonRunWriter
from airflow_provider_smart.storage.paths import resolve_output
from airflow_provider_smart.storage.preflight import OutputNotWritableError, check_writable
from tests.unit.bulk_fakes import FakeFhirClient

BASE = "http://fhir.test/fhir"


def root(tmp_path: Path) -> Any:
    return resolve_output(str(tmp_path))


# -- names that become paths ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Patient", "MedicationRequest", "A"])
def test_fhir_type_names_pass(name: str) -> None:
    assert checked_resource_type(name) == name


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("x/../../../../tmp/ESCAPED", "not a FHIR resource type"),
        ("Patient.", "trailing dot"),
        ("..", "not a FHIR"),
        ("patient", "not a FHIR"),
        ("Patient2", "not a FHIR"),
        ("P" * 65, "at most 64"),
        ("Pa\x1b[31mtient", "not a FHIR"),
        (7, "int"),
    ],
)
def test_unsafe_names_are_refused_naming_the_value(value: object, words: str) -> None:
    with pytest.raises(UnsafeNameError, match=words) as info:
        checked_resource_type(value, "manifest 'output[0].type'")
    assert "\x1b" not in str(info.value) and "manifest 'output[0].type'" in str(info.value)


def test_output_organized_by_traversal_is_refused_before_planning() -> None:
    data = {
        "transactionTime": "2024-01-01T00:00:00Z",
        "outputOrganizedBy": "x/../../../../tmp/ESCAPED",
        "output": [{"url": f"{BASE}/files/b0"}],
    }
    with pytest.raises(ManifestError, match="outputOrganizedBy"):
        parse_manifest(data)


def test_error_entries_carrying_a_data_files_count_are_not_counted() -> None:
    m = parse_manifest(
        {
            "transactionTime": "2024-01-01T00:00:00Z",
            "output": [{"type": "Patient", "url": f"{BASE}/p0", "count": 38}],
            "error": [{"type": "OperationOutcome", "url": f"{BASE}/e0", "count": 38}],
            "deleted": [{"type": "Bundle", "url": f"{BASE}/d0", "count": 2}],
        }
    )
    counts = {p.kind: p.count for p in plan_files(m)}
    assert counts == {"output": 38, "error": None, "deleted": 2}


# -- watermark instants -----------------------------------------------------------------------------
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("value", ["2026-01-01T12:00:00Z", "2026-01-01T12:04:00+00:00", "2020-05-05T00:00:00.123Z"])
def test_good_instants_pass_unchanged(value: str) -> None:
    assert check_watermark_instant(value, "t", now=NOW) == value


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("not-a-date", "not a FHIR instant"),
        ("2026-01-01", "not a FHIR instant"),  # no time, no zone
        ("2026-01-01T00:00:00", "not a FHIR instant"),  # no zone
        ("9999-12-31T23:59:59Z", "later than now"),
        ("2026-01-01T12:06:00Z", "later than now"),  # beyond the 5 minute skew
        (None, "not a FHIR instant"),
    ],
)
def test_bad_instants_are_refused(value: object, words: str) -> None:
    with pytest.raises(WatermarkError, match=words):
        check_watermark_instant(value, "the manifest's transactionTime", now=NOW)


def test_write_watermark_keeps_the_old_one_on_a_bad_instant(tmp_path: Path) -> None:
    r = root(tmp_path)
    scope = {"level": "system"}
    path = write_watermark(r, "c", scope, "2024-01-01T00:00:00Z", "one")
    for bad in ("not-a-date", "9999-01-01T00:00:00Z"):
        with pytest.raises(WatermarkError):
            write_watermark(r, "c", scope, bad, "two")
    assert json.loads(Path(path.path).read_text())["transaction_time"] == "2024-01-01T00:00:00Z"


# -- lease -------------------------------------------------------------------------------------------
def test_a_second_owner_fails_fast_naming_the_holder(tmp_path: Path) -> None:
    directory = root(tmp_path) / "_exports" / "label"
    first = ExportLease(directory, "dag/export/scheduled__1")
    first.acquire()
    first.acquire()  # the same owner (a retry) carries on
    with pytest.raises(LeaseHeldError, match="scheduled__1") as info:
        ExportLease(directory, "dag/export/manual__2").acquire()
    assert "export_label" in str(info.value)
    first.release()
    ExportLease(directory, "dag/export/manual__2").acquire()  # free once released
    with pytest.raises(LeaseHeldError, match="manual__2"):
        first.check()


def test_an_expired_lease_is_free(tmp_path: Path) -> None:
    directory = root(tmp_path) / "_exports" / "label"
    ExportLease(directory, "dead-worker", timeout=0.05).acquire()
    time.sleep(0.1)
    ExportLease(directory, "next").acquire()
    with pytest.raises(LeaseHeldError, match="next"):
        ExportLease(directory, "dead-worker").acquire()


def test_a_lease_held_until_a_deadline(tmp_path: Path) -> None:
    directory = root(tmp_path) / "_exports" / "label"
    ExportLease(directory, "deferred", timeout=0.05).acquire(until=time.time() + 60)
    time.sleep(0.1)
    with pytest.raises(LeaseHeldError, match="deferred"):
        ExportLease(directory, "other").acquire()


# -- error-file summaries ------------------------------------------------------------------------------
def test_outcomes_grouped_by_severity_and_code_with_total_and_cleaned_text() -> None:
    summary = OutcomeSummary(keep=2)
    for n in range(5):
        summary.add_outcome(
            {
                "resourceType": "OperationOutcome",
                "issue": [
                    {"severity": "error", "code": "processing", "diagnostics": f"Observation {n}\x1b[2J lost"},
                    {"severity": "warning", "code": "informational", "diagnostics": "Bearer abc.def-ghi.jkl echoed"},
                ],
            }
        )
    data = summary.to_dict()
    assert data["total"] == 10 and data["counts"]["error"] == 5
    assert data["by_code"] == {"error/processing": 5, "warning/informational": 5}
    assert len(data["messages"]["error"]) == 2  # capped
    text = json.dumps(data)
    assert "\x1b" not in text and "abc.def-ghi" not in text
    merged = OutcomeSummary()
    merged.merge(data)
    merged.merge(data)
    assert merged.to_dict()["by_code"]["error/processing"] == 10 and merged.total == 20


# -- staged commit ---------------------------------------------------------------------------------------
def _manifest(errors: list[dict[str, Any]] | None = None) -> Any:
    return parse_manifest(
        {
            "transactionTime": "2024-01-01T00:00:00Z",
            "output": [
                {"type": "Patient", "url": f"{BASE}/p0", "count": 2},
                {"type": "Observation", "url": f"{BASE}/o0", "count": 1},
            ],
            "error": errors or [],
        }
    )


def _serve(errors_body: bytes | None = None) -> None:
    responses.get(f"{BASE}/p0", body=b'{"resourceType":"Patient","id":"1"}\n{"resourceType":"Patient","id":"2"}\n')
    responses.get(f"{BASE}/o0", body=b'{"resourceType":"Observation","id":"1"}\n')
    if errors_body is not None:
        responses.get(f"{BASE}/e0", body=errors_body)


@responses.activate
def test_error_severity_fails_by_default_without_publishing(tmp_path: Path, caplog: Any) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": "Failed to export Observation/9"}],
    }
    _serve((json.dumps(outcome) + "\n").encode())
    # The server copied the data file's count onto the error entry: that must not fail the check.
    m = _manifest([{"type": "OperationOutcome", "url": f"{BASE}/e0", "count": 2}])
    layout = ExportLayout(root(tmp_path), "run1", export_id="abc")
    land_files(FakeFhirClient(BASE), layout, m)
    with caplog.at_level(logging.INFO), pytest.raises(ExportOutcomeError, match="Failed to export Observation/9"):
        finalize(layout, m)
    assert any(r.levelno == logging.ERROR and "Failed to export" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "Patient").exists() and not (tmp_path / "Observation").exists()
    summary = json.loads((tmp_path / "_exports/run1/summary.json").read_text())
    assert summary["errors"]["by_code"] == {"error/exception": 1} and summary["failed"] is True


@responses.activate
def test_records_of_another_export_are_not_landed(tmp_path: Path) -> None:
    _serve()
    m = _manifest()
    first = ExportLayout(root(tmp_path), "run1", export_id="first")
    land_files(FakeFhirClient(BASE), first, m)
    other = ExportLayout(root(tmp_path), "run1", export_id="second")
    assert not any(other.is_committed(p) for p in plan_files(m))
    with pytest.raises(RuntimeError, match="have not landed"):
        finalize(other, m)
    assert finalize(first, m)["export_id"] == "first"
    marker = json.loads((tmp_path / "Patient/run1/_SUCCESS").read_text())
    assert marker["export_id"] == "first"


@responses.activate
def test_finalize_reads_each_record_once(tmp_path: Path, monkeypatch: Any) -> None:
    for n in range(40):
        responses.get(f"{BASE}/f{n}", body=b'{"resourceType":"Patient","id":"%d"}\n' % n)
    types = ["Patient"] * 40
    m = parse_manifest(
        {
            "transactionTime": "2024-01-01T00:00:00Z",
            "output": [{"type": t, "url": f"{BASE}/f{n}"} for n, t in enumerate(types)],
        }
    )
    layout = ExportLayout(root(tmp_path), "run1")
    land_files(FakeFhirClient(BASE), layout, m)
    reads: list[str] = []
    original = ExportLayout.read_record

    def counting(self: ExportLayout, key: str) -> Any:
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(ExportLayout, "read_record", counting)
    finalize(layout, m)
    assert len(reads) == 40
    assert len(list((tmp_path / "Patient/run1").glob("*.ndjson"))) == 40


# -- preflight -------------------------------------------------------------------------------------------
def test_preflight_names_the_output_in_one_sentence(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputNotWritableError, match="is not writable") as info:
        check_writable(root(blocker / "out"))
    assert "\n" not in str(info.value) and "file://" in str(info.value)
    check_writable(root(tmp_path / "fine"))
    assert [p.name for p in (tmp_path / "fine").iterdir()] == []  # the probe is gone


# -- search writers --------------------------------------------------------------------------------------
def _search_run(tmp_path: Path, primary: str, fingerprint: str, resources: list[dict[str, Any]]) -> Any:
    with NdjsonRunWriter(root(tmp_path), "run", primary_type=primary) as writer:
        for resource in resources:
            writer.write(resource, deduplicate=True)
        return writer.commit({"search_fingerprint": fingerprint})


def test_an_included_type_of_another_search_is_not_replaced(tmp_path: Path) -> None:
    patients = [{"resourceType": "Patient", "id": str(n)} for n in range(5)]
    _search_run(tmp_path, "Patient", "patients", patients)
    with pytest.raises(ValueError, match="another search"):
        _search_run(
            tmp_path,
            "Observation",
            "observations",
            [{"resourceType": "Observation", "id": "o"}, {"resourceType": "Patient", "id": "0"}],
        )
    assert len((tmp_path / "Patient/run/part-00000.ndjson").read_text().splitlines()) == 5
    assert not (tmp_path / "Observation/run").exists()  # nothing of the refused run was committed


def test_search_result_types_are_checked_before_they_become_directories(tmp_path: Path) -> None:
    with pytest.raises(UnsafeNameError, match="trailing dot"):
        _search_run(tmp_path, "Patient", "f", [{"resourceType": "Patient.", "id": "1"}])
    with pytest.raises(UnsafeNameError):
        _search_run(tmp_path, "Patient", "f", [{"resourceType": "../../etc", "id": "1"}])
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_now_plus_skew_default_is_minutes() -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    assert check_watermark_instant(soon, "t") == soon


# -- search operator ---------------------------------------------------------------------------------------
@responses.activate
@pytest.mark.parametrize("formats", [("ndjson",), ("parquet",)])
def test_a_search_result_type_with_a_trailing_dot_writes_nothing(tmp_path: Path, formats: tuple[str, ...]) -> None:
    from tests.fhir_fakes import bundle, resource
    from tests.unit.test_search_operator import OBS, context, make

    responses.get(
        OBS,
        json=bundle([resource("Observation", "1")], includes=[{"resourceType": "Patient.", "id": "p", "meta": {}}]),
    )
    with pytest.raises(UnsafeNameError, match="trailing dot"):
        make(tmp_path, incremental=None, formats=formats).execute(context(run_id="r"))
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


@responses.activate
@pytest.mark.parametrize("mark", ["2999-01-01T00:00:00Z", "not-a-date"])
def test_a_future_or_garbage_high_water_mark_keeps_the_old_watermark(tmp_path: Path, mark: str) -> None:
    from tests.fhir_fakes import bundle, resource
    from tests.unit.test_search_operator import OBS, context, make

    responses.get(OBS, json=bundle([resource("Observation", "1", "2024-01-05T00:00:00Z")]))
    make(tmp_path, incremental="watermark").execute(context(run_id="run1"))
    (state,) = (tmp_path / "out" / "Observation").glob("_watermark.*.json")
    responses.replace(responses.GET, OBS, json=bundle([resource("Observation", "2", mark)]))
    if mark == "not-a-date":  # an unreadable lastUpdated never becomes the high-water mark at all
        assert make(tmp_path, incremental="watermark").execute(context(run_id="run2"))["high_water_mark"] is None
    else:
        with pytest.raises(WatermarkError, match="later than now"):
            make(tmp_path, incremental="watermark").execute(context(run_id="run2"))
    assert json.loads(state.read_text())["watermark"] == "2024-01-05T00:00:00Z"
