"""Writing one view's rows as a Parquet table: ``<destination>/<view>/<run>/part-00000.parquet``.

The run directory is marked incomplete, emptied, written through a temporary name and renamed
(``storage/atomic.py``), then ``_SUCCESS`` is written last. A rerun of the same run replaces it whole:
nothing is duplicated and a reader never sees a half-written table as complete.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.storage.atomic import atomic_open, clear_directory, mark_complete, mark_incomplete
from airflow_provider_smart.storage.paths import safe_segment
from airflow_provider_smart.views.arrow import BatchBuilder
from airflow_provider_smart.views.definition import ViewPlan

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

BATCH_ROWS = 8192
# Rows per Parquet row group (at least; at most this plus one batch): batches (8,192 rows from the
# evaluator, ~20,000 from DuckDB's stream, each written as its own row group before) are held until this
# many are pending, so readers get row groups of a useful size while memory stays bounded.
ROW_GROUP_ROWS = 131_072
PART_NAME = "part-00000.parquet"


class ViewTableWriter:
    """Collects rows of one view in bounded batches and writes them as one Parquet file, committed by
    :meth:`commit` (row groups of up to ``ROW_GROUP_ROWS`` rows)."""

    def __init__(self, plan: ViewPlan, destination: ObjectStoragePath, run: str) -> None:
        self.plan = plan
        self.directory = destination / safe_segment(plan.name) / safe_segment(run)
        self.builder = BatchBuilder(plan)
        self.rows = 0
        self._pending: list[tuple[Any, ...]] = []
        self._batches: list[Any] = []  # Arrow batches not written yet
        self._batched_rows = 0
        self._context: Any = None
        self._handle: Any = None
        self._writer: Any = None

    def start(self) -> None:
        import pyarrow.parquet as pq

        self.directory.mkdir(parents=True, exist_ok=True)
        mark_incomplete(self.directory)
        clear_directory(self.directory)
        self._context = atomic_open(self.directory / PART_NAME, "wb")
        self._handle = self._context.__enter__()
        self._writer = pq.ParquetWriter(self._handle, self.builder.schema, compression="zstd")

    def add(self, rows: Iterable[tuple[Any, ...]]) -> None:
        self._pending.extend(rows)
        if len(self._pending) >= BATCH_ROWS:
            self._flush()

    def add_batch(self, batch: Any) -> None:
        """Add an Arrow record batch already in the table's schema (rows computed by the SQL engine)."""
        self._flush()
        self._hold(batch)

    def _flush(self) -> None:
        if self._pending:
            self._hold(self.builder.batch(self._pending))
            self._pending = []

    def _hold(self, batch: Any) -> None:
        self._batches.append(batch)
        self._batched_rows += batch.num_rows
        self.rows += batch.num_rows
        if self._batched_rows >= ROW_GROUP_ROWS:
            self._write_held()

    def _write_held(self) -> None:
        import pyarrow as pa

        if self._batches:
            table = pa.Table.from_batches(self._batches, schema=self.builder.schema)
            self._writer.write_table(table, row_group_size=table.num_rows)  # one row group, no small remainder
            self._batches, self._batched_rows = [], 0

    def commit(self, summary: dict[str, Any]) -> dict[str, Any]:
        self._flush()
        self._write_held()
        self._writer.close()
        self._context.__exit__(None, None, None)
        self._context = None
        result = {**summary, "view": self.plan.name, "resource": self.plan.resource, "rows": self.rows}
        mark_complete(self.directory, result)
        return result

    def abort(self, exc: BaseException) -> None:
        """Drop the temporary file; the directory stays without ``_SUCCESS`` (incomplete)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):  # the original error is what the caller raises
                self._writer.close()
        if self._context is not None:
            self._context.__exit__(type(exc), exc, exc.__traceback__)
            self._context = None
