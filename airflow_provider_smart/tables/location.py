"""Where the tables live: one Delta table per resource type under a tables root.

Layout::

    <tables>/<ResourceType>/_delta_log/...     one Delta table per type (any engine reads it)
    <tables>/<ResourceType>/part-*.parquet
    <tables>/_schemas/<ResourceType>.json      the type's schema record (grow-only, as for Parquet)

The root is an ObjectStoragePath (or anything with its ``protocol``/``path``/``/``); delta-rs gets the
same place as a URI plus ``storage_options`` (credentials) the caller takes from a connection.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_smart.storage.paths import safe_segment

SCHEMAS_DIR = "_schemas"
#: The default tables root under an operator's output.
TABLES_SUBDIR = "tables"
_LOCAL = ("", "file", "local")


def delta_uri(root: Any, resource_type: str | None = None) -> str:
    """The URI delta-rs opens for ``root`` (or the table of ``resource_type`` under it)."""
    target = root / safe_segment(resource_type) if resource_type else root
    protocol = getattr(target, "protocol", "") or ""
    if isinstance(protocol, (tuple, list)):
        protocol = protocol[0] if protocol else ""
    path = str(getattr(target, "path", target))
    if protocol in _LOCAL:
        return path
    if protocol == "s3a":
        protocol = "s3"
    return f"{protocol}://{path.lstrip('/')}"


def schema_path(root: Any, resource_type: str) -> Any:
    return root / SCHEMAS_DIR / f"{safe_segment(resource_type)}.json"


def tables_root(output: Any, tables: Any = None, conn_id: str | None = None) -> Any:
    """The tables root: ``tables`` or, by default, ``<output>/tables``."""
    if tables is None or tables == "":
        return output / TABLES_SUBDIR
    from airflow_provider_smart.storage.paths import resolve_output

    return resolve_output(tables, conn_id)
