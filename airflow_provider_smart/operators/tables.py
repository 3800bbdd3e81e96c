"""Current-state Delta tables as Airflow tasks: merge a landed run, and keep the tables tidy.

``FhirDeltaMergeOperator`` merges an export or search run that already landed (backfills, fan-out DAGs);
the search and bulk export operators call :func:`merge_landed_run` themselves with
``formats=("ndjson", "delta")``. The work is in :mod:`airflow_provider_smart.tables` (no Airflow there);
``deltalake`` is the ``[delta]`` extra, imported only when a task runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_smart.operators._assets import (
    Outlets,
    declare_outlets,
    default_alias_name,
    emit_asset_events,
    static_names,
    static_uri,
)
from airflow_provider_smart.operators._lineage import lineage_on_complete, location_uris
from airflow_provider_smart.storage.paths import resolve_output, safe_segment, storage_options_for
from airflow_provider_smart.tables.landed import check_delta_options, merge_landed, require_deltalake
from airflow_provider_smart.tables.location import TABLES_SUBDIR, tables_root
from airflow_provider_smart.tables.runs import checked_source_layout

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

__all__ = [
    "FhirDeltaMergeOperator",
    "check_delta_options",
    "emit_table_events",
    "merge_landed_run",
    "storage_options_for",
    "tables_root",
]


def merge_landed_run(
    output: ObjectStoragePath,
    label: str,
    *,
    options: Mapping[str, Any] | None = None,
    output_conn_id: str | None = None,
    resource_types: Sequence[str] | None = None,
    transaction_time: str | None = None,
    logger: Any = None,
    source_layout: str = "provider",
) -> dict[str, Any]:
    """Merge the run ``label`` landed under ``output`` into the tables; returns a JSON-safe summary.

    With ``source_layout="flat"``, ``output`` is an export folder in bulk-data-client / smart-fetch layout
    (flat ``<Type>.NNN.ndjson[.gz]`` files, ``deleted/``, ``log.ndjson``; see ``tables/bulk_folder.py``)
    and ``label`` only names the run in summaries.

    :param options: ``output`` (tables root, default ``<output>/tables``), ``conn_id`` (its connection,
        default ``output_conn_id``), ``storage_options``, ``decimal``, ``compact`` (bool),
        ``vacuum_retention_hours``, ``max_attempts``, ``buckets`` (hash buckets of a table the merge
        creates; default from the first run's size).

    Each result carries what the merge rewrote: ``files_rewritten``/``bytes_rewritten`` (existing files
    replaced because they held a replaced or deleted row) and ``files_added``/``bytes_added``.
    """
    require_deltalake()
    opts = check_delta_options(options)
    conn_id = opts.get("conn_id") or output_conn_id
    root = tables_root(output, opts.get("output"), conn_id)
    return merge_landed(
        output,
        label,
        root=root,
        storage_options=storage_options_for(root, conn_id, opts.get("storage_options")),
        options=opts,
        resource_types=resource_types,
        transaction_time=transaction_time,
        logger=logger,
        source_layout=source_layout,
    )


class FhirDeltaMergeOperator(BaseOperator):
    """Merge an already landed export or search run into current-state Delta tables, one per type.

    Each table holds the newest copy of every resource of its type: rows are upserted by id, a row is
    replaced only by a newer version (``meta.versionId``, else ``meta.lastUpdated``, else the later run's
    transactionTime), resources in the export's ``deleted`` Bundles are removed, and merging the same run
    again changes nothing. See the "Current-state tables" docs page.

    :param output: the output root the run landed under (as given to the export/search operator). (templated)
    :param run_label: the export label or search run to merge (e.g. ``{{ run_id }}`` of the export's DAG
        run). (templated)
    :param tables: the tables root; default ``<output>/tables``. (templated)
    :param output_conn_id: the storage connection of ``output``.
    :param tables_conn_id: the storage connection of ``tables`` (its credentials go to delta-rs);
        default ``output_conn_id``.
    :param resource_types: merge only these types; default every type of the run. (templated)
    :param transaction_time: the run's time, for a search run that recorded none. (templated)
    :param storage_options: extra delta-rs storage options (win over those from the connection).
    :param decimal: ``"float64"`` (default) or ``"string"``; fixed for a tables root.
    :param compact: rewrite small files after a merge that changed a table.
    :param vacuum_retention_hours: after a changing merge, delete files older versions needed beyond this
        many hours (time travel before that is lost); default no vacuum.
    :param max_attempts: plan-and-commit attempts per table when other merges commit in between.
    :param buckets: hash buckets of a table this merge creates (default: from the first run's size); an
        existing table keeps the count it was laid out with.
    :param asset_alias: name of the ``AssetAlias`` used when ``tables`` or ``resource_types`` is not known
        at parse time; with both static the operator declares ``Asset("<tables>/<Type>")`` per type.
    :param source_layout: ``"provider"`` (default: a run this provider landed under ``output``) or
        ``"flat"``: ``output`` is an export folder written by bulk-data-client or smart-fetch (flat
        ``<Type>.NNN.ndjson[.gz]`` files, ``deleted/``, ``log.ndjson``), its time taken from the log's
        ``status_complete`` event; ``run_label`` then only names the run (default: the folder's name).
    """

    template_fields: Sequence[str] = ("output_location", "run_label", "tables", "resource_types", "transaction_time")
    ui_color = "#d6f0ff"

    def __init__(
        self,
        *,
        output: Any,
        run_label: str = "",
        tables: Any = None,
        output_conn_id: str | None = None,
        tables_conn_id: str | None = None,
        resource_types: Sequence[str] | None = None,
        transaction_time: str | None = None,
        storage_options: Mapping[str, str] | None = None,
        decimal: str = "float64",
        compact: bool = False,
        vacuum_retention_hours: int | None = None,
        max_attempts: int = 5,
        buckets: int | None = None,
        asset_alias: str | None = None,
        source_layout: str = "provider",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        checked_source_layout(source_layout)
        if source_layout == "provider" and not run_label:
            raise ValueError("run_label is required: the export label or search run under output to merge")
        self.source_layout = source_layout
        # ``output`` is BaseOperator's XComArg property: the location is kept under another name.
        self.output_location = output
        self.run_label = run_label
        self.tables = tables
        self.output_conn_id = output_conn_id
        self.tables_conn_id = tables_conn_id
        self.resource_types = list(resource_types) if isinstance(resource_types, (list, tuple)) else resource_types
        self.transaction_time = transaction_time
        self.storage_options = dict(storage_options or {})
        if decimal not in ("float64", "string"):
            raise ValueError(f"decimal must be 'float64' or 'string', not {decimal!r}")
        self.decimal = decimal
        self.compact = compact
        if vacuum_retention_hours is not None and vacuum_retention_hours < 0:
            raise ValueError(f"vacuum_retention_hours must be >= 0, not {vacuum_retention_hours}")
        self.vacuum_retention_hours = vacuum_retention_hours
        self.max_attempts = max_attempts
        if buckets is not None:
            from airflow_provider_smart.tables.buckets import check_bucket_count

            check_bucket_count(buckets)
        self.buckets = buckets
        self._declare_outlets(asset_alias)

    def _declare_outlets(self, asset_alias: str | None) -> None:
        """A plain Asset per table when the tables root and the types are static, else the task's alias."""
        root = self._static_root()
        types = static_names(self.resource_types) if isinstance(self.resource_types, list) else None
        if root is not None and types:
            self._outlets = declare_outlets(self, [f"{root}/{safe_segment(t)}" for t in types], None)
        else:
            self._outlets = declare_outlets(self, [], asset_alias or default_alias_name(self, "fhir-delta"))

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the landed runs' root in, each changed table out (operators._lineage)."""
        return lineage_on_complete(self, location_uris(self.output_location, self.output_conn_id))

    def _static_root(self) -> str | None:
        if self.tables not in (None, ""):
            return static_uri(self.tables)
        base = static_uri(self.output_location)
        return f"{base}/{TABLES_SUBDIR}" if base else None

    def execute(self, context: Context) -> dict[str, Any]:
        output = resolve_output(self.output_location, self.output_conn_id)
        options: dict[str, Any] = {
            "output": self.tables,
            "conn_id": self.tables_conn_id or self.output_conn_id,
            "storage_options": self.storage_options,
            "decimal": self.decimal,
            "compact": self.compact,
            "vacuum_retention_hours": self.vacuum_retention_hours,
            "max_attempts": self.max_attempts,
            "buckets": self.buckets,
        }
        summary = merge_landed_run(
            output,
            str(self.run_label),
            options=options,
            output_conn_id=self.output_conn_id,
            resource_types=self.resource_types,
            transaction_time=self.transaction_time,
            logger=self.log,
            source_layout=self.source_layout,
        )
        emit_table_events(context, summary, self._outlets)
        return summary


def emit_table_events(context: Context, summary: Mapping[str, Any], outlets: Outlets) -> None:
    """One Asset event per table a merge changed (``<tables>/<Type>``), with its new version and rows."""
    events: dict[str, dict[str, Any]] = {}
    for rtype, result in summary["results"].items():
        if not result["committed"]:
            continue
        keys = ("version", "rows", "inserted", "updated", "deleted", "files_rewritten", "bytes_rewritten")
        extra = {k: result.get(k) for k in keys}
        extra.update(source=summary["source"], transaction_time=summary.get("transaction_time"), format="delta")
        events[summary["tables"][rtype]] = extra
    emit_asset_events(context, outlets, events)
