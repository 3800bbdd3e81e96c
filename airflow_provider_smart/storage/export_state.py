"""Where a Bulk Data export lands, and the state kept beside it (status URL, manifest, committed files).

Layout under the output root (``<label>`` is the export label, by default the Airflow run id)::

    <root>/_exports/<label>/staging/<dir>/<file>.ndjson          files while they download (readers never look here)

    <root>/<ResourceType>/<label>/<ResourceType>.00000.ndjson   output files, one directory per type
    <root>/<ResourceType>/<label>/_SUCCESS                       written when that type's files are all in
    <root>/by-<Type>/<label>/block.00000.ndjson                  output organised by a type (organizeOutputBy)
    <root>/errors/<label>/OperationOutcome.00000.ndjson          the manifest's error files
    <root>/deleted/<label>/Bundle.00000.ndjson                   deleted-resource Bundles (with _since)
    <root>/_exports/<label>/state.json                           status URL, request, manifest (file URLs without
                                                                 query strings), phase
    <root>/_exports/<label>/manifest.json                        the (merged) manifest, once complete
    <root>/_exports/<label>/files/<key>.json                     one record per committed file
    <root>/_exports/<label>/lease.json                           which run holds the label (see ``lease.py``)
    <root>/_exports/<label>/log.ndjson                           the standard export log (see ``export_log.py``)
    <root>/_exports/<label>/_SUCCESS                             the export's summary, written last
    <root>/_watermarks/<scope>.json                              transactionTime of the last complete export

Files download into the export's staging area, outside every ``<root>/<Type>/`` tree; only the commit
(:meth:`ExportLayout.publish`, after every file landed and the error files allow it) moves them to
``<root>/<Type>/<label>/``, each directory's ``_SUCCESS`` last. So a reader of ``<root>/<Type>/**``
never sees a file of an export that has not committed, and a failed or abandoned attempt leaves its
files only under ``_exports/``. Every file is written atomically (see ``atomic.py``); the state file
is written before the task defers, so a retried task re-attaches to the running export.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.fhir.bulk.manifest import Manifest, PlannedFile, manifest_to_dict
from airflow_provider_smart.fhir.instants import check_watermark_instant
from airflow_provider_smart.storage.atomic import (
    StaleTemps,
    atomic_write_json,
    clear_directory,
    is_hidden,
    read_json,
    replace,
)
from airflow_provider_smart.storage.export_log import LOG_FILE
from airflow_provider_smart.storage.lease import LEASE_FILE
from airflow_provider_smart.storage.paths import safe_segment

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

STATE_VERSION = 1
EXPORTS_DIR = "_exports"
STAGING_DIR = "staging"
WATERMARKS_DIR = "_watermarks"


class ExportStateError(RuntimeError):
    """The output location holds state that does not fit this export; the message says how to resolve it."""


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class ExportLayout:
    """Paths of one export (``label``) under an output ``root``."""

    def __init__(self, root: ObjectStoragePath, label: str, export_id: str | None = None) -> None:
        self.root = root
        self.label = safe_segment(label)
        #: Which server export the files belong to; records of another export are not "landed".
        self.export_id = export_id
        self._paths: dict[str, ObjectStoragePath] = {}

    def bind(self, state: dict[str, Any] | None) -> ExportLayout:
        """Tie file records to the export of ``state`` (its ``export_id``)."""
        self.export_id = (state or {}).get("export_id") or None
        return self

    # Paths are built once per directory: joining storage paths costs far more than the file
    # operations of a small file, and an export may have 100,000 files.
    @property
    def export_dir(self) -> ObjectStoragePath:
        return self._cached("export", lambda: self.root / EXPORTS_DIR / self.label)

    @property
    def state_path(self) -> ObjectStoragePath:
        return self.export_dir / "state.json"

    @property
    def manifest_path(self) -> ObjectStoragePath:
        return self.export_dir / "manifest.json"

    @property
    def records_dir(self) -> ObjectStoragePath:
        return self._cached("records", lambda: self.export_dir / "files")

    def data_dir(self, directory: str) -> ObjectStoragePath:
        return self._cached(f"data:{directory}", lambda: self.root / directory / self.label)

    def staging_dir(self, directory: str) -> ObjectStoragePath:
        return self._cached(f"staging:{directory}", lambda: self.export_dir / STAGING_DIR / directory)

    def final_path(self, planned: PlannedFile) -> ObjectStoragePath:
        return self.data_dir(planned.directory) / planned.filename

    def record_path(self, key: str) -> ObjectStoragePath:
        return self.records_dir / f"{key}.json"

    def staged_path(self, planned: PlannedFile) -> ObjectStoragePath:
        """Where a file lands while the export is not committed."""
        return self.staging_dir(planned.directory) / planned.filename

    def _cached(self, key: str, build: Callable[[], ObjectStoragePath]) -> ObjectStoragePath:
        path = self._paths.get(key)
        if path is None:
            path = self._paths[key] = build()
        return path

    # -- state ------------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any] | None:
        state = read_json(self.state_path)
        if state is not None and (not isinstance(state, dict) or state.get("version") != STATE_VERSION):
            raise ExportStateError(
                f"{self.state_path} is not an export state this version understands; "
                "remove the export directory or pick another export_label"
            )
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        state = dict(state, version=STATE_VERSION, export_label=self.label, updated_at=utcnow_iso())
        atomic_write_json(self.state_path, state)

    def check_scope(self, state: dict[str, Any], scope: dict[str, Any]) -> None:
        """Refuse to mix two different exports under one label."""
        if state.get("scope") != scope:
            raise ExportStateError(
                f"{self.export_dir} already holds a different export (scope {json.dumps(state.get('scope'))}, "
                f"this task asks for {json.dumps(scope)}); use another output location or export_label"
            )

    # -- committed files ----------------------------------------------------------------------
    def read_record(self, key: str) -> dict[str, Any] | None:
        rec = read_json(self.record_path(key))
        return rec if isinstance(rec, dict) else None

    def is_committed(self, planned: PlannedFile) -> bool:
        """A file counts as landed when its record of this export exists (written after the data) and the
        data is there (staged, or already published)."""
        rec = self.read_record(planned.key)
        return (
            rec is not None
            and rec.get("url_key") == _url_key(planned)
            and (self.export_id is None or rec.get("export_id") == self.export_id)
            and (self.staged_path(planned).exists() or self.final_path(planned).exists())
        )

    def write_record(self, planned: PlannedFile, record: dict[str, Any], *, stale: StaleTemps | None = None) -> None:
        """Commit the record of one landed file (``stale``: the batch's leftover sweeper, if any)."""
        atomic_write_json(
            self.record_path(planned.key),
            dict(
                record,
                key=planned.key,
                path=str(self.final_path(planned)),
                url_key=_url_key(planned),
                export_id=self.export_id,
            ),
            stale=stale,
        )

    def publish(self, planned: list[PlannedFile]) -> None:
        """Move every staged file to its visible place: one pass over the files (renames on local disk,
        copy and delete on object stores). Files already moved by an interrupted earlier commit stay."""
        made: set[str] = set()
        for p in planned:
            staged = self.staged_path(p)
            if not staged.exists():
                if not self.final_path(p).exists():
                    raise ExportStateError(
                        f"{staged} is missing and was never published; run the export again to download it"
                    )
                continue
            final = self.final_path(p)
            if p.directory not in made:
                final.parent.mkdir(parents=True, exist_ok=True)
                made.add(p.directory)
            replace(staged, final)

    def clear(self) -> None:
        """Remove everything this label wrote (data directories, records, markers), before a fresh export."""
        if self.root.exists():
            for child in list(self.root.iterdir()):
                if child.is_dir() and not is_hidden(child.name):
                    target = child / self.label
                    if target.exists():
                        clear_directory(target)
                        target.rmdir()
        if self.export_dir.exists():
            # The lease stays: it is this run's claim on the label. So does log.ndjson: the standard export
            # log is the history of every attempt under the label (readers take its last kick-off).
            clear_directory(self.export_dir, keep=frozenset({LEASE_FILE, LOG_FILE}))


def manifest_without_queries(manifest: Manifest) -> tuple[dict[str, Any], bool]:
    """The manifest as the output storage keeps it (``state.json``, ``manifest.json``): file URLs without
    their query strings, so presigned signatures never rest on disk. The flag says whether any URL lost
    its query: a resume then reads fresh URLs from the status URL before downloading."""
    from airflow_provider_smart.transport.urls import without_query

    data = manifest_to_dict(manifest)
    redacted = False
    for kind in ("output", "error", "deleted"):
        for entry in data.get(kind, []):
            for name in ("url", "continuesInFile"):
                if name in entry:
                    cleaned = without_query(entry[name]) or "<unparseable URL>"
                    redacted = redacted or cleaned != entry[name]
                    entry[name] = cleaned
    return data, redacted


def _url_key(planned: PlannedFile) -> str:
    # Which manifest entry a record belongs to: kind, type and position; not the URL, which may be
    # re-signed when the manifest is fetched again.
    return f"{planned.kind}:{planned.resource_type}:{planned.key}"


def export_id_for(status_url: str) -> str:
    """A short stable id of one server export (its status URL), stored in every file record."""
    return hashlib.sha256(status_url.encode()).hexdigest()[:16]


def watermark_path(root: ObjectStoragePath, conn_id: str, scope: dict[str, Any]) -> ObjectStoragePath:
    """One watermark per connection and export scope (level, group, types, filters...)."""
    canonical = json.dumps({"conn_id": conn_id, **scope}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    level = scope.get("level", "export")
    group = scope.get("group_id")
    readable = safe_segment(f"{conn_id}.{level}" + (f".{group}" if group else ""))
    return root / WATERMARKS_DIR / f"{readable}.{digest}.json"


def read_watermark(root: ObjectStoragePath, conn_id: str, scope: dict[str, Any]) -> str | None:
    data = read_json(watermark_path(root, conn_id, scope))
    if isinstance(data, dict) and isinstance(data.get("transaction_time"), str):
        return str(data["transaction_time"])
    return None


def write_watermark(
    root: ObjectStoragePath, conn_id: str, scope: dict[str, Any], transaction_time: str, label: str
) -> ObjectStoragePath:
    """Advance the watermark. Called only after every file of the export has landed.

    :raises WatermarkError: ``transaction_time`` is not an instant or lies in the future (the old
        watermark stays).
    """
    check_watermark_instant(transaction_time, "the export's transactionTime")
    path = watermark_path(root, conn_id, scope)
    previous = read_json(path)
    if (
        isinstance(previous, dict)
        and isinstance(previous.get("transaction_time"), str)
        and _instant(previous["transaction_time"]) > _instant(transaction_time)
    ):
        # An older export finishing late must not move the watermark backwards.
        return path
    atomic_write_json(
        path,
        {
            "transaction_time": transaction_time,
            "export_label": label,
            "conn_id": conn_id,
            "scope": scope,
            "updated_at": utcnow_iso(),
        },
    )
    return path


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
