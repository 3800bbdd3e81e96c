"""Find what one export or search run landed: its NDJSON files by type, its deleted files, its time.

Works on the layouts the operators write (see ``storage/export_state.py`` and ``storage/ndjson.py``):

- an export ``<label>``: ``<root>/_exports/<label>/_SUCCESS`` (written last) and, per directory,
  ``<root>/<Type>/<label>/``, ``<root>/by-<Type>/<label>/`` (organizeOutputBy: many types per file) and
  ``<root>/deleted/<label>/``; its time is the manifest's ``transactionTime``;
- a search ``<run>``: ``<root>/<Type>/<run>/_SUCCESS`` holding the search's parameters; its time is the
  search's high-water mark (the newest ``meta.lastUpdated`` it saw or the server's Bundle time), else the
  end of its window.

Only committed directories (with their ``_SUCCESS`` marker) count: a run still landing, or a partial
directory a killed task left, is refused rather than merged half.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_provider_smart.storage.atomic import SUCCESS_MARKER, is_hidden, read_json
from airflow_provider_smart.storage.paths import safe_segment

#: Where a run's files come from: a run this provider landed (``provider``), or an export folder written
#: by bulk-data-client / smart-fetch (``flat``, see ``bulk_folder.py``).
SOURCE_LAYOUTS = ("provider", "flat")


def checked_source_layout(value: str) -> str:
    """``value`` when it names a source layout; a ValueError naming the choices otherwise."""
    if value not in SOURCE_LAYOUTS:
        raise ValueError(f"source_layout must be 'provider' or 'flat', not {value!r}")
    return value


EXPORTS_DIR = "_exports"
DELETED_DIR = "deleted"
ERRORS_DIR = "errors"
MIXED_PREFIX = "by-"
#: Directory names that never hold a resource type's output.
_NOT_TYPES = (DELETED_DIR, ERRORS_DIR, "parquet", "tables")


class LandedRunError(ValueError):
    """The run asked for is not (completely) landed at the given place; the message says what to do."""


@dataclass
class LandedRun:
    """What one run landed. ``files`` maps a resource type (or ``None`` for files of mixed types) to its
    NDJSON files; ``deleted`` lists the deleted-resource Bundle files."""

    kind: str  # "export" or "search"
    label: str
    transaction_time: str
    files: dict[str | None, list[Any]] = field(default_factory=dict)
    deleted: list[Any] = field(default_factory=list)

    @property
    def resource_types(self) -> list[str]:
        return sorted(t for t in self.files if t is not None)


def _data_files(directory: Any) -> list[Any]:
    return sorted(
        (c for c in directory.iterdir() if not is_hidden(c.name) and ".ndjson" in c.name), key=lambda c: c.name
    )


def _complete(directory: Any) -> bool:
    return bool((directory / SUCCESS_MARKER).exists())


def find_landed_run(root: Any, label: str, *, transaction_time: str | None = None) -> LandedRun:
    """The run ``label`` under the output ``root`` (an ObjectStoragePath).

    :param transaction_time: overrides the run's own time (e.g. for a search that recorded none).
    """
    label = safe_segment(label)
    export_marker = read_json(root / EXPORTS_DIR / label / SUCCESS_MARKER)
    if isinstance(export_marker, dict):
        return _export_run(root, label, export_marker, transaction_time)
    if (root / EXPORTS_DIR / label).exists():
        raise LandedRunError(
            f"export {label} under {root} has not finished landing (no {EXPORTS_DIR}/{label}/{SUCCESS_MARKER}); "
            "run its export task to completion first"
        )
    return _search_run(root, label, transaction_time)


def _export_run(root: Any, label: str, marker: dict[str, Any], override: str | None) -> LandedRun:
    tt = override or marker.get("transaction_time")
    if not isinstance(tt, str) or not tt:
        raise LandedRunError(f"export {label} under {root} recorded no transactionTime; pass transaction_time=")
    run = LandedRun("export", label, tt)
    listed = marker.get("files")
    directories = sorted(listed) if isinstance(listed, dict) else []
    for name in directories:
        if not isinstance(name, str) or name == ERRORS_DIR or is_hidden(name):
            continue
        directory = root / safe_segment(name) / label
        if not _complete(directory):
            raise LandedRunError(f"{directory} has no {SUCCESS_MARKER}: export {label} did not land completely")
        files = _data_files(directory)
        if name == DELETED_DIR:
            run.deleted.extend(files)
        elif name.startswith(MIXED_PREFIX):
            run.files.setdefault(None, []).extend(files)
        else:
            run.files.setdefault(name, []).extend(files)
    for rtype in marker.get("counts") or {}:
        # A type the export had no resource of still gets (or keeps) its table.
        if isinstance(rtype, str) and not rtype.startswith(MIXED_PREFIX):
            run.files.setdefault(rtype, [])
    return run


def _search_run(root: Any, label: str, override: str | None) -> LandedRun:
    found: dict[str | None, list[Any]] = {}
    times: list[str] = []
    if root.exists():
        for child in sorted(root.iterdir(), key=lambda c: c.name):
            if is_hidden(child.name) or child.name in _NOT_TYPES or not child.is_dir():
                continue
            marker = read_json(child / label / SUCCESS_MARKER)
            if not isinstance(marker, dict):
                continue
            found[child.name] = _data_files(child / label)
            window = marker.get("window")
            window = window if isinstance(window, dict) else {}
            for value in (marker.get("high_water_mark"), window.get("end")):
                if isinstance(value, str) and value:
                    times.append(value)
                    break
    if not found:
        raise LandedRunError(
            f"no committed export or search run {label!r} under {root} (looked for {EXPORTS_DIR}/{label}/"
            f"{SUCCESS_MARKER} and <Type>/{label}/{SUCCESS_MARKER}); check the output location and the label"
        )
    tt = override or (max(times, key=_sort_key) if times else None)
    if tt is None:
        raise LandedRunError(
            f"search run {label} under {root} recorded no time (no high-water mark or window end); pass "
            "transaction_time= so the merge can order it against other runs"
        )
    return LandedRun("search", label, tt, found)


def _sort_key(text: str) -> datetime:
    from airflow_provider_smart.tables.versions import parse_instant

    return parse_instant(text) or datetime.min.replace(tzinfo=UTC)
