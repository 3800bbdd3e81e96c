"""OpenLineage facets from the operators that write, read back through Airflow's OpenLineage provider types.

The FHIR server is the input (one dataset per resource type read), each written location an output with
its row count; the outputs are exactly the locations the task published as Assets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "airflow.providers.openlineage", reason="needs the openlineage extra (apache-airflow-providers-openlineage)"
)

from airflow.sdk.execution_time.context import OutletEventAccessors

from airflow_provider_smart.operators.parquet import FhirNdjsonToParquetOperator
from airflow_provider_smart.operators.search import FhirSearchOperator
from airflow_provider_smart.operators.tables import FhirDeltaMergeOperator
from airflow_provider_smart.operators.views import FhirViewRunOperator
from tests.integration.bulk_helpers import context, export_operator, run_deferred, store_view

pytestmark = pytest.mark.integration


def _outputs(lineage: Any) -> dict[tuple[str, str], int | None]:
    found = {}
    for dataset in lineage.outputs:
        stats = (dataset.outputFacets or {}).get("outputStatistics")
        found[(dataset.namespace, dataset.name)] = stats.rowCount if stats else None
    return found


def test_export_lineage_names_the_server_and_every_written_location(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    from airflow.providers.openlineage.extractors import OperatorLineage

    server, _ = bulk_server(polls_to_complete=1)
    out = tmp_path / "out"
    op = export_operator(out, types=["Patient", "Observation"], formats=("ndjson", "parquet", "delta"))
    run_deferred(op, context(outlet_events=OutletEventAccessors()))
    lineage = op.get_openlineage_facets_on_complete(None)
    assert isinstance(lineage, OperatorLineage)
    host = server.fhir_base.split("/fhir")[0]
    assert {(d.namespace, d.name) for d in lineage.inputs} == {(host, "/fhir/Observation"), (host, "/fhir/Patient")}
    rows = {t: len(v) for t, v in store_view(server, ["Patient", "Observation"]).items()}
    expected = {("file", f"{out}/{layer}{t}"): rows[t] for layer in ("", "parquet/", "tables/") for t in rows}
    assert _outputs(lineage) == expected


def test_search_parquet_delta_and_view_operators_report_lineage(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    server, _ = bulk_server(polls_to_complete=1)
    out = tmp_path / "out"
    patients = len(store_view(server, ["Patient"])["Patient"])

    search = FhirSearchOperator(task_id="search", resource_type="Patient", output=str(out / "search"), incremental=None)
    search.execute(context(outlet_events=OutletEventAccessors()))
    lineage = search.get_openlineage_facets_on_complete(None)
    assert [d.name for d in lineage.inputs] == ["/fhir/Patient"]
    assert _outputs(lineage) == {("file", f"{out}/search/Patient"): patients}

    run_deferred(export_operator(out / "export", types=["Patient"]), context())
    parquet = FhirNdjsonToParquetOperator(
        task_id="parquet", source=str(out / "export" / "Patient"), destination=str(out / "pq"), run="r1"
    )
    parquet.execute(context(outlet_events=OutletEventAccessors()))
    lineage = parquet.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("file", f"{out}/export/Patient")]
    assert _outputs(lineage) == {("file", f"{out}/pq/Patient"): patients}

    merge = FhirDeltaMergeOperator(task_id="merge", output=str(out / "export"), run_label="manual__run1")
    merge.execute(context(outlet_events=OutletEventAccessors()))
    lineage = merge.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("file", f"{out}/export")]
    assert _outputs(lineage) == {("file", f"{out}/export/tables/Patient"): patients}

    views = FhirViewRunOperator(
        task_id="views", views=["patient_demographics"], source=str(out / "export"), destination=str(out / "views")
    )
    views.execute(context(outlet_events=OutletEventAccessors()))
    lineage = views.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("file", f"{out}/export")]
    assert _outputs(lineage) == {("file", f"{out}/views/patient_demographics"): patients}
