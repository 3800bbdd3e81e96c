"""FhirNdjsonToParquetOperator run by a real Airflow (``airflow dags test``), templated paths rendered."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from airflow_provider_smart.parquet.reader import iter_resources
from tests.conftest import run_airflow

# Runs `airflow dags test` (minutes on a busy machine).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DAG_FILE = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_smart.operators.parquet import FhirNdjsonToParquetOperator

with DAG("fhir_ndjson_to_parquet_test", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
         params={"root": "/nowhere"}):
    FhirNdjsonToParquetOperator(
        task_id="to_parquet",
        source="{{ params.root }}/ndjson",
        destination="{{ params.root }}/parquet",
        run="{{ ds_nodash }}",
    )
"""


def test_dags_test_converts_with_rendered_templates(airflow_db: Path, tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "parquet_dag.py").write_text(DAG_FILE)
    patients = [{"resourceType": "Patient", "id": f"p{i}", "birthDate": "2000-01-0{i + 1}"} for i in range(3)]
    source = tmp_path / "data" / "ndjson" / "Patient"
    source.mkdir(parents=True)
    (source / "part-00000.ndjson.gz").write_bytes(
        gzip.compress("".join(json.dumps(p) + "\n" for p in patients).encode())
    )
    result = run_airflow(
        "dags",
        "test",
        "fhir_ndjson_to_parquet_test",
        "2024-05-01",
        "--conf",
        json.dumps({"root": str(tmp_path / "data")}),
        env={"AIRFLOW__CORE__DAGS_FOLDER": str(dags)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "data" / "parquet" / "Patient" / "20240501"
    assert (run_dir / "_SUCCESS").exists(), result.stdout[-3000:]
    assert list(iter_resources(str(run_dir / "part-00000.parquet"))) == patients
