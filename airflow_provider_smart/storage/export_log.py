"""The standard Bulk Data export log (``log.ndjson``) kept beside an export.

bulk-data-client and smart-fetch write one JSON object per line, ``{"exportId", "timestamp", "eventId",
"eventDetail"}``, with the events ``kickoff``, ``status_progress``, ``status_complete``,
``status_page_complete``, ``manifest_complete``, ``status_error``, ``download_request``,
``download_complete``, ``download_error`` and ``export_complete`` ("Bulk Data Export Log Items" in
bulk-data-client's documentation). cumulus-etl reads that file to learn an external export's Group (the
last ``kickoff``'s ``exportUrl``) and its time (``status_complete``'s ``transactionTime``).

The log lives at ``<root>/_exports/<label>/log.ndjson``, beside ``state.json``. ``exportId`` is the
export's status URL as :func:`~airflow_provider_smart.transport.urls.redact_url` shows it (no query, no
userinfo, no secret in the path), so a re-attached or resumed run continues the same export's lines.
Nothing secret reaches a line: URLs go through ``redact_url``, server text through
:func:`~airflow_provider_smart.transport.sanitize.safe_text`, and the ``patient`` parameter is never
written. Our own keys carry a leading underscore, as the format allows.

How a line is written, so a killed run leaves a valid prefix:

- on local disk, each event is one ``write`` of one whole line to a file opened with ``O_APPEND``; the
  one thing a kill can leave is a torn last line, which the next writer cuts off before appending
  (and :func:`read_log` ignores);
- on object stores, where nothing appends, the few lines of the export's life (kick-off, status,
  manifest) rewrite the small file by atomic replace; the many download events are buffered and written
  every :data:`FLUSH_EVERY` lines (and at the end of each landing) as objects of their own under
  ``log.parts/``, so the bytes written stay linear in the events and parallel download tasks never
  overwrite each other. ``export_complete`` folds the parts into ``log.ndjson`` in time order
  (:meth:`ExportLog.consolidate`); a kill loses at most the unflushed download lines, never the file's
  validity.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.storage.atomic import atomic_write_bytes
from airflow_provider_smart.transport.sanitize import safe_text
from airflow_provider_smart.transport.urls import redact_url

if TYPE_CHECKING:
    from airflow_provider_smart.fhir.bulk.kickoff import KickoffRequest
    from airflow_provider_smart.fhir.bulk.manifest import Manifest, PlannedFile

LOG_FILE = "log.ndjson"
#: On object stores, batches of download events land here as objects of their own (see the module doc).
PARTS_DIR = "log.parts"
CLIENT_NAME = "airflow-provider-smart"
#: Buffered download events per rewrite on object stores.
FLUSH_EVERY = 200
#: Server text kept in one field.
TEXT_LIMIT = 2000
#: Parameters that never reach the log: patient ids are identifiers of people.
UNLOGGED_PARAMETERS = frozenset({"patient"})


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_local(path: Any) -> bool:
    protocol = getattr(path, "protocol", "file") or "file"
    if isinstance(protocol, (tuple, list)):
        protocol = protocol[0]
    return str(protocol) in ("file", "local")


def _clean(value: Any) -> Any:
    """Server text cleaned for the log; containers cleaned through; numbers and None kept."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return safe_text(value, limit=TEXT_LIMIT)


class ExportLog:
    """Appends events of one export to its ``log.ndjson`` (``path``); thread-safe."""

    def __init__(self, path: Any, status_url: str | None = None, *, export_id: str | None = None) -> None:
        self.path = path
        self.export_id = export_id or (redact_url(status_url) if status_url else f"unstarted-{os.urandom(8).hex()}")
        self._local = _is_local(path)
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._content: bytes | None = None  # object stores: the file as last written
        self._repaired = False
        self._buffering = 0
        self._writer = os.urandom(6).hex()  # names this writer's part objects
        self._parts = 0

    @classmethod
    def beside(cls, export_dir: Any, status_url: str | None) -> ExportLog:
        """The log of the export whose state lives in ``export_dir`` (``ExportLayout.export_dir``)."""
        return cls(export_dir / LOG_FILE, status_url)

    # -- writing ---------------------------------------------------------------------------------
    def event(self, event_id: str, detail: Mapping[str, Any], **extra: Any) -> None:
        """One line; ``extra`` keys must start with an underscore (the format's room for other keys)."""
        for key in extra:
            if not key.startswith("_"):
                raise ValueError(f"extra log key {key!r} must start with '_' (the format reserves the others)")
        row: dict[str, Any] = {
            "exportId": self.export_id,
            "timestamp": _now(),
            "eventId": event_id,
            "eventDetail": dict(detail),
            **extra,
        }
        line = json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        with self._lock:
            self._pending.append(line)
            # Local appends are cheap and go out at once; object stores rewrite the file, so they batch.
            if self._buffering and not self._local and len(self._pending) < FLUSH_EVERY:
                return
            self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    @contextmanager
    def buffered(self) -> Iterator[ExportLog]:
        """On object stores, hold lines (up to :data:`FLUSH_EVERY`) and write them together: for the many
        download events. On local disk every line is appended at once."""
        with self._lock:
            self._buffering += 1
        try:
            yield self
        finally:
            with self._lock:
                self._flush_locked()  # still as a batch (a part object on object stores)
                self._buffering -= 1

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        if self._local:
            self._append_local(data)
        elif self._buffering:
            # A batch of download events: an object of its own, so the total written stays linear in the
            # events (rewriting log.ndjson each time would be quadratic) and parallel batches never collide.
            self._parts += 1
            part = self.path.parent / PARTS_DIR / f"{self._writer}-{self._parts:06d}.ndjson"
            part.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(part, data)
        else:
            if self._content is None:
                self._content = _valid_prefix(_read_bytes(self.path))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, self._content + data)
            self._content += data
        self._pending.clear()

    def _append_local(self, data: bytes) -> None:
        name = os.fspath(getattr(self.path, "path", self.path))
        os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            if not self._repaired:
                self._cut_torn_tail(fd, name)
                self._repaired = True
            view = memoryview(data)
            while view:  # one write in practice; a short write continues the same line
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    @staticmethod
    def _cut_torn_tail(fd: int, name: str) -> None:
        """A run killed mid-write may leave a last line without its newline: cut it before appending."""
        size = os.fstat(fd).st_size
        if size == 0:
            return
        with open(name, "rb") as handle:
            handle.seek(max(0, size - 65536))
            tail = handle.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        keep = size - len(tail) + cut + 1 if cut >= 0 else (0 if size <= 65536 else size - len(tail))
        os.ftruncate(fd, keep)

    # -- the documented events ----------------------------------------------------------------------
    def kickoff(
        self,
        kick: KickoffRequest,
        *,
        error_code: int | None = None,
        error_body: Any = None,
        response_headers: Mapping[str, str] | None = None,
        software: Mapping[str, Any] | None = None,
        fhir_version: str | None = None,
    ) -> None:
        """``kickoff``: the export URL and its parameters (never ``patient``); error fields when it failed."""
        params: dict[str, str] = {}
        for name, value in kick.params:
            if name in UNLOGGED_PARAMETERS:
                continue
            params[name] = f"{params[name]},{value}" if name in params else value
        for parameter in (kick.json or {}).get("parameter", []):
            pname = str(parameter.get("name") or "")
            if not pname or pname in UNLOGGED_PARAMETERS:
                continue
            pvalue = next((v for k, v in parameter.items() if k.startswith("value")), None)
            text = pvalue if isinstance(pvalue, str) else json.dumps(pvalue)
            params[pname] = f"{params[pname]},{text}" if pname in params else text
        software = software or {}
        self.event(
            "kickoff",
            {
                "exportUrl": redact_url(kick.url),
                "softwareName": _clean(software.get("name")),
                "softwareVersion": _clean(software.get("version")),
                "softwareReleaseDate": _clean(software.get("releaseDate")),
                "fhirVersion": _clean(fhir_version),
                "requestParameters": _clean(params),
                "errorCode": error_code,
                "errorBody": _clean(error_body),
                "responseHeaders": _clean(dict(response_headers)) if response_headers is not None else None,
            },
            _client=CLIENT_NAME,
            _clientVersion=_version(),
            _method=kick.method,
        )

    def status_progress(self, progress: str | None, retry_after: float | None, body: Any = None) -> None:
        """``status_progress``: one pending status answer (``X-Progress``, ``Retry-After``)."""
        self.event(
            "status_progress",
            {"body": _clean(body), "xProgress": _clean(progress), "retryAfter": retry_after},
        )

    def polled(self, result: Any) -> None:
        """The event of one status answer (an ``ExportStatus`` of ``fhir/bulk/status.py``): progress for a
        pending export, an error for a failed, throttled or transient one; nothing for a complete one
        (:meth:`manifest` logs that)."""
        from airflow_provider_smart.fhir.bulk.status import ExportComplete, ExportPending

        if isinstance(result, ExportComplete):
            return
        if isinstance(result, ExportPending):
            self.status_progress(result.progress, result.retry_after)
            return
        outcome = getattr(result, "outcome", None)
        self.status_error(str(getattr(result, "message", result)), getattr(result, "status", None) or None, outcome)

    def status_error(self, message: str, code: int | None = None, body: Any = None) -> None:
        """``status_error``: the status request failed, or the server reports the export failed."""
        self.event(
            "status_error",
            {"body": _clean(body), "code": code, "message": _clean(message), "responseHeaders": None},
        )

    def manifest(self, manifest: Manifest, *, pages: int = 1) -> None:
        """``status_complete``, ``status_page_complete`` and ``manifest_complete`` for a complete manifest."""
        tt = manifest.transaction_time
        counts = len(manifest.output), len(manifest.deleted), len(manifest.error)
        self.event("status_complete", {"transactionTime": tt})
        self.event(
            "status_page_complete",
            {
                "transactionTime": tt,
                "outputFileCount": counts[0],
                "deletedFileCount": counts[1],
                "errorFileCount": counts[2],
            },
        )
        self.event(
            "manifest_complete",
            {
                "transactionTime": tt,
                "totalOutputFileCount": counts[0],
                "totalDeletedFileCount": counts[1],
                "totalErrorFileCount": counts[2],
                "totalManifests": pages,
            },
        )

    def download_request(self, planned: PlannedFile) -> None:
        self.event(
            "download_request",
            {"fileUrl": redact_url(planned.url), "itemType": planned.kind, "resourceType": planned.resource_type},
            _key=planned.key,
        )

    def download_complete(self, planned: PlannedFile, resource_count: int | None, file_size: int) -> None:
        self.event(
            "download_complete",
            {"fileUrl": redact_url(planned.url), "resourceCount": resource_count, "fileSize": file_size},
            _key=planned.key,
        )

    def download_error(self, planned: PlannedFile, exc: BaseException) -> None:
        self.event(
            "download_error",
            {
                "fileUrl": redact_url(planned.url),
                "body": None,
                "code": getattr(exc, "status", None),
                "message": safe_text(exc, limit=TEXT_LIMIT),
                "responseHeaders": None,
            },
            _key=planned.key,
        )

    def export_complete(
        self, *, files: int, resources: int, size: int, started_at: str | None, attachments: int | None = None
    ) -> None:
        """``export_complete``: totals of the landed export and its duration in milliseconds since kick-off."""
        duration = 0
        if started_at:
            try:
                start = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
                duration = max(0, int((datetime.now(UTC) - start).total_seconds() * 1000))
            except ValueError:
                duration = 0
        self.event(
            "export_complete",
            {"files": files, "resources": resources, "bytes": size, "attachments": attachments, "duration": duration},
        )
        if not self._local:
            self.consolidate()

    def consolidate(self) -> None:
        """Object stores: fold the part objects into ``log.ndjson`` (in time order), then remove them. A
        kill in between leaves lines in both places; :func:`merged_log` drops such repeats."""
        with self._lock:
            self._flush_locked()
            parts_dir = self.path.parent / PARTS_DIR
            if not parts_dir.exists():
                return
            merged = merged_log(self.path.parent)
            atomic_write_bytes(self.path, merged)
            self._content = merged
            for part in list(parts_dir.iterdir()):
                part.unlink()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("airflow-provider-smart")
    except Exception:
        return "unknown"


def _read_bytes(path: Any) -> bytes:
    try:
        with path.open("rb") as handle:
            return bytes(handle.read())
    except FileNotFoundError:
        return b""


def _valid_prefix(data: bytes) -> bytes:
    """Whole lines only: a torn last line (a killed writer) is dropped."""
    if not data or data.endswith(b"\n"):
        return data
    cut = data.rfind(b"\n")
    return data[: cut + 1] if cut >= 0 else b""


def read_log(path: Any) -> list[dict[str, Any]]:
    """The events of a ``log.ndjson`` (ours or another client's), a torn last line ignored."""
    events = []
    for line in _valid_prefix(_read_bytes(path)).splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if isinstance(row, dict):
            events.append(row)
    return events


def log_lookups(events: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """What cumulus-etl's log parser reads: the last ``kickoff``'s ``exportUrl`` and the last
    ``status_complete``'s ``transactionTime``."""
    export_url = transaction_time = None
    for row in events:
        detail = row.get("eventDetail") or {}
        if row.get("eventId") == "kickoff" and isinstance(detail.get("exportUrl"), str):
            export_url = detail["exportUrl"]
        elif row.get("eventId") == "status_complete" and isinstance(detail.get("transactionTime"), str):
            transaction_time = detail["transactionTime"]
    return export_url, transaction_time


def merged_log(export_dir: Any) -> bytes:
    """``log.ndjson`` with the lines of any part objects (object stores) folded in, in timestamp order (a
    stable sort: lines of one writer keep their order), repeated lines once. Whole lines only."""
    main = _valid_prefix(_read_bytes(export_dir / LOG_FILE))
    parts_dir = export_dir / PARTS_DIR
    if not parts_dir.exists():
        return main
    lines = [line for line in main.splitlines() if line.strip()]
    for part in sorted(parts_dir.iterdir(), key=lambda p: p.name):
        if part.name.endswith(".ndjson"):
            lines += [line for line in _valid_prefix(_read_bytes(part)).splitlines() if line.strip()]

    def stamp(line: bytes) -> str:
        try:
            return str(json.loads(line).get("timestamp") or "")
        except (ValueError, AttributeError):
            return ""

    unique = list(dict.fromkeys(lines))  # a consolidation killed before removing its parts
    unique.sort(key=stamp)
    return b"".join(line + b"\n" for line in unique)
