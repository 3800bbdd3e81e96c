"""The Assets view and the export's operator links in a real browser, after a real export.

``airflow dags test`` runs a small export DAG (written into a temporary dags folder) against the sandbox
into this worker's metadata DB; the ``airflow api-server`` the browser talks to reads the same DB.
Screenshots of each step are saved under ``tests/ui/artifacts/test_assets_and_links/`` (not committed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_smart.sandbox.server import SandboxServer
from tests.conftest import run_airflow
from tests.sandbox_fixtures import SmartClient

# `airflow dags test` plus the API server's start take minutes on a shared two-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.ui, pytest.mark.timeout(900)]

DAG_ID = "ui_fhir_export_assets"
TASK_ID = "export"
TYPES = ("Patient", "Observation")
#: The UI fetches lists and links after the page shell loads; a busy machine makes that slow.
UI_TIMEOUT_MS = 60_000

#: Static output and types: the operator declares one Asset per type and format, so the DAG's sync to the
#: DB makes them active and the Assets view lists them.
DAG_FILE = """
from airflow.sdk import DAG
from airflow_provider_smart.operators.bulk_export import FhirBulkExportOperator

with DAG(dag_id={dag_id!r}, schedule=None, tags=["fhir"]):
    FhirBulkExportOperator(
        task_id={task_id!r},
        smart_fhir_conn_id="smart_fhir_default",
        level="system",
        types={types!r},
        output={output!r},
        formats=("ndjson", "parquet"),
        poll_interval=1,
    )
"""


def _export(dags: Path, out: Path) -> str:
    """Run the export DAG into ``out`` and return its run id."""
    dags.mkdir()
    (dags / f"{DAG_ID}.py").write_text(
        DAG_FILE.format(dag_id=DAG_ID, task_id=TASK_ID, types=list(TYPES), output=str(out))
    )
    env = {"AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    # What the DAG processor does in a deployment: parse the file into the DB, activating its Assets.
    result = run_airflow("dags", "reserialize", env=env)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    result = run_airflow("dags", "test", DAG_ID, env=env)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == DAG_ID).order_by(DagRun.id.desc()).first()
        assert run is not None and run.state == "success", run
        return str(run.run_id)


def test_the_export_shows_its_assets_and_links(
    page: Any, api_server: str, sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path, artifacts: Path
) -> None:
    out = tmp_path / "out"
    run_id = _export(tmp_path / "dags", out)
    root = f"file://{out}"
    page.set_default_timeout(UI_TIMEOUT_MS)

    # The Assets view lists one asset per landed type and format.
    page.goto(f"{api_server}/assets")
    for uri in [f"{root}/{t}" for t in TYPES] + [f"{root}/parquet/{t}" for t in TYPES]:
        page.get_by_text(uri, exact=True).wait_for()
    page.screenshot(path=artifacts / "01-assets.png", full_page=True)

    # The task's links: the status URL the export polled, cleaned of its query string.
    page.goto(f"{api_server}/dags/{DAG_ID}/runs/{run_id}/tasks/{TASK_ID}/details")
    status = page.get_by_role("link", name="Bulk export status")
    status.wait_for()
    page.screenshot(path=artifacts / "02-task-links.png", full_page=True)
    href = status.get_attribute("href") or ""
    assert href.startswith(f"{sandbox.fhir_base}/$bulk-status/") and "?" not in href, href
    # Airflow's UI renders a link only for http(s) and mailto URLs; the landed output of a file:// (or
    # s3://) root reaches the task's links (the API below) but gets no button.
    links = requests.get(
        f"{api_server}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{TASK_ID}/links", timeout=30
    ).json()["extra_links"]
    assert links == {"Bulk export status": href, "Landed output": root}
    assert page.get_by_role("link", name="Landed output").count() == 0
