"""Fetch the attachments (clinical notes, documents) of an already-landed export or search run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator

from airflow_provider_smart.storage.paths import safe_segment

if TYPE_CHECKING:
    from airflow.sdk import Context


class FhirAttachmentsDownloadOperator(BaseOperator):
    """
    Download every attachment ``url`` of landed resources to ``<output>/attachments/<label>/``.

    Reads the NDJSON files at ``source`` (an export's or a search run's directories), finds the R4
    ``Attachment`` elements (``DocumentReference.content[].attachment``, ``DiagnosticReport.presentedForm``,
    ``Media.content``, photos, ...), and stores each URL's bytes once per content under ``blobs/<sha256>``,
    with ``index.ndjson`` naming the resource, the attachment's position, its URL, content type, size, hash
    and where it was stored. Requests go through the ``smart_fhir`` connection's client: the token only to
    the FHIR server's origin, the same waits and retries as every other request. A rerun fetches only what
    did not land.

    :param source: landed NDJSON: a file, a directory (searched recursively) or a list of them. (templated)
    :param output: the output root; attachments land under ``<output>/attachments/<label>/``. (templated)
    :param label: the run's label, one path segment (default: the DAG run id). (templated)
    :param smart_fhir_conn_id: the ``smart_fhir`` connection of the server the resources came from. (templated)
    :param output_conn_id: Airflow connection for the output store. (templated)
    :param source_conn_id: Airflow connection for the source store (default: ``output_conn_id``). (templated)
    :param max_bytes: the largest attachment fetched (default 50 MiB); larger ones are recorded as skipped.
    :param allowed_types: media types and ``type/*`` wildcards to fetch (default: all); others are skipped.
    :param workers: attachments fetched at once (default 4).
    :param inline_max_bytes: write ``text/*`` attachments up to this size into ``attachment.data`` of the
        landed NDJSON (default 0: off).
    :param rewrite_urls: replace ``attachment.url`` in the landed NDJSON with the stored location.
    :param on_error: ``"fail"`` (default): fail after all were tried when one could not be fetched;
        ``"record"``: keep the failure in the index and succeed.
    """

    template_fields: Sequence[str] = (
        "source",
        "output_uri",
        "attachments_label",
        "smart_fhir_conn_id",
        "output_conn_id",
        "source_conn_id",
    )
    ui_color = "#fdf1e8"

    def __init__(
        self,
        *,
        source: Any,
        output: Any,
        label: str | None = None,
        smart_fhir_conn_id: str = "smart_fhir_default",
        output_conn_id: str | None = None,
        source_conn_id: str | None = None,
        max_bytes: int = 50 * 1024 * 1024,
        allowed_types: Sequence[str] | None = None,
        workers: int = 4,
        inline_max_bytes: int = 0,
        rewrite_urls: bool = False,
        on_error: Literal["fail", "record"] = "fail",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from airflow_provider_smart.storage.attachments import AttachmentSettings

        self.settings = AttachmentSettings(
            max_bytes=max_bytes,
            allowed_types=tuple(allowed_types) if allowed_types is not None else None,
            workers=workers,
            inline_max_bytes=inline_max_bytes,
            rewrite_urls=rewrite_urls,
            on_error=on_error,
        )
        self.source = source
        self.output_uri = output
        self.attachments_label = label
        self.smart_fhir_conn_id = smart_fhir_conn_id
        self.output_conn_id = output_conn_id
        self.source_conn_id = source_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_smart.hooks.smart import SmartFhirHook
        from airflow_provider_smart.operators._failfast import failing_fast
        from airflow_provider_smart.parquet.convert import find_ndjson
        from airflow_provider_smart.storage.attachments import attachments_destination, land_attachments
        from airflow_provider_smart.storage.paths import resolve_output

        label = safe_segment(str(self.attachments_label or context.get("run_id") or "manual"))
        sources = self.source if isinstance(self.source, (list, tuple)) else [self.source]
        files = [f for s in sources for f in find_ndjson(s, self.source_conn_id or self.output_conn_id)]
        destination = attachments_destination(resolve_output(self.output_uri, self.output_conn_id), label)
        hook = SmartFhirHook(self.smart_fhir_conn_id)
        try:
            with failing_fast():
                return land_attachments(hook.get_client(), files, destination, self.settings, logger=self.log)
        finally:
            hook.close()
