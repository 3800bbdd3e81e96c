"""Buttons on an export or search task in Airflow's UI: the export's status URL and where the data landed.

Each link's URL is stored in the task's XCom while the task runs (Airflow 3 reads it from there), so the
button works without this package being importable by the API server's link code. Only cleaned URLs are
stored: the status URL without its query string or userinfo, the output root as a URI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperatorLink

from airflow_provider_smart.transport.urls import redact_url

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey


class _StoredLink(BaseOperatorLink):
    """A link whose URL the task stored in XCom under :attr:`xcom_key`."""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(key=self.xcom_key, ti_key=ti_key)
        return value if isinstance(value, str) else ""


class FhirExportStatusLink(_StoredLink):
    """The Bulk Data status URL the export polls (query string and userinfo removed)."""

    name = "Bulk export status"


class FhirOutputLink(_StoredLink):
    """The output root the task landed its data under."""

    name = "Landed output"


def store_link(context: Context | dict[str, Any], link: type[_StoredLink], url: str | None) -> None:
    """Store ``url`` for ``link`` on the running task instance (cleaned; nothing when there is no URL)."""
    ti = context.get("ti")
    if not url or ti is None:
        return
    value = redact_url(url) if link is FhirExportStatusLink else url
    ti.xcom_push(key=link().xcom_key, value=value)


#: Give these to ``operator_extra_links`` of the operators that export or land data.
EXPORT_LINKS = (FhirExportStatusLink(), FhirOutputLink())
OUTPUT_LINKS = (FhirOutputLink(),)

__all__ = ["EXPORT_LINKS", "OUTPUT_LINKS", "FhirExportStatusLink", "FhirOutputLink", "store_link"]
