"""Parquet output for FHIR R4: typed, lossless, schema-stable tables.

Nothing here imports pyarrow at module level; the public names load their modules on first use so a
DAG file can import this package cheaply.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_smart.lazy import lazy_attribute

_EXPORTS = {
    "FhirParquetWriter": "airflow_provider_smart.parquet.writer",
    "convert_ndjson_to_parquet": "airflow_provider_smart.parquet.convert",
    "iter_resources": "airflow_provider_smart.parquet.reader",
    "row_to_resource": "airflow_provider_smart.parquet.reader",
    "row_converter": "airflow_provider_smart.parquet.reader",
    "SchemaRecord": "airflow_provider_smart.parquet.schema",
    "SchemaError": "airflow_provider_smart.parquet.schema",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _EXPORTS, name)
