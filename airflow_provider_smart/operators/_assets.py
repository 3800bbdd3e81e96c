"""Assets from every operator that writes: one way to declare them and one way to attach their events.

Outlets are read when the DAG is parsed, before templates are rendered. What is known then (a static output
root and static names) becomes a plain ``Asset`` per written location, so downstream DAGs can be scheduled
on it by name. What only a run knows (a templated root, the resource types a system export returns) is
attached at run time through an ``AssetAlias``. Each event carries what a downstream task wants to know
without opening the data: rows, the export's transactionTime, the run or export label, the format.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, AssetAlias

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context


def static_uri(location: Any) -> str | None:
    """An output location as a URI when it is known at DAG-parse time (not a template), else None."""
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_smart.storage.preflight import storage_uri

    if isinstance(location, ObjectStoragePath):
        return storage_uri(location)
    if isinstance(location, str | os.PathLike):
        text = os.fspath(location)
        if not text or "{{" in text or "{%" in text:
            return None
        return text.rstrip("/") if "://" in text else "file://" + os.path.abspath(text)
    return None


def static_names(names: Any) -> list[str] | None:
    """Names (resource types, tables) known at parse time: a list of plain strings, else None."""
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list | tuple) or not names:
        return None
    if not all(isinstance(n, str) and n and "{{" not in n and "{%" not in n for n in names):
        return None
    return list(names)


@dataclass
class Outlets:
    """What an operator declared: a plain Asset per static URI, and the alias for everything else."""

    static: dict[str, Asset] = field(default_factory=dict)
    alias: AssetAlias | None = None
    #: URI -> extra of what the last run published: the operator's OpenLineage outputs.
    written: dict[str, dict[str, Any]] = field(default_factory=dict)


def declare_outlets(op: BaseOperator, uris: Iterable[str], alias_name: str | None) -> Outlets:
    """Add a plain ``Asset`` per URI in ``uris`` and, when ``alias_name`` is given, an ``AssetAlias`` to
    ``op.outlets``. Give an alias name whenever a run may write somewhere ``uris`` does not name."""
    declared = Outlets(static={uri: Asset(uri=uri) for uri in uris})
    if alias_name is not None:
        declared.alias = AssetAlias(name=alias_name)
    op.outlets = [*op.outlets, *declared.static.values(), *([declared.alias] if declared.alias else [])]
    return declared


def default_alias_name(op: BaseOperator, kind: str) -> str:
    """``<kind>/<dag_id>/<task_id>``: one alias per task, stable across runs."""
    dag_id = op.dag_id if op.has_dag() else "no-dag"  # type: ignore[no-untyped-call]
    return f"{kind}/{dag_id}/{op.task_id}"


def emit_asset_events(context: Context, outlets: Outlets, events: Mapping[str, Mapping[str, Any]]) -> None:
    """One event per written URI (``events``: URI -> extra): on its static Asset when declared, else
    through the alias. A URI neither names is not published (the operator declared it out on purpose)."""
    outlets.written.update({uri: dict(extra) for uri, extra in events.items()})
    outlet_events = context.get("outlet_events")
    if outlet_events is None:
        return
    for uri, extra in events.items():
        if uri in outlets.static:
            outlet_events[outlets.static[uri]].extra = dict(extra)
        elif outlets.alias is not None:
            outlet_events[outlets.alias].add(Asset(uri=uri), extra=dict(extra))


__all__ = ["Outlets", "declare_outlets", "default_alias_name", "emit_asset_events", "static_names", "static_uri"]
