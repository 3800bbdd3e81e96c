"""Landing the manifest's files: all of them in this process, or cut into batches for mapped tasks."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

from airflow_provider_smart.fhir.bulk.manifest import Manifest, plan_files
from airflow_provider_smart.storage.export_state import ExportLayout
from airflow_provider_smart.storage.lease import ExportLease


def land(
    client: Any,
    layout: ExportLayout,
    manifest: Manifest,
    state: dict[str, Any],
    settings: Any,
    *,
    keys: Sequence[str] | None = None,
    lease: ExportLease | None = None,
    logger: Any = None,
) -> dict[str, Any]:
    """Download the files not yet committed (of ``keys``, when given); expired file URLs are refreshed
    from the status URL. The lease beats meanwhile. Returns the download counts."""
    from airflow_provider_smart.export.manifests import refetch_manifest
    from airflow_provider_smart.export.wait import export_log
    from airflow_provider_smart.storage.export_landing import land_files

    status_url = state.get("status_url") or ""
    refresh = (
        (lambda: refetch_manifest(client, status_url, logger=logger, limits=settings.limits)) if status_url else None
    )
    with lease.kept_alive() if lease is not None else contextlib.nullcontext():
        return land_files(
            client,
            layout,
            manifest,
            keys=None if keys is None else list(keys),
            settings=settings,
            refresh_manifest=refresh,
            logger=logger,
            export_log=export_log(layout, state),  # download_* events (a part object per batch on object stores)
        )


def plan_batches(
    layout: ExportLayout, manifest: Manifest, *, batch_size: int | None, max_batches: int
) -> list[list[str]]:
    """The keys of the files still to download, in at most ``max_batches`` batches of at least
    ``batch_size`` files (default: as few per batch as the limit allows)."""
    keys = [p.key for p in plan_files(manifest) if not layout.is_committed(p)]
    limit = max(1, int(max_batches))
    per_batch = max(int(batch_size or 1), math.ceil(len(keys) / limit))
    return [keys[i : i + per_batch] for i in range(0, len(keys), per_batch)]


def fan_out(
    layout: ExportLayout, manifest: Manifest, ref: dict[str, Any], *, batch_size: int | None, max_batches: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The batches for mapped download tasks (each the reference ``ref`` with its ``keys``), and the
    reference the later tasks get (with the number of files and batches)."""
    batches = plan_batches(layout, manifest, batch_size=batch_size, max_batches=max_batches)
    return [dict(ref, keys=keys) for keys in batches], dict(ref, files=len(plan_files(manifest)), batches=len(batches))
