"""Mapped download tasks keep Airflow's defaults: a base class added to the operators once made
``.partial()`` record ``inlets=None``, and every mapped download failed before it started."""

from __future__ import annotations

from airflow.sdk import DAG

from airflow_provider_smart.operators.bulk_export import FhirBulkDownloadOperator, FhirBulkExportFinalizeOperator


def test_partial_keeps_list_inlets_and_outlets() -> None:
    with DAG("fhir_mapped", schedule=None):
        download = FhirBulkDownloadOperator.partial(task_id="download").expand(batch=[{"output": "/x"}])
        finalize = FhirBulkExportFinalizeOperator.partial(task_id="finalize").expand(export=[{"output": "/x"}])
    for mapped in (download, finalize):
        assert isinstance(mapped.partial_kwargs.get("inlets", []), list), mapped.partial_kwargs
        assert isinstance(mapped.partial_kwargs.get("outlets", []), list), mapped.partial_kwargs
