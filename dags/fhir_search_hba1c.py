"""Land HbA1c results (LOINC 4548-4) from a FHIR server as NDJSON, one day at a time.

Each daily run asks only for Observations whose ``meta.lastUpdated`` falls in its data interval, so
backfills and reruns are idempotent: a rerun of a day replaces that day's files and nothing else.
The patients the results refer to come along through ``_include`` (drop it from ``search_params`` if
you do not need them).

Where files go: the ``output`` run parameter, else the ``smart_fhir_output_dir`` Variable, else
``$AIRFLOW_HOME/fhir-output`` (``/tmp/fhir-output`` without AIRFLOW_HOME). The FHIR server is the
``smart_fhir_default`` connection.

A run triggered by hand covers the last complete day. The sandbox's data lies in 2023-2025, so against the
sandbox such a run lands nothing (its log says so); run a day inside the data instead:
``airflow dags test fhir_search_hba1c 2024-03-01``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from airflow_provider_smart.operators.search import FhirSearchOperator

DEFAULT_OUTPUT = os.path.join(os.environ.get("AIRFLOW_HOME") or "/tmp", "fhir-output")  # noqa: S108

with DAG(
    dag_id="fhir_search_hba1c",
    description="Incremental FHIR search: HbA1c Observations (and their patients) into NDJSON",
    # A data-interval timetable: each run covers [start, end) of one day, which the search turns into
    # _lastUpdated=ge<start>&_lastUpdated=lt<end>.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    # The sandbox's synthetic data is updated from 2023 on; set your own start for a real server.
    start_date=datetime(2023, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=4,
    params={
        "output": Param(None, type=["null", "string"], description="Output root (local path or URI)"),
    },
    user_defined_macros={"default_output": DEFAULT_OUTPUT},
    tags=["fhir", "smart", "search"],
) as dag:
    FhirSearchOperator(
        task_id="extract_hba1c",
        smart_fhir_conn_id="smart_fhir_default",
        resource_type="Observation",
        search_params={
            "code": "http://loinc.org|4548-4",
            "_include": "Observation:patient",
        },
        output="{{ params.output or var.value.get('smart_fhir_output_dir', default_output) }}",
        compression="gzip",
        incremental="data_interval",
        page_size=200,
    )
