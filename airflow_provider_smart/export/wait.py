"""Waiting for the server: in the worker (the deferred wait is the trigger's), the trigger's verdict,
and cancelling an export with DELETE."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from airflow_provider_smart.storage.export_state import ExportLayout, ExportStateError
from airflow_provider_smart.transport.sanitize import safe_text
from airflow_provider_smart.transport.urls import redact_url

log = logging.getLogger(__name__)


def cancel_export(client: Any, layout: ExportLayout, state: dict[str, Any], why: str) -> None:
    """DELETE the export on the server (frees its export slot) and record it as failed."""
    from airflow_provider_smart.fhir.bulk import sync

    status_url = state.get("status_url")
    if status_url:
        sync.delete_export(client, status_url)
    layout.write_state(dict(state, phase="failed", message=why))


def wait_in_worker(
    client: Any,
    layout: ExportLayout,
    state: dict[str, Any],
    *,
    policy: Any,
    cancel_on: tuple[type[BaseException], ...] = (),
    limits: Any = None,
) -> dict[str, Any] | None:
    """Poll until the export completes; returns the manifest's first page. A timeout (the export's own
    deadline, or any of ``cancel_on``, e.g. the task's) cancels the export; a failure is recorded."""
    from airflow_provider_smart.fhir.bulk.sync import ExportFailedError, ExportTimeoutError, wait_for_export

    try:
        result = wait_for_export(
            client,
            state["status_url"],
            policy=policy,
            deadline=state.get("deadline"),
            limits=limits,
            on_status=export_log(layout, state).polled,  # status_progress / status_error events
        )
    except ExportFailedError as exc:
        layout.write_state(dict(state, phase="failed", message=safe_text(exc, limit=2000)))
        raise
    except BaseException as exc:
        if isinstance(exc, (ExportTimeoutError, *cancel_on)):
            cancel_export(client, layout, state, f"timed out: {exc}")
        raise
    return result.manifest


def first_page_of_event(
    client: Any,
    layout: ExportLayout,
    state: dict[str, Any],
    event: dict[str, Any] | None,
    *,
    policy: Any,
    limits: Any = None,
) -> dict[str, Any]:
    """The manifest's first page after the trigger's ``complete`` event; on ``timeout`` the export is
    cancelled, on an error it is recorded as failed, and either raises."""
    event = event or {}
    if event.get("status") == "complete":
        first_page = event.get("manifest")
        if first_page is None:  # the event carries a reference only: read the manifest from the status URL
            from airflow_provider_smart.fhir.bulk.sync import fetch_completed_page

            first_page = fetch_completed_page(client, state["status_url"], policy=policy, limits=limits)
        return dict(first_page)
    message = safe_text(event.get("message") or f"unexpected trigger event {event!r}", limit=2000)
    export_log(layout, state).status_error(message)
    if event.get("status") == "timeout":
        cancel_export(client, layout, state, message)
        raise RuntimeError(f"{message}; the export was cancelled with DELETE (export_timeout)")
    layout.write_state(dict(state, phase="failed", message=message))
    raise RuntimeError(f"Bulk Data export failed: {message}")


def _unfixable() -> tuple[type[BaseException], ...]:
    from airflow_provider_smart.fhir.bulk.manifest import ManifestError
    from airflow_provider_smart.fhir.instants import WatermarkError
    from airflow_provider_smart.fhir.names import UnsafeNameError
    from airflow_provider_smart.storage.export_landing import ExportOutcomeError

    return (ExportOutcomeError, ManifestError, WatermarkError, UnsafeNameError)


def is_unfixable(exc: BaseException) -> bool:
    """A failure no retry can fix (bad error files, a broken manifest, an unsafe name, a bad time)."""
    return isinstance(exc, _unfixable())


def abandon_export(
    client: Any | Callable[[], Any], layout: ExportLayout, exc: BaseException, *, logger: Any = None
) -> bool:
    """After a failure no retry follows: cancel the export this run started or re-attached to (never one
    a scope check refused) with DELETE, if it is still pending or downloading; True when it did.
    ``client`` may be a factory, called only when there is something to cancel."""
    from airflow_provider_smart.fhir.bulk import sync

    state = layout.read_state() or {}
    status_url = state.get("status_url")
    mine = layout.export_id is not None and state.get("export_id") == layout.export_id
    if not (mine and status_url and state.get("phase") in ("pending", "downloading")):
        return False
    (logger or log).warning("no retry follows this failure: cancelling export %s with DELETE", redact_url(status_url))
    sync.delete_export(client() if callable(client) else client, status_url)
    layout.write_state(dict(state, phase="failed", message=safe_text(exc, limit=2000)))
    return True


def check_event_export(layout: ExportLayout, state: dict[str, Any], event: dict[str, Any] | None) -> None:
    """The trigger's event must be about the export the state file holds (another run may have reused the
    label while this one was deferred)."""
    polled = (event or {}).get("status_url")
    if isinstance(polled, str) and polled != state.get("status_url"):
        raise ExportStateError(
            f"{layout.state_path} now belongs to another export than the one this task waited for; "
            "another run reused the export label. Run again with a label of its own"
        )


def export_log(layout: ExportLayout, state: dict[str, Any]) -> Any:
    """The export's standard ``log.ndjson`` (storage/export_log.py), continued under its status URL."""
    from airflow_provider_smart.storage.export_log import ExportLog

    return ExportLog.beside(layout.export_dir, state.get("status_url"))
