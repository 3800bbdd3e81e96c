"""OpenLineage facets for the operators that write: what was read (the FHIR server, or landed files) and
each location written, with its row count.

Airflow's OpenLineage provider (the ``openlineage`` extra) calls ``get_openlineage_facets_on_complete``
after a task succeeds; nothing here is imported unless it does. The outputs are the locations the task
published as Asset events (:mod:`~airflow_provider_smart.operators._assets`), so lineage and Assets never
disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_smart.transport.urls import redact_url

log = logging.getLogger(__name__)


def dataset_name(uri: str) -> tuple[str, str]:
    """OpenLineage (namespace, name) of a URI: ``file`` and the path for local files, ``s3://bucket`` and
    the key for object stores, ``https://host:port`` and the path for a FHIR server."""
    parts = urlsplit(uri)
    scheme = parts.scheme or "file"
    if scheme == "file":
        return "file", parts.path or "/"
    if scheme in ("http", "https"):
        return f"{scheme}://{parts.netloc}", parts.path or "/"
    return f"{scheme}://{parts.netloc}", parts.path.lstrip("/")


def operator_lineage(inputs: Iterable[str], outputs: Mapping[str, Mapping[str, Any]]) -> Any:
    """An ``OperatorLineage`` with a dataset per input URI and per output URI (row counts when known)."""
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset, OutputDataset
    from openlineage.client.facet_v2 import output_statistics_output_dataset

    def output(uri: str, extra: Mapping[str, Any]) -> Any:
        namespace, name = dataset_name(uri)
        rows, size = extra.get("rows"), extra.get("bytes")
        if not isinstance(rows, int):
            return OutputDataset(namespace=namespace, name=name)
        stats = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=rows, size=size if isinstance(size, int) else None
        )
        return OutputDataset(namespace=namespace, name=name, outputFacets={"outputStatistics": stats})

    return OperatorLineage(
        inputs=[Dataset(*dataset_name(uri)) for uri in dict.fromkeys(inputs)],
        outputs=[output(uri, extra) for uri, extra in sorted(outputs.items())],
    )


def fhir_inputs(base_url: str | None, written: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One input per resource type read from the FHIR server (``<base>/<Type>``), the base alone when the
    run wrote nothing typed. The base is cleaned like any URL in a log (no query, no userinfo)."""
    if not base_url:
        return []
    base = redact_url(base_url).rstrip("/")
    types = sorted({str(e["resource_type"]) for e in written.values() if e.get("resource_type")})
    return [f"{base}/{t}" for t in types] or [base]


def lineage_on_complete(op: Any, inputs: list[str] | None = None) -> Any:
    """What an operator's ``get_openlineage_facets_on_complete`` returns: ``inputs`` (default: the FHIR
    server of ``op.smart_fhir_conn_id``, one dataset per type written) and what ``op._outlets`` published.

    A function the operators call, not a mixin base: an extra base class changes how Airflow's
    ``.partial()`` collects the operator's defaults (mapped tasks lost their inlets and outlets).
    """
    outlets = getattr(op, "_outlets", None)
    written = dict(getattr(outlets, "written", None) or {})
    if inputs is None:
        inputs = fhir_inputs(_fhir_base(getattr(op, "smart_fhir_conn_id", None)), written)
    return operator_lineage(inputs, written)


def _fhir_base(conn_id: str | None) -> str | None:
    if not conn_id:
        return None
    try:
        from airflow_provider_smart.hooks.smart import SmartFhirHook

        return SmartFhirHook(smart_fhir_conn_id=conn_id).settings.base_url
    except Exception as exc:  # lineage must never fail a task that succeeded
        log.debug("no FHIR base URL for lineage: %s", type(exc).__name__)
        return None


def location_uris(location: Any, conn_id: str | None = None) -> list[str]:
    """The URIs of a source given as a path, URI, ObjectStoragePath or a list of them (for inputs)."""
    from airflow_provider_smart.storage.paths import resolve_output
    from airflow_provider_smart.storage.preflight import storage_uri

    items = location if isinstance(location, list | tuple) else [location]
    uris = []
    for item in items:
        try:
            uris.append(storage_uri(resolve_output(item, conn_id)))
        except Exception as exc:  # an unrendered or odd value: no input rather than a failed task
            log.debug("no lineage input for a %s: %s", type(item).__name__, exc)
    return uris


__all__ = ["dataset_name", "fhir_inputs", "lineage_on_complete", "location_uris", "operator_lineage"]
