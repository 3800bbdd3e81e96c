"""Finding landed runs, and the operator faces' argument checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_smart.storage.paths import resolve_output
from airflow_provider_smart.tables.runs import LandedRunError, find_landed_run


def write(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value) if not isinstance(value, str) else value)


def test_an_export_run_lists_types_mixed_blocks_and_deleted_files(tmp_path: Path) -> None:
    files = {"Patient": ["a"], "by-Patient": ["b"], "deleted": ["c"], "errors": ["d"]}
    write(
        tmp_path / "_exports/run1/_SUCCESS",
        {"transaction_time": "2024-01-01T00:00:00Z", "files": files, "counts": {"Patient": 1, "Observation": 0}},
    )
    for name in files:
        write(tmp_path / name / "run1/_SUCCESS", {})
        write(tmp_path / name / "run1" / f"{name}.00000.ndjson", "{}\n")
        write(tmp_path / name / "run1" / "_tmp.x.ndjson", "{}\n")
    run = find_landed_run(resolve_output(str(tmp_path)), "run1")
    assert run.kind == "export" and run.transaction_time == "2024-01-01T00:00:00Z"
    assert run.resource_types == ["Observation", "Patient"]
    assert [p.name for p in run.files["Patient"]] == ["Patient.00000.ndjson"]
    assert [p.name for p in run.files[None]] == ["by-Patient.00000.ndjson"]
    assert [p.name for p in run.deleted] == ["deleted.00000.ndjson"]

    (tmp_path / "deleted/run1/_SUCCESS").unlink()
    with pytest.raises(LandedRunError, match="did not land completely"):
        find_landed_run(resolve_output(str(tmp_path)), "run1")


def test_an_unfinished_export_and_a_missing_run_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "_exports/run1/state.json", {})
    with pytest.raises(LandedRunError, match="has not finished landing"):
        find_landed_run(resolve_output(str(tmp_path)), "run1")
    with pytest.raises(LandedRunError, match="no committed export or search run"):
        find_landed_run(resolve_output(str(tmp_path)), "other")


def test_a_search_run_takes_its_high_water_mark_or_needs_a_time(tmp_path: Path) -> None:
    write(tmp_path / "Observation/run1/_SUCCESS", {"high_water_mark": "2024-02-01T00:00:00Z"})
    write(tmp_path / "Observation/run1/part-00000.ndjson", "{}\n")
    write(tmp_path / "Patient/run1/_SUCCESS", {"window": {"end": "2024-03-01T00:00:00+00:00"}})
    run = find_landed_run(resolve_output(str(tmp_path)), "run1")
    assert run.kind == "search" and run.transaction_time == "2024-03-01T00:00:00+00:00"
    assert run.resource_types == ["Observation", "Patient"]
    write(tmp_path / "Patient/run2/_SUCCESS", {})
    with pytest.raises(LandedRunError, match="pass transaction_time="):
        find_landed_run(resolve_output(str(tmp_path)), "run2")
    assert find_landed_run(resolve_output(str(tmp_path)), "run2", transaction_time="2024-01-01T00:00:00Z")


def test_delta_options_and_formats_are_checked() -> None:
    from airflow_provider_smart.operators.search import FhirSearchOperator
    from airflow_provider_smart.operators.tables import FhirDeltaMergeOperator, check_delta_options

    with pytest.raises(ValueError, match=r"unknown delta_options \['outptu'\]"):
        check_delta_options({"outptu": "/x"})
    with pytest.raises(ValueError, match="need 'ndjson' too"):
        FhirSearchOperator(task_id="s", resource_type="Patient", output="/x", formats=("delta",))
    assert FhirSearchOperator(task_id="s2", resource_type="Patient", output="/x", formats=("ndjson", "delta"))
    with pytest.raises(ValueError, match="vacuum_retention_hours must be >= 0"):
        FhirDeltaMergeOperator(task_id="m", output="/x", run_label="r", vacuum_retention_hours=-1)
    templated = FhirDeltaMergeOperator(task_id="m", output="{{ params.out }}", run_label="r")
    assert [type(o).__name__ for o in templated.outlets] == ["AssetAlias"]
