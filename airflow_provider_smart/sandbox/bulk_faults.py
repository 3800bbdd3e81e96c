"""Fault switches that only make sense for a Bulk Data export (``state.faults.bulk``).

The generic switches of :mod:`airflow_provider_smart.sandbox.faults` (429, transient 5xx, dropped
connections, token invalidation) cover the rest, through the path patterns in
:mod:`airflow_provider_smart.sandbox.bulk_runtime`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

#: How ``file_gzip`` serves a file (see :class:`BulkFaults`).
FILE_GZIP_MODES = ("body", "members", "truncated")


@dataclass
class BulkFaults:
    """Export-only fault switches; set the attributes in-process (``state.faults.bulk``) or with
    ``PUT /_sandbox/faults`` and a body ``{"bulk": {...}}``.

    :param fail_exports: exports kicked off while set fail: the status URL answers 500 with a fatal
        OperationOutcome.
    :param error_file: exports kicked off while set list an error file holding a fatal and an
        informational OperationOutcome (the data files are complete).
    :param expire_files: the next N file downloads answer 410 Gone, and the URLs they used stay expired;
        fetching the manifest again gives fresh URLs that work.
    :param invalidate_tokens_after_downloads: after N more file downloads, every access token issued so far
        is refused (401); a client must get a new token to finish.
    :param one_export_per_client: a kick-off while the same client has an export in progress answers 429
        with Retry-After (as EHRs that allow one export per client do).
    :param enforce_retry_after: a status request sooner than the last answer's Retry-After answers 429
        with Retry-After (the spec's advice for clients that poll too frequently) and is not counted.
    :param error_file_severity: the severity of the ``error_file`` fault's main issue (``fatal``,
        ``error``, ``warning``...): ``error`` is what servers write for resources they could not export.
    :param error_counts_from_data: every manifest error entry carries the first data file's ``count``
        (some servers copy it there).
    :param endless_files: every data file is served as its lines repeated without end (valid NDJSON,
        no length, no ``count`` in the manifest), up to this many bytes per request, where the server
        gives up (so a client without a cap still finishes).
    :param strip_ids: the first N resources of every data file are served without their ``id``.
    :param errors_in_output: every manifest lists its error files under ``output`` (type
        ``OperationOutcome``) instead of ``error``, as some servers do.
    :param transaction_time: every manifest's ``transactionTime`` is this text (``not-a-date``,
        ``9999-12-31T00:00:00Z``).
    :param output_organized_by: every manifest's ``outputOrganizedBy`` is this text (a hostile value such
        as ``x/../../../../tmp/ESCAPED``).
    :param progress_text: every in-progress status answer's ``X-Progress`` is this text (a hostile value:
        C1 control characters such as ``\x9b``, thousands of characters).
    :param file_gzip: every file is served gzip-compressed *without* ``Content-Encoding`` (as some servers
        store and serve ``.ndjson.gz``): ``body`` (one gzip member), ``members`` (two concatenated
        members) or ``truncated`` (one member whose last 20 bytes are missing; the HTTP answer itself is
        complete).
    """

    fail_exports: bool = False
    error_file: bool = False
    expire_files: int = 0
    invalidate_tokens_after_downloads: int | None = None
    one_export_per_client: bool = False
    enforce_retry_after: bool = False
    error_file_severity: str = "fatal"
    error_counts_from_data: bool = False
    errors_in_output: bool = False
    endless_files: int | None = None
    strip_ids: int = 0
    transaction_time: str | None = None
    output_organized_by: str | None = None
    progress_text: str | None = None
    file_gzip: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def take_expire_file(self) -> bool:
        with self._lock:
            if self.expire_files > 0:
                self.expire_files -= 1
                return True
            return False

    def count_download(self) -> bool:
        """Count one served download; True when tokens must be invalidated now."""
        with self._lock:
            if self.invalidate_tokens_after_downloads is None:
                return False
            self.invalidate_tokens_after_downloads -= 1
            if self.invalidate_tokens_after_downloads <= 0:
                self.invalidate_tokens_after_downloads = None
                return True
            return False

    def rewrite_manifest(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """The manifest as the manifest faults change it."""
        with self._lock:
            if self.transaction_time is not None:
                manifest["transactionTime"] = self.transaction_time
            if self.output_organized_by is not None:
                manifest["outputOrganizedBy"] = self.output_organized_by
            if self.error_counts_from_data and manifest.get("output") and manifest.get("error"):
                count = manifest["output"][0].get("count")
                manifest["error"] = [dict(entry, count=count) for entry in manifest["error"]]
            if self.endless_files is not None:  # endless files come without a count that would stop them
                manifest["output"] = [{k: v for k, v in e.items() if k != "count"} for e in manifest.get("output", [])]
            if self.errors_in_output and manifest.get("error"):
                moved = [dict(entry, type="OperationOutcome") for entry in manifest.pop("error")]
                manifest["output"] = [*manifest.get("output", []), *moved]
        return manifest

    def reset(self) -> None:
        with self._lock:
            self.error_file_severity = "fatal"
            self.error_counts_from_data = False
            self.errors_in_output = False
            self.endless_files = None
            self.strip_ids = 0
            self.transaction_time = None
            self.output_organized_by = None
            self.progress_text = None
            self.file_gzip = None
            self.fail_exports = False
            self.error_file = False
            self.expire_files = 0
            self.invalidate_tokens_after_downloads = None
            self.one_export_per_client = False
            self.enforce_retry_after = False

    def apply_json(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise ValueError("bulk faults must be a JSON object")
        names = {"fail_exports", "error_file", "expire_files", "invalidate_tokens_after_downloads"}
        names |= {"one_export_per_client", "enforce_retry_after", "error_counts_from_data", "errors_in_output"}
        names |= {"endless_files", "strip_ids"}
        names |= {"error_file_severity", "transaction_time", "output_organized_by", "progress_text", "file_gzip"}
        unknown = set(body) - names
        if unknown:
            raise ValueError(f"unknown bulk fault(s) {sorted(unknown)}: use {sorted(names)}")
        with self._lock:
            for name, value in body.items():
                if name in ("expire_files", "strip_ids"):
                    value = int(value)
                elif name in ("invalidate_tokens_after_downloads", "endless_files"):
                    value = None if value is None else int(value)
                elif name == "error_file_severity":
                    if value not in ("fatal", "error", "warning", "information"):
                        raise ValueError(f"error_file_severity must be fatal, error, warning or information: {value!r}")
                elif name == "file_gzip":
                    if value not in (None, *FILE_GZIP_MODES):
                        raise ValueError(f"file_gzip must be null or one of {', '.join(FILE_GZIP_MODES)}: {value!r}")
                elif name in ("transaction_time", "output_organized_by", "progress_text"):
                    value = None if value is None else str(value)
                else:
                    value = bool(value)
                setattr(self, name, value)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "fail_exports": self.fail_exports,
                "error_file": self.error_file,
                "expire_files": self.expire_files,
                "invalidate_tokens_after_downloads": self.invalidate_tokens_after_downloads,
                "one_export_per_client": self.one_export_per_client,
                "enforce_retry_after": self.enforce_retry_after,
                "error_file_severity": self.error_file_severity,
                "error_counts_from_data": self.error_counts_from_data,
                "errors_in_output": self.errors_in_output,
                "endless_files": self.endless_files,
                "strip_ids": self.strip_ids,
                "transaction_time": self.transaction_time,
                "output_organized_by": self.output_organized_by,
                "progress_text": self.progress_text,
                "file_gzip": self.file_gzip,
            }
