"""One mapped batch of a fanned-out export's downloads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.operators.bulk_common import ExportTaskBase, bound_state, checked_limits

if TYPE_CHECKING:
    from airflow.sdk import Context


class FhirBulkDownloadOperator(ExportTaskBase):
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
        self.download_limits = checked_limits(download_limits)

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_smart.operators._failfast import failing_fast

        with failing_fast():
            return self._download()

    def _download(self) -> dict[str, Any]:
        from airflow_provider_smart.export.land import land
        from airflow_provider_smart.export.manifests import stored_manifest
        from airflow_provider_smart.fhir.bulk.body import StreamLimits
        from airflow_provider_smart.storage.export_landing import DownloadSettings

        layout, state = bound_state(self.batch)
        keys = list(self.batch.get("keys") or [])
        client = self._hook().get_client()
        limits = StreamLimits.from_options(self.download_limits)
        manifest = stored_manifest(client, layout, state, keys, logger=self.log, limits=limits)
        settings = DownloadSettings(
            max_workers=int(self.max_download_workers),
            max_attempts=int(self.max_download_attempts),
            limits=limits,
        )
        counts = land(client, layout, manifest, state, settings, keys=keys, logger=self.log)
        return {"export_label": layout.label, **counts}
