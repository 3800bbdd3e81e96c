"""Starting an export: ``_since`` from the watermark, the kick-off (its state written before anything
waits), and re-attaching to the export a state file names."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow_provider_smart.fhir.bulk.kickoff import ExportRequest
from airflow_provider_smart.fhir.bulk.status import ExportComplete, ExportFailed
from airflow_provider_smart.storage.export_state import (
    ExportLayout,
    ExportStateError,
    export_id_for,
    read_watermark,
    utcnow_iso,
)
from airflow_provider_smart.transport.sanitize import safe_text
from airflow_provider_smart.transport.urls import redact_url

log = logging.getLogger(__name__)


def resolve_since(
    since: Any,
    *,
    root: Any,
    conn_id: str,
    scope: dict[str, Any],
    data_interval_start: datetime | None = None,
    logger: Any = None,
) -> str | None:
    """``_since`` as the kick-off sends it: the watermark, the run's data interval start, or the value."""
    logger = logger or log
    if since == "watermark":
        mark = read_watermark(root, conn_id, scope)
        if mark is None:
            logger.info("no watermark yet at %s: running a full export", root)
        else:
            logger.info("incremental export since the last export's transactionTime %s", mark)
        return mark
    if since == "data_interval":
        if data_interval_start is None:
            raise ValueError("since='data_interval' needs a run with a data interval (a scheduled DAG run)")
        return ExportRequest.create(since=data_interval_start).since
    if isinstance(since, str) and since.strip().lower() in ("", "none"):
        return None
    return ExportRequest.create(since=since).since if since else None


@dataclass(frozen=True)
class KickoffSettings:
    """Who starts the export and how long it may take (what the state file records about the start)."""

    conn_id: str
    lease_owner: str
    lease_timeout: float
    export_timeout: float | None
    max_retry_after: float


def kick_off_export(
    client: Any,
    layout: ExportLayout,
    request: ExportRequest,
    settings: KickoffSettings,
    *,
    previous: dict[str, Any] | None = None,
    on_started: Callable[[str], None] | None = None,
    logger: Any = None,
) -> dict[str, Any]:
    """Clear the label, kick off a new export and write its state (phase ``pending``); returns the state.

    ``on_started`` hears the status URL as soon as the server gave it, before the state is durable (a kill
    in between must still cancel the export). When the state cannot be written the export is cancelled
    with DELETE, so it does not hold the server's export slot.
    """
    from airflow_provider_smart.fhir.bulk import sync
    from airflow_provider_smart.fhir.bulk.kickoff import build_kickoff
    from airflow_provider_smart.fhir.errors import FhirError
    from airflow_provider_smart.storage.export_log import ExportLog

    layout.clear()
    kick = build_kickoff(client.base_url, request)
    try:
        status_url = sync.kick_off(client, request, max_retry_after=settings.max_retry_after)
    except FhirError as exc:  # the standard log records a refused kick-off too
        ExportLog.beside(layout.export_dir, None).kickoff(kick, error_code=exc.status, error_body=str(exc))
        raise
    ExportLog.beside(layout.export_dir, status_url).kickoff(kick)
    if on_started is not None:
        on_started(status_url)
    state: dict[str, Any] = {
        "scope": request.scope(),
        "conn_id": settings.conn_id,
        "since": request.since,
        "until": request.until,
        "status_url": status_url,
        "export_id": export_id_for(status_url),
        "lease_owner": settings.lease_owner,
        "lease_timeout": settings.lease_timeout,
        "phase": "pending",
        "kicked_off_at": utcnow_iso(),
        "deadline": time.time() + settings.export_timeout if settings.export_timeout else None,
        "kickoffs": int((previous or {}).get("kickoffs", 0)) + 1,
    }
    layout.bind(state)
    try:  # written before waiting: a retried task finds the status URL and re-attaches
        layout.write_state(state)
    except BaseException as exc:
        sync.delete_export(client, status_url)
        raise ExportStateError(
            f"could not record the export's state at {layout.state_path} "
            f"({type(exc).__name__}: {safe_text(exc, limit=200)}); the export was cancelled with DELETE so "
            "it does not hold the server's export slot"
        ) from None
    (logger or log).info("export kicked off; status at %s", redact_url(status_url))
    return state


@dataclass(frozen=True)
class Reattached:
    """What re-attaching found: ``complete`` (with the manifest's first page), ``pending`` or ``gone``."""

    status: str
    first_page: dict[str, Any] | None = None


def reattach(
    client: Any, layout: ExportLayout, state: dict[str, Any], *, max_retry_after: float, logger: Any = None
) -> Reattached:
    """Poll the export the state file names once. A failed export is recorded and raised; one the server
    no longer knows is ``gone`` (the caller starts a new one)."""
    from airflow_provider_smart.fhir.bulk.sync import poll_once
    from airflow_provider_smart.storage.export_log import ExportLog

    logger = logger or log
    status_url = state["status_url"]
    logger.info("re-attaching to the running export at %s", redact_url(status_url))
    result = poll_once(client, status_url, max_retry_after=max_retry_after)
    ExportLog.beside(layout.export_dir, status_url).polled(result)
    if isinstance(result, ExportComplete):
        return Reattached("complete", result.manifest)
    if isinstance(result, ExportFailed):
        if not result.gone:
            message = safe_text(result.message, limit=2000)
            layout.write_state(dict(state, phase="failed", message=message))
            raise RuntimeError(f"the export this task started failed: {message}")
        logger.warning("the server no longer knows export %s; starting a new one", layout.label)
        return Reattached("gone")
    return Reattached("pending")
