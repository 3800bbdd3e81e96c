"""Convert FHIR NDJSON already on storage into typed, schema-stable Parquet tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_smart.operators._assets import declare_outlets, default_alias_name, emit_asset_events
from airflow_provider_smart.operators._lineage import lineage_on_complete, location_uris
from airflow_provider_smart.storage.paths import resolve_output, safe_segment
from airflow_provider_smart.storage.preflight import storage_uri
from airflow_provider_smart.tables.runs import checked_source_layout

if TYPE_CHECKING:
    from airflow.sdk import Context

DECIMAL_MODES = ("float64", "string")


class FhirNdjsonToParquetOperator(BaseOperator):
    """
    Convert NDJSON files (plain or gzipped) into Parquet tables, one per resource type.

    Output layout: ``<destination>/<ResourceType>/<run>/part-NNNNN.parquet`` with ``_schema.json`` and a
    ``_SUCCESS`` marker written last, plus ``<destination>/<ResourceType>/_schema.json``, the schema record
    that only ever gains columns across runs. Types come from FHIR R4; see the Parquet page of the docs.

    :param source: an NDJSON file, a directory (searched recursively for ``*.ndjson[.gz]``) or a list of
        them: ObjectStoragePaths, URIs or local paths. (templated)
    :param destination: root of the Parquet tables. (templated)
    :param run: run label, one path segment (default: the DAG run id). (templated)
    :param source_conn_id: Airflow connection for the source store. (templated)
    :param destination_conn_id: Airflow connection for the destination store. (templated)
    :param decimal: ``"float64"`` (default) or ``"string"`` to keep each decimal's exact text.
    :param schemas: pinned schema records by resource type (dicts, or paths to ``_schema.json`` files);
        a pinned type never grows and fields outside its record go to ``unmapped_json``. (templated)
    :param asset_alias: name of the ``AssetAlias`` each table is attached to (default
        ``fhir-parquet/<dag_id>/<task_id>``); each event carries the run and the table's rows.
    :param source_layout: ``"provider"`` (default) or ``"flat"``: ``source`` is an export folder written by
        bulk-data-client or smart-fetch (``<Type>.NNN.ndjson[.gz]`` files and ``log.ndjson``), converted only
        when its log shows a finished export; the log, ``deleted/`` and ``error/`` are not converted.
    """

    template_fields: Sequence[str] = (
        "source",
        "destination",
        "run",
        "source_conn_id",
        "destination_conn_id",
        "schemas",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"schemas": "json"}
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        source: Any,
        destination: Any,
        run: str | None = None,
        source_conn_id: str | None = None,
        destination_conn_id: str | None = None,
        decimal: str = "float64",
        schemas: Mapping[str, Any] | None = None,
        asset_alias: str | None = None,
        source_layout: str = "provider",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        checked_source_layout(source_layout)
        self.source_layout = source_layout
        if decimal not in DECIMAL_MODES:
            raise ValueError(f"decimal must be 'float64' or 'string' (exact text); got {decimal!r}")
        self.source = source
        self.destination = destination
        self.run = run
        self.source_conn_id = source_conn_id
        self.destination_conn_id = destination_conn_id
        self.decimal = decimal
        self.schemas = schemas
        # The resource types are known only once the files are read: every table goes through the alias.
        self._outlets = declare_outlets(self, [], asset_alias or default_alias_name(self, "fhir-parquet"))

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the NDJSON source in, each Parquet table out (operators._lineage)."""
        return lineage_on_complete(self, location_uris(self.source, self.source_conn_id))

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_smart.parquet.convert import convert_ndjson_to_parquet

        run = safe_segment(str(self.run or context.get("run_id") or "manual"))
        source = self.source
        if self.source_layout == "flat":  # a bulk-data-client / smart-fetch folder (tables/bulk_folder.py)
            from airflow_provider_smart.tables.bulk_folder import read_bulk_folder

            folder = read_bulk_folder(resolve_output(self.source, self.source_conn_id))
            source = sorted((f for files in folder.files.values() for f in files), key=str)
        result = convert_ndjson_to_parquet(
            source,
            self.destination,
            run,
            decimal=self.decimal,
            schemas=self.schemas,
            source_conn_id=self.source_conn_id,
            destination_conn_id=self.destination_conn_id,
        )
        from airflow_provider_smart.reporting import rows_table

        self.log.info("Parquet run %s:\n%s", run, rows_table({k: v["rows"] for k, v in result.items()}))
        root = storage_uri(resolve_output(self.destination, self.destination_conn_id))
        events = {
            f"{root}/{safe_segment(name)}": {
                "run": run,
                "resource_type": name,
                "rows": info["rows"],
                "format": "parquet",
            }
            for name, info in result.items()
        }
        emit_asset_events(context, self._outlets, events)
        return {"run": run, "tables": result}
