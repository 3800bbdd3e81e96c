"""Run a FHIR search and land every matching resource on object storage as NDJSON."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_provider_smart.fhir.instants import check_watermark_instant
from airflow_provider_smart.fhir.names import checked_resource_type
from airflow_provider_smart.fhir.search import (
    FhirSearch,
    SearchRequest,
    SupportsFhirRequest,
    format_instant,
    last_updated_window,
    normalize_params,
    validate_resource_type,
)
from airflow_provider_smart.operators._assets import (
    declare_outlets,
    default_alias_name,
    emit_asset_events,
    static_uri,
)
from airflow_provider_smart.operators._lineage import lineage_on_complete
from airflow_provider_smart.parquet.sink import ParquetOnlyRunWriter, ParquetRunSink, check_formats, parquet_root
from airflow_provider_smart.storage.atomic import SUCCESS_MARKER, read_json
from airflow_provider_smart.storage.attachments import AttachmentSettings, check_attachments_option
from airflow_provider_smart.storage.ndjson import (
    DEFAULT_MAX_PART_BYTES,
    DEFAULT_MAX_PART_LINES,
    NdjsonRunWriter,
    check_compression,
)
from airflow_provider_smart.storage.paths import resolve_output, safe_segment
from airflow_provider_smart.storage.preflight import check_writable
from airflow_provider_smart.storage.watermark import WatermarkStore, search_fingerprint

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

log = logging.getLogger(__name__)

SUPPORTED_FORMATS = ("ndjson", "parquet", "delta")
INCREMENTAL_MODES = ("auto", "data_interval", "watermark", None)
_INCLUDE_PARAMS = ("_include", "_revinclude")
_PROGRESS_EVERY_PAGES = 50


def storage_uri(path: ObjectStoragePath) -> str:
    """``scheme://path`` of a storage path, without the connection id Airflow shows in ``str(path)``."""
    protocol = path.protocol or "file"
    return f"{protocol}://{path.path}".rstrip("/")


def interval_label(start: datetime, end: datetime) -> str:
    """A run label from a data interval, e.g. ``20240101T000000Z_20240102T000000Z``: reruns and backfills of
    the same interval get the same label, whatever their run ids."""

    def compact(value: datetime) -> str:
        utc = value.astimezone(UTC)
        return utc.strftime("%Y%m%dT%H%M%S") + (f".{utc.microsecond:06d}" if utc.microsecond else "") + "Z"

    return safe_segment(f"{compact(start)}_{compact(end)}")


def resolve_incremental(mode: str | None, context: Context) -> str | None:
    """The mode a run uses: ``"auto"`` is ``"data_interval"`` when the run covers a non-empty data interval
    (data-interval timetables, and their manual runs), else ``"watermark"``; other modes are kept."""
    if mode != "auto":
        return mode
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    return "data_interval" if start is not None and end is not None and start < end else "watermark"


class FhirSearchOperator(BaseOperator):
    """
    Run a FHIR search and write every matching resource to storage as NDJSON, one file set per run.

    Output layout: ``<output>/<ResourceType>/<run>/part-00000.ndjson[.gz]`` plus a ``_SUCCESS`` marker
    written last; resources from ``_include``/``_revinclude`` go to their own type's directory of the same
    run. ``<run>`` is the data-interval label (``incremental="data_interval"``) or the run id.

    :param resource_type: FHIR resource type to search, e.g. ``Observation``. (templated)
    :param search_params: search parameters: a dict (a list value repeats the key) or a list of (key, value)
        pairs, e.g. ``{"code": "http://loinc.org|4548-4", "_include": "Observation:patient"}``. (templated)
    :param output: output root: an ``ObjectStoragePath``, a URI (``s3://bucket/fhir``) or a local
        directory; kept as the ``output_location`` attribute (``output`` is the task's XComArg). (templated)
    :param output_conn_id: Airflow connection for the output store (e.g. an ``aws`` connection). (templated)
    :param formats: output formats: ``("ndjson",)`` (default), ``("ndjson", "parquet")`` or ``("parquet",)``.
        Parquet tables (one per resource type, typed by FHIR R4, see the Parquet docs page) are written under
        ``parquet_output`` with the same ``<ResourceType>/<run>/`` layout.
    :param parquet_output: root of the Parquet tables; default ``<output>/parquet``. (templated)
    :param parquet_options: options of the Parquet writer, e.g. ``{"decimal": "string"}`` or
        ``{"schemas": {"Observation": "/etc/fhir/observation.json"}}``.
    :param delta_options: with ``"delta"`` in ``formats`` (beside ``"ndjson"``): where and how the landed
        run is merged into current-state Delta tables (``output`` default ``<output>/tables``, ``conn_id``,
        ``compact``, ``vacuum_retention_hours`` ...; see the "Current-state tables" docs page). (templated)
    :param compression: ``None`` or ``"gzip"`` (``.ndjson.gz`` parts).
    :param smart_fhir_conn_id: the ``smart_fhir`` connection of the FHIR server. (templated)
    :param incremental: ``"auto"`` (default): ``"data_interval"`` for runs with a non-empty data interval,
        else ``"watermark"`` (manual DAGs, trigger timetables, asset schedules); ``"data_interval"``: only
        resources with ``meta.lastUpdated`` in the DAG run's data interval ``[start, end)``; ``"watermark"``:
        only resources updated after the last stored high-water mark; ``None``: everything the search matches.
    :param page_size: ``_count``: resources per page asked of the server.
    :param method: ``"GET"`` or ``"POST"`` (``POST [type]/_search`` with a form body: long queries).
    :param max_part_bytes: start a new part file before this many uncompressed bytes.
    :param max_part_lines: start a new part file after this many resources.
    :param page_retries: times one page is fetched again after a transient failure.
    :param handling: ``"strict"`` or ``"lenient"``, sent as ``Prefer: handling=...``: whether the server
        should refuse unknown or unsupported parameters (strict) or ignore them and say so in the Bundle
        (lenient; the operator logs those notes as warnings). None sends nothing (the server's default).
    :param attachments: fetch the attachments (notes, documents) of the landed resources: ``False``
        (default), ``True`` (default settings) or a dict of settings (``max_bytes``, ``allowed_types``,
        ``workers``, ``inline_max_bytes``, ``rewrite_urls``, ``on_error``; see the attachments docs page).
        Needs ``"ndjson"`` in ``formats``. They land under ``<output>/attachments/<run>/`` after the run's
        files are committed and before the watermark moves; the summary gains their counts. A rendered
        template may say ``true``/``false`` or hold a JSON object. (templated)
    :param asset_alias: name of the ``AssetAlias`` declared when ``output`` or ``resource_type`` is
        templated (default ``fhir-search/<dag_id>/<task_id>``). With both known at parse time, the
        operator declares ``Asset("<output>/<ResourceType>")`` itself.
    """

    template_fields: Sequence[str] = (
        "resource_type",
        "search_params",
        "output_location",
        "output_conn_id",
        "smart_fhir_conn_id",
        "parquet_output",
        "delta_options",
        "attachments",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"search_params": "json"}
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        resource_type: str,
        output: Any,
        search_params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        output_conn_id: str | None = None,
        formats: Sequence[str] = ("ndjson",),
        compression: str | None = None,
        smart_fhir_conn_id: str = "smart_fhir_default",
        incremental: str | None = "auto",
        page_size: int | None = None,
        method: str = "GET",
        max_part_bytes: int = DEFAULT_MAX_PART_BYTES,
        max_part_lines: int = DEFAULT_MAX_PART_LINES,
        page_retries: int = 5,
        handling: str | None = None,
        asset_alias: str | None = None,
        parquet_output: Any = None,
        parquet_options: Mapping[str, Any] | None = None,
        delta_options: Mapping[str, Any] | None = None,
        attachments: bool | str | dict[str, Any] | None = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.attachments = check_attachments_option(attachments)
        self.delta_options = dict(delta_options or {})
        self.parquet_output = parquet_output
        self.parquet_options = dict(parquet_options or {})
        self.resource_type = resource_type
        # Not ``params``: BaseOperator owns that name (task Params, merged with the DAG's).
        self.search_params = search_params
        # ``output`` is BaseOperator's XComArg property: the location is kept under another name.
        self.output_location = output
        self.output_conn_id = output_conn_id
        self.formats = self._check_formats(formats)
        templated = isinstance(attachments, str) and ("{{" in attachments or "{%" in attachments)
        if "ndjson" not in self.formats and not templated and AttachmentSettings.from_option(attachments):
            raise ValueError("attachments need 'ndjson' in formats: they are read from the landed NDJSON run")
        self.compression = check_compression(compression)
        self.smart_fhir_conn_id = smart_fhir_conn_id
        if incremental not in INCREMENTAL_MODES:
            raise ValueError(f"incremental must be 'auto', 'data_interval', 'watermark' or None; got {incremental!r}")
        self.incremental = incremental
        if page_size is not None and (not isinstance(page_size, int) or page_size < 1):
            raise ValueError(f"page_size must be a positive integer (sent as _count); got {page_size!r}")
        self.page_size = page_size
        self.method = str(method).upper()
        if self.method not in ("GET", "POST"):
            raise ValueError(f"method must be 'GET' or 'POST'; got {method!r}")
        self.max_part_bytes = max_part_bytes
        self.max_part_lines = max_part_lines
        self.page_retries = page_retries
        if handling not in ("strict", "lenient", None):
            raise ValueError(f"handling must be 'strict', 'lenient' or None; got {handling!r}")
        self.handling = handling
        self._pages_read = 0  # pages the current run has read: a refusal after the first one may pass on a retry
        self._declare_outlets(asset_alias)

    @staticmethod
    def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
        chosen = check_formats(formats)
        if "delta" in chosen and "ndjson" not in chosen:
            raise ValueError("formats with 'delta' need 'ndjson' too: the tables are merged from the landed run")
        return chosen

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the FHIR server in, every published location out (operators._lineage)."""
        return lineage_on_complete(self)

    # -- Assets ---------------------------------------------------------------------------------------------

    def _declare_outlets(self, asset_alias: str | None) -> None:
        """Declare what this task produces, so downstream DAGs can be scheduled on it.

        A static output and resource type give a plain ``Asset`` per output root and resource type; a
        templated one gives an ``AssetAlias`` and each run attaches the Asset of every type it wrote
        (:mod:`~airflow_provider_smart.operators._assets`).
        """
        root = static_uri(self.output_location)
        static_type = isinstance(self.resource_type, str) and "{{" not in self.resource_type
        if root is not None and static_type:
            self._outlets = declare_outlets(self, [f"{root}/{safe_segment(self.resource_type)}"], None)
        else:
            self._outlets = declare_outlets(self, [], asset_alias or default_alias_name(self, "fhir-search"))

    def _emit_asset_events(self, context: Context, root: str, summary: dict[str, Any]) -> None:
        events = {
            f"{root}/{safe_segment(resource_type)}": {
                "run": summary["run"],
                "resource_type": resource_type,
                "count": count,
                "rows": count,
                "format": "ndjson",
                "directory": summary["directories"][resource_type],
                "high_water_mark": summary["high_water_mark"],
            }
            for resource_type, count in summary["counts"].items()
        }
        emit_asset_events(context, self._outlets, events)

    @staticmethod
    def _refuse_another_searchs_run(directory: ObjectStoragePath, fingerprint: str) -> None:
        """A rerun replaces its own run directory; it must never replace what another search wrote there
        (two tasks searching the same type into the same output root on the same interval)."""
        marker = read_json(directory / SUCCESS_MARKER)
        theirs = marker.get("search_fingerprint") if isinstance(marker, dict) else None
        if theirs is not None and theirs != fingerprint:
            raise ValueError(
                f"{storage_uri(directory)} holds the output of another search (different connection or "
                "search parameters), which this run would replace. Give each search its own output root."
            )

    # -- run --------------------------------------------------------------------------------------------------

    def _attachment_settings(self) -> AttachmentSettings | None:
        """The rendered ``attachments`` option, checked before anything is searched."""
        settings = AttachmentSettings.from_option(self.attachments)
        if settings is not None and "ndjson" not in self.formats:
            raise ValueError("attachments need 'ndjson' in formats: they are read from the landed NDJSON run")
        return settings

    def _land_attachments(
        self,
        client: SupportsFhirRequest,
        output: ObjectStoragePath,
        run: str,
        results: Mapping[str, Any],
        settings: AttachmentSettings | None,
    ) -> dict[str, Any] | None:
        """Fetch the attachments of the committed run with the search's own client, when asked to."""
        from airflow_provider_smart.storage.attachments import attachments_destination, land_attachments

        if settings is None:
            return None
        sources = [
            output / safe_segment(name) / run / part.rsplit("/", 1)[-1]
            for name, result in sorted(results.items())
            for part in result.parts
        ]
        return land_attachments(client, sources, attachments_destination(output, run), settings, logger=self.log)

    def get_http(self) -> SupportsFhirRequest:
        """The HTTP client of the ``smart_fhir`` connection (a seam for tests and subclasses)."""
        from airflow_provider_smart.hooks.smart import SmartFhirHook

        client: SupportsFhirRequest = SmartFhirHook(smart_fhir_conn_id=self.smart_fhir_conn_id).get_client()
        return client

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_smart.operators._failfast import failing_fast

        self._pages_read = 0
        # Only a refusal of the search itself (its first page) skips the retries.
        with failing_fast(unless=lambda: self._pages_read > 0):
            return self._search(context)

    def _search(self, context: Context) -> dict[str, Any]:
        resource_type = validate_resource_type(self.resource_type)
        attachment_settings = self._attachment_settings()
        output = resolve_output(self.output_location, self.output_conn_id)
        check_writable(output)
        params = normalize_params(self.search_params)
        if self.page_size is not None:
            params = [(k, v) for k, v in params if k != "_count"] + [("_count", str(self.page_size))]
        incremental = resolve_incremental(self.incremental, context)
        if incremental is not None and any(k == "_lastUpdated" for k, _ in params):
            raise ValueError(
                f"params set _lastUpdated while incremental={incremental!r} sets it too; "
                "pass incremental=None to use your own _lastUpdated bounds"
            )

        window: dict[str, str | None] = {}
        store: WatermarkStore | None = None
        previous: str | None = None
        window_params: list[tuple[str, str]] = []
        if incremental == "data_interval":
            start, end = context.get("data_interval_start"), context.get("data_interval_end")
            if start is None or end is None or start >= end:
                raise ValueError(
                    "incremental='data_interval' needs a DAG run with a non-empty data interval "
                    f"(got start={start}, end={end}). Schedule the DAG with a data-interval timetable "
                    "(e.g. CronDataIntervalTimetable, or CronTriggerTimetable(..., interval=...)), or pass "
                    "incremental='auto' (the default), 'watermark' or None"
                )
            window_params = last_updated_window(start, end)
            window = {"start": format_instant(start), "end": format_instant(end)}
            run = interval_label(start, end)
        else:
            run = safe_segment(str(context.get("run_id") or "manual"))
            if incremental == "watermark":
                store = WatermarkStore(output, self.smart_fhir_conn_id, resource_type, params)
                previous = store.load()
                if previous is not None:
                    window_params = [("_lastUpdated", f"gt{previous}")]
                window = {"after": previous}

        fingerprint = search_fingerprint(self.smart_fhir_conn_id, resource_type, params)
        self._refuse_another_searchs_run(output / safe_segment(resource_type) / run, fingerprint)
        request = SearchRequest.build(resource_type, params + window_params, self.method, handling=self.handling)
        has_includes = any(k in _INCLUDE_PARAMS for k, _ in params)
        http = self.get_http()
        search = FhirSearch(http, request, page_retries=self.page_retries)
        self.log.info(
            "Searching %s (%s, %d parameters, incremental=%s %s) into %s, run %s",
            resource_type,
            self.method,
            len(request.params),
            incremental,
            window,
            storage_uri(output),
            run,
        )
        sink = None
        if "parquet" in self.formats:
            sink = ParquetRunSink(
                parquet_root(output, self.parquet_output, self.output_conn_id),
                run,
                primary_type=resource_type,
                options=self.parquet_options,
            )
        writer: NdjsonRunWriter | ParquetOnlyRunWriter
        if "ndjson" in self.formats:
            writer = NdjsonRunWriter(
                output,
                run,
                primary_type=resource_type,
                compression=self.compression,
                max_part_bytes=self.max_part_bytes,
                max_part_lines=self.max_part_lines,
            )
            tee = sink
        else:
            assert sink is not None
            writer, tee = ParquetOnlyRunWriter(sink), None
        parquet_tables: dict[str, Any] | None = None
        with writer, contextlib.ExitStack() as cleanup:
            if tee is not None:
                cleanup.enter_context(tee)
            types_seen: set[str] = set()
            for page in search.pages():
                self._pages_read = page.number
                for resource in (*page.matches, *page.includes):
                    # Each type becomes a directory (NDJSON and Parquet alike): only FHIR type names may.
                    name = resource.get("resourceType")
                    if name not in types_seen:
                        types_seen.add(checked_resource_type(name, "resourceType of a search result"))
                for resource in page.matches:
                    # With _include in play the same resource may arrive as a match and an include.
                    if writer.write(resource, deduplicate=has_includes) and tee is not None:
                        tee.write(resource)
                for resource in page.includes:
                    if writer.write(resource, deduplicate=True) and tee is not None:
                        tee.write(resource)
                if page.number % _PROGRESS_EVERY_PAGES == 0:
                    self.log.info("Page %d: %s written so far", page.number, writer.counts)
            results = writer.commit(
                {
                    "search": {"resource_type": resource_type, "params": [list(p) for p in request.params]},
                    "search_fingerprint": fingerprint,
                    "high_water_mark": search.high_water_mark,
                    "incremental": incremental,
                    "window": window,
                }
            )
            if tee is not None:
                # After the NDJSON commit: the raw layer is complete before its typed copy appears.
                parquet_tables = tee.commit()
            elif sink is not None:
                parquet_tables = {name: {"rows": r.count, "files": r.parts} for name, r in results.items()}

        # After the run's files are committed, before tables and the watermark: a retry fetches only what
        # did not land, and a fatal failure leaves the watermark where it was.
        attachments_summary = self._land_attachments(http, output, run, results, attachment_settings)
        delta_summary = None
        if "delta" in self.formats:  # before the watermark moves: a retry searches and merges again
            from airflow_provider_smart.operators.tables import merge_landed_run

            delta_summary = merge_landed_run(
                output,
                run,
                options=self.delta_options,
                output_conn_id=self.output_conn_id,
                resource_types=sorted(results),
                logger=self.log,
            )
        watermark = search.high_water_mark
        if store is not None:
            if search.high_water_mark is not None:
                # The next run asks for _lastUpdated=gt<this>: a garbage or future mark would skip data.
                check_watermark_instant(
                    search.high_water_mark, "the search's high-water mark (the greatest meta.lastUpdated)"
                )
            # Only now, with every file committed, may the next run start after this mark.
            watermark = store.advance(search.high_water_mark, run=run, previous=previous)

        # With Parquet only, the files listed are the Parquet parts.
        data_root = output if sink is None or "ndjson" in self.formats else sink.root
        summary: dict[str, Any] = {
            "run": run,
            "resource_type": resource_type,
            "output": storage_uri(output),
            "formats": list(self.formats),
            "compression": self.compression,
            "incremental": incremental,
            "window": window,
            "counts": {name: result.count for name, result in sorted(results.items())},
            "directories": {name: storage_uri(data_root / safe_segment(name) / run) for name in sorted(results)},
            "paths": {
                name: [
                    f"{storage_uri(data_root / safe_segment(name) / run)}/{part.rsplit('/', 1)[-1]}" for part in r.parts
                ]
                for name, r in sorted(results.items())
            },
            "high_water_mark": search.high_water_mark,
            "watermark": watermark if incremental == "watermark" else None,
            "pages": search.stats.pages,
            "retries": search.stats.retries,
            "duplicates_dropped": writer.duplicates,
            "server_total": search.stats.total,
        }
        if sink is not None and parquet_tables is not None:
            root = sink.root
            summary["parquet"] = {
                "output": storage_uri(root),
                "counts": {name: info["rows"] for name, info in sorted(parquet_tables.items())},
                "directories": {name: storage_uri(root / name / run) for name in sorted(parquet_tables)},
            }
        if delta_summary is not None:
            summary["delta"] = delta_summary
        if attachments_summary is not None:
            summary["attachments"] = attachments_summary
        self.log.info(
            "Committed run %s: %s in %d pages (%d page retries)",
            run,
            summary["counts"],
            search.stats.pages,
            search.stats.retries,
        )
        if not summary["counts"].get(resource_type):
            self._say_the_run_found_nothing(context, resource_type, incremental, window)
        self._emit_asset_events(context, storage_uri(output), summary)
        return summary

    def _say_the_run_found_nothing(
        self, context: Context, resource_type: str, incremental: str | None, window: Mapping[str, Any]
    ) -> None:
        """A green run that landed nothing must say so, and why: most often its window holds no data (a run
        triggered by hand covers the last complete interval, which a test server's data may not reach)."""
        if incremental == "data_interval":
            why = (
                f"its data interval [{window.get('start')}, {window.get('end')}) holds no {resource_type} the "
                "search matches. A run triggered by hand covers the last complete interval; for older data "
                "trigger with a logical date inside it (airflow dags test <dag_id> 2024-03-01) or backfill"
            )
        elif incremental == "watermark" and window.get("after"):
            why = f"nothing matching changed after the high-water mark {window['after']}"
        else:
            why = "the search matched nothing on the server"
        run_type = str(getattr(context.get("dag_run"), "run_type", "") or context.get("run_id") or "")
        # Attention for a run someone started to see data; a quiet scheduled day is normal.
        report = self.log.warning if "manual" in run_type else self.log.info
        report("This run landed no %s: %s.", resource_type, why)
