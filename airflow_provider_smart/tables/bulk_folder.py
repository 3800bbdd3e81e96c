"""The flat export folder of bulk-data-client and smart-fetch, both ways.

Their layout, which cumulus-etl and other SMART tools read::

    <folder>/Patient.000.ndjson[.gz]     output files, the resource type first in the name
    <folder>/Condition.000.ndjson[.gz]
    <folder>/deleted/Bundle.000.ndjson   deleted-resource Bundles (exports with _since)
    <folder>/error/OperationOutcome.000.ndjson
    <folder>/log.ndjson                  the standard export log (storage/export_log.py)

- :func:`read_bulk_folder` turns such a folder into the :class:`~airflow_provider_smart.tables.runs.LandedRun`
  the Delta merge, Parquet and views consume: files by type from their names, deleted Bundles from
  ``deleted/``, the time from the log's ``status_complete`` event. A folder whose log shows no finished
  export is refused, like an uncommitted run of ours.
- :func:`write_flat_view` presents a run this provider landed as such a folder (copies: object stores
  have no links), ``log.ndjson`` written last so a reader never finds a half-made view with a log.
"""

from __future__ import annotations

import re
import shutil
from typing import Any

from airflow_provider_smart.fhir.names import checked_resource_type
from airflow_provider_smart.storage.atomic import atomic_open, atomic_write_bytes, clear_directory, is_hidden
from airflow_provider_smart.storage.export_log import LOG_FILE, merged_log, read_log
from airflow_provider_smart.storage.paths import safe_segment
from airflow_provider_smart.tables.runs import EXPORTS_DIR, LandedRun, LandedRunError, find_landed_run

DELETED_SUBDIR = "deleted"
ERROR_SUBDIR = "error"
#: Data file names of the flat layout: ``<Type>.<anything>.ndjson`` or ``.ndjson.gz``.
_DATA = re.compile(r"(?P<type>[A-Z][A-Za-z]*)\.(?:.+\.)?ndjson(?:\.gz)?")
_ANY_NDJSON = re.compile(r".+\.ndjson(?:\.gz)?")
#: cumulus-etl's rule for a log under another name: ``log.<something>.ndjson``, only when alone.
_OTHER_LOG = re.compile(r"log\..+\.ndjson")
_COPY_CHUNK = 1 << 20


def _ndjson_files(directory: Any) -> list[Any]:
    if not directory.exists():
        return []
    return sorted(
        (c for c in directory.iterdir() if c.is_file() and not is_hidden(c.name) and _ANY_NDJSON.fullmatch(c.name)),
        key=lambda c: c.name,
    )


def find_log(folder: Any) -> Any:
    """The folder's export log, found as cumulus-etl finds it: ``log.ndjson``, else the one ``log.*.ndjson``."""
    if (folder / LOG_FILE).exists():
        return folder / LOG_FILE
    others = [c for c in _ndjson_files(folder) if _OTHER_LOG.fullmatch(c.name)]
    if len(others) == 1:
        return others[0]
    if others:
        raise LandedRunError(
            f"{folder} holds {len(others)} export logs ({', '.join(c.name for c in others[:5])}) and no log.ndjson; "
            "keep the one of this export's files (or name it log.ndjson)"
        )
    raise LandedRunError(
        f"{folder} holds no log.ndjson, so its export's time is unknown; pass transaction_time= (the export's "
        "transactionTime) to read it anyway"
    )


def read_bulk_folder(folder: Any, *, transaction_time: str | None = None, label: str | None = None) -> LandedRun:
    """The export in the flat ``folder`` (an ObjectStoragePath) as a landed run.

    :param transaction_time: the export's time when the folder has no log (or to override the log's).
    :param label: the run's name in summaries; default the folder's name.
    :raises LandedRunError: no such folder, no data files, no log, or a log of an export that never
        finished (no ``status_complete``, or no ``export_complete`` after its last ``kickoff``).
    """
    if not folder.exists() or not folder.is_dir():
        raise LandedRunError(f"{folder} is not a folder; pass the directory the export client wrote")
    tt = transaction_time
    if tt is None:
        tt = _finished_time(find_log(folder))
    run = LandedRun("export", safe_segment(label or folder.name or "export"), tt)
    for path in _ndjson_files(folder):
        if path.name == LOG_FILE or _OTHER_LOG.fullmatch(path.name):
            continue
        match = _DATA.fullmatch(path.name)
        rtype = checked_resource_type(match.group("type"), f"the file name {path.name!r}") if match else None
        run.files.setdefault(rtype, []).append(path)
    run.deleted.extend(_ndjson_files(folder / DELETED_SUBDIR))
    if not run.files and not run.deleted:
        raise LandedRunError(f"{folder} holds no *.ndjson or *.ndjson.gz files; is it the export's folder?")
    return run


def _finished_time(log_path: Any) -> str:
    try:
        events = read_log(log_path)
    except ValueError as exc:
        raise LandedRunError(f"{log_path} is not an export log (a line is not JSON: {exc})") from None
    last_kickoff = max((i for i, row in enumerate(events) if row.get("eventId") == "kickoff"), default=-1)
    tt: str | None = None
    finished = False
    for row in events[last_kickoff + 1 :] if last_kickoff >= 0 else events:
        raw = row.get("eventDetail")
        detail: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if row.get("eventId") == "status_complete" and isinstance(detail.get("transactionTime"), str):
            tt = detail["transactionTime"]
        elif row.get("eventId") == "export_complete":
            finished = True
    if tt is None:
        raise LandedRunError(
            f"{log_path} has no status_complete event after its last kickoff: the export never completed on the "
            "server; export again (or pass transaction_time= if you know the files are whole)"
        )
    if not finished:
        raise LandedRunError(
            f"{log_path} has no export_complete event after its last kickoff: the client stopped before every "
            "file was downloaded; finish the export with the client (or pass transaction_time= if you know the "
            "files are whole)"
        )
    return tt


def write_flat_view(root: Any, label: str, destination: Any, *, replace: bool = False) -> dict[str, Any]:
    """Copy the export ``label`` landed under ``root`` into ``destination`` in the flat layout.

    ``destination`` must be empty or missing (``replace=True`` clears it first). Returns what was
    written: ``destination``, ``files`` (by type), ``deleted``, ``errors``.
    """
    run = find_landed_run(root, label)
    if run.kind != "export":
        raise LandedRunError(f"{label} under {root} is a search run; the flat view is of Bulk Data exports")
    if destination.exists() and any(True for _ in destination.iterdir()):
        if not replace:
            raise LandedRunError(
                f"{destination} is not empty; pick an empty folder for the flat view (or pass replace=True to "
                "clear it first)"
            )
        clear_directory(destination)
    destination.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"destination": str(destination), "files": {}, "deleted": 0, "errors": 0}
    for rtype in run.resource_types:
        written["files"][rtype] = _copy_numbered(run.files[rtype], destination, rtype)
    if run.files.get(None):
        written["files"]["(mixed)"] = _copy_numbered(run.files[None], destination, "output")
    written["deleted"] = _copy_numbered(run.deleted, destination / DELETED_SUBDIR, "Bundle")
    errors_dir = root / "errors" / safe_segment(label)
    written["errors"] = _copy_numbered(_ndjson_files(errors_dir), destination / ERROR_SUBDIR, "OperationOutcome")
    # The log last: a reader that finds it finds every file it describes.
    atomic_write_bytes(destination / LOG_FILE, merged_log(root / EXPORTS_DIR / safe_segment(label)))
    return written


def _copy_numbered(files: list[Any], directory: Any, stem: str) -> int:
    if files:
        directory.mkdir(parents=True, exist_ok=True)
    for n, src in enumerate(files):
        suffix = ".ndjson.gz" if src.name.endswith(".gz") else ".ndjson"
        with src.open("rb") as reader, atomic_open(directory / f"{stem}.{n:03d}{suffix}", "wb") as writer:
            shutil.copyfileobj(reader, writer, _COPY_CHUNK)
    return len(files)
