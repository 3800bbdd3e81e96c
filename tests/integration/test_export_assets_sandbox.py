"""Assets and links from the Bulk Data export, run against the sandbox over real HTTP.

Static outputs and types give a plain Asset per written location (NDJSON and Parquet per resource type,
each Delta table); what only the run knows goes through the task's AssetAlias. Each event carries rows, the
export's transactionTime and its label. The export's status URL and the landed output reach the task's
links through XCom.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG, Asset, AssetAlias
from airflow.sdk.execution_time.context import OutletEventAccessors

from airflow_provider_smart.operators.links import LANDED_OUTPUT_KEY, FhirExportStatusLink, FhirOutputLink
from tests.integration.bulk_helpers import context, export_operator, run_deferred, store_view
from tests.s3_fixtures import MotoS3

pytestmark = pytest.mark.integration

TYPES = ["Patient", "Observation"]


def _alias_events(ctx: dict[str, Any], alias: str) -> dict[str, dict[str, Any]]:
    return {e.dest_asset_key.uri: e.extra for e in ctx["outlet_events"][AssetAlias(name=alias)].asset_alias_events}


def test_static_types_give_an_asset_per_type_and_format(bulk_server: Callable[..., Any], tmp_path: Path) -> None:
    server, _ = bulk_server(polls_to_complete=1)
    out = tmp_path / "out"
    with DAG("fhir_assets", schedule=None):
        op = export_operator(out, types=TYPES, formats=("ndjson", "parquet", "delta"))
    root = f"file://{out}"
    expected = {f"{root}/{layer}{t}" for layer in ("", "parquet/", "tables/") for t in TYPES}
    assert {a.uri for a in op.outlets if isinstance(a, Asset)} == expected
    assert AssetAlias(name="fhir-export/fhir_assets/export") in op.outlets  # for what the server adds

    ctx = context(outlet_events=OutletEventAccessors())
    summary, _ = run_deferred(op, ctx)
    rows = {t: len(v) for t, v in store_view(server, TYPES).items()}
    for layer in ("", "parquet/", "tables/"):
        for rtype in TYPES:
            extra = ctx["outlet_events"][Asset(uri=f"{root}/{layer}{rtype}")].extra
            assert extra["rows"] == rows[rtype], (layer, rtype, extra)
            assert extra["transaction_time"] == summary["transaction_time"]
            assert extra["export_label"] == "manual__run1"
            assert extra["format"] == {"": "ndjson", "parquet/": "parquet", "tables/": "delta"}[layer]
    table_event = ctx["outlet_events"][Asset(uri=f"{root}/tables/Patient")].extra
    assert table_event["version"] == summary["delta"]["results"]["Patient"]["version"]
    assert table_event["inserted"] == rows["Patient"]
    assert _alias_events(ctx, "fhir-export/fhir_assets/export") == {}  # everything was declared

    links = ctx["ti"].xcoms
    status = links[FhirExportStatusLink().xcom_key]
    assert status.startswith(f"{server.fhir_base}/$bulk-status/") and "?" not in status
    # A local root has no web page of its own: the button opens the task's XCom tab, which names it.
    assert links[LANDED_OUTPUT_KEY] == root
    assert links[FhirOutputLink().xcom_key] == "/dags/fhir_dag/runs/manual__run1/tasks/export/xcom"


def test_a_templated_output_attaches_every_type_through_the_alias(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    server, _ = bulk_server(polls_to_complete=1)
    with DAG("fhir_assets", schedule=None):
        op = export_operator("{{ params.out }}", formats=("ndjson", "parquet"))
    assert op.outlets == [AssetAlias(name="fhir-export/fhir_assets/export")]
    out = tmp_path / "rendered"
    op.output_uri = str(out)  # what rendering the template gives
    ctx = context(outlet_events=OutletEventAccessors())
    summary, _ = run_deferred(op, ctx)
    events = _alias_events(ctx, "fhir-export/fhir_assets/export")
    types = set(store_view(server))
    assert set(events) == {f"file://{out}/{t}" for t in types} | {f"file://{out}/parquet/{t}" for t in types}
    observation = events[f"file://{out}/Observation"]
    assert observation["rows"] == summary["counts"]["Observation"] and observation["files"] >= 1
    assert observation["transaction_time"] == summary["transaction_time"]


def test_an_s3_compatible_server_gets_the_task_page_as_its_link(
    bulk_server: Callable[..., Any], moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    bulk_server(polls_to_complete=1)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.test:8080")
    root = f"s3://{moto_s3.bucket}/fhir"
    op = export_operator(root, output_conn_id=moto_s3.conn_id, types=TYPES)
    ctx = context()
    run_deferred(op, ctx)
    links = ctx["ti"].xcoms
    # AWS's console does not show a bucket on moto's endpoint: the link opens Airflow's page of the task.
    assert links[LANDED_OUTPUT_KEY] == root
    assert (
        links[FhirOutputLink().xcom_key] == "http://airflow.test:8080/dags/fhir_dag/runs/manual__run1/tasks/export/xcom"
    )
