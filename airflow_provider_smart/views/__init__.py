"""SQL on FHIR v2 views: ViewDefinitions evaluated over FHIR resources into flat rows.

No Airflow and no heavy import here: the engine is plain Python, compiled once per view. Arrow and Parquet
output live in :mod:`airflow_provider_smart.views.arrow`, imported only by task code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from airflow_provider_smart.views.definition import ColumnSpec, ViewPlan, compile_view
from airflow_provider_smart.views.engine import ViewRunner, iter_rows
from airflow_provider_smart.views.errors import ViewError

__all__ = ["ColumnSpec", "ViewError", "ViewPlan", "ViewRunner", "compile_view", "iter_rows", "run_view"]


ENGINES = ("auto", "duckdb", "python")


def run_view(
    view: dict[str, Any], resources: Iterable[dict[str, Any]], *, engine: str = "auto"
) -> list[dict[str, Any]]:
    """Evaluate one ViewDefinition over ``resources``; return its rows as ``{column: value}`` dicts.

    :param view: a SQL on FHIR v2 ViewDefinition (a parsed JSON object).
    :param resources: FHIR resources; those of another type than ``view["resource"]`` are skipped.
    :param engine: ``"auto"`` runs the view as SQL in DuckDB when DuckDB is installed and the SQL
        compiler accepts the view, else on the Python evaluator; ``"duckdb"`` or ``"python"`` forces one
        (``"duckdb"`` raises :class:`~airflow_provider_smart.views.sql.ViewCompileError` for a view the
        compiler refuses). Both give the same rows.
    :raises ViewError: the view is invalid, or a value breaks a rule of the view (e.g. two values in a
        column that is not a collection). The message names the part of the view and the fix.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    plan = compile_view(view)
    if engine != "python":
        from airflow_provider_smart.views.sql import ViewCompileError, compile_sql

        try:
            compile_sql(plan)
            import duckdb  # noqa: F401  (an optional extra: without it, "auto" runs the evaluator)
        except (ViewCompileError, ImportError):
            if engine == "duckdb":
                raise
        else:
            from airflow_provider_smart.views.sql.duckdb_engine import run_rows

            return run_rows(plan, resources)
    names = plan.column_names
    return [dict(zip(names, row, strict=True)) for row in iter_rows(plan, resources)]
