"""Present a landed Bulk Data export as the flat folder bulk-data-client and smart-fetch write."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class FhirExportFlatViewOperator(BaseOperator):
    """Copy a landed export into the flat layout other SMART tools read: ``<Type>.NNN.ndjson[.gz]`` files,
    ``deleted/Bundle.NNN.ndjson``, ``error/OperationOutcome.NNN.ndjson`` and the export's ``log.ndjson``
    (written last). cumulus-etl takes such a folder as is, its Group and time read from the log::

        cumulus-etl etl <destination> <cumulus-output> <cumulus-phi> --target=...

    :param output: the output root the export landed under (as given to the export operator). (templated)
    :param run_label: the export label (e.g. the export's DAG run id). (templated)
    :param destination: an empty folder for the view (local path, URI or ObjectStoragePath). (templated)
    :param output_conn_id: the storage connection of ``output``.
    :param destination_conn_id: the storage connection of ``destination``.
    :param replace: clear a non-empty ``destination`` first (default: refuse it).
    """

    template_fields: Sequence[str] = ("output_location", "run_label", "destination")
    ui_color = "#eaf7e1"

    def __init__(
        self,
        *,
        output: Any,
        run_label: str,
        destination: Any,
        output_conn_id: str | None = None,
        destination_conn_id: str | None = None,
        replace: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # ``output`` is BaseOperator's XComArg property: the location is kept under another name.
        self.output_location = output
        self.run_label = run_label
        self.destination = destination
        self.output_conn_id = output_conn_id
        self.destination_conn_id = destination_conn_id
        self.replace = replace

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_smart.storage.paths import resolve_output
        from airflow_provider_smart.tables.bulk_folder import write_flat_view

        written = write_flat_view(
            resolve_output(self.output_location, self.output_conn_id),
            str(self.run_label),
            resolve_output(self.destination, self.destination_conn_id),
            replace=self.replace,
        )
        self.log.info("flat view of export %s at %s: %s", self.run_label, written["destination"], written["files"])
        return written
