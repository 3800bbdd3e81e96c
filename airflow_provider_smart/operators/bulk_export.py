"""Bulk Data ``$export``: the export operator, a thin face over :mod:`airflow_provider_smart.export`.

The fan-out tasks live in their own modules and are importable from here too:
:class:`~airflow_provider_smart.operators.bulk_download.FhirBulkDownloadOperator`,
:class:`~airflow_provider_smart.operators.bulk_finish.FhirBulkExportPlanFinishOperator`,
:class:`~airflow_provider_smart.operators.bulk_finish.FhirBulkFinishTypeOperator` and
:class:`~airflow_provider_smart.operators.bulk_finalize.FhirBulkExportFinalizeOperator`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.export.options import (
    SEVERITIES,
    FinishOptions,
    attachments_spec,
    check_choice,
    check_finish_workers,
    delta_spec,
    parquet_spec,
)
from airflow_provider_smart.fhir.bulk.kickoff import ExportRequest
from airflow_provider_smart.operators._export_assets import declare_export_outlets
from airflow_provider_smart.operators.bulk_common import (
    checked_limits,
    default_export_label,
    fanout_reference,
    is_last_try,
    lease_owner,
    max_map_length,
    seconds,
)
from airflow_provider_smart.operators.bulk_download import FhirBulkDownloadOperator
from airflow_provider_smart.operators.bulk_finalize import FhirBulkExportFinalizeOperator
from airflow_provider_smart.operators.bulk_finish import FhirBulkExportPlanFinishOperator, FhirBulkFinishTypeOperator
from airflow_provider_smart.operators.bulk_task import ExportTask
from airflow_provider_smart.operators.links import EXPORT_LINKS, FhirExportStatusLink, store_link
from airflow_provider_smart.storage.attachments import check_attachments_option
from airflow_provider_smart.storage.export_state import ExportLayout, watermark_path
from airflow_provider_smart.storage.lease import DEFAULT_LEASE_TIMEOUT, ExportLease
from airflow_provider_smart.storage.paths import resolve_output

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_smart.fhir.bulk.manifest import Manifest

#: Formats the export operator can land: the downloaded NDJSON, and Parquet tables made from it.
SUPPORTED_FORMATS: tuple[str, ...] = ("ndjson", "parquet", "delta")
SINCE_MODES = ("watermark", "data_interval")
DOWNLOAD_MODES = ("inline", "fanout")
#: Operator attributes that go into the kick-off request under the same name.
_REQUEST_ARGS = (
    *("level", "group_id", "output_format", "until", "types", "elements", "type_filters", "patients"),
    *("include_associated_data", "organize_output_by", "allow_partial_manifests", "type_style"),
    *("type_filter_style", "lenient"),
)


class FhirBulkExportOperator(ExportTask):
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
    :param max_finish_workers: processes converting resource types to Parquet and Delta at once in the
        finishing step (types are independent tables); default: the CPUs this task may use. Each process
        holds the memory of one writer (its row group and chunk), as one conversion did before.
    """

    template_fields: Sequence[str] = (
        *("smart_fhir_conn_id", "level", "group_id", "output_uri", "export_label", "since", "until", "types"),
        *("elements", "type_filters", "patients", "include_associated_data", "organize_output_by"),
        *("output_format", "parquet_output", "delta_options", "attachments"),
    )
    ui_color = "#d8f0e6"
    operator_extra_links = EXPORT_LINKS

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
        max_finish_workers: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from airflow_provider_smart.parquet.sink import check_formats

        fmts = check_formats(formats)
        check_choice("download_mode", download_mode, DOWNLOAD_MODES)
        check_choice("fail_on_severity", fail_on_severity, SEVERITIES)
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
        self.export_timeout = seconds(export_timeout)
        self.delete_on_success = delete_on_success
        self.fail_on_severity = fail_on_severity
        self.lease_timeout = float(seconds(lease_timeout) or DEFAULT_LEASE_TIMEOUT)
        self.clock_skew = float(seconds(clock_skew) or 0.0)
        self.download_mode = download_mode
        self.max_download_workers = max_download_workers
        self.max_download_attempts = max_download_attempts
        self.download_limits = checked_limits(download_limits)
        self.fanout_batch_size = fanout_batch_size
        self.max_batches = max_batches
        self.max_finish_workers = check_finish_workers(max_finish_workers)
        self._outlets = declare_export_outlets(
            self,
            output=output,
            types=types,
            formats=fmts,
            parquet_output=parquet_output,
            delta_options=self.delta_options,
        )

    # -- building blocks ---------------------------------------------------------------------------
    def build_request(self, since: datetime | str | None = None) -> ExportRequest:
        args = {name: getattr(self, name) for name in _REQUEST_ARGS}
        return ExportRequest.create(since=since, method=self.kickoff_method, **args)

    def _layout(self, context: Context) -> ExportLayout:
        label = self.export_label or default_export_label(context)
        return ExportLayout(resolve_output(self.output_uri, self.output_conn_id), label)

    def _own_lease(self, context: Context, layout: ExportLayout) -> ExportLease:
        owner = lease_owner(context, self.dag_id, self.task_id)
        return ExportLease(layout.export_dir, owner, timeout=self.lease_timeout)

    def _attachments_spec(self) -> dict[str, Any] | None:
        return attachments_spec(self.attachments)

    def _finish_options(self) -> FinishOptions:
        return FinishOptions(
            delete_on_success=self.delete_on_success,
            fail_on_severity=self.fail_on_severity,
            parquet=parquet_spec(self.formats, self.parquet_output, self.output_conn_id, self.parquet_options),
            delta=delta_spec(self.formats, self.delta_options, self.output_conn_id),
            attachments=self._attachments_spec(),
            max_workers=self.max_finish_workers,
        )

    # -- execute: start or re-attach ---------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        return self._guarded(context, lambda: self._execute(context))

    def _execute(self, context: Context) -> Any:
        from airflow_provider_smart.export.lifecycle import next_step
        from airflow_provider_smart.export.start import KickoffSettings, kick_off_export, resolve_since
        from airflow_provider_smart.storage.preflight import check_writable

        request = self.build_request()
        scope = request.scope()
        layout = self._layout(context)
        hook = self._hook()
        hook.check_export(request)  # vendor profile: refuse what the vendor refuses, before any kick-off
        client = hook.get_client()
        check_writable(layout.root)
        lease = self._own_lease(context, layout)
        lease.acquire()
        self._held = (layout, lease)
        found = next_step(client, layout, scope, max_retry_after=float(self.max_poll_interval), logger=self.log)
        if found.step == "done" and found.state is not None:
            lease.release()
            if self.download_mode == "fanout":
                ref = self._fanout_ref(layout, found.state.get("transaction_time"))
                context["ti"].xcom_push(key="export", value=ref)
                return []
            return found.state.get("summary")
        if found.step in ("land", "wait") and found.state is not None:
            if found.state.get("status_url"):
                store_link(context, FhirExportStatusLink, found.state["status_url"])
            if found.step == "wait":
                return self._wait(context, client, layout, found.state)
            return self._on_manifest(context, client, layout, found.state, found.first_page)
        since = resolve_since(
            self.since,
            root=layout.root,
            conn_id=self.smart_fhir_conn_id,
            scope=scope,
            data_interval_start=context.get("data_interval_start"),
            logger=self.log,
        )
        settings = KickoffSettings(
            self.smart_fhir_conn_id, lease.owner, self.lease_timeout, self.export_timeout, float(self.max_poll_interval)
        )

        def started(status_url: str) -> None:  # from here until the state is durable, on_kill cancels it
            self._active = (client, layout, status_url)

        try:
            state = kick_off_export(
                client, layout, self.build_request(since), settings, previous=found.state, on_started=started
            )
        except BaseException:
            self._active = None  # the kick-off cancelled what it started (or started nothing)
            raise
        store_link(context, FhirExportStatusLink, state["status_url"])
        return self._wait(context, client, layout, state)

    # -- after the export is complete: land, then finish or fan out ----------------------------------
    def _on_manifest(
        self, context: Context, client: Any, layout: ExportLayout, state: dict[str, Any], first_page: Any
    ) -> Any:
        from airflow_provider_smart.export.finish import Finisher
        from airflow_provider_smart.export.land import land
        from airflow_provider_smart.export.lifecycle import manifest_to_land
        from airflow_provider_smart.fhir.bulk.body import StreamLimits
        from airflow_provider_smart.storage.export_landing import DownloadSettings

        self._active = None
        manifest, state = manifest_to_land(
            client,
            layout,
            state,
            first_page,
            policy=self.policy,
            clock_skew=self.clock_skew,
            logger=self.log,
            limits=StreamLimits.from_options(self.download_limits),
        )
        if self.download_mode == "fanout":
            return self._fan_out(context, layout, manifest)
        settings = DownloadSettings(
            max_workers=int(self.max_download_workers),
            max_attempts=int(self.max_download_attempts),
            limits=StreamLimits.from_options(self.download_limits),
        )
        lease = self._held[1] if self._held is not None else None
        land(client, layout, manifest, state, settings, lease=lease, logger=self.log)
        return Finisher(client, layout, state, manifest, self._finish_options(), logger=self.log).run()

    def _fan_out(self, context: Context, layout: ExportLayout, manifest: Manifest) -> list[dict[str, Any]]:
        """Return the batches to map over; the export reference goes to the ``export`` XCom key."""
        from airflow_provider_smart.export.land import fan_out

        limit = int(self.max_batches or max_map_length())
        ref = self._fanout_ref(layout, manifest.transaction_time)
        batches, summary = fan_out(layout, manifest, ref, batch_size=self.fanout_batch_size, max_batches=limit)
        context["ti"].xcom_push(key="export", value=summary)
        self.log.info("fan-out: %d files to download in %d batches", sum(len(b["keys"]) for b in batches), len(batches))
        return batches

    def _fanout_ref(self, layout: ExportLayout, transaction_time: str | None) -> dict[str, Any]:
        output = self.output_uri if isinstance(self.output_uri, str) else str(layout.root)
        return fanout_reference(output, self.output_conn_id, layout, transaction_time, self._finish_options())


__all__ = [
    "SUPPORTED_FORMATS",
    "FhirBulkDownloadOperator",
    "FhirBulkExportFinalizeOperator",
    "FhirBulkExportOperator",
    "FhirBulkExportPlanFinishOperator",
    "FhirBulkFinishTypeOperator",
    "default_export_label",
    "is_last_try",
    "lease_owner",
    "watermark_path",
]
