"""``airflow dags test`` of the example current-state DAG: full export, changes, incremental export."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from airflow_provider_smart.sandbox.server import SandboxServer
from tests.conftest import run_airflow
from tests.integration.bulk_helpers import store_view
from tests.integration.test_delta_tables import server_view, table_view
from tests.sandbox_fixtures import SmartClient

# Each test runs `airflow dags test` (minutes on a busy machine).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _run(conf: dict[str, str], date: str) -> None:
    result = run_airflow("dags", "test", "fhir_delta_nightly", date, "--conf", json.dumps(conf))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]


def test_nightly_delta_dag_keeps_each_table_equal_to_the_server(
    airflow_db: Path, sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path
) -> None:
    out = tmp_path / "lake"
    _run({"output": str(out)}, "2026-01-01")
    assert table_view(out / "current-state") == server_view(sandbox)

    time.sleep(1.1)
    store = sandbox.state.store
    patient = dict(next(iter(store_view(sandbox, ["Patient"])["Patient"].values())))
    patient["active"] = not patient.get("active", True)
    store.put(patient)
    store.delete("Observation", sorted(store_view(sandbox, ["Observation"])["Observation"])[0])
    _run({"output": str(out)}, "2026-01-02")
    assert table_view(out / "current-state") == server_view(sandbox)
