"""The export's manifest: fetched from the status URL, or read back from the state file."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow_provider_smart.fhir.bulk.manifest import Manifest, parse_manifest, plan_files
from airflow_provider_smart.fhir.bulk.status import ExportComplete, ExportFailed
from airflow_provider_smart.storage.export_state import ExportLayout, ExportStateError
from airflow_provider_smart.transport.sanitize import safe_text
from airflow_provider_smart.transport.urls import redact_url

log = logging.getLogger(__name__)


def refetch_manifest(client: Any, status_url: str, *, logger: Any = None, limits: Any = None) -> Manifest:
    """A fresh manifest from the status URL (new file URLs after a 410 Gone), read under ``limits`` (the
    ``download_limits`` as :class:`StreamLimits`: the manifest's caps)."""
    from airflow_provider_smart.fhir.bulk.sync import ExportFailedError, failed_error, fetch_manifest, poll_once

    result = poll_once(client, status_url, limits=limits)
    if isinstance(result, ExportFailed) and result.over_limit:
        raise failed_error(result, "could not fetch the manifest again for fresh file URLs: ")
    if not isinstance(result, ExportComplete):
        message = getattr(result, "message", type(result).__name__)
        raise ExportFailedError(f"could not fetch the manifest again for fresh file URLs: {message}")
    (logger or log).info("fetched the manifest again from %s for fresh file URLs", redact_url(status_url))
    return fetch_manifest(client, result.manifest, status_url, limits=limits)


def stored_manifest(
    client: Any,
    layout: ExportLayout,
    state: dict[str, Any],
    keys: Sequence[str] | None = None,
    *,
    logger: Any = None,
    limits: Any = None,
) -> Manifest:
    """The manifest of ``state.json``, with fresh file URLs from the status URL when the stored ones lost
    their query strings (presigned signatures are never kept on the output storage) and a file (of
    ``keys``, when given) is still to be downloaded."""
    from airflow_provider_smart.fhir.bulk.sync import ExportFailedError

    stored = parse_manifest(state["manifest"])
    if not state.get("file_urls_redacted") or state.get("phase") == "complete":
        return stored
    wanted = None if keys is None else set(keys)
    if all(layout.is_committed(p) for p in plan_files(stored) if wanted is None or p.key in wanted):
        return stored  # nothing left to download: no URL is needed
    status_url = state.get("status_url") or ""
    try:
        fresh = refetch_manifest(client, status_url, logger=logger, limits=limits)
    except ExportFailedError as exc:
        raise ExportStateError(
            f"{safe_text(exc, limit=500)}. state.json keeps file URLs without their query strings (presigned "
            "signatures are not stored), so a resume needs the manifest from the server, which no longer "
            "serves it: run the export again with a new export_label, or clear this one"
        ) from None
    if fresh.transaction_time != stored.transaction_time or [p.key for p in plan_files(fresh)] != [
        p.key for p in plan_files(stored)
    ]:
        raise ExportStateError(
            f"the manifest at {redact_url(status_url)} no longer matches the export recorded in state.json "
            "(another transactionTime or other files): run the export again with a new export_label"
        )
    return fresh


def check_transaction_time(manifest: Manifest, clock_skew: float) -> None:
    """The manifest's transactionTime becomes the next ``_since``: refuse it before downloading anything
    when it is no instant or lies in the future (no retry can fix it: the export is cancelled)."""
    from airflow_provider_smart.fhir.instants import check_watermark_instant

    check_watermark_instant(
        manifest.transaction_time, "the manifest's transactionTime", skew=timedelta(seconds=clock_skew)
    )


def record_manifest(
    client: Any,
    layout: ExportLayout,
    state: dict[str, Any],
    first_page: dict[str, Any],
    *,
    policy: Any = None,
    clock_skew: float = 0.0,
    logger: Any = None,
    limits: Any = None,
) -> tuple[Manifest, dict[str, Any]]:
    """The complete export's manifest (every page), checked and written to the state file (phase
    ``downloading``, file URLs without their query strings); returns it and the new state."""
    from airflow_provider_smart.fhir.bulk.sync import fetch_manifest
    from airflow_provider_smart.storage.export_state import manifest_without_queries

    manifest = fetch_manifest(client, first_page, state.get("status_url") or "", policy=policy, limits=limits)
    check_transaction_time(manifest, clock_skew)
    stored, redacted = manifest_without_queries(manifest)
    state = dict(
        state,
        phase="downloading",
        manifest=stored,
        file_urls_redacted=redacted,
        transaction_time=manifest.transaction_time,
    )
    layout.write_state(state)
    from airflow_provider_smart.export.wait import export_log

    # status_complete, status_page_complete, manifest_complete (the page count is unknown when pages linked)
    paged = isinstance(first_page, dict) and any(
        isinstance(link, dict) and link.get("relation") == "next" for link in first_page.get("link") or []
    )
    export_log(layout, state).manifest(manifest, pages=0 if paged else 1)
    (logger or log).info(
        "export complete: transactionTime %s, %d output, %d error and %d deleted files",
        manifest.transaction_time,
        len(manifest.output),
        len(manifest.error),
        len(manifest.deleted),
    )
    return manifest, state
