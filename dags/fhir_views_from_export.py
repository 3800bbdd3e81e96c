"""Bulk Data export -> SQL on FHIR views -> typed Parquet tables, ready for SQL.

Each run exports the five resource types the shipped views read into ``<output>/<ResourceType>/<run id>/``,
then runs the shipped ViewDefinitions over exactly that run's files and writes one Parquet table per
view under ``<output>/views/<view>/<run id>/``. Every shipped view compiles to SQL, so with DuckDB
installed (the ``views`` extra; ``make setup`` installs it) they run in DuckDB; the task log says so.
Query the tables with DuckDB:
``SELECT * FROM read_parquet('<output>/views/observations/*/*.parquet')``.

Set the output with the DAG param ``output`` or the Variable ``fhir_views_output_dir``.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import DAG, CronTriggerTimetable, Param

from airflow_provider_smart.operators.bulk_export import FhirBulkExportOperator
from airflow_provider_smart.operators.views import FhirViewRunOperator

# $AIRFLOW_HOME/fhir-output/views (/tmp/fhir-output/views without AIRFLOW_HOME): beside Airflow's own files,
# never a surprise directory in a home; set the output param or the Variable for real data.
DEFAULT_OUTPUT = os.path.join(os.environ.get("AIRFLOW_HOME") or "/tmp", "fhir-output", "views")  # noqa: S108
OUTPUT = "{{ params.output or var.value.get('fhir_views_output_dir', '" + DEFAULT_OUTPUT + "') }}"
VIEWS = ["patient_demographics", "observations", "conditions", "encounters", "medication_requests"]

with DAG(
    dag_id="fhir_views_from_export",
    # 02:00 UTC nightly. No start_date and run_immediately=False: unpausing (also the UI's "unpause on
    # trigger") starts no run for a past night; the first scheduled run is the next 02:00.
    schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC", run_immediately=False),
    catchup=False,
    max_active_runs=1,
    params={"output": Param(None, type=["null", "string"], description="Where the data lands (path or URI).")},
    tags=["fhir", "bulk-data", "sql-on-fhir"],
) as dag:
    export = FhirBulkExportOperator(
        task_id="export",
        smart_fhir_conn_id="smart_fhir_default",
        level="system",
        types=["Patient", "Observation", "Condition", "Encounter", "MedicationRequest"],
        output=OUTPUT,
        export_timeout=timedelta(hours=12),
        poll_interval=5,
    )
    views = FhirViewRunOperator(
        task_id="views",
        views=VIEWS,
        source=OUTPUT,
        # The export lands under the run id (its default export label): read only this run's files.
        source_label="{{ run_id }}",
        destination=OUTPUT + "/views",
    )
    export >> views
