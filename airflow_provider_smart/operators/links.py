"""Buttons on an export task in Airflow's UI: the export's status URL and a page showing where the data landed.

Each link's URL is stored in the task's XCom while the task runs (Airflow 3 reads it from there), so the
button works without this package being importable by the API server's link code. Only cleaned URLs are
stored: the status URL without its query string or userinfo.

Airflow's UI shows a link only when its URL is http(s), mailto, or on the UI's own origin, so the output
root itself (``file://...``, ``s3://...``) would never become a button. "Landed output" is therefore a web
page that shows the location:

- ``s3://bucket/prefix`` on AWS (no custom endpoint on the output connection or in ``AWS_ENDPOINT_URL``):
  the S3 console's page of the prefix;
- ``gs://bucket/prefix``: the Cloud Console's storage browser at the prefix;
- any other root (a local path, an S3-compatible server such as MinIO, Azure, ...): the task instance's
  XCom tab in Airflow's own UI, which lists ``landed_output`` (the output root as a URI) beside the task's
  summary (counts per resource type, never file contents or patient data). It is built from
  ``[api] base_url`` and, without it, is a path on the UI's own origin.

No page is served by this package for it: the XCom tab is behind Airflow's authentication and its DAG
permissions already, and it shows only what the task pushed, so nothing new is exposed. A console page
needs the viewer's own cloud login; a link to it reveals only the bucket and prefix the task already logs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseOperatorLink

from airflow_provider_smart.storage.web_urls import console_url
from airflow_provider_smart.transport.urls import redact_url

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

#: The XCom key holding the output root a task landed its data under (a URI, never file contents).
LANDED_OUTPUT_KEY = "landed_output"
#: boto's environment variables that send S3 requests to another endpoint than AWS's.
_S3_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


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
    """A web page showing the output root the task landed its data under (see the module's notes)."""

    name = "Landed output"


def store_link(context: Context | dict[str, Any], link: type[_StoredLink], url: str | None) -> None:
    """Store ``url`` for ``link`` on the running task instance (cleaned; nothing when there is no URL)."""
    ti = context.get("ti")
    if not url or ti is None:
        return
    value = redact_url(url) if link is FhirExportStatusLink else url
    ti.xcom_push(key=link().xcom_key, value=value)


def store_output_link(context: Context | dict[str, Any], root_uri: str, output_conn_id: str | None = None) -> None:
    """Push ``root_uri`` as the ``landed_output`` XCom and the "Landed output" button's page for it."""
    ti = context.get("ti")
    if not root_uri or ti is None:
        return
    ti.xcom_push(key=LANDED_OUTPUT_KEY, value=root_uri)
    store_link(context, FhirOutputLink, landed_output_url(ti, root_uri, output_conn_id))


def landed_output_url(ti: Any, root_uri: str, output_conn_id: str | None = None) -> str:
    """The cloud console's page of ``root_uri`` when it has one, else the task instance's XCom tab."""
    custom_endpoint, region = False, None
    if urlsplit(root_uri).scheme.lower() in ("s3", "s3a"):
        custom_endpoint, region = _s3_endpoint(output_conn_id)
    return console_url(root_uri, custom_endpoint=custom_endpoint, region=region) or task_xcom_page(ti)


def _s3_endpoint(conn_id: str | None) -> tuple[bool, str | None]:
    """(served by another endpoint than AWS's, region) for S3 through ``conn_id``, as Airflow's S3
    filesystem decides it. Anything unknown counts as a custom endpoint: the Airflow page is always right."""
    if any(os.environ.get(name) for name in _S3_ENDPOINT_ENV):
        return True, None
    try:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        config = S3Hook(aws_conn_id=conn_id).conn_config
        return config.get_service_endpoint_url(service_name="s3") is not None, config.region_name
    except Exception:
        return True, None


def task_xcom_page(ti: Any) -> str:
    """The XCom tab of task instance ``ti`` in Airflow's UI: under ``[api] base_url`` when it is set, else
    a path on the UI's own origin (which the UI also shows as a button)."""
    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    page = f"{base}/dags/{_segment(ti.dag_id)}/runs/{_segment(ti.run_id)}/tasks/{_segment(ti.task_id)}"
    map_index = getattr(ti, "map_index", -1)
    if map_index is not None and map_index >= 0:
        page += f"/mapped/{map_index}"
    return page + "/xcom"


def _segment(value: str) -> str:
    # Run ids hold ':' and '+'; the UI decodes each path segment.
    return quote(str(value), safe="")


#: Give these to ``operator_extra_links`` of the operators that export or land data.
EXPORT_LINKS = (FhirExportStatusLink(), FhirOutputLink())
OUTPUT_LINKS = (FhirOutputLink(),)

__all__ = [
    "EXPORT_LINKS",
    "LANDED_OUTPUT_KEY",
    "OUTPUT_LINKS",
    "FhirExportStatusLink",
    "FhirOutputLink",
    "landed_output_url",
    "store_link",
    "store_output_link",
    "task_xcom_page",
]
