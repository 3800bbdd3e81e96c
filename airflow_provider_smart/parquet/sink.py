"""The Parquet side of an operator run: fed the same resources or files as the NDJSON writer.

Operators that land NDJSON (search, Bulk Data export) take ``formats=("ndjson", "parquet")``. They hand
this sink each resource as they write it (search) or each NDJSON file once it is committed (export), and
commit it after the NDJSON side. It imports pyarrow only when first used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.storage.paths import safe_segment

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_smart.parquet.writer import FhirParquetWriter

#: "delta": current-state Delta tables merged from the landed NDJSON (``airflow_provider_smart.tables``).
FORMATS = ("ndjson", "parquet", "delta")
PARQUET_SUBDIR = "parquet"
_BATCH_BYTES = 8 << 20


def check_formats(formats: Any) -> tuple[str, ...]:
    """The output formats as a tuple; a clear error for anything else."""
    chosen = (formats,) if isinstance(formats, str) else tuple(formats or ())
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise ValueError(
            f"unsupported output format(s) {unknown or list(chosen)!r}: formats must name one or more of the "
            f"supported formats {list(FORMATS)}, e.g. formats=('ndjson', 'parquet')"
        )
    return tuple(dict.fromkeys(chosen))


def parquet_root(
    output: ObjectStoragePath, parquet_output: Any = None, conn_id: str | None = None
) -> ObjectStoragePath:
    """Where an operator's Parquet tables go: ``parquet_output`` or, by default, ``<output>/parquet``.

    A separate root keeps the two formats' run directories (and their ``_SUCCESS`` markers) apart.
    """
    from airflow_provider_smart.storage.paths import resolve_output

    if parquet_output is None or parquet_output == "":
        return output / PARQUET_SUBDIR
    return resolve_output(parquet_output, conn_id)


class ParquetRunSink:
    """Parquet tables for one operator run: ``<root>/<ResourceType>/<run>/part-NNNNN.parquet``.

    :param root: the Parquet root (see :func:`parquet_root`).
    :param run: the run label, the same as the NDJSON side's.
    :param primary_type: committed even with no resources, like the NDJSON side.
    :param options: :class:`~airflow_provider_smart.parquet.writer.FhirParquetWriter` options (``decimal``,
        ``schemas`` ...).
    """

    def __init__(
        self,
        root: ObjectStoragePath,
        run: str,
        *,
        primary_type: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.run = safe_segment(run)
        self.primary_type = primary_type
        self.options = dict(options or {})
        self._writer: FhirParquetWriter | None = None
        self._lines: dict[str, list[bytes]] = {}  # by resource type: the fast path wants one type a chunk
        self._size = 0
        self._seen: set[str] = set()

    @property
    def writer(self) -> FhirParquetWriter:
        if self._writer is None:
            from airflow_provider_smart.parquet.writer import FhirParquetWriter

            self._writer = FhirParquetWriter(self.root, self.run, **self.options)
            if self.primary_type:
                self._writer.declare(self.primary_type)
        return self._writer

    def __enter__(self) -> ParquetRunSink:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()

    def write(self, resource: Mapping[str, Any], *, deduplicate: bool = False) -> bool:
        """Add one resource; with ``deduplicate``, one already added (same type and id) is skipped."""
        rid = resource.get("id")
        if rid:  # a resource without an id is never "the same" as another: none is dropped as a repeat
            key = f"{resource.get('resourceType')}/{rid}"
            if deduplicate and key in self._seen:
                return False
            self._seen.add(key)
        line = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self._lines.setdefault(str(resource.get("resourceType")), []).append(line)
        self._size += len(line) + 1
        if self._size >= _BATCH_BYTES:
            self._flush()
        return True

    def write_ndjson(self, source: Any, resource_type: str | None = None) -> int:
        """Add one committed NDJSON file (plain or gzipped)."""
        self._flush()
        return self.writer.write_ndjson(source, resource_type)

    def _flush(self) -> None:
        pending, self._lines, self._size = self._lines, {}, 0
        for resource_type, lines in pending.items():
            self.writer.write_lines(lines, resource_type)

    def commit(self) -> dict[str, dict[str, Any]]:
        """Commit every table; returns per type the rows, files and schema record path."""
        self._flush()
        return self.writer.commit()

    def abort(self) -> None:
        if self._writer is not None and not self._writer.closed:
            self._writer.abort()


class ParquetOnlyRunWriter:
    """Stands in for the NDJSON run writer when an operator writes Parquet only (``formats=("parquet",)``).

    Same ``write``/``commit``/``counts``/``duplicates`` surface, so the operator's loop does not change.
    """

    def __init__(self, sink: ParquetRunSink) -> None:
        self.sink = sink
        self.duplicates = 0
        self._counts: dict[str, int] = {}

    def __enter__(self) -> ParquetOnlyRunWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.sink.abort()

    @property
    def counts(self) -> dict[str, int]:
        return dict(sorted(self._counts.items()))

    def write(self, resource: Mapping[str, Any], *, deduplicate: bool = False) -> bool:
        if not self.sink.write(resource, deduplicate=deduplicate):
            self.duplicates += 1
            return False
        name = str(resource.get("resourceType"))
        self._counts[name] = self._counts.get(name, 0) + 1
        return True

    def commit(self, summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
        from airflow_provider_smart.storage.ndjson import TypeResult

        tables = self.sink.commit()
        return {
            name: TypeResult(name, str(self.sink.root / name / self.sink.run), info["rows"], info["files"])
            for name, info in tables.items()
        }
