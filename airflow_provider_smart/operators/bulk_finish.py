"""The finishing step of a fanned-out export, mapped over Airflow workers: one task per resource type.

::

    export >> download.expand(batch=export.output)        # the files, in batches
           >> plan = FhirBulkExportPlanFinishOperator(export=export.output["export"])
           >> FhirBulkFinishTypeOperator.partial(export=export.output["export"]).expand(job=plan.output)
           >> FhirBulkExportFinalizeOperator(export=export.output["export"])  # publish, watermark, DELETE

The plan task checks that every file landed and the error files allow the export, and returns one job
per resource type; it publishes nothing. Each mapped task writes its type's Parquet table (its parts,
not yet its ``_SUCCESS`` marker) and merges its Delta table from the still unpublished NDJSON (a table
has one writer: its type's task), and records them; the finalize task then finds every type done and
publishes the export (the NDJSON, every marker, the export's marker last, the Asset events), fetches
attachments (if asked), advances the watermark and sends DELETE. When a type's task fails, the finalize
task does not run (its trigger rule is ``none_failed``): nothing of the run is published, the watermark
stays, the export stays on the server, and a retry of the failed type (or a rerun of the finalize task)
finishes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.export.options import FinishOptions
from airflow_provider_smart.operators.bulk_common import ExportTaskBase, bound_state

if TYPE_CHECKING:
    from airflow.sdk import Context


class FhirBulkExportPlanFinishOperator(ExportTaskBase):
    """After every batch landed: check it (publishing nothing), and return the per-type finishing jobs still
    to do (map :class:`FhirBulkFinishTypeOperator` over them). Use ``trigger_rule="none_failed"``.

    :param export: the export reference (``export_task.output["export"]``). (templated)
    :param smart_fhir_conn_id: the ``smart_fhir`` connection (DELETE when the error files refuse the export).
        (templated)
    """

    template_fields: Sequence[str] = ("export", "smart_fhir_conn_id")

    def __init__(self, *, export: Any, smart_fhir_conn_id: str = "smart_fhir_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.export = export
        self.smart_fhir_conn_id = smart_fhir_conn_id

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from airflow_provider_smart.operators._failfast import failing_fast

        with failing_fast():
            return self._plan()

    def _plan(self) -> list[dict[str, Any]]:
        from airflow_provider_smart.export.finish import Finisher, finished_types
        from airflow_provider_smart.fhir.bulk.manifest import parse_manifest

        layout, state = bound_state(self.export)
        if state.get("phase") == "complete":
            return []
        manifest = parse_manifest(state["manifest"])
        finisher = Finisher(
            self._hook().get_client(), layout, state, manifest, FinishOptions.from_ref(self.export), logger=self.log
        )
        finisher.check()
        if finisher.options.parquet is None and finisher.options.delta is None:
            return []
        done = finished_types(layout)
        jobs = [job.to_json() for job in finisher.type_jobs() if job.resource_type not in done]
        self.log.info("export %s: %d type(s) to finish, %d already finished", layout.label, len(jobs), len(done))
        return jobs


class FhirBulkFinishTypeOperator(ExportTaskBase):
    """The Parquet and Delta tables of one resource type of a fanned-out export (one mapped task per type).

    A large type is written in shards by up to ``max_finish_workers`` processes (the export task's
    setting; default the CPUs this task may use), then combined into its one table.

    :param export: the export reference (``export_task.output["export"]``). (templated)
    :param job: one item of :class:`FhirBulkExportPlanFinishOperator`'s return value. (templated)
    """

    template_fields: Sequence[str] = ("export", "job")

    def __init__(self, *, export: Any, job: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.export = export
        self.job = job

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_smart.export.finish import finished_types, record_finished_type
        from airflow_provider_smart.export.options import available_cpus
        from airflow_provider_smart.export.per_type import TypeJob, file_sizes
        from airflow_provider_smart.export.shards import finish_jobs
        from airflow_provider_smart.fhir.bulk.manifest import parse_manifest

        layout, state = bound_state(self.export)
        if not isinstance(self.job, dict) or "resource_type" not in self.job:
            raise ValueError(
                f"expected one job of the plan task's return value (a dict with 'resource_type'), got "
                f"{type(self.job).__name__}; map this task with .expand(job=plan_task.output)"
            )
        job = TypeJob.from_json(self.job)
        if job.label != layout.label:
            raise ValueError(f"the job is for export {job.label!r}, the reference names {layout.label!r}")
        done = finished_types(layout).get(job.resource_type)
        if done is not None:
            self.log.info("%s of export %s already finished", job.resource_type, layout.label)
            return done
        # The type on this worker's CPUs: a large one in shards (export/shards.py), like the inline finish.
        options = FinishOptions.from_ref(self.export)
        results: list[dict[str, Any]] = []
        finish_jobs(
            [job],
            workers=options.workers,
            cpus=available_cpus(),
            file_bytes=file_sizes(layout, parse_manifest(state["manifest"])),
            on_done=lambda _, result: results.append(result),
        )
        (result,) = results
        record_finished_type(layout, job, result)
        self.log.info("%s of export %s finished: %s", job.resource_type, layout.label, result.get("parquet"))
        return result
