"""Bulk Data ``$export`` operators: kick off (or re-attach), wait (deferred), download, finalise."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_smart.fhir.bulk.kickoff import ExportRequest
from airflow_provider_smart.fhir.bulk.manifest import Manifest, parse_manifest, plan_files
from airflow_provider_smart.fhir.bulk.status import ExportComplete, ExportFailed, PollPolicy
from airflow_provider_smart.storage.attachments import check_attachments_option
from airflow_provider_smart.storage.export_log import ExportLog
from airflow_provider_smart.storage.export_state import (
    ExportLayout,
    ExportStateError,
    export_id_for,
    manifest_without_queries,
    read_watermark,
    utcnow_iso,
    watermark_path,
    write_watermark,
)
from airflow_provider_smart.storage.lease import DEFAULT_LEASE_TIMEOUT, ExportLease, LeaseHeldError
from airflow_provider_smart.storage.paths import resolve_output, safe_segment
from airflow_provider_smart.transport.sanitize import safe_text
from airflow_provider_smart.transport.urls import redact_url

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from airflow_provider_smart.fhir.bulk.body import StreamLimits
    from airflow_provider_smart.hooks.smart import SmartFhirHook

#: Formats the export operator can land: the downloaded NDJSON, and Parquet tables made from it.
SUPPORTED_FORMATS: tuple[str, ...] = ("ndjson", "parquet", "delta")
SINCE_MODES = ("watermark", "data_interval")
DOWNLOAD_MODES = ("inline", "fanout")


def _seconds(value: timedelta | float | int | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def lease_owner(context: Context, dag_id: str, task_id: str) -> str:
    """The task instance as a lease owner: its retries are the same owner, other runs are not."""
    ti = context.get("ti")
    map_index = getattr(ti, "map_index", -1)
    return f"{dag_id}/{task_id}/{context.get('run_id')}" + (
        f"[{map_index}]" if isinstance(map_index, int) and map_index >= 0 else ""
    )


def is_last_try(context: Context, retries: int) -> bool:
    """True when a failure now is final (no retry follows): the try number has reached the task's tries."""
    ti = context.get("ti")
    try_number, max_tries = getattr(ti, "try_number", None), getattr(ti, "max_tries", None)
    if isinstance(try_number, int) and isinstance(max_tries, int):
        return try_number > max_tries
    return not retries


def default_export_label(context: Context) -> str:
    """The run id (plus the map index of a mapped task): one export directory per logical run."""
    label = str(context["run_id"])
    map_index = getattr(context.get("ti"), "map_index", -1)
    if isinstance(map_index, int) and map_index >= 0:
        label = f"{label}.{map_index}"
    return safe_segment(label)


class _ExportBase(BaseOperator):
    """Shared plumbing: hook, layout, refreshing the manifest, and finishing an export."""

    smart_fhir_conn_id: str

    def _hook(self) -> SmartFhirHook:
        from airflow_provider_smart.hooks.smart import SmartFhirHook

        return SmartFhirHook(smart_fhir_conn_id=self.smart_fhir_conn_id)

    def _refetch_manifest(self, client: Any, status_url: str) -> Manifest:
        """A fresh manifest from the status URL (new file URLs after a 410 Gone)."""
        from airflow_provider_smart.fhir.bulk.sync import ExportFailedError, fetch_manifest, poll_once

        limits = self._limits()
        result = poll_once(client, status_url, limits=limits)
        if not isinstance(result, ExportComplete):
            message = getattr(result, "message", type(result).__name__)
            raise ExportFailedError(f"could not fetch the manifest again for fresh file URLs: {message}")
        self.log.info("fetched the manifest again from %s for fresh file URLs", redact_url(status_url))
        return fetch_manifest(client, result.manifest, status_url, limits=limits)

    def _limits(self) -> StreamLimits:
        """The ``download_limits`` in force (the manifest's caps and each file's)."""
        from airflow_provider_smart.fhir.bulk.body import StreamLimits

        return StreamLimits.from_options(getattr(self, "download_limits", None))

    def _stored_manifest(
        self, client: Any, layout: ExportLayout, state: dict[str, Any], keys: Sequence[str] | None = None
    ) -> Manifest:
        """The manifest of ``state.json``, with fresh file URLs from the status URL when the stored ones
        lost their query strings (presigned signatures are never kept on the output storage) and a file
        (of ``keys``, when given) is still to be downloaded."""
        from airflow_provider_smart.fhir.bulk.sync import ExportFailedError

        stored = parse_manifest(state["manifest"])
        if not state.get("file_urls_redacted") or state.get("phase") == "complete":
            return stored
        wanted = None if keys is None else set(keys)
        if all(layout.is_committed(p) for p in plan_files(stored) if wanted is None or p.key in wanted):
            return stored  # nothing left to download: no URL is needed
        status_url = state.get("status_url") or ""
        try:
            fresh = self._refetch_manifest(client, status_url)
        except ExportFailedError as exc:
            raise ExportStateError(
                f"{safe_text(exc, limit=500)}. state.json keeps file URLs without their query strings (presigned "
                "signatures are not stored), so a resume needs the manifest from the server, which no longer "
                "serves it: run the export again with a new export_label, or clear this one"
            ) from None
        if fresh.transaction_time != stored.transaction_time or [p.key for p in plan_files(fresh)] != [
            p.key for p in plan_files(stored)
        ]:
            raise ExportStateError(
                f"the manifest at {redact_url(status_url)} no longer matches the export recorded in state.json "
                "(another transactionTime or other files): run the export again with a new export_label"
            )
        return fresh

    def _land_parquet(self, layout: ExportLayout, manifest: Manifest, spec: dict[str, Any]) -> dict[str, Any]:
        """Parquet tables from every landed output file: ``<parquet root>/<ResourceType>/<label>/``."""
        from airflow_provider_smart.parquet.sink import ParquetRunSink, parquet_root

        root = parquet_root(layout.root, spec.get("output"), spec.get("output_conn_id"))
        with ParquetRunSink(root, layout.label, options=spec.get("options")) as sink:
            for planned in plan_files(manifest):
                if planned.kind == "output":
                    sink.write_ndjson(layout.final_path(planned), planned.expected_type)
            tables = sink.commit()
        self.log.info("export %s as Parquet: %s", layout.label, {k: v["rows"] for k, v in tables.items()})
        return {
            "output": f"{root.protocol or 'file'}://{root.path}".rstrip("/"),
            "counts": {name: info["rows"] for name, info in sorted(tables.items())},
        }

    @staticmethod
    def _export_log(layout: ExportLayout, state: dict[str, Any]) -> ExportLog:
        """The export's ``log.ndjson`` (storage/export_log.py), continued under its status URL."""
        return ExportLog.beside(layout.export_dir, state.get("status_url"))

    def _finish(
        self,
        client: Any,
        layout: ExportLayout,
        state: dict[str, Any],
        manifest: Manifest,
        *,
        delete_on_success: bool,
        fail_on_severity: str | None,
        parquet: dict[str, Any] | None = None,
        delta: dict[str, Any] | None = None,
        attachments: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Markers, error-file report, attachments, Parquet, watermark, DELETE, and the summary; after every
        file landed.

        ``attachments`` (the settings as :meth:`AttachmentSettings.to_option` gives them) fetches the
        attachments of the landed resources after the NDJSON markers and before Parquet and the watermark: a
        failure there leaves the NDJSON complete and the next attempt fetches only what did not land.
        ``parquet`` (``{"output", "output_conn_id", "options"}``) converts the landed output files into
        Parquet tables after the NDJSON markers and before the watermark moves: a failure there leaves the
        NDJSON complete and the next attempt converts again.
        """
        from airflow_provider_smart.fhir.bulk.sync import delete_export
        from airflow_provider_smart.storage.export_landing import ExportOutcomeError, finalize

        status_url = state.get("status_url")
        lease = self._lease_for(layout, state)
        if lease is not None:
            lease.check()  # publishing under a label another run has taken would mix two exports
        try:
            summary = finalize(layout, manifest, fail_on_severity=fail_on_severity, logger=self.log)
        except ExportOutcomeError as exc:
            # The export is over on the server either way; a retry starts a new one.
            if status_url and delete_on_success:
                delete_export(client, status_url)
            layout.write_state(dict(state, phase="failed", message=safe_text(exc, limit=2000)))
            if lease is not None:
                lease.release()
            raise
        if attachments is not None:
            with lease.kept_alive() if lease is not None else contextlib.nullcontext():
                summary["attachments"] = self._land_attachments(client, layout, manifest, attachments)
        if parquet is not None:
            summary["parquet"] = self._land_parquet(layout, manifest, parquet)
        if delta is not None:  # current-state tables, before the watermark moves (a retry merges again)
            from airflow_provider_smart.operators.tables import merge_landed_run

            summary["delta"] = merge_landed_run(layout.root, layout.label, logger=self.log, **delta)
        scope = state["scope"]
        conn_id = state["conn_id"]
        wm = write_watermark(layout.root, conn_id, scope, manifest.transaction_time, layout.label)
        deleted = bool(status_url and delete_on_success and delete_export(client, status_url))
        summary.update(
            level=scope.get("level"),
            group_id=scope.get("group_id"),
            since=state.get("since"),
            watermark=str(wm),
            deleted_on_server=deleted,
        )
        layout.write_state(dict(state, phase="complete", summary=summary, completed_at=utcnow_iso()))
        self._export_log(layout, state).export_complete(  # export log: export_complete
            files=sum(len(paths) for paths in summary.get("files", {}).values()),
            resources=sum(summary.get("counts", {}).values()),
            size=int(summary.get("bytes", 0)),
            started_at=state.get("kicked_off_at"),
            attachments=(summary.get("attachments") or {}).get("landed") if attachments is not None else None,
        )
        if lease is not None:
            lease.release()
        self.log.info(
            "export %s landed: %s resources by type, transactionTime %s",
            layout.label,
            summary["counts"],
            summary["transaction_time"],
        )
        return summary

    def _land_attachments(
        self, client: Any, layout: ExportLayout, manifest: Manifest, option: dict[str, Any]
    ) -> dict[str, Any]:
        """The attachments of every landed output file, under ``<root>/attachments/<label>/``, fetched with
        the export's own client (its token decision and wait policy)."""
        from airflow_provider_smart.storage.attachments import (
            AttachmentSettings,
            attachments_destination,
            land_attachments,
        )

        settings = AttachmentSettings.from_option(option) or AttachmentSettings()
        sources = [layout.final_path(p) for p in plan_files(manifest) if p.kind == "output"]
        destination = attachments_destination(layout.root, layout.label)
        return land_attachments(client, sources, destination, settings, logger=self.log)

    def _lease_for(self, layout: ExportLayout, state: dict[str, Any]) -> ExportLease | None:
        """The lease of the run that started this export (None for exports started before leases)."""
        owner = state.get("lease_owner")
        if not isinstance(owner, str):
            return None
        timeout = float(state.get("lease_timeout") or DEFAULT_LEASE_TIMEOUT)
        return ExportLease(layout.export_dir, owner, timeout=timeout)


class FhirBulkExportOperator(_ExportBase):
    """Run a FHIR Bulk Data ``$export`` and land its files on any ObjectStoragePath.

    Deferrable by default: the task kicks off the export, writes the status URL to a state file at the
    output location (before deferring, so a retried task re-attaches to the running export instead of
    starting another), and hands the polling to
    :class:`~airflow_provider_smart.triggers.bulk_export.BulkExportStatusTrigger`. When the export is
    complete it downloads every file (streamed, checked line by line, committed atomically), reports
    the error files, advances the incremental watermark and sends DELETE.

    :param smart_fhir_conn_id: the ``smart_fhir`` connection. (templated)
    :param level: ``system``, ``patient`` or ``group``. (templated)
    :param group_id: the Group id for ``level="group"``. (templated)
    :param output: where files land: an ObjectStoragePath, a URI (``s3://bucket/fhir``) or a local
        directory. (templated)
    :param output_conn_id: the Airflow connection of the storage (e.g. ``aws_default``).
    :param export_label: the directory name of this export under each resource type; default the run
        id (plus map index). (templated)
    :param since: ``_since``: a datetime or ISO instant, ``"watermark"`` (the transactionTime of the
        previous complete export of the same scope to the same output; a full export the first time) or
        ``"data_interval"`` (the run's data interval start). (templated)
    :param until: ``_until`` (Bulk Data 2.0+ servers). (templated)
    :param types: ``_type``: resource types to export. (templated)
    :param elements: ``_elements``. (templated)
    :param type_filters: ``_typeFilter`` values such as ``"MedicationRequest?status=active"``. (templated)
    :param patients: ``patient`` references (POST only) narrowing a Patient or Group export. (templated)
    :param include_associated_data: ``includeAssociatedData`` codes. (templated)
    :param organize_output_by: ``organizeOutputBy`` resource type (STU3); files land in ``by-<Type>/``.
        (templated)
    :param allow_partial_manifests: ``allowPartialManifests``; paged manifests are followed either way.
    :param output_format: ``_outputFormat``; default ``application/fhir+ndjson``. (templated)
    :param kickoff_method: ``auto`` (GET, or POST when ``patients`` is given), ``GET`` or ``POST``
        (STU4 ballot servers may be POST-only).
    :param type_style: ``comma`` (``_type=A,B``) or ``repeat`` (``_type=A&_type=B``); also applies to
        ``_elements`` and ``includeAssociatedData``.
    :param type_filter_style: ``repeat`` (default; safe with commas inside values) or ``comma``.
    :param lenient: send ``Prefer: handling=lenient`` so unsupported parameters are ignored, not refused.
    :param formats: ``("ndjson",)`` (default) or ``("ndjson", "parquet")``: the downloaded NDJSON files are
        then also converted into Parquet tables (one per resource type, typed by FHIR R4; see the Parquet
        docs page) under ``parquet_output``, layout ``<ResourceType>/<export label>/part-NNNNN.parquet``.
        NDJSON is the raw layer the download lands in, so ``("parquet",)`` keeps it too.
    :param parquet_output: root of the Parquet tables; default ``<output>/parquet``. (templated)
    :param parquet_options: options of the Parquet writer, e.g. ``{"decimal": "string"}``.
    :param delta_options: with ``"delta"`` in ``formats``: where and how the landed export is merged into
        current-state Delta tables (``output`` default ``<output>/tables``, ``conn_id``, ``compact``,
        ``vacuum_retention_hours`` ...; see the "Current-state tables" docs page). (templated)
    :param attachments: fetch the attachments (notes, documents) of the landed resources: ``False``
        (default), ``True`` (default settings) or a dict of settings (``max_bytes``, ``allowed_types``,
        ``workers``, ``inline_max_bytes``, ``rewrite_urls``, ``on_error``; see the attachments docs page).
        They land under ``<output>/attachments/<export label>/`` in the finishing step, after the resources
        and before the watermark moves; the summary gains their counts. A rendered template may say
        ``true``/``false`` or hold a JSON object. (templated)
    :param deferrable: poll in the triggerer (default) or in the worker.
    :param poll_interval: seconds between polls when the server sends no Retry-After.
    :param min_poll_interval: lower clamp of Retry-After.
    :param max_poll_interval: upper clamp of Retry-After.
    :param max_transient_errors: failed status polls in a row before the export is given up.
    :param export_timeout: how long the export may take on the server (timedelta or seconds) before it
        is cancelled with DELETE; None to wait forever.
    :param delete_on_success: send DELETE after the files have landed (frees the server's export slot).
    :param fail_on_severity: fail the task when an error file holds an issue of this severity or worse:
        ``error`` (default: an error means resources are missing from the export), ``fatal``, ``warning``,
        ``information`` or ``none``. The landed files are kept unpublished under
        ``_exports/<label>/staging/`` and the watermark does not move.
    :param lease_timeout: seconds after its last heartbeat that a run's hold on the export label lapses
        (a worker that died); while deferred, the hold lasts until the export's deadline.
    :param clock_skew: how far (timedelta or seconds) the server's ``transactionTime`` may lie ahead of
        this worker's clock before it is refused as a watermark.
    :param download_mode: ``inline`` (this task downloads and returns the summary) or ``fanout`` (this
        task returns a list of batches for :class:`FhirBulkDownloadOperator` to map over with
        ``.expand(batch=export.output)``, and pushes a reference to the export under the XCom key
        ``export`` for :class:`FhirBulkExportFinalizeOperator` (``export=export.output["export"]``)).
    :param max_download_workers: parallel downloads in this task.
    :param max_download_attempts: attempts per file (connection drops restart the file).
    :param download_limits: bounds on the manifest and the file downloads, by name: ``max_line_bytes``,
        ``max_file_bytes``, ``max_export_bytes``, ``max_seconds``, ``stall_timeout``,
        ``min_bytes_per_second``, ``rate_window``, ``chunk_size``, ``max_manifest_bytes``,
        ``max_manifest_files`` (defaults and meaning in the security page of the docs); in fan-out mode,
        set the file bounds on :class:`FhirBulkDownloadOperator` too.
    :param fanout_batch_size: files per mapped download task; default spreads the files over at most
        ``max_batches`` tasks.
    :param max_batches: most mapped download tasks; default ``[core] max_map_length``.
    """

    template_fields: Sequence[str] = (
        "smart_fhir_conn_id",
        "level",
        "group_id",
        "output_uri",
        "export_label",
        "since",
        "until",
        "types",
        "elements",
        "type_filters",
        "patients",
        "include_associated_data",
        "organize_output_by",
        "output_format",
        "parquet_output",
        "delta_options",
        "attachments",
    )
    ui_color = "#d8f0e6"

    def __init__(
        self,
        *,
        output: Any,
        smart_fhir_conn_id: str = "smart_fhir_default",
        level: str = "system",
        group_id: str | None = None,
        output_conn_id: str | None = None,
        export_label: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        types: str | Sequence[str] | None = None,
        elements: str | Sequence[str] | None = None,
        type_filters: str | Sequence[str] | None = None,
        patients: str | Sequence[str] | None = None,
        include_associated_data: str | Sequence[str] | None = None,
        organize_output_by: str | None = None,
        allow_partial_manifests: bool | None = None,
        output_format: str | None = "application/fhir+ndjson",
        kickoff_method: str = "auto",
        type_style: str = "comma",
        type_filter_style: str = "repeat",
        lenient: bool = False,
        formats: Sequence[str] = ("ndjson",),
        parquet_output: Any = None,
        parquet_options: dict[str, Any] | None = None,
        delta_options: dict[str, Any] | None = None,
        attachments: bool | str | dict[str, Any] | None = False,
        deferrable: bool = True,
        poll_interval: float = 10.0,
        min_poll_interval: float = 1.0,
        max_poll_interval: float = 3600.0,
        max_transient_errors: int = 10,
        export_timeout: timedelta | float | None = timedelta(hours=24),
        delete_on_success: bool = True,
        fail_on_severity: str | None = "error",
        lease_timeout: timedelta | float = DEFAULT_LEASE_TIMEOUT,
        clock_skew: timedelta | float = timedelta(minutes=5),
        download_mode: str = "inline",
        max_download_workers: int = 4,
        max_download_attempts: int = 5,
        download_limits: Mapping[str, Any] | None = None,
        fanout_batch_size: int | None = None,
        max_batches: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from airflow_provider_smart.parquet.sink import check_formats

        fmts = check_formats(formats)
        if download_mode not in DOWNLOAD_MODES:
            raise ValueError(f"download_mode={download_mode!r} must be one of {DOWNLOAD_MODES}")
        if fail_on_severity not in (None, "none", "fatal", "error", "warning", "information"):
            raise ValueError(
                f"fail_on_severity={fail_on_severity!r} must be fatal, error, warning, information or none"
            )
        self.smart_fhir_conn_id = smart_fhir_conn_id
        self.level = level
        self.group_id = group_id
        # ``output`` is BaseOperator's XComArg property, so the location lives in ``output_uri``.
        self.output_uri = output
        self.output_conn_id = output_conn_id
        self.export_label = export_label
        self.since = since
        self.until = until
        self.types = types
        self.elements = elements
        self.type_filters = type_filters
        self.patients = patients
        self.include_associated_data = include_associated_data
        self.organize_output_by = organize_output_by
        self.allow_partial_manifests = allow_partial_manifests
        self.output_format = output_format
        self.kickoff_method = kickoff_method
        self.type_style = type_style
        self.type_filter_style = type_filter_style
        self.lenient = lenient
        self.formats = fmts
        self.parquet_output = parquet_output
        self.parquet_options = dict(parquet_options or {})
        self.delta_options = dict(delta_options or {})
        self.attachments = check_attachments_option(attachments)
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.min_poll_interval = min_poll_interval
        self.max_poll_interval = max_poll_interval
        self.max_transient_errors = max_transient_errors
        self.export_timeout = _seconds(export_timeout)
        self.delete_on_success = delete_on_success
        self.fail_on_severity = fail_on_severity
        self.lease_timeout = float(_seconds(lease_timeout) or DEFAULT_LEASE_TIMEOUT)
        self.clock_skew = float(_seconds(clock_skew) or 0.0)
        self.download_mode = download_mode
        self.max_download_workers = max_download_workers
        self.max_download_attempts = max_download_attempts
        self.download_limits = _checked_limits(download_limits)
        self.fanout_batch_size = fanout_batch_size
        self.max_batches = max_batches
        self._active: tuple[Any, ExportLayout, str] | None = None
        self._held: tuple[ExportLayout, ExportLease] | None = None

    # -- building blocks ---------------------------------------------------------------------------
    @property
    def policy(self) -> PollPolicy:
        return PollPolicy(
            interval=float(self.poll_interval),
            min_interval=float(self.min_poll_interval),
            max_interval=float(self.max_poll_interval),
            max_transient_errors=int(self.max_transient_errors),
        )

    def build_request(self, since: datetime | str | None = None) -> ExportRequest:
        return ExportRequest.create(
            level=self.level,
            group_id=self.group_id,
            output_format=self.output_format,
            since=since,
            until=self.until,
            types=self.types,
            elements=self.elements,
            type_filters=self.type_filters,
            patients=self.patients,
            include_associated_data=self.include_associated_data,
            organize_output_by=self.organize_output_by,
            allow_partial_manifests=self.allow_partial_manifests,
            method=self.kickoff_method,
            type_style=self.type_style,
            type_filter_style=self.type_filter_style,
            lenient=self.lenient,
        )

    def _root(self) -> ObjectStoragePath:
        return resolve_output(self.output_uri, self.output_conn_id)

    def _layout(self, context: Context) -> ExportLayout:
        label = self.export_label or default_export_label(context)
        return ExportLayout(self._root(), label)

    def _resolve_since(self, context: Context, layout: ExportLayout, scope: dict[str, Any]) -> str | None:
        since = self.since
        if since == "watermark":
            mark = read_watermark(layout.root, self.smart_fhir_conn_id, scope)
            if mark is None:
                self.log.info("no watermark yet at %s: running a full export", layout.root)
            else:
                self.log.info("incremental export since the last export's transactionTime %s", mark)
            return mark
        if since == "data_interval":
            start = context.get("data_interval_start")
            if start is None:
                raise ValueError("since='data_interval' needs a run with a data interval (a scheduled DAG run)")
            return ExportRequest.create(since=start).since
        if isinstance(since, str) and since.strip().lower() in ("", "none"):
            return None
        return ExportRequest.create(since=since).since if since else None

    # -- execute -----------------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        return self._guarded(context, lambda: self._execute(context))

    def _guarded(self, context: Context, body: Any) -> Any:
        """Run ``body``; on a failure no retry follows (last try, or one no retry can fix), cancel the
        export on the server with DELETE; on a retryable one keep it for the retry to re-attach."""
        from airflow.sdk.exceptions import TaskDeferred

        self._held = None
        try:
            return body()
        except TaskDeferred:
            raise
        except BaseException as exc:
            if self._held is not None:
                self._after_failure(context, exc, *self._held)
            raise

    def _after_failure(self, context: Context, exc: BaseException, layout: ExportLayout, lease: ExportLease) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_provider_smart.fhir.bulk.manifest import ManifestError
        from airflow_provider_smart.fhir.bulk.sync import delete_export
        from airflow_provider_smart.fhir.instants import WatermarkError
        from airflow_provider_smart.fhir.names import UnsafeNameError
        from airflow_provider_smart.storage.export_landing import ExportOutcomeError

        if isinstance(exc, LeaseHeldError):
            return  # the label is someone else's now: touch nothing
        unfixable = isinstance(
            exc, (AirflowFailException, ExportOutcomeError, ManifestError, WatermarkError, UnsafeNameError)
        )
        if not (unfixable or is_last_try(context, int(self.retries or 0))):
            self.log.info("export %s kept on the server for the retry to re-attach", layout.label)
            return
        try:
            state = layout.read_state() or {}
            status_url = state.get("status_url")
            # Only an export this run started or re-attached to (never one a scope check refused).
            mine = layout.export_id is not None and state.get("export_id") == layout.export_id
            if mine and status_url and state.get("phase") in ("pending", "downloading"):
                self.log.warning(
                    "no retry follows this failure: cancelling export %s with DELETE", redact_url(status_url)
                )
                client = self._active[0] if self._active else self._hook().get_client()
                delete_export(client, status_url)
                layout.write_state(dict(state, phase="failed", message=safe_text(exc, limit=2000)))
            lease.release()
        except Exception as cleanup:
            self.log.warning("could not cancel the export after the failure: %s", safe_text(cleanup))

    def _execute(self, context: Context) -> Any:
        from airflow_provider_smart.fhir.bulk.sync import poll_once
        from airflow_provider_smart.storage.preflight import check_writable

        request = self.build_request()
        scope = request.scope()
        layout = self._layout(context)
        hook = self._hook()
        client = hook.get_client()
        check_writable(layout.root)
        lease = self._own_lease(context, layout)
        lease.acquire()
        self._held = (layout, lease)
        state = layout.read_state()
        if state is not None:
            layout.check_scope(state, scope)
            layout.bind(state)
            phase = state.get("phase")
            if phase == "complete":
                self.log.info("export %s already landed completely; nothing to do", layout.label)
                lease.release()
                if self.download_mode == "fanout":
                    context["ti"].xcom_push(key="export", value=self._fanout_ref(layout, state.get("transaction_time")))
                    return []
                return state.get("summary")
            if phase == "downloading" and state.get("manifest"):
                self.log.info("resuming the download of export %s", layout.label)
                return self._on_manifest(context, client, layout, state, None)
            if phase == "pending" and state.get("status_url"):
                status_url = state["status_url"]
                self.log.info("re-attaching to the running export at %s", redact_url(status_url))
                result = poll_once(client, status_url, max_retry_after=float(self.max_poll_interval))
                self._export_log(layout, state).polled(result)  # export log: the re-attaching poll
                if isinstance(result, ExportComplete):
                    return self._on_manifest(context, client, layout, state, result.manifest)
                if isinstance(result, ExportFailed):
                    if not result.gone:
                        message = safe_text(result.message, limit=2000)
                        layout.write_state(dict(state, phase="failed", message=message))
                        raise RuntimeError(f"the export this task started failed: {message}")
                    self.log.warning("the server no longer knows export %s; starting a new one", layout.label)
                else:
                    return self._wait(context, client, layout, state)

        since = self._resolve_since(context, layout, scope)
        request = self.build_request(since=since)
        layout.clear()
        status_url = self._kick_off_logged(client, layout, request)  # export log (log.ndjson): kickoff
        # From here until the state is durable, a kill or a failure must cancel the export (on_kill).
        self._active = (client, layout, status_url)
        now = time.time()
        state = {
            "scope": scope,
            "conn_id": self.smart_fhir_conn_id,
            "since": request.since,
            "until": request.until,
            "status_url": status_url,
            "export_id": export_id_for(status_url),
            "lease_owner": lease.owner,
            "lease_timeout": self.lease_timeout,
            "phase": "pending",
            "kicked_off_at": utcnow_iso(),
            "deadline": now + self.export_timeout if self.export_timeout else None,
            "kickoffs": int((state or {}).get("kickoffs", 0)) + 1,
        }
        layout.bind(state)
        # Written before deferring: a retried task finds the status URL and re-attaches.
        try:
            layout.write_state(state)
        except BaseException as exc:
            from airflow_provider_smart.fhir.bulk.sync import delete_export

            delete_export(client, status_url)
            self._active = None
            raise ExportStateError(
                f"could not record the export's state at {layout.state_path} "
                f"({type(exc).__name__}: {safe_text(exc, limit=200)}); the export was cancelled with DELETE so "
                "it does not hold the server's export slot"
            ) from None
        self.log.info("export kicked off; status at %s", redact_url(status_url))
        return self._wait(context, client, layout, state)

    # -- the standard export log (storage/export_log.py): the operator's call sites ----------------------
    def _kick_off_logged(self, client: Any, layout: ExportLayout, request: ExportRequest) -> str:
        """``kick_off``, writing the ``kickoff`` event (with the error when it failed)."""
        from airflow_provider_smart.fhir.bulk.kickoff import build_kickoff
        from airflow_provider_smart.fhir.bulk.sync import kick_off
        from airflow_provider_smart.fhir.errors import FhirError

        kick = build_kickoff(client.base_url, request)
        try:
            status_url = kick_off(client, request, max_retry_after=float(self.max_poll_interval))
        except FhirError as exc:
            ExportLog.beside(layout.export_dir, None).kickoff(kick, error_code=exc.status, error_body=str(exc))
            raise
        ExportLog.beside(layout.export_dir, status_url).kickoff(kick)
        return status_url

    def _wait(self, context: Context, client: Any, layout: ExportLayout, state: dict[str, Any]) -> Any:
        status_url = state["status_url"]
        deadline = state.get("deadline")
        self._active = (client, layout, status_url)
        if self.deferrable:
            from airflow_provider_smart.triggers.bulk_export import BulkExportStatusTrigger

            if self._held is not None:
                # Nobody beats while the trigger waits: the hold lasts until the export's deadline.
                self._held[1].heartbeat(until=float(deadline) if deadline else time.time() + 7 * 86400)

            self.defer(
                trigger=BulkExportStatusTrigger(
                    smart_fhir_conn_id=self.smart_fhir_conn_id,
                    status_url=status_url,
                    poll_interval=float(self.poll_interval),
                    min_poll_interval=float(self.min_poll_interval),
                    max_poll_interval=float(self.max_poll_interval),
                    max_transient_errors=int(self.max_transient_errors),
                    deadline=deadline,
                    request_timeout=float(getattr(client, "timeout", 60.0) or 60.0),
                    verify=getattr(client, "verify", True),
                ),
                method_name="execute_complete",
            )
        from airflow.sdk.exceptions import AirflowTaskTimeout

        from airflow_provider_smart.fhir.bulk.sync import ExportTimeoutError, wait_for_export

        try:
            result = wait_for_export(
                client,
                status_url,
                policy=self.policy,
                deadline=deadline,
                limits=self._limits(),
                on_status=self._export_log(layout, state).polled,  # export log: status_progress / status_error
            )
        except (ExportTimeoutError, AirflowTaskTimeout) as exc:
            self._cancel_export(client, layout, state, f"timed out: {exc}")
            raise
        except Exception as exc:
            from airflow_provider_smart.fhir.bulk.sync import ExportFailedError

            if isinstance(exc, ExportFailedError):
                layout.write_state(dict(state, phase="failed", message=safe_text(exc, limit=2000)))
            raise
        return self._on_manifest(context, client, layout, state, result.manifest)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Called when the trigger fires: download on ``complete``; DELETE and fail otherwise."""
        return self._guarded(context, lambda: self._execute_complete(context, event))

    def _execute_complete(self, context: Context, event: dict[str, Any] | None) -> Any:
        layout = self._layout(context)
        state = layout.read_state()
        if state is None:
            raise RuntimeError(f"export state {layout.state_path} disappeared while the task was deferred")
        lease = self._own_lease(context, layout)
        lease.acquire()  # fails when another run took the label while this one was deferred
        self._held = (layout, lease)
        polled = (event or {}).get("status_url")
        if isinstance(polled, str) and polled != state.get("status_url"):
            raise ExportStateError(
                f"{layout.state_path} now belongs to another export than the one this task waited for; "
                "another run reused the export label. Run again with a label of its own"
            )
        layout.bind(state)
        client = self._hook().get_client()
        status = (event or {}).get("status")
        if status == "complete":
            first_page = (event or {}).get("manifest")
            if first_page is None:
                # The event carries a reference only; the manifest is read from the status URL.
                from airflow_provider_smart.fhir.bulk.sync import fetch_completed_page

                first_page = fetch_completed_page(
                    client, state["status_url"], policy=self.policy, limits=self._limits()
                )
            return self._on_manifest(context, client, layout, state, first_page)
        message = safe_text((event or {}).get("message") or f"unexpected trigger event {event!r}", limit=2000)
        self._export_log(layout, state).status_error(message)  # export log: the trigger's failure
        if status == "timeout":
            self._cancel_export(client, layout, state, message)
            raise RuntimeError(f"{message}; the export was cancelled with DELETE (export_timeout)")
        layout.write_state(dict(state, phase="failed", message=message))
        raise RuntimeError(f"Bulk Data export failed: {message}")

    def _cancel_export(self, client: Any, layout: ExportLayout, state: dict[str, Any], why: str) -> None:
        from airflow_provider_smart.fhir.bulk.sync import delete_export

        status_url = state.get("status_url")
        if status_url:
            delete_export(client, status_url)
        layout.write_state(dict(state, phase="failed", message=why))

    def on_kill(self) -> None:
        """The task is being killed: cancel the server-side export so it does not hold the export slot
        (also when the kill came between the kick-off and the first state write)."""
        if self._active is None:
            return
        client, layout, status_url = self._active
        state = layout.read_state() or {}
        if state.get("status_url") != status_url:
            state = dict(state, status_url=status_url, phase="pending")
        if state.get("phase") == "pending":
            self.log.info("task killed: cancelling export %s with DELETE", redact_url(status_url))
            self._cancel_export(client, layout, state, "task killed")

    # -- after the export is complete -------------------------------------------------------------
    def _on_manifest(
        self,
        context: Context,
        client: Any,
        layout: ExportLayout,
        state: dict[str, Any],
        first_page: dict[str, Any] | None,
    ) -> Any:
        from airflow_provider_smart.fhir.bulk.body import StreamLimits
        from airflow_provider_smart.fhir.bulk.sync import fetch_manifest
        from airflow_provider_smart.storage.export_landing import DownloadSettings, land_files

        self._active = None
        status_url = state.get("status_url") or ""
        if first_page is not None:
            manifest = fetch_manifest(client, first_page, status_url, policy=self.policy, limits=self._limits())
            self._check_transaction_time(manifest)
            stored, redacted = manifest_without_queries(manifest)
            state = dict(
                state,
                phase="downloading",
                manifest=stored,
                file_urls_redacted=redacted,
                transaction_time=manifest.transaction_time,
            )
            layout.write_state(state)
            # export log: status_complete, status_page_complete, manifest_complete (pages unknown when linked)
            paged = isinstance(first_page, dict) and any(
                isinstance(link, dict) and link.get("relation") == "next" for link in first_page.get("link") or []
            )
            self._export_log(layout, state).manifest(manifest, pages=0 if paged else 1)
            self.log.info(
                "export complete: transactionTime %s, %d output, %d error and %d deleted files",
                manifest.transaction_time,
                len(manifest.output),
                len(manifest.error),
                len(manifest.deleted),
            )
        else:
            manifest = self._stored_manifest(client, layout, state)
        if self.download_mode == "fanout":
            return self._fan_out(context, layout, manifest, state)
        settings = DownloadSettings(
            max_workers=int(self.max_download_workers),
            max_attempts=int(self.max_download_attempts),
            limits=StreamLimits.from_options(self.download_limits),
        )
        held = self._held[1] if self._held is not None else None
        with held.kept_alive() if held is not None else contextlib.nullcontext():
            land_files(
                client,
                layout,
                manifest,
                settings=settings,
                refresh_manifest=(lambda: self._refetch_manifest(client, status_url)) if status_url else None,
                logger=self.log,
                export_log=self._export_log(layout, state),  # export log: download_* events
            )
        return self._finish(
            client,
            layout,
            state,
            manifest,
            delete_on_success=self.delete_on_success,
            fail_on_severity=self.fail_on_severity,
            parquet=self._parquet_spec(),
            delta=self._delta_spec(),
            attachments=self._attachments_spec(),
        )

    def _attachments_spec(self) -> dict[str, Any] | None:
        """The attachment settings for the finishing step (JSON-safe: they travel in the fan-out reference)."""
        from airflow_provider_smart.storage.attachments import AttachmentSettings

        settings = AttachmentSettings.from_option(self.attachments)
        return None if settings is None else settings.to_option()

    def _delta_spec(self) -> dict[str, Any] | None:
        """What the finishing step needs to merge into Delta tables (JSON-safe, like the Parquet spec)."""
        if "delta" not in self.formats:
            return None
        return {"options": self.delta_options, "output_conn_id": self.output_conn_id}

    def _own_lease(self, context: Context, layout: ExportLayout) -> ExportLease:
        owner = lease_owner(context, self.dag_id, self.task_id)
        return ExportLease(layout.export_dir, owner, timeout=self.lease_timeout)

    def _check_transaction_time(self, manifest: Manifest) -> None:
        """The manifest's transactionTime becomes the next ``_since``: refuse it before downloading
        anything when it is no instant or lies in the future (no retry can fix it: the export is cancelled)."""
        from airflow_provider_smart.fhir.instants import check_watermark_instant

        check_watermark_instant(
            manifest.transaction_time, "the manifest's transactionTime", skew=timedelta(seconds=self.clock_skew)
        )

    def _parquet_spec(self) -> dict[str, Any] | None:
        """What the finishing step needs to write Parquet (JSON-safe: it travels in the fan-out reference)."""
        if "parquet" not in self.formats:
            return None
        output = self.parquet_output
        if output is not None and hasattr(output, "protocol"):  # an ObjectStoragePath: its URI
            output = f"{output.protocol or 'file'}://{output.path}"
        return {
            "output": None if output is None else str(output),
            "output_conn_id": self.output_conn_id,
            "options": self.parquet_options,
        }

    def _fan_out(
        self, context: Context, layout: ExportLayout, manifest: Manifest, state: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Return the batches to map over; the export reference goes to the ``export`` XCom key."""
        keys = [p.key for p in plan_files(manifest) if not layout.is_committed(p)]
        limit = max(1, int(self.max_batches or _max_map_length()))
        if self.fanout_batch_size:
            per_batch = max(int(self.fanout_batch_size), math.ceil(len(keys) / limit))
        else:
            per_batch = max(1, math.ceil(len(keys) / limit))
        ref = self._fanout_ref(layout, manifest.transaction_time)
        batches = [dict(ref, keys=keys[i : i + per_batch]) for i in range(0, len(keys), per_batch)]
        context["ti"].xcom_push(key="export", value=dict(ref, files=len(plan_files(manifest)), batches=len(batches)))
        self.log.info("fan-out: %d files to download in %d batches", len(keys), len(batches))
        return batches

    def _fanout_ref(self, layout: ExportLayout, transaction_time: str | None) -> dict[str, Any]:
        output = self.output_uri if isinstance(self.output_uri, str) else str(layout.root)
        return {
            "output": output,
            "output_conn_id": self.output_conn_id,
            "export_label": layout.label,
            "export_id": layout.export_id,
            "transaction_time": transaction_time,
            "delete_on_success": self.delete_on_success,
            "fail_on_severity": self.fail_on_severity,
            "parquet": self._parquet_spec(),
            "delta": self._delta_spec(),
            "attachments": self._attachments_spec(),
        }


def _max_map_length() -> int:
    from airflow.configuration import conf

    return conf.getint("core", "max_map_length", fallback=1024)


def _layout_from_ref(ref: dict[str, Any]) -> ExportLayout:
    if not isinstance(ref, dict) or "output" not in ref or "export_label" not in ref:
        raise ValueError(
            "expected the export task's fan-out reference (a dict with 'output' and 'export_label'), "
            f"got {type(ref).__name__}; pass export_task.output['export'] (or map downloads over export_task.output)"
        )
    return ExportLayout(resolve_output(ref["output"], ref.get("output_conn_id")), ref["export_label"])


def _bind_ref(layout: ExportLayout, state: dict[str, Any], ref: dict[str, Any]) -> None:
    """Tie the layout to the export the reference names; refuse when the label now holds another one."""
    layout.bind(state)
    want = ref.get("export_id")
    if want and layout.export_id and want != layout.export_id:
        raise ExportStateError(
            f"{layout.state_path} now holds another export than the one this task was handed; another run "
            "reused the export label. Run the export again with a label of its own"
        )


class FhirBulkDownloadOperator(_ExportBase):
    """Download one batch of a fanned-out export's files (map it with ``.expand(batch=...)``).

    Each file is committed atomically with its record, so a retried or re-run batch downloads only the
    files still missing.

    :param batch: one item of the fanned-out export task's return value: ``output``,
        ``output_conn_id``, ``export_label`` and ``keys``. (templated)
    :param smart_fhir_conn_id: the ``smart_fhir`` connection. (templated)
    :param max_download_workers: parallel downloads in this task.
    :param max_download_attempts: attempts per file.
    :param download_limits: bounds on each file download (see :class:`FhirBulkExportOperator`).
    """

    template_fields: Sequence[str] = ("batch", "smart_fhir_conn_id")

    def __init__(
        self,
        *,
        batch: Any,
        smart_fhir_conn_id: str = "smart_fhir_default",
        max_download_workers: int = 4,
        max_download_attempts: int = 5,
        download_limits: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch = batch
        self.smart_fhir_conn_id = smart_fhir_conn_id
        self.max_download_workers = max_download_workers
        self.max_download_attempts = max_download_attempts
        self.download_limits = _checked_limits(download_limits)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_smart.fhir.bulk.body import StreamLimits
        from airflow_provider_smart.storage.export_landing import DownloadSettings, land_files

        layout = _layout_from_ref(self.batch)
        state = layout.read_state()
        if not state or not state.get("manifest"):
            raise RuntimeError(f"no completed export manifest in {layout.state_path}; run the export task first")
        _bind_ref(layout, state, self.batch)
        client = self._hook().get_client()
        manifest = self._stored_manifest(client, layout, state, list(self.batch.get("keys") or []))
        status_url = state.get("status_url") or ""
        counts = land_files(
            client,
            layout,
            manifest,
            keys=list(self.batch.get("keys") or []),
            settings=DownloadSettings(
                max_workers=int(self.max_download_workers),
                max_attempts=int(self.max_download_attempts),
                limits=StreamLimits.from_options(self.download_limits),
            ),
            refresh_manifest=(lambda: self._refetch_manifest(client, status_url)) if status_url else None,
            logger=self.log,
            # export log: this batch's download_* events (part objects of their own on object stores)
            export_log=self._export_log(layout, state),
        )
        return {"export_label": layout.label, **counts}


class FhirBulkExportFinalizeOperator(_ExportBase):
    """Finish a fanned-out export once every batch has landed: check, markers, watermark, DELETE.

    Use ``trigger_rule="none_failed"`` so it also runs when the export had no files (zero mapped tasks).

    :param export: the export reference the fanned-out export task pushed (``export_task.output["export"]``).
        (templated)
    :param smart_fhir_conn_id: the ``smart_fhir`` connection. (templated)
    :param delete_on_success: send DELETE after everything has landed; default: what the export task says.
    :param fail_on_severity: as on :class:`FhirBulkExportOperator`; default: what the export task says.
    """

    template_fields: Sequence[str] = ("export", "smart_fhir_conn_id")

    def __init__(
        self,
        *,
        export: Any,
        smart_fhir_conn_id: str = "smart_fhir_default",
        delete_on_success: bool | None = None,
        fail_on_severity: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.export = export
        self.smart_fhir_conn_id = smart_fhir_conn_id
        self.delete_on_success = delete_on_success
        self.fail_on_severity = fail_on_severity

    def execute(self, context: Context) -> Any:
        layout = _layout_from_ref(self.export)
        state = layout.read_state()
        if not state or not state.get("manifest"):
            raise RuntimeError(f"no completed export manifest in {layout.state_path}; run the export task first")
        _bind_ref(layout, state, self.export)
        if state.get("phase") == "complete":
            return state.get("summary")
        manifest = parse_manifest(state["manifest"])
        delete = self.delete_on_success
        if delete is None:
            delete = bool(self.export.get("delete_on_success", True))
        severity = self.fail_on_severity or self.export.get("fail_on_severity", "error")
        return self._finish(
            self._hook().get_client(),
            layout,
            state,
            manifest,
            delete_on_success=delete,
            fail_on_severity=severity,
            parquet=self.export.get("parquet"),
            delta=self.export.get("delta"),
            attachments=self.export.get("attachments"),
        )


__all__ = [
    "SUPPORTED_FORMATS",
    "FhirBulkDownloadOperator",
    "FhirBulkExportFinalizeOperator",
    "FhirBulkExportOperator",
    "watermark_path",
]


def _checked_limits(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``download_limits`` checked when the DAG is parsed: an unknown name or a bad value fails there."""
    from airflow_provider_smart.fhir.bulk.body import StreamLimits

    StreamLimits.from_options(options)
    return dict(options or {})
