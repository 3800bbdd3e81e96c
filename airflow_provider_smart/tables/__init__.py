"""Current-state Delta Lake tables: every landed export or search run merged into one table per type.

No Airflow import here, and nothing heavy at module level: ``deltalake`` and ``pyarrow`` load inside the
functions (the ``[delta]`` extra), so a DAG file may import the operators that call this package.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_smart.lazy import lazy_attribute

_EXPORTS = {
    "DeltaTables": "airflow_provider_smart.tables.merge",
    "MergeResult": "airflow_provider_smart.tables.merge",
    "TableBusyError": "airflow_provider_smart.tables.merge",
    "LandedRun": "airflow_provider_smart.tables.runs",
    "find_landed_run": "airflow_provider_smart.tables.runs",
    "read_deletions": "airflow_provider_smart.tables.deleted",
    "Deletion": "airflow_provider_smart.tables.deleted",
    "merge_statement": "airflow_provider_smart.tables.spark",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _EXPORTS, name)
