"""Nightly incremental system-level Bulk Data export.

Each run exports what changed since the previous complete export's ``transactionTime`` (the watermark
kept beside the data), lands it under ``<output>/<ResourceType>/<run id>/`` and DELETEs the export on
the server. The first run is a full export.

Set the output with the DAG param ``output`` (``airflow dags trigger -c '{"output": "s3://..."}'``)
or the Variable ``fhir_bulk_output_dir``; the default is ``$AIRFLOW_HOME/fhir-output/bulk`` on the worker.

Attachments (clinical notes, scanned documents behind ``DocumentReference`` and friends) are off by
default; the DAG param ``attachments`` turns them on (``-c '{"attachments": true}'``, or flip the
param's default below). They land under ``<output>/attachments/<run id>/`` before the watermark moves.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import DAG, CronTriggerTimetable, Param

from airflow_provider_smart.operators.bulk_export import FhirBulkExportOperator

# $AIRFLOW_HOME/fhir-output/bulk (/tmp/fhir-output/bulk without AIRFLOW_HOME): beside Airflow's own files,
# never a surprise directory in a home; set the output param or the Variable for real data.
DEFAULT_OUTPUT = os.path.join(os.environ.get("AIRFLOW_HOME") or "/tmp", "fhir-output", "bulk")  # noqa: S108

with DAG(
    dag_id="fhir_bulk_export_nightly",
    # 02:00 UTC nightly. No start_date and run_immediately=False: unpausing (also the UI's "unpause on
    # trigger") starts no run for a past night; the first scheduled run is the next 02:00.
    schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC", run_immediately=False),
    catchup=False,
    max_active_runs=1,  # incremental runs must not overlap: each starts from the previous watermark
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "output": Param(None, type=["null", "string"], description="Where the files land (path or URI)."),
        # The switch for attachments: True fetches every attachment URL of the landed resources.
        "attachments": Param(False, type="boolean", description="Also fetch the resources' attachments."),
    },
    tags=["fhir", "bulk-data"],
) as dag:
    FhirBulkExportOperator(
        task_id="export",
        smart_fhir_conn_id="smart_fhir_default",
        level="system",
        since="watermark",
        output="{{ params.output or var.value.get('fhir_bulk_output_dir', '" + DEFAULT_OUTPUT + "') }}",
        # NDJSON is the raw layer; Parquet tables of the same data land beside it under <output>/parquet.
        formats=("ndjson", "parquet"),
        # Rendered as "True"/"False" from the DAG param; a dict of settings works too, e.g.
        # attachments={"max_bytes": 20 * 1024 * 1024, "allowed_types": ["text/*", "application/pdf"]}.
        attachments="{{ params.attachments }}",
        export_timeout=timedelta(hours=12),
        poll_interval=30,
    )
