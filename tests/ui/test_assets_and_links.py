"""The Assets view and the export's operator links in a real browser, after a real export.

Two DAGs in a temporary dags folder, parsed into this worker's metadata DB by ``airflow dags reserialize``
(what the DAG processor does): one whose output and types are static, so its task declares an Asset per
type and format, listed before any run; and the example ``fhir_bulk_export_nightly``, whose output is a
template, so its Assets are attached at run time through the task's AssetAlias. ``airflow dags test`` runs
the example against the sandbox; a real ``airflow scheduler`` then lists what it landed (its periodic asset
pass). The ``airflow api-server`` the browser talks to reads the same DB. Screenshots of each step are saved under
``tests/ui/artifacts/test_assets_and_links/`` (not committed).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from airflow_provider_smart.sandbox.server import SandboxServer
from tests.conftest import REPO, run_airflow
from tests.integration.asset_helpers import active_asset_uris
from tests.integration.bulk_helpers import store_view
from tests.sandbox_fixtures import SmartClient
from tests.ui.conftest import AIRFLOW_BIN, stop_session

# `airflow dags test` plus the API server's start take minutes on a shared two-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.ui, pytest.mark.timeout(900)]

EXAMPLE_DAG = "fhir_bulk_export_nightly"
TASK_ID = "export"
STATIC_DAG = "ui_fhir_export_assets"
STATIC_TYPES = ("Patient", "Observation")
#: The UI fetches lists and links after the page shell loads; a busy machine makes that slow.
UI_TIMEOUT_MS = 60_000

#: Static output and types: the operator declares one Asset per type and format, so the DAG's sync to the
#: DB makes them active and the Assets view lists them before any run.
STATIC_DAG_FILE = """
from airflow.sdk import DAG
from airflow_provider_smart.operators.bulk_export import FhirBulkExportOperator

with DAG(dag_id={dag_id!r}, schedule=None, tags=["fhir"]):
    FhirBulkExportOperator(
        task_id="export",
        smart_fhir_conn_id="smart_fhir_default",
        level="system",
        types={types!r},
        output={output!r},
        formats=("ndjson", "parquet"),
    )
"""


def _api(api_server: str, path: str, **params: Any) -> Any:
    response = requests.get(f"{api_server}/api/v2/{path}", params=params, timeout=60)
    assert response.status_code == 200, response.text[:2000]
    return response.json()


def _listed(api_server: str, root: str) -> set[str]:
    """URIs under ``root`` the Assets view lists (the API it reads, active assets only)."""
    found = _api(api_server, "assets", uri_pattern=root, limit=1000)["assets"]
    return {a["uri"] for a in found if a["uri"].startswith(root + "/")}


def _parse(dags: Path, static_root: Path) -> dict[str, str]:
    """Write the DAGs into ``dags`` and sync them to the DB; the environment that finds them."""
    dags.mkdir()
    (dags / f"{STATIC_DAG}.py").write_text(
        STATIC_DAG_FILE.format(dag_id=STATIC_DAG, types=list(STATIC_TYPES), output=str(static_root))
    )
    (dags / f"{EXAMPLE_DAG}.py").symlink_to(REPO / "dags" / f"{EXAMPLE_DAG}.py")
    env = {"AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    result = run_airflow("dags", "reserialize", env=env)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    return env


@contextmanager
def _scheduler(env: dict[str, str], log_path: Path) -> Iterator[None]:
    """``airflow scheduler`` on this worker's DB, its asset pass every 2 s instead of every 60 s."""
    # Two executor workers, not the default 32: the test runs no task through the scheduler.
    full_env = {
        **os.environ,
        **env,
        "AIRFLOW__SCHEDULER__PARSING_CLEANUP_INTERVAL": "2",
        "AIRFLOW__CORE__PARALLELISM": "2",
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [AIRFLOW_BIN, "scheduler"], stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
    try:
        yield
    finally:
        stop_session(proc)


def _run_example(env: dict[str, str], out: Path, api_server: str) -> str:
    """Run the example export into ``out`` and return its run id."""
    # The API server's address, as a deployment sets it: the "Landed output" page is built from it.
    env = {**env, "AIRFLOW__API__BASE_URL": api_server}
    result = run_airflow("dags", "test", EXAMPLE_DAG, "2026-01-01", "--conf", json.dumps({"output": str(out)}), env=env)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == EXAMPLE_DAG).order_by(DagRun.id.desc()).first()
        assert run is not None and run.state == "success", run
        return str(run.run_id)


def test_the_export_shows_its_assets_and_links(
    page: Any, api_server: str, sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path, artifacts: Path
) -> None:
    static_root = f"file://{tmp_path / 'static'}"
    env = _parse(tmp_path / "dags", tmp_path / "static")
    page.set_default_timeout(UI_TIMEOUT_MS)

    # Declared outlets are listed as soon as the DAG is parsed, before any run.
    static = {f"{static_root}/{t}" for t in STATIC_TYPES} | {f"{static_root}/parquet/{t}" for t in STATIC_TYPES}
    assert _listed(api_server, static_root) == static

    # The example's output is a template: what it lands reaches Airflow through the alias, and Airflow
    # lists it once the scheduler's asset pass has counted the alias's assets as referenced.
    out = tmp_path / "nightly"
    root = f"file://{out}"
    run_id = _run_example(env, out, api_server)
    landed = {f"{root}/{t}" for t in store_view(sandbox)} | {f"{root}/parquet/{t}" for t in store_view(sandbox)}
    assert _listed(api_server, root) == set()
    log_path = tmp_path / "scheduler.log"
    with _scheduler(env, log_path):
        deadline = time.monotonic() + 300
        while _listed(api_server, root) != landed:
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-4000:]
            time.sleep(2)
    assert active_asset_uris(root) == landed

    page.goto(f"{api_server}/assets")
    for uri in sorted(static)[:2] + sorted(landed)[:2]:
        page.get_by_text(uri, exact=True).wait_for()
    page.screenshot(path=artifacts / "01-assets.png", full_page=True)

    # The task's links: the status URL the export polled (cleaned of its query string), and the page that
    # shows where the run landed: a local root has no web view, so the task's XCom tab in Airflow's UI.
    page.goto(f"{api_server}/dags/{EXAMPLE_DAG}/runs/{run_id}/tasks/{TASK_ID}/details")
    status = page.get_by_role("link", name="Bulk export status")
    status.wait_for()
    output = page.get_by_role("link", name="Landed output")
    output.wait_for()
    page.screenshot(path=artifacts / "02-task-links.png", full_page=True)
    status_href = status.get_attribute("href") or ""
    assert status_href.startswith(f"{sandbox.fhir_base}/$bulk-status/") and "?" not in status_href, status_href
    output_href = output.get_attribute("href") or ""
    xcom_page = f"{api_server}/dags/{EXAMPLE_DAG}/runs/{quote(run_id, safe='')}/tasks/{TASK_ID}/xcom"
    assert output_href == xcom_page
    links = _api(api_server, f"dags/{EXAMPLE_DAG}/dagRuns/{run_id}/taskInstances/{TASK_ID}/links")["extra_links"]
    assert links == {"Bulk export status": status_href, "Landed output": xcom_page}

    # The button opens that page in the UI, and it names the landed location.
    output.click()
    page.wait_for_url(f"**/runs/*/tasks/{TASK_ID}/xcom")
    page.get_by_text("landed_output", exact=True).wait_for()
    page.get_by_text(root, exact=False).first.wait_for()
    page.screenshot(path=artifacts / "03-landed-output.png", full_page=True)
