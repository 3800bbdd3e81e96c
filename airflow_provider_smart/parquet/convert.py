"""Convert NDJSON already on storage into Parquet tables (plain or gzipped input, any ObjectStoragePath)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.storage.atomic import is_hidden
from airflow_provider_smart.storage.paths import resolve_output

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")


def find_ndjson(source: Any, conn_id: str | None = None) -> list[ObjectStoragePath]:
    """The NDJSON files at ``source``: one file, or every ``*.ndjson[.gz]`` below a directory.

    Hidden names (``_tmp.*`` files being written, ``_SUCCESS``, ``.``-files) and whatever sits in hidden
    directories are skipped, like every Hive-style reader does.
    """
    path = resolve_output(source, conn_id)
    if not path.exists():
        raise FileNotFoundError(f"NDJSON source {path} does not exist; check the path and its connection")
    if path.is_file():
        return [path]
    found = sorted(_walk(path), key=str)
    if not found:
        raise FileNotFoundError(f"no {'/'.join(NDJSON_SUFFIXES)} files under {path}")
    return found


def _walk(directory: ObjectStoragePath) -> Iterator[ObjectStoragePath]:
    for child in directory.iterdir():
        if is_hidden(child.name):
            continue
        if child.is_dir():
            yield from _walk(child)
        elif child.name.endswith(NDJSON_SUFFIXES):
            yield child


def convert_ndjson_to_parquet(
    source: Any | Iterable[Any],
    destination: Any,
    run: str,
    *,
    decimal: str = "float64",
    schemas: Mapping[str, Any] | None = None,
    source_conn_id: str | None = None,
    destination_conn_id: str | None = None,
    **writer_options: Any,
) -> dict[str, dict[str, Any]]:
    """Convert NDJSON files (plain or gzipped) into ``<destination>/<ResourceType>/<run>/part-NNNNN.parquet``.

    :param source: a file, a directory (searched recursively for ``*.ndjson[.gz]``), or a list of them;
        ObjectStoragePaths, URIs or local paths.
    :param destination: root of the Parquet tables (ObjectStoragePath, URI or local path).
    :param run: the run label (one path segment; e.g. the Airflow run id).
    :param decimal: ``"float64"`` or ``"string"`` (exact decimal text).
    :param schemas: pinned schema records by resource type (dicts or paths to ``_schema.json`` files).
    :param writer_options: further :class:`~airflow_provider_smart.parquet.writer.FhirParquetWriter` options.
    :return: per resource type, the rows written, the files and the schema record's path.
    """
    from airflow_provider_smart.parquet.writer import FhirParquetWriter

    sources = [source] if isinstance(source, str) or not isinstance(source, Iterable) else list(source)
    files = [f for s in sources for f in find_ndjson(s, source_conn_id)]
    with FhirParquetWriter(
        destination, run, decimal=decimal, schemas=schemas, conn_id=destination_conn_id, **writer_options
    ) as writer:
        for path in files:
            writer.write_ndjson(path, known_type(path))
    return writer.result


def known_type(path: Any) -> str | None:
    """The resource type a file's name tells: ``Patient.ndjson``, ``Patient.00001.ndjson.gz`` (Bulk Data
    landing) or ``Patient/<run>/part-00000.ndjson`` (search output); None when the name tells none.

    Only a hint that lets the fast path skip looking: lines of other types still land in their own tables.
    """
    from airflow_provider_smart.parquet.model import is_resource_type

    name = str(path.name).split(".")[0]
    if is_resource_type(name):
        return name
    parent = path.parent.parent.name if name.startswith("part-") else ""
    return parent if is_resource_type(parent) else None
