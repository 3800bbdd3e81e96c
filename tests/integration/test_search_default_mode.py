"""The default ``incremental="auto"`` under the real ``airflow dags test``: a DAG without a schedule works."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_airflow
from tests.integration.test_search_sandbox import expected_hba1c, ids, read_dir
from tests.sandbox_fixtures import SmartClient

# Two `airflow dags test` runs (and the session's DB migration) take minutes on a busy machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MANUAL_DAG = textwrap.dedent(
    """
    from datetime import UTC, datetime

    from airflow.sdk import DAG

    from airflow_provider_smart.operators.search import FhirSearchOperator

    with DAG(dag_id="fhir_search_manual", schedule=None, start_date=datetime(2023, 1, 1, tzinfo=UTC)):
        FhirSearchOperator(
            task_id="extract",
            resource_type="Observation",
            search_params={"code": "http://loinc.org|4548-4"},
            output="{{ dag_run.conf['output'] }}",
        )
    """
)


def test_a_manual_dag_with_the_default_mode_lands_everything_then_only_changes(
    airflow_db: Path, sandbox, smart_client: SmartClient, tmp_path: Path
) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "manual_search.py").write_text(MANUAL_DAG)
    out = tmp_path / "out"
    env = {"AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    conf = json.dumps({"output": str(out)})

    first = run_airflow("dags", "test", "fhir_search_manual", "--conf", conf, env=env)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-4000:]
    runs = [p for p in (out / "Observation").iterdir() if not p.name.startswith("_")]
    assert len(runs) == 1, (runs, log[-3000:])
    expected = expected_hba1c(sandbox)
    assert sorted(ids(read_dir(runs[0]))) == sorted(ids(expected))
    marker = json.loads((runs[0] / "_SUCCESS").read_text())
    assert marker["incremental"] == "watermark"  # no data interval: "auto" keeps a high-water mark
    assert list((out / "Observation").glob("_watermark.*.json"))

    second = run_airflow("dags", "test", "fhir_search_manual", "--conf", conf, env=env)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-4000:]
    newer = [p for p in (out / "Observation").iterdir() if not p.name.startswith("_") and p != runs[0]]
    assert len(newer) == 1, (newer, log[-3000:])
    assert read_dir(newer[0]) == []  # nothing changed on the server since the first run
    assert smart_client.private_key_pem[40:80] not in log
