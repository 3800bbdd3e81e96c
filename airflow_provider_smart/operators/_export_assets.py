"""The Assets of a Bulk Data export: NDJSON and Parquet per resource type, and each Delta table.

Kept apart from the operator so the export's task code only calls two functions: one when the operator is
built (:func:`declare_export_outlets`) and one with the summary of a landed export
(:func:`export_asset_events`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.operators._assets import (
    Outlets,
    declare_outlets,
    default_alias_name,
    static_names,
    static_uri,
)
from airflow_provider_smart.storage.paths import safe_segment

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator

#: Where Parquet and Delta land by default under the export's output (parquet.sink / operators.tables).
_PARQUET_SUBDIR = "parquet"
_TABLES_SUBDIR = "tables"


def declare_export_outlets(
    op: BaseOperator,
    *,
    output: Any,
    types: Any,
    formats: Sequence[str],
    parquet_output: Any = None,
    delta_options: Mapping[str, Any] | None = None,
) -> Outlets:
    """A plain Asset per written location known at parse time (a static output and static ``types``),
    and always an alias (``fhir-export/<dag>/<task>``): a server may add types (``includeAssociatedData``,
    a system export of everything), and a templated output is known only to the run."""
    root = static_uri(output)
    names = static_names(types)
    uris: list[str] = []
    if root is not None and names is not None:
        roots: list[str | None] = [root]
        if "parquet" in formats:
            roots.append(_layer_root(root, parquet_output, _PARQUET_SUBDIR))
        if "delta" in formats:
            roots.append(_layer_root(root, (delta_options or {}).get("output"), _TABLES_SUBDIR))
        # A templated Parquet or Delta root is left to the alias.
        uris = [f"{r}/{safe_segment(n)}" for r in roots if r for n in names]
    return declare_outlets(op, uris, default_alias_name(op, "fhir-export"))


def _layer_root(root: str, chosen: Any, default_subdir: str) -> str | None:
    """The root of the Parquet or Delta layer: the chosen location (None when templated), else the default."""
    if chosen is None or chosen == "":
        return f"{root}/{default_subdir}"
    return static_uri(chosen)


def export_asset_events(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """URI -> event extra for everything a landed export wrote (the operator's summary)."""
    common = {"export_label": summary.get("export_label"), "transaction_time": summary.get("transaction_time")}
    events: dict[str, dict[str, Any]] = {}
    root = _root_uri(summary["output"]) if summary.get("output") else None
    types = summary.get("types") or {t: {"resources": n} for t, n in (summary.get("counts") or {}).items()}
    if root is not None:
        for name, landed in types.items():
            events[f"{root}/{safe_segment(name)}"] = {
                **common,
                "format": "ndjson",
                "resource_type": name,
                "rows": landed.get("resources"),
                "files": landed.get("files"),
                "bytes": landed.get("bytes"),
            }
    parquet = summary.get("parquet") or {}
    for name, rows in (parquet.get("counts") or {}).items():
        events[f"{parquet['output']}/{safe_segment(name)}"] = {
            **common,
            "format": "parquet",
            "resource_type": name,
            "rows": rows,
        }
    delta = summary.get("delta") or {}
    for name, uri in (delta.get("tables") or {}).items():
        result = (delta.get("results") or {}).get(name) or {}
        if not result.get("committed", True):
            continue  # nothing newer: the table did not change
        events[uri] = {
            **common,
            "format": "delta",
            "resource_type": name,
            "rows": result.get("rows"),
            "version": result.get("version"),
            "inserted": result.get("inserted"),
            "updated": result.get("updated"),
            "deleted": result.get("deleted"),
        }
    return events


__all__ = ["declare_export_outlets", "export_asset_events"]


def publish_export(context: Any, outlets: Outlets, result: Any, output_conn_id: str | None = None) -> None:
    """After a landed export (an export summary; a fan-out batch list publishes nothing): one Asset event
    per written location and the "Landed output" link (``output_conn_id`` tells an AWS bucket from an
    S3-compatible server)."""
    from airflow_provider_smart.operators._assets import emit_asset_events
    from airflow_provider_smart.operators.links import store_output_link

    if not isinstance(result, Mapping) or not result.get("output"):
        return
    emit_asset_events(context, outlets, export_asset_events(result))
    store_output_link(context, _root_uri(result["output"]), output_conn_id)


def _root_uri(output: str) -> str:
    from airflow_provider_smart.storage.paths import resolve_output
    from airflow_provider_smart.storage.preflight import storage_uri

    return storage_uri(resolve_output(output))
