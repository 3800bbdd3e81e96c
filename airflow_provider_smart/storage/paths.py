"""Turn the ``output`` argument of an operator into an ObjectStoragePath."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def resolve_output(output: Any, conn_id: str | None = None) -> ObjectStoragePath:
    """Accept an ObjectStoragePath, a URI (``s3://bucket/prefix``, ``file:///data``) or a local path.

    A path object that is already resolved (an ObjectStoragePath, or the plain ``UPath`` a finishing
    process is handed by its parent, see ``export/places.py``) passes through without importing Airflow.
    """
    from upath import UPath  # ObjectStoragePath is one; importing upath costs a tenth of Airflow's import

    if isinstance(output, UPath):
        return output  # type: ignore[return-value]
    from airflow.sdk import ObjectStoragePath

    if not isinstance(output, (str, os.PathLike)):
        raise TypeError(
            f"output must be an ObjectStoragePath, a URI or a path, not {type(output).__name__}; "
            "pass e.g. 's3://bucket/fhir' or '/data/fhir'"
        )
    text = os.fspath(output)
    if not text:
        raise ValueError("output is empty: pass a URI such as 's3://bucket/fhir' or a local directory")
    if "://" not in text:
        text = "file://" + os.path.abspath(text)
    return ObjectStoragePath(text, conn_id=conn_id)


def safe_segment(value: str) -> str:
    """Make a run id or label safe as one path segment on every store (no '/', ':', '+', spaces)."""
    cleaned = _UNSAFE.sub("_", value).strip("._")
    if not cleaned:
        raise ValueError(f"cannot build a path segment from {value!r}")
    return cleaned


def storage_options_for(root: Any, conn_id: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """delta-rs ``storage_options`` for ``root``: credentials and endpoint from the Airflow connection.

    S3 (``aws`` connections) is read here; for other stores pass ``storage_options`` (they win over what
    is derived) or let delta-rs read the environment.
    """
    options: dict[str, str] = {}
    if root.protocol in ("s3", "s3a") and conn_id:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        hook = AwsBaseHook(aws_conn_id=conn_id, client_type="s3")
        credentials = hook.get_credentials()
        options["AWS_ACCESS_KEY_ID"] = credentials.access_key
        options["AWS_SECRET_ACCESS_KEY"] = credentials.secret_key
        if credentials.token:
            options["AWS_SESSION_TOKEN"] = credentials.token
        region = hook.conn_region_name or hook.conn_config.region_name
        if region:
            options["AWS_REGION"] = region
        endpoint = hook.conn_config.endpoint_url
        if endpoint:
            options["AWS_ENDPOINT_URL"] = endpoint
            if endpoint.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
    options.update({str(k): str(v) for k, v in (extra or {}).items()})
    return options
