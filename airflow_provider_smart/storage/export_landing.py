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
from airflow_provider_smart.storage.atomic import StaleTemps, atomic_open, atomic_write_json, mark_complete
from airflow_provider_smart.storage.export_log import ExportLog
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
    export_log: ExportLog | None = None,
) -> dict[str, int]:
    """Download the manifest's files (or only ``keys``) that are not committed yet.

    ``export_log`` receives each file's ``download_request``, ``download_complete`` and ``download_error``.

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

    # Data files and their records go into a few directories: each is listed once for leftovers.
    stale = StaleTemps()

    @contextlib.contextmanager
    def sink(p: PlannedFile) -> Iterator[IO[bytes]]:
        with atomic_open(layout.staged_path(p), "wb", stale=stale) as handle:
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
        layout.write_record(p, record, stale=stale)
        if export_log is not None:
            export_log.download_complete(p, result.lines, result.bytes)

    with export_log.buffered() if export_log is not None else contextlib.nullcontext():
        results = downloader.download_all(
            todo,
            sink,
            committed,
            on_started=export_log.download_request if export_log is not None else None,
            on_failed=export_log.download_error if export_log is not None else None,
        )
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


def summarize(layout: ExportLayout, manifest: Manifest, planned: list[PlannedFile] | None = None) -> dict[str, Any]:
    """Counts per type, paths, error-file issues and deleted counts, from the commit records."""
    counts: dict[str, int] = {}
    types: dict[str, dict[str, int]] = {}
    files: dict[str, list[str]] = {}
    outcomes = OutcomeSummary()
    deleted = 0
    total_bytes = 0
    missing = []
    for p in planned if planned is not None else plan_files(manifest):
        rec = layout.read_record(p.key)
        if rec is None or (layout.export_id is not None and rec.get("export_id") != layout.export_id):
            missing.append(p.key)
            continue
        total_bytes += int(rec.get("bytes", 0))
        files.setdefault(p.directory, []).append(str(layout.final_path(p)))
        if p.holds_outcomes:
            outcomes.merge(_recorded_outcomes(p, rec))
        if p.kind == "output":
            name = p.resource_type or p.directory
            counts[name] = counts.get(name, 0) + int(rec.get("lines", 0))
            landed = types.setdefault(name, {"resources": 0, "files": 0, "bytes": 0})
            landed["resources"] += int(rec.get("lines", 0))
            landed["files"] += 1
            landed["bytes"] += int(rec.get("bytes", 0))
        elif p.kind == "deleted":
            deleted += int(rec.get("lines", 0))
    return {
        "transaction_time": manifest.transaction_time,
        "export_label": layout.label,
        "export_id": layout.export_id,
        "output": str(layout.root),
        "counts": dict(sorted(counts.items())),
        "types": dict(sorted(types.items())),
        "files": files,
        "deleted_bundles": deleted,
        "bytes": total_bytes,
        "errors": outcomes.to_dict(),
        "error_messages": outcomes.sorted_messages(),
        "missing": missing,
    }


def _recorded_outcomes(p: PlannedFile, record: dict[str, Any]) -> dict[str, Any]:
    """The severity counts a file of OperationOutcomes was committed with.

    A record without them (written by a version that read only ``error[]`` files) holds issues nobody
    counted: they count as one error each line, so such a file fails the run rather than pass unread.
    """
    recorded = record.get("outcomes")
    if isinstance(recorded, dict):
        return recorded
    lines = int(record.get("lines", 0))
    text = (
        f"{p.key}: {lines} OperationOutcome(s) landed by an earlier version without their issues read; "
        "start a new export (or pass fail_on_severity='none' to accept it unread)"
    )
    return {"counts": {"error": lines}, "by_code": {"error/unread": lines}, "messages": {"error": [text]}}


def finalize(
    layout: ExportLayout,
    manifest: Manifest,
    *,
    fail_on_severity: str | None = "error",
    logger: Any = None,
) -> dict[str, Any]:
    """Check every file landed and the error files allow the export (:func:`check_landed`), then publish
    it (:func:`publish_landed`); returns the summary."""
    summary = check_landed(layout, manifest, fail_on_severity=fail_on_severity, logger=logger)
    publish_landed(layout, manifest, summary)
    return summary


def check_landed(
    layout: ExportLayout,
    manifest: Manifest,
    *,
    fail_on_severity: str | None = "error",
    logger: Any = None,
) -> dict[str, Any]:
    """Check every file landed and report the OperationOutcome issues; publishes nothing.

    Issues are read from ``error[]`` files and from ``output[]`` files of type OperationOutcome alike
    (:attr:`~airflow_provider_smart.fhir.bulk.manifest.PlannedFile.holds_outcomes`).

    Every issue's severity and text reach the log (``error``/``fatal`` at ERROR level, the rest at
    WARNING), and the summary (counts per severity and per ``severity/code``, the total, the first
    messages). When an issue is at least as severe as ``fail_on_severity`` this raises
    :class:`ExportOutcomeError` after writing the summary, without publishing: the landed files stay
    in the export's staging area (``_exports/<label>/staging/``), where no reader of ``<root>/<Type>``
    looks. Raises ``RuntimeError`` when files are missing. Linear in the number of files.
    """
    logger = logger or log
    planned = plan_files(manifest)
    summary = summarize(layout, manifest, planned)
    if summary["missing"]:
        raise RuntimeError(
            f"{len(summary['missing'])} files of export {layout.label} have not landed "
            f"(e.g. {summary['missing'][:3]}); run the download again to fetch them"
        )
    summary.pop("missing")
    errors = summary["errors"]
    for message in summary["error_messages"]:
        level = logging.ERROR if message.startswith(("[fatal]", "[error]")) else logging.WARNING
        logger.log(level, "export OperationOutcome: %s", message)
    shown = len(summary["error_messages"])
    if errors["total"] > shown:
        logger.warning(
            "export error files: %d issues in all (%s); the first %d are shown",
            errors["total"],
            errors["by_code"],
            shown,
        )
    summary["warnings"] = [m for m in summary["error_messages"] if not m.startswith("[fatal]")]
    failing = 0
    if fail_on_severity and fail_on_severity != "none":
        limit = severity_rank(fail_on_severity)
        failing = sum(n for sev, n in errors["counts"].items() if severity_rank(sev) <= limit)
    atomic_write_json(layout.manifest_path, _manifest_json(manifest))
    if failing:
        summary["failed"] = True
        atomic_write_json(layout.export_dir / "summary.json", summary)
        raise ExportOutcomeError(
            f"the export's OperationOutcomes (its error files, and any output files of type OperationOutcome) "
            f"report {failing} issue(s) at severity {fail_on_severity!r} or worse, "
            f"so resources are missing from it: {'; '.join(summary['error_messages'][:5])}. "
            f"The {sum(len(v) for v in summary['files'].values())} landed files are kept, unpublished, under "
            f"{layout.export_dir / 'staging'} and the watermark did not move; pass fail_on_severity='fatal' "
            "or 'none' to accept such exports"
        )
    return summary


def publish_landed(
    layout: ExportLayout,
    manifest: Manifest,
    summary: dict[str, Any],
    *,
    before_marker: Callable[[], None] | None = None,
) -> None:
    """Publish a checked export: every staged file to its visible place, each directory's ``_SUCCESS``,
    then ``before_marker`` (e.g. the Parquet tables' markers), and the export's own marker last."""
    planned = plan_files(manifest)
    layout.publish(planned)
    by_directory: dict[str, list[str]] = {}
    for p in planned:
        by_directory.setdefault(p.directory, []).append(p.key)
    for directory, entries in by_directory.items():
        mark_complete(
            layout.data_dir(directory),
            {
                "export_label": layout.label,
                "export_id": layout.export_id,
                "transaction_time": manifest.transaction_time,
                "files": entries,
            },
        )
    if before_marker is not None:
        before_marker()
    mark_complete(layout.export_dir, summary)


def _manifest_json(manifest: Manifest) -> dict[str, Any]:
    """The manifest as stored for readers: file URLs without their query strings (presigned signatures)."""
    from airflow_provider_smart.storage.export_state import manifest_without_queries

    return manifest_without_queries(manifest)[0]
