"""Running compiled views in DuckDB (imported here, inside task code only: DAG parsing never loads it).

One connection per run: ``memory_limit`` bounds DuckDB's memory and ``temp_directory`` (the task's temp
dir) is where it spills. Without the ICU extension DuckDB reads a dateTime without a zone as UTC, as
``views/arrow.py`` does. Errors DuckDB raises while a view runs (a column with two values, a value that does
not fit its declared type) become :class:`ViewError` with DuckDB's text.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.views.errors import ViewError
from airflow_provider_smart.views.sql.compiler import CompiledView, compile_sql
from airflow_provider_smart.views.sql.expressions import literal, quote

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

DEFAULT_MEMORY_LIMIT = "1GB"
BATCH_ROWS = 65536


def connect(
    temp_directory: str | None = None, memory_limit: str = DEFAULT_MEMORY_LIMIT, threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    import duckdb

    config: dict[str, Any] = {"memory_limit": memory_limit}
    if temp_directory is not None:
        config["temp_directory"] = temp_directory
    if threads is not None:
        config["threads"] = threads
    return duckdb.connect(":memory:", config=config)


def files_of_type(files: Sequence[Any], resource_type: str) -> bool:
    """Whether every file's name tells ``resource_type`` (``Patient.000.ndjson``, ``Patient/<run>/part-*``).

    ``read_json`` types every line by the view's column spec before the ``resourceType`` filter, so a line
    of another type whose element of the same name has another shape fails the query (it never gives
    wrong rows); the operator sends such sources to the evaluator instead.
    """
    from airflow_provider_smart.parquet.convert import known_type

    return bool(files) and all(known_type(f) == resource_type for f in files)


def ndjson_source(files: Sequence[str], compiled: CompiledView) -> str:
    """``read_json`` over NDJSON files (plain or gzipped) reading only the elements the view uses.

    Measured against ``read_ndjson_objects`` + ``json_transform``: that one parses each line twice (~15%
    more CPU), and its strict form fails on a missing element while its lax form turns a value of the
    wrong type into NULL silently; ``read_json`` with a column spec fails on a wrong type, never guesses.
    """
    if not files:
        raise ValueError("no NDJSON files to read")
    paths = "[" + ", ".join(literal(str(f)) for f in files) + "]"
    columns = ",\n    ".join(f"{literal(k)}: {literal(v)}" for k, v in compiled.columns_spec.items())
    return f"read_json({paths}, format = 'newline_delimited', columns = {{\n    {columns}\n  }})"


def parquet_source(files: Sequence[str], compiled: CompiledView, present: Sequence[str] | None = None) -> str:
    """This package's typed Parquet, each element the view reads cast to the NDJSON reader's type.

    The Parquet schema is as wide as the data (an element that never appeared has no column) and as
    typed as FHIR R4, so a cast by field name fits it to the view's spec: fields the files lack read as
    NULL. ``present`` lists the files' top-level columns (None: assume all are there).
    """
    if not files:
        raise ValueError("no Parquet files to read")
    paths = "[" + ", ".join(literal(str(f)) for f in files) + "]"
    columns = []
    for name, sql_type in compiled.columns_spec.items():
        value = f"p.{quote(name)}" if present is None or name in present else "NULL"
        columns.append(f"CAST({value} AS {sql_type}) AS {quote(name)}")
    # Every path is a quoted literal and every name a quoted identifier: nothing is spliced in raw.
    return f"(SELECT {', '.join(columns)} FROM read_parquet({paths}, union_by_name = true) AS p)"  # noqa: S608


def is_parquet(files: Sequence[str]) -> bool:
    kinds = {str(f).endswith(".parquet") for f in files}
    if len(kinds) > 1:
        raise ValueError("the source mixes NDJSON and Parquet files; point the view at one or the other")
    return kinds == {True}


def parquet_columns(con: duckdb.DuckDBPyConnection, files: Sequence[str]) -> list[str]:
    paths = "[" + ", ".join(literal(str(f)) for f in files) + "]"
    query = f"DESCRIBE SELECT * FROM read_parquet({paths}, union_by_name = true)"  # noqa: S608 (quoted literals)
    return [row[0] for row in con.sql(query).fetchall()]


def view_sql(compiled: CompiledView, files: Sequence[str], present: Sequence[str] | None = None) -> str:
    """The whole query over NDJSON or Parquet ``files``: what ``smart-fhir view-sql`` prints."""
    if is_parquet(files):
        return compiled.query(parquet_source(files, compiled, present))
    return compiled.query(ndjson_source(files, compiled))


def _view_error(exc: Exception, compiled: CompiledView) -> ViewError:
    from airflow_provider_smart.transport.sanitize import safe_text

    return ViewError(f"view {compiled.plan.name!r} failed in DuckDB: {safe_text(str(exc), limit=400)}")


def run_rows(view: Any, resources: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``run_view`` on DuckDB: the rows of ``view`` over in-memory resources, values as the evaluator gives them.

    Raises :class:`~airflow_provider_smart.views.sql.ViewCompileError` when the view cannot be compiled.
    """
    import duckdb

    compiled = compile_sql(view, values="json")
    wanted = compiled.plan.resource
    names = compiled.plan.column_names
    with tempfile.TemporaryDirectory(prefix="fhir-view-") as scratch:
        path = os.path.join(scratch, "resources.ndjson")
        count = 0
        with open(path, "w", encoding="utf-8") as out:
            for resource in resources:
                if isinstance(resource, dict) and resource.get("resourceType") == wanted:
                    out.write(json.dumps(resource) + "\n")
                    count += 1
        if not count:
            return []
        con = connect(scratch)
        try:
            result = con.execute(view_sql(compiled, [path])).fetchall()
        except duckdb.Error as exc:
            raise _view_error(exc, compiled) from None
        finally:
            con.close()
    return [{n: _plain(v) for n, v in zip(names, row, strict=True)} for row in result]


def _plain(value: Any) -> Any:
    """A json-mode value (JSON text, or a list of JSON texts for a collection) as the evaluator gives it."""
    if value is None:
        return None
    if isinstance(value, list):
        return [json.loads(v) for v in value if v is not None]
    return json.loads(value)


def iter_batches(
    compiled: CompiledView, files: Sequence[str], con: duckdb.DuckDBPyConnection, schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """The view's rows over NDJSON ``files`` as Arrow batches of the table ``schema`` (bounded by BATCH_ROWS)."""
    import duckdb
    import pyarrow as pa

    try:
        present = parquet_columns(con, files) if is_parquet(files) else None
        reader = con.sql(view_sql(compiled, files, present)).to_arrow_reader(BATCH_ROWS)
        for batch in reader:
            if batch.num_rows:
                arrays = [_fit(col, field.type) for col, field in zip(batch.columns, schema, strict=True)]
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)
    except duckdb.Error as exc:
        raise _view_error(exc, compiled) from None


def _fit(column: pa.Array, target: pa.DataType) -> pa.Array:
    """``column`` as the table's type: DuckDB's Arrow types differ from it only in names (its time zone
    ``Etc/UTC`` for ``UTC``, its list items ``l`` for ``item``), which a zero-copy view renames; a cast
    (which loads ``pyarrow.compute``, ~0.1 s of a run's fixed cost) only for anything else."""
    if column.type == target:
        return column
    if _same_layout(column.type, target):
        return column.view(target)
    return column.cast(target)


def _same_layout(got: pa.DataType, target: pa.DataType) -> bool:
    import pyarrow as pa

    if pa.types.is_timestamp(got) and pa.types.is_timestamp(target):
        return bool(got.unit == target.unit and {got.tz, target.tz} <= {"UTC", "Etc/UTC"})
    if pa.types.is_list(got) and pa.types.is_list(target):
        return got.value_type == target.value_type or _same_layout(got.value_type, target.value_type)
    return False
