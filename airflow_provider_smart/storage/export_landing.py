"""Landing a Bulk Data manifest's files under the export layout, and finalising the export.

Used by the export operator (inline downloads) and by the download operator (fan-out batches): both
download only files without a commit record, so a resumed run fetches only what is missing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from airflow_provider_smart.fhir.bulk.body import StreamLimits
from airflow_provider_smart.fhir.bulk.manifest import Manifest, PlannedFile, plan_files
from airflow_provider_smart.fhir.bulk.outcomes import OutcomeSummary, severity_rank
from airflow_provider_smart.fhir.download import BulkDownloader, FileResult, HttpClient, Progress
from airflow_provider_smart.storage.atomic import atomic_open, atomic_write_json, mark_complete
from airflow_provider_smart.storage.export_state import ExportLayout, utcnow_iso

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadSettings:
    """How files are fetched: pool size, per-file attempts, progress log interval, and the bounds on
    each file (:class:`~airflow_provider_smart.fhir.bulk.body.StreamLimits`)."""

    max_workers: int = 4
    max_attempts: int = 5
    backoff_base: float = 1.0
    progress_interval: float = 10.0
    limits: StreamLimits = field(default_factory=StreamLimits)


class ExportOutcomeError(RuntimeError):
    """The export's error files hold issues at or above the failing severity (the data has been kept)."""


def land_files(
    client: HttpClient,
    layout: ExportLayout,
    manifest: Manifest,
    *,
    keys: Collection[str] | None = None,
    settings: DownloadSettings | None = None,
    refresh_manifest: Callable[[], Manifest] | None = None,
    logger: Any = None,
) -> dict[str, int]:
    """Download the manifest's files (or only ``keys``) that are not committed yet.

    Returns counts: ``planned``, ``skipped`` (already committed), ``downloaded``, ``bytes``, ``lines``.
    """
    settings = settings or DownloadSettings()
    logger = logger or log
    planned = plan_files(manifest)
    if keys is not None:
        wanted = set(keys)
        unknown = wanted - {p.key for p in planned}
        if unknown:
            raise ValueError(f"files {sorted(unknown)[:5]} are not in the export's manifest")
        planned = [p for p in planned if p.key in wanted]
    todo = [p for p in planned if not layout.is_committed(p)]
    skipped = len(planned) - len(todo)
    if skipped:
        logger.info("%d of %d files already landed; downloading the other %d", skipped, len(planned), len(todo))
    total_lines = sum(p.count for p in todo) if all(p.count is not None for p in todo) else None  # type: ignore[misc]
    progress = Progress(len(todo), total_lines, interval=settings.progress_interval, logger=logger)

    def refresh() -> dict[str, str]:
        if refresh_manifest is None:
            return {}
        return {p.key: p.url for p in plan_files(refresh_manifest())}

    downloader = BulkDownloader(
        client,
        requires_access_token=manifest.requires_access_token,
        max_workers=settings.max_workers,
        max_attempts=settings.max_attempts,
        limits=settings.limits,
        backoff_base=settings.backoff_base,
        refresh_urls=refresh if refresh_manifest is not None else None,
        progress=progress,
    )

    @contextlib.contextmanager
    def sink(p: PlannedFile) -> Iterator[IO[bytes]]:
        with atomic_open(layout.final_path(p), "wb") as handle:
            # One write through Airflow's wrapper records the lineage; the blocks then go straight to
            # the file object underneath (the wrapper's per-call lookup costs about a tenth of a download).
            handle.write(b"")
            yield getattr(handle, "_obj", handle)

    _load_lineage_machinery()

    def committed(p: PlannedFile, result: FileResult) -> None:
        record: dict[str, Any] = {
            "kind": p.kind,
            "resource_type": p.resource_type,
            "directory": p.directory,
            "lines": result.lines,
            "bytes": result.bytes,
            "attempts": result.attempts,
            "committed_at": utcnow_iso(),
        }
        if result.outcomes is not None:
            record["outcomes"] = result.outcomes.to_dict()
        layout.write_record(p, record)

    results = downloader.download_all(todo, sink, committed)
    if todo:
        logger.info("%s", progress.summary())
    return {
        "planned": len(planned),
        "skipped": skipped,
        "downloaded": len(results),
        "bytes": sum(r.bytes for r in results),
        "lines": sum(r.lines for r in results),
    }


def _load_lineage_machinery() -> None:
    """Import Airflow's lineage collector now, not inside the first write while other workers wait."""
    with contextlib.suppress(Exception):
        from airflow.sdk.lineage import get_hook_lineage_collector

        get_hook_lineage_collector()


def missing_files(layout: ExportLayout, manifest: Manifest) -> list[PlannedFile]:
    return [p for p in plan_files(manifest) if not layout.is_committed(p)]


def summarize(layout: ExportLayout, manifest: Manifest) -> dict[str, Any]:
    """Counts per type, paths, error-file issues and deleted counts, from the commit records."""
    counts: dict[str, int] = {}
    files: dict[str, list[str]] = {}
    outcomes = OutcomeSummary()
    deleted = 0
    total_bytes = 0
    missing = []
    for p in plan_files(manifest):
        rec = layout.read_record(p.key)
        if rec is None:
            missing.append(p.key)
            continue
        total_bytes += int(rec.get("bytes", 0))
        if p.kind == "output":
            name = p.resource_type or p.directory
            counts[name] = counts.get(name, 0) + int(rec.get("lines", 0))
            files.setdefault(p.directory, []).append(str(rec.get("path")))
        elif p.kind == "error":
            files.setdefault(p.directory, []).append(str(rec.get("path")))
            if isinstance(rec.get("outcomes"), dict):
                outcomes.merge(rec["outcomes"])
        else:
            deleted += int(rec.get("lines", 0))
            files.setdefault(p.directory, []).append(str(rec.get("path")))
    return {
        "transaction_time": manifest.transaction_time,
        "export_label": layout.label,
        "output": str(layout.root),
        "counts": dict(sorted(counts.items())),
        "files": files,
        "deleted_bundles": deleted,
        "bytes": total_bytes,
        "errors": outcomes.to_dict(),
        "error_messages": outcomes.sorted_messages(),
        "missing": missing,
    }


def finalize(
    layout: ExportLayout,
    manifest: Manifest,
    *,
    fail_on_severity: str | None = "fatal",
    logger: Any = None,
) -> dict[str, Any]:
    """Check every file landed, log error-file issues by severity, and write the ``_SUCCESS`` markers.

    Raises :class:`ExportOutcomeError` (after writing the summary, without markers) when the error
    files hold an issue at least as severe as ``fail_on_severity``; raises ``RuntimeError`` when files
    are missing.
    """
    logger = logger or log
    summary = summarize(layout, manifest)
    if summary["missing"]:
        raise RuntimeError(
            f"{len(summary['missing'])} files of export {layout.label} have not landed "
            f"(e.g. {summary['missing'][:3]}); run the download again to fetch them"
        )
    summary.pop("missing")
    counts = summary["errors"]["counts"]
    for message in summary["error_messages"]:
        level = logging.ERROR if message.startswith(("[fatal]", "[error]")) else logging.INFO
        logger.log(level, "export error file: %s", message)
    warnings = [m for m in summary["error_messages"] if not m.startswith("[fatal]")]
    summary["warnings"] = warnings
    failing = 0
    if fail_on_severity and fail_on_severity != "none":
        limit = severity_rank(fail_on_severity)
        failing = sum(n for sev, n in counts.items() if severity_rank(sev) <= limit)
    atomic_write_json(layout.manifest_path, _manifest_json(manifest))
    if failing:
        summary["failed"] = True
        atomic_write_json(layout.export_dir / "summary.json", summary)
        raise ExportOutcomeError(
            f"the export's error files report {failing} issue(s) at severity {fail_on_severity!r} or worse "
            f"(the {sum(len(v) for v in summary['files'].values())} landed files are kept under {layout.root}): "
            + "; ".join(summary["error_messages"][:5])
        )
    for directory in {p.directory for p in plan_files(manifest)}:
        entries = [p.key for p in plan_files(manifest) if p.directory == directory]
        mark_complete(
            layout.data_dir(directory),
            {"export_label": layout.label, "transaction_time": manifest.transaction_time, "files": entries},
        )
    mark_complete(layout.export_dir, summary)
    return summary


def _manifest_json(manifest: Manifest) -> dict[str, Any]:
    from airflow_provider_smart.fhir.bulk.manifest import manifest_to_dict

    return manifest_to_dict(manifest)
