"""The views operator run by a real Airflow: the example DAG against the sandbox (export -> views), and a
bad view failing the task with a clear message and no committed table."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_smart.sandbox.server import SandboxServer
from tests.conftest import run_airflow
from tests.integration.asset_helpers import active_asset_uris, run_scheduler_asset_pass
from tests.integration.bulk_helpers import landed
from tests.sandbox_fixtures import SmartClient

# Each test runs `airflow dags test` (minutes on a busy machine).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
#: The views the example DAG runs.
VIEWS = ("patient_demographics", "observations", "conditions", "encounters", "medication_requests")


def test_example_dag_exports_then_writes_typed_view_tables(
    airflow_db: Path, sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path
) -> None:
    out = tmp_path / "views-demo"
    result = run_airflow(
        "dags", "test", "fhir_views_from_export", "2026-01-01", "--conf", json.dumps({"output": str(out)})
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    (label,) = sorted(p.name for p in (out / "Patient").iterdir() if p.is_dir())
    exported = landed(out, label)

    patients = out / "views" / "patient_demographics" / label
    assert json.loads((patients / "_SUCCESS").read_text())["rows"] == len(exported["Patient"])
    table = pq.read_table(patients / "part-00000.parquet")
    assert table.schema.field("birth_date").type == pa.date32()
    assert table.schema.field("gender").type == pa.string()
    assert sorted(table.column("patient_id").to_pylist()) == sorted(exported["Patient"])

    observations = pq.read_table(out / "views" / "observations" / label / "part-00000.parquet")
    assert observations.schema.field("value").type == pa.float64()
    assert observations.schema.field("effective").type == pa.timestamp("us", tz="UTC")
    assert set(observations.column("observation_id").to_pylist()) == set(exported["Observation"])
    assert set(observations.column("patient_id").to_pylist()) <= set(exported["Patient"])
    for name in ("conditions", "encounters", "medication_requests"):
        marker = out / "views" / name / label / "_SUCCESS"
        assert json.loads(marker.read_text())["rows"] > 0, name
    # Every shipped view compiles to SQL: the example DAG runs them all on DuckDB, and the log says so.
    for name in ("patient_demographics", "observations", "conditions", "encounters", "medication_requests"):
        assert json.loads((out / "views" / name / label / "_SUCCESS").read_text())["engine"] == "duckdb", name
    assert "view observations: engine duckdb" in result.stdout + result.stderr
    # Every exported type and every view table is listed by Airflow (through the tasks' aliases: the output
    # is a template) once the scheduler's asset pass has run.
    run_scheduler_asset_pass()
    root = f"file://{out}"
    assert active_asset_uris(root) == {f"{root}/{t}" for t in exported} | {f"{root}/views/{v}" for v in VIEWS}


BAD_VIEW_DAG = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_smart.operators.views import FhirViewRunOperator

with DAG("fhir_views_bad", schedule=None, start_date=datetime(2024, 1, 1), catchup=False,
         params={"root": "/nowhere"}):
    FhirViewRunOperator(
        task_id="views",
        views=[
            "patient_demographics",
            {"name": "bad", "resource": "Patient", "select": [{"column": [{"name": "given", "path": "name.given"}]}]},
        ],
        source="{{ params.root }}/ndjson",
        destination="{{ params.root }}/views",
        run="r1",
    )
"""


def test_a_view_that_breaks_on_the_data_fails_the_task_and_commits_nothing(airflow_db: Path, tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "bad_views.py").write_text(BAD_VIEW_DAG)
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"given": ["A", "B"]}]}
    source = tmp_path / "data" / "ndjson" / "Patient" / "r0"
    source.mkdir(parents=True)
    (source / "Patient.000.ndjson").write_text(json.dumps(patient) + "\n")
    result = run_airflow(
        "dags",
        "test",
        "fhir_views_bad",
        "2024-05-01",
        "--conf",
        json.dumps({"root": str(tmp_path / "data")}),
        env={"AIRFLOW__CORE__DAGS_FOLDER": str(dags)},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Task failed with exception" in output and "state=failed" in output
    assert "'given' got 2 values" in output and '"collection": true' in output
    assert "Patient/p1: column 'given'" in output  # the failure names the resource and the column
    views = tmp_path / "data" / "views"
    # Neither view of the failed pass is marked complete, and no half-written part is left visible.
    assert not list(views.rglob("_SUCCESS"))
    assert not [p for p in views.rglob("*.parquet") if not p.name.startswith("_")]
