"""FhirNdjsonToParquetOperator and convert_ndjson_to_parquet on local storage."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from airflow_provider_smart.operators.parquet import FhirNdjsonToParquetOperator
from airflow_provider_smart.parquet import convert_ndjson_to_parquet, iter_resources
from tests.unit.parquet.helpers import canon

PATIENT = {"resourceType": "Patient", "id": "p1", "active": True}
OBS = {"resourceType": "Observation", "id": "o1", "status": "final", "valueInteger": 3}


def _landing(tmp_path: Path) -> Path:
    """An NDJSON landing area as the search/export writers leave it, with a file still being written."""
    root = tmp_path / "ndjson"
    (root / "Patient" / "run1").mkdir(parents=True)
    (root / "Observation" / "run1").mkdir(parents=True)
    (root / "Patient" / "run1" / "part-00000.ndjson").write_text(json.dumps(PATIENT) + "\n")
    (root / "Observation" / "run1" / "part-00000.ndjson.gz").write_bytes(gzip.compress(json.dumps(OBS).encode()))
    (root / "Observation" / "run1" / "_tmp.abc.part-00001.ndjson").write_text("{half a line")
    (root / "Observation" / "run1" / "_SUCCESS").write_text("{}")
    return root


def test_operator_converts_a_landing_area(tmp_path: Path) -> None:
    op = FhirNdjsonToParquetOperator(
        task_id="to_parquet", source=str(_landing(tmp_path)), destination=str(tmp_path / "parquet")
    )
    assert set(op.template_fields) >= {"source", "destination", "run", "schemas"}
    result = op.execute({"run_id": "scheduled__2024-01-01T00:00:00+00:00"})  # type: ignore[arg-type]
    run = "scheduled__2024-01-01T00_00_00_00_00"
    assert result["run"] == run
    assert {k: v["rows"] for k, v in result["tables"].items()} == {"Observation": 1, "Patient": 1}
    json.dumps(result)  # XCom-safe
    back = list(iter_resources(str(tmp_path / "parquet" / "Observation" / run / "part-00000.parquet")))
    assert [canon(r) for r in back] == [canon(OBS)]


def test_convert_function_takes_files_and_reports_missing_sources(tmp_path: Path) -> None:
    landing = _landing(tmp_path)
    result = convert_ndjson_to_parquet(
        [str(landing / "Patient" / "run1" / "part-00000.ndjson")], str(tmp_path / "pq"), "r"
    )
    assert list(result) == ["Patient"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_ndjson_to_parquet(str(tmp_path / "missing"), str(tmp_path / "pq"), "r")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no .*ndjson"):
        convert_ndjson_to_parquet(str(tmp_path / "empty"), str(tmp_path / "pq"), "r")


def test_operator_refuses_a_bad_decimal_mode() -> None:
    with pytest.raises(ValueError, match="decimal must be"):
        FhirNdjsonToParquetOperator(task_id="t", source="/x", destination="/y", decimal="exact")


def test_dag_level_imports_do_not_load_pyarrow() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import airflow_provider_smart.operators.parquet, airflow_provider_smart.operators.search\n"
        "import airflow_provider_smart.parquet, airflow_provider_smart.parquet.sink\n"
        "assert 'pyarrow' not in sys.modules, 'pyarrow loaded at DAG parse time'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
