"""SQL on FHIR v2 ViewDefinitions compiled to SQL (DuckDB first). No Airflow and no duckdb import here:
:mod:`airflow_provider_smart.views.sql.duckdb_engine` imports duckdb when it runs a view."""

from __future__ import annotations

from airflow_provider_smart.views.sql.compiler import CompiledView, compile_sql
from airflow_provider_smart.views.sql.errors import ViewCompileError

__all__ = ["CompiledView", "ViewCompileError", "compile_sql"]
