"""The last task of a fanned-out export: finish it once every batch landed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.export.options import FinishOptions, check_finish_workers
from airflow_provider_smart.operators._assets import declare_outlets, default_alias_name
from airflow_provider_smart.operators.bulk_common import ExportTaskBase, bound_state
from airflow_provider_smart.operators.links import OUTPUT_LINKS

if TYPE_CHECKING:
    from airflow.sdk import Context


class FhirBulkExportFinalizeOperator(ExportTaskBase):
    """Finish a fanned-out export once every batch has landed: check, Parquet and Delta (the types no
    mapped task finished, in parallel processes), publish (NDJSON, markers, Asset events), attachments,
    watermark, DELETE.

    Use ``trigger_rule="none_failed"`` so it also runs when the export had no files (zero mapped tasks).

    :param export: the export reference the fanned-out export task pushed (``export_task.output["export"]``).
        (templated)
    :param smart_fhir_conn_id: the ``smart_fhir`` connection. (templated)
    :param delete_on_success: send DELETE after everything has landed; default: what the export task says.
    :param fail_on_severity: as on :class:`FhirBulkExportOperator`; default: what the export task says.
    :param max_finish_workers: processes converting types to Parquet and Delta at once; default: what the
        export task says, else the CPUs this task may use.
    """

    template_fields: Sequence[str] = ("export", "smart_fhir_conn_id")
    operator_extra_links = OUTPUT_LINKS

    def __init__(
        self,
        *,
        export: Any,
        smart_fhir_conn_id: str = "smart_fhir_default",
        delete_on_success: bool | None = None,
        fail_on_severity: str | None = None,
        max_finish_workers: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.export = export
        self.smart_fhir_conn_id = smart_fhir_conn_id
        self.delete_on_success = delete_on_success
        self.fail_on_severity = fail_on_severity
        self.max_finish_workers = check_finish_workers(max_finish_workers)
        # The reference is known only at run time: every landed location goes through the alias.
        self._outlets = declare_outlets(self, [], default_alias_name(self, "fhir-export"))

    def execute(self, context: Context) -> Any:
        from airflow_provider_smart.operators._export_assets import publish_export
        from airflow_provider_smart.operators._failfast import failing_fast

        with failing_fast():
            result = self._finalize()
        conn_id = self.export.get("output_conn_id") if isinstance(self.export, dict) else None
        publish_export(context, self._outlets, result, conn_id)
        return result

    def _finalize(self) -> Any:
        from airflow_provider_smart.export.finish import Finisher
        from airflow_provider_smart.fhir.bulk.manifest import parse_manifest

        layout, state = bound_state(self.export)
        if state.get("phase") == "complete":
            return state.get("summary")
        options = FinishOptions.from_ref(
            self.export,
            delete_on_success=self.delete_on_success,
            fail_on_severity=self.fail_on_severity,
            max_workers=self.max_finish_workers,
        )
        manifest = parse_manifest(state["manifest"])
        return Finisher(self._hook().get_client(), layout, state, manifest, options, logger=self.log).run()
