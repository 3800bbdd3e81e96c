"""What the Bulk Data operators share: the task instance as a lease owner and export label, the hook,
and the fan-out reference that ties mapped tasks to their export."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_smart.storage.export_state import ExportLayout, ExportStateError
from airflow_provider_smart.storage.paths import resolve_output, safe_segment

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_smart.fhir.bulk.body import StreamLimits
    from airflow_provider_smart.hooks.smart import SmartFhirHook


def seconds(value: timedelta | float | int | None) -> float | None:
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


def checked_limits(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``download_limits`` checked when the DAG is parsed: an unknown name or a bad value fails there."""
    from airflow_provider_smart.fhir.bulk.body import StreamLimits

    StreamLimits.from_options(options)
    return dict(options or {})


def max_map_length() -> int:
    from airflow.configuration import conf

    return conf.getint("core", "max_map_length", fallback=1024)


def layout_from_ref(ref: Any) -> ExportLayout:
    """The export a fan-out reference (or one of its batches) names."""
    if not isinstance(ref, dict) or "output" not in ref or "export_label" not in ref:
        raise ValueError(
            "expected the export task's fan-out reference (a dict with 'output' and 'export_label'), "
            f"got {type(ref).__name__}; pass export_task.output['export'] (or map downloads over export_task.output)"
        )
    return ExportLayout(resolve_output(ref["output"], ref.get("output_conn_id")), ref["export_label"])


def bound_state(ref: dict[str, Any]) -> tuple[ExportLayout, dict[str, Any]]:
    """The layout and state of the completed export a reference names, tied to it; refuses a label that
    now holds another export, or one whose manifest is not there yet."""
    layout = layout_from_ref(ref)
    state = layout.read_state()
    if not state or not state.get("manifest"):
        raise RuntimeError(f"no completed export manifest in {layout.state_path}; run the export task first")
    layout.bind(state)
    want = ref.get("export_id")
    if want and layout.export_id and want != layout.export_id:
        raise ExportStateError(
            f"{layout.state_path} now holds another export than the one this task was handed; another run "
            "reused the export label. Run the export again with a label of its own"
        )
    return layout, state


class ExportTaskBase(BaseOperator):
    """A Bulk Data task: the ``smart_fhir`` connection's hook."""

    smart_fhir_conn_id: str

    def _hook(self) -> SmartFhirHook:
        from airflow_provider_smart.hooks.smart import SmartFhirHook

        return SmartFhirHook(smart_fhir_conn_id=self.smart_fhir_conn_id)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the FHIR server in, every published location out (operators._lineage)."""
        from airflow_provider_smart.operators._lineage import lineage_on_complete

        return lineage_on_complete(self)

    def _limits(self) -> StreamLimits:
        """The ``download_limits`` in force (the manifest's caps and each file's)."""
        from airflow_provider_smart.fhir.bulk.body import StreamLimits

        return StreamLimits.from_options(getattr(self, "download_limits", None))


def fanout_reference(
    output: str, output_conn_id: str | None, layout: ExportLayout, transaction_time: str | None, options: Any
) -> dict[str, Any]:
    """The reference the mapped download and finishing tasks get: where the export is, which one it is,
    and the finishing settings (:class:`~airflow_provider_smart.export.options.FinishOptions`)."""
    return {
        "output": output,
        "output_conn_id": output_conn_id,
        "export_label": layout.label,
        "export_id": layout.export_id,
        "transaction_time": transaction_time,
        **options.to_ref(),
    }
