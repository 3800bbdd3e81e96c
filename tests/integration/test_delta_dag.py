"""``airflow dags test`` of the example current-state DAG: full export, changes, incremental export."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.sandbox.server import SandboxServer
from tests.conftest import run_airflow
from tests.integration.asset_helpers import active_asset_uris, run_scheduler_asset_pass
from tests.integration.bulk_helpers import store_view
from tests.integration.test_delta_tables import server_view, table_view
from tests.sandbox_fixtures import SmartClient

# Each test runs `airflow dags test` (minutes on a busy machine).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _run(conf: dict[str, str], date: str) -> None:
    result = run_airflow("dags", "test", "fhir_delta_nightly", date, "--conf", json.dumps(conf))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]


def _asset_events(prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Asset URI -> extras of its events in the metadata DB, for the Assets under ``prefix``."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    found: dict[str, list[dict[str, Any]]] = {}
    with create_session() as session:
        rows = (
            session.query(AssetModel.uri, AssetEvent.extra)
            .join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.uri.like(f"{prefix}%"))
            .order_by(AssetEvent.id)
            .all()
        )
    for uri, extra in rows:
        found.setdefault(uri, []).append(dict(extra or {}))
    return found


@pytest.mark.timeout(900)  # two `airflow dags test` runs, each a few minutes on a shared two-core machine
def test_nightly_delta_dag_keeps_each_table_equal_to_the_server(
    airflow_db: Path, sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path
) -> None:
    out = tmp_path / "lake"
    _run({"output": str(out)}, "2026-01-01")
    assert table_view(out / "current-state") == server_view(sandbox)
    # Every landed type and every Delta table is an Asset with an event in the metadata DB.
    root = f"file://{out}/current-state"
    events = _asset_events(root)
    types = set(server_view(sandbox))
    assert {f"{root}/{t}" for t in types} | {f"{root}/tables/{t}" for t in types} <= set(events)
    run_scheduler_asset_pass()  # the alias's assets are listed after the scheduler's asset pass
    assert active_asset_uris(root) == {f"{root}/{t}" for t in types} | {f"{root}/tables/{t}" for t in types}
    patients = events[f"{root}/tables/Patient"][-1]
    assert patients["format"] == "delta" and patients["rows"] == len(server_view(sandbox)["Patient"])
    assert patients["transaction_time"] and patients["export_label"]

    time.sleep(1.1)
    store = sandbox.state.store
    patient = dict(next(iter(store_view(sandbox, ["Patient"])["Patient"].values())))
    patient["active"] = not patient.get("active", True)
    store.put(patient)
    store.delete("Observation", sorted(store_view(sandbox, ["Observation"])["Observation"])[0])
    _run({"output": str(out)}, "2026-01-02")
    assert table_view(out / "current-state") == server_view(sandbox)
    merged = _asset_events(root)[f"{root}/tables/Patient"]
    assert len(merged) == 2 and merged[-1]["updated"] == 1 and merged[-1]["version"] > patients["version"]
