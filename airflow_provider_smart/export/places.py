"""Where one type's finishing job reads and writes, resolved once by the process that plans the jobs.

A job travels as strings (URIs and connection ids, see :class:`~.per_type.TypeJob`); turning them into
paths takes an ObjectStoragePath, and importing Airflow for it cost a fresh child process about 4
CPU-seconds before its first job (``python -X importtime``): on two cores that ate most of the gain. So
the task's process resolves the places, and hands a child plain ``UPath`` objects for a local root
(universal_pathlib, the class ObjectStoragePath is built on; a child unpickles it with no Airflow import)
together with delta-rs's ``storage_options``. Object stores keep Airflow in the loop (their credentials
come from an Airflow connection): for them :func:`portable_places` returns None and the child resolves
the job itself. Places are pickled to child processes only, never to an XCom or a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.storage.paths import resolve_output, storage_options_for

if TYPE_CHECKING:
    from airflow_provider_smart.export.per_type import TypeJob

_LOCAL = ("", "file", "local")
_FILE_SCHEME = "file://"


@dataclass(frozen=True)
class Places:
    """The resolved roots of one job: the landed output, the Parquet root and the tables root."""

    output: Any
    parquet: Any = None
    tables: Any = None
    #: delta-rs's options for ``tables`` (credentials for an object store): never logged or stored.
    tables_options: dict[str, str] = field(default_factory=dict, repr=False)
    local: bool = False

    def source(self, uri: str, conn_id: str | None) -> Any:
        """One of the job's files as a path of the same kind as ``output``."""
        if self.local:
            from upath import UPath

            return UPath(uri[len(_FILE_SCHEME) :] if uri.startswith(_FILE_SCHEME) else uri)
        return resolve_output(uri, conn_id)


def resolve_places(job: TypeJob) -> Places:
    """The job's places as ObjectStoragePaths (in a process that has Airflow anyway)."""
    output = resolve_output(job.output, job.output_conn_id)
    parquet = tables = None
    options: dict[str, str] = {}
    if job.parquet is not None:
        from airflow_provider_smart.parquet.sink import parquet_root

        parquet = parquet_root(output, job.parquet.get("output"), job.parquet.get("output_conn_id"))
    if job.delta is not None:
        from airflow_provider_smart.tables.landed import check_delta_options
        from airflow_provider_smart.tables.location import tables_root

        opts = check_delta_options(job.delta.get("options"))
        conn_id = opts.get("conn_id") or job.delta.get("output_conn_id")
        tables = tables_root(output, opts.get("output"), conn_id)
        options = storage_options_for(tables, conn_id, opts.get("storage_options"))
    return Places(output, parquet, tables, options)


def portable_places(job: TypeJob) -> Places | None:
    """The job's places as plain local paths a child process can use without Airflow, or None when a root
    is on an object store (the child then resolves the job itself)."""
    places = resolve_places(job)
    roots = [p for p in (places.output, places.parquet, places.tables) if p is not None]
    if any(_protocol(p) not in _LOCAL for p in roots):
        return None
    from upath import UPath

    def plain(path: Any) -> Any:
        return None if path is None else UPath(str(path.path))

    return Places(plain(places.output), plain(places.parquet), plain(places.tables), places.tables_options, True)


def _protocol(path: Any) -> str:
    protocol = getattr(path, "protocol", "") or ""
    if isinstance(protocol, (tuple, list)):
        protocol = protocol[0] if protocol else ""
    return str(protocol)
