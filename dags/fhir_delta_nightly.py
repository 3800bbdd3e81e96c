"""Nightly incremental Bulk Data export into current-state Delta tables.

Each run exports what changed since the previous complete export (the watermark), lands the NDJSON
under ``<output>/<ResourceType>/<run id>/`` and merges it into one Delta table per resource type under
``<output>/tables/<ResourceType>``: updated resources replace their older versions, resources in the
export's ``deleted`` Bundles disappear, so each table is the server's current state. The first run is a
full export that creates the tables. Needs the ``[delta]`` extra.

Set the output with the DAG param ``output`` (``airflow dags trigger -c '{"output": "s3://..."}'``) or
the Variable ``fhir_delta_output_dir``; the default is ``$AIRFLOW_HOME/fhir-output/current`` on the worker.
This DAG keeps its own watermark under ``<output>/current-state``: sharing one with another export DAG would skip the
changes that DAG already fetched.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import DAG, CronTriggerTimetable, Param

from airflow_provider_smart.operators.bulk_export import FhirBulkExportOperator

# $AIRFLOW_HOME/fhir-output/current (/tmp/fhir-output/current without AIRFLOW_HOME): beside Airflow's own files,
# never a surprise directory in a home; set the output param or the Variable for real data.
DEFAULT_OUTPUT = os.path.join(os.environ.get("AIRFLOW_HOME") or "/tmp", "fhir-output", "current")  # noqa: S108

with DAG(
    dag_id="fhir_delta_nightly",
    # 02:00 UTC nightly. No start_date and run_immediately=False: unpausing (also the UI's "unpause on
    # trigger") starts no run for a past night; the first scheduled run is the next 02:00.
    schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC", run_immediately=False),
    catchup=False,
    max_active_runs=1,  # merges must apply in order: each run starts from the previous watermark
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    params={
        "output": Param(None, type=["null", "string"], description="Output root (path or URI)."),
    },
    tags=["fhir", "bulk-data", "delta"],
) as dag:
    FhirBulkExportOperator(
        task_id="export_and_merge",
        smart_fhir_conn_id="smart_fhir_default",
        level="system",
        since="watermark",
        output="{{ (params.output or var.value.get('fhir_delta_output_dir', '"
        + DEFAULT_OUTPUT
        + "')) ~ '/current-state' }}",
        formats=("ndjson", "delta"),
        # Compact after each changing merge; keep a week of versions for time travel.
        delta_options={"compact": True, "vacuum_retention_hours": 168},
        export_timeout=timedelta(hours=12),
        poll_interval=30,
    )
