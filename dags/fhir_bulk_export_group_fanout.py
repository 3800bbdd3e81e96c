"""A Group-level Bulk Data export whose downloads and finishing work fan out over mapped tasks.

The export task kicks off ``Group/<group_id>/$export``, waits in the triggerer, and returns the
manifest's files in batches; ``download`` maps over the batches (each commits its files atomically and
skips files already landed, so retries are cheap); ``plan_finish`` checks everything landed, reports the
error files and returns one job per resource type, publishing nothing yet; ``finish_type`` maps over
them (each writes its type's Parquet table and merges its Delta table: the ``deltalake`` extra);
``finalize`` runs only when every type finished: it publishes the export, advances the watermark and
DELETEs it. A failed type fails the run with nothing published, the watermark kept and the export left
on the server for a retry.

Params: ``group_id`` (default ``grp-all``, a sandbox Group) and ``output`` (or the Variable
``fhir_bulk_output_dir``; default ``$AIRFLOW_HOME/fhir-output/bulk``).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_smart.operators.bulk_export import (
    FhirBulkDownloadOperator,
    FhirBulkExportFinalizeOperator,
    FhirBulkExportOperator,
    FhirBulkExportPlanFinishOperator,
    FhirBulkFinishTypeOperator,
)

# $AIRFLOW_HOME/fhir-output/bulk (/tmp/fhir-output/bulk without AIRFLOW_HOME): beside Airflow's own files,
# never a surprise directory in a home; set the output param or the Variable for real data.
DEFAULT_OUTPUT = os.path.join(os.environ.get("AIRFLOW_HOME") or "/tmp", "fhir-output", "bulk")  # noqa: S108

with DAG(
    dag_id="fhir_bulk_export_group_fanout",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    params={
        "group_id": Param(
            "grp-all",
            type="string",
            description="Id of the Group to export (the sandbox has grp-all and grp-diabetes).",
        ),
        "output": Param(None, type=["null", "string"], description="Where the files land (path or URI)."),
    },
    tags=["fhir", "bulk-data"],
) as dag:
    export = FhirBulkExportOperator(
        task_id="export",
        smart_fhir_conn_id="smart_fhir_default",
        level="group",
        group_id="{{ params.group_id }}",
        output="{{ params.output or var.value.get('fhir_bulk_output_dir', '" + DEFAULT_OUTPUT + "') }}",
        download_mode="fanout",
        fanout_batch_size=4,
        formats=("ndjson", "parquet", "delta"),
    )
    download = FhirBulkDownloadOperator.partial(
        task_id="download", smart_fhir_conn_id="smart_fhir_default", max_download_workers=2
    ).expand(batch=export.output)
    plan_finish = FhirBulkExportPlanFinishOperator(
        task_id="plan_finish",
        smart_fhir_conn_id="smart_fhir_default",
        export=export.output["export"],
        trigger_rule="none_failed",  # also when the export had no files (zero mapped downloads)
    )
    finish_type = FhirBulkFinishTypeOperator.partial(task_id="finish_type", export=export.output["export"]).expand(
        job=plan_finish.output
    )
    finalize = FhirBulkExportFinalizeOperator(
        task_id="finalize",
        smart_fhir_conn_id="smart_fhir_default",
        export=export.output["export"],
        trigger_rule="none_failed",  # not after a failed type; also when there was no type to finish
    )
    download >> plan_finish >> finish_type >> finalize
