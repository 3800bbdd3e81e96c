"""Merge a landed run into its Delta tables, given places already resolved (no Airflow import here).

The Airflow faces (``operators/tables.py``) turn an output argument and a connection into a tables root
and delta-rs ``storage_options``, then call :func:`merge_landed`; the export's finishing pool calls it
directly from a child process with places its parent resolved, so the child never imports Airflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.storage.paths import safe_segment

if TYPE_CHECKING:
    from airflow_provider_smart.tables.runs import LandedRun

#: The keys ``delta_options`` may hold.
DELTA_OPTIONS = frozenset(
    {"output", "conn_id", "storage_options", "decimal", "compact", "vacuum_retention_hours", "max_attempts", "buckets"}
)


def require_deltalake() -> None:
    try:
        import deltalake  # noqa: F401
    except ImportError:
        raise ImportError(
            "current-state Delta tables need the deltalake package: pip install 'airflow-provider-smart[delta]'"
        ) from None


def check_delta_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``delta_options`` of the search and export operators, checked (a typo is an error, not ignored)."""
    chosen = dict(options or {})
    unknown = sorted(set(chosen) - DELTA_OPTIONS)
    if unknown:
        raise ValueError(f"unknown delta_options {unknown}; the options are {sorted(DELTA_OPTIONS)}")
    return chosen


def merge_landed(
    output: Any,
    label: str,
    *,
    root: Any,
    storage_options: Mapping[str, str],
    options: Mapping[str, Any] | None = None,
    resource_types: Sequence[str] | None = None,
    transaction_time: str | None = None,
    logger: Any = None,
    source_layout: str = "provider",
    run: LandedRun | None = None,
) -> dict[str, Any]:
    """Merge the run ``label`` landed under ``output`` into the tables at ``root``; a JSON-safe summary.

    ``run``: the run's files as the caller knows them (an export being finished, not yet published);
    by default the run is looked up under ``output``.

    ``output`` and ``root`` are path objects (an ObjectStoragePath or a UPath); ``storage_options`` are
    delta-rs's for ``root`` (credentials). ``options`` as ``delta_options`` (its ``output`` and ``conn_id``
    were used to find ``root`` already).
    """
    require_deltalake()
    from airflow_provider_smart.tables.merge import DeltaTables
    from airflow_provider_smart.tables.runs import find_landed_run

    opts = check_delta_options(options)
    tables = DeltaTables(
        root,
        storage_options=dict(storage_options),
        decimal=opts.get("decimal", "float64"),
        max_attempts=int(opts.get("max_attempts", 5)),
        buckets=None if opts.get("buckets") is None else int(opts["buckets"]),
    )
    if run is not None:
        pass
    elif source_layout == "flat":
        from airflow_provider_smart.tables.bulk_folder import read_bulk_folder

        run = read_bulk_folder(output, transaction_time=transaction_time, label=label or None)
    else:
        run = find_landed_run(output, label, transaction_time=transaction_time)
    results = tables.merge_run(run, resource_types=resource_types)
    maintenance: dict[str, Any] = {}
    retention = opts.get("vacuum_retention_hours")
    for rtype, result in results.items():
        if not result.committed:
            continue
        done: dict[str, Any] = {}
        if opts.get("compact"):
            metrics = tables.compact(rtype)
            done["compacted_files"] = int(metrics.get("numFilesRemoved", 0))
        if retention is not None:
            done["vacuumed_files"] = len(tables.vacuum(rtype, retention_hours=int(retention)))
        if done:
            maintenance[rtype] = done
    root_uri = f"{getattr(root, 'protocol', '') or 'file'}://{getattr(root, 'path', root)}".rstrip("/")
    summary = {
        "output": root_uri,
        "source": f"{run.kind}:{run.label}",
        "transaction_time": run.transaction_time,
        "tables": {rtype: f"{root_uri}/{safe_segment(rtype)}" for rtype in sorted(results)},
        "results": {rtype: results[rtype].to_json() for rtype in sorted(results)},
        "maintenance": maintenance,
        # Resources a table cannot hold (no id): refused, counted per type in results and in all here.
        "without_id": sum(r.without_id for r in results.values()),
    }
    if logger is not None:
        from airflow_provider_smart.reporting import delta_results_table

        table = delta_results_table({rtype: results[rtype].to_json() for rtype in sorted(results)})
        logger.info("Delta tables at %s merged from %s:\n%s", root_uri, summary["source"], table)
    return summary
