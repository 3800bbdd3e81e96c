"""Reading FHIR resources for views from storage: landed NDJSON (plain or gzipped) or this package's Parquet.

A source is a file, or a directory laid out as the export, search and Parquet steps write it:
``<root>/<ResourceType>/<label>/...``. Given a root and a resource type, only ``<root>/<ResourceType>/``
(and, with a label, only ``<root>/<ResourceType>/<label>/``) is read. Hidden names (``_tmp.*`` files
being written, ``_SUCCESS``, ``_state``) are skipped, so a partial file is never read as data.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.storage.atomic import is_hidden
from airflow_provider_smart.storage.paths import safe_segment

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")
PARQUET_SUFFIX = ".parquet"


def source_files(root: ObjectStoragePath, resource_type: str, label: str | None = None) -> list[ObjectStoragePath]:
    """The data files holding ``resource_type`` under ``root`` (see the module doc for the layout)."""
    if not root.exists():
        raise FileNotFoundError(f"view source {root} does not exist; check the path and its connection")
    if root.is_file():
        return [root]
    directory = root
    typed = root / safe_segment(resource_type)
    if typed.is_dir():
        directory = typed
    if label is not None:
        directory = directory / safe_segment(label)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"no {resource_type} data for label {label!r} at {directory}; check 'source_label' (the export label "
                "or run the source step wrote) or leave it out to read every run"
            )
    return sorted(_walk(directory), key=str)


def _walk(directory: ObjectStoragePath) -> Iterator[ObjectStoragePath]:
    for child in directory.iterdir():
        if is_hidden(child.name):
            continue
        if child.is_dir():
            yield from _walk(child)
        elif child.name.endswith((*NDJSON_SUFFIXES, PARQUET_SUFFIX)):
            yield child


def iter_file(path: ObjectStoragePath) -> Iterator[dict[str, Any]]:
    """The resources in one NDJSON or Parquet file, streamed (memory stays bounded by one batch)."""
    if path.name.endswith(PARQUET_SUFFIX):
        from airflow_provider_smart.parquet.reader import iter_resources

        yield from iter_resources(path)
        return
    import orjson

    with path.open("rb") as raw:  # type: ignore[no-untyped-call]
        stream = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise ValueError(f"{path} line {number} is not JSON; the file is damaged or not NDJSON") from None
            if isinstance(resource, dict):
                yield resource
