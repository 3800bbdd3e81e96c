"""Where an export stands when a task starts, from its state file: the step the task runs next."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from airflow_provider_smart.export.start import reattach
from airflow_provider_smart.fhir.bulk.manifest import Manifest
from airflow_provider_smart.storage.export_state import ExportLayout

log = logging.getLogger(__name__)

#: The next step: ``done`` (landed completely), ``land`` (download, then finish), ``wait`` (the export
#: runs on the server) or ``start`` (no export, or one the server no longer knows: kick off a new one).
STEPS = ("done", "land", "wait", "start")


@dataclass(frozen=True)
class NextStep:
    step: str
    state: dict[str, Any] | None
    first_page: dict[str, Any] | None = None


def next_step(
    client: Any, layout: ExportLayout, scope: dict[str, Any], *, max_retry_after: float, logger: Any = None
) -> NextStep:
    """Read the state file, refuse another export's state, and say what to do next (re-attaching to a
    pending export polls it once)."""
    logger = logger or log
    state = layout.read_state()
    if state is None:
        return NextStep("start", None)
    layout.check_scope(state, scope)
    layout.bind(state)
    phase = state.get("phase")
    if phase == "complete":
        logger.info("export %s already landed completely; nothing to do", layout.label)
        return NextStep("done", state)
    if phase == "downloading" and state.get("manifest"):
        logger.info("resuming the download of export %s", layout.label)
        return NextStep("land", state)
    if phase == "pending" and state.get("status_url"):
        found = reattach(client, layout, state, max_retry_after=max_retry_after, logger=logger)
        if found.status == "complete":
            return NextStep("land", state, found.first_page)
        if found.status == "pending":
            return NextStep("wait", state)
    return NextStep("start", state)


def manifest_to_land(
    client: Any,
    layout: ExportLayout,
    state: dict[str, Any],
    first_page: dict[str, Any] | None,
    *,
    policy: Any,
    clock_skew: float,
    logger: Any = None,
    limits: Any = None,
) -> tuple[Manifest, dict[str, Any]]:
    """The manifest to download: the complete export's (recorded in the state file now), or the one the
    state file already holds (with fresh file URLs when needed)."""
    from airflow_provider_smart.export.manifests import record_manifest, stored_manifest

    if first_page is not None:
        return record_manifest(
            client, layout, state, first_page, policy=policy, clock_skew=clock_skew, logger=logger, limits=limits
        )
    return stored_manifest(client, layout, state, logger=logger, limits=limits), state
