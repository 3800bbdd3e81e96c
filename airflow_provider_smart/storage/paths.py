"""Turn the ``output`` argument of an operator into an ObjectStoragePath."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def resolve_output(output: Any, conn_id: str | None = None) -> ObjectStoragePath:
    """Accept an ObjectStoragePath, a URI (``s3://bucket/prefix``, ``file:///data``) or a local path."""
    from airflow.sdk import ObjectStoragePath

    if isinstance(output, ObjectStoragePath):
        return output
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
