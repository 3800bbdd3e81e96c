"""Land the attachments of landed resources: content-addressed blobs, an index, resume, nothing partial.

Layout under ``<output>/attachments/<label>/``::

    blobs/<sha256>          the bytes, stored once per content (written under a _tmp. name, then renamed)
    _records/<key>.json     one record per attachment as it is settled (what a resumed run reuses)
    index.ndjson            one line per attachment: where it came from and where it is (written last)
    _SUCCESS                written after the index when every attachment landed or was skipped

Readers skip ``_``-prefixed names, so a killed run shows no half-written blob and no index that looks
complete. A rerun reads ``_records`` and fetches only what did not land (failed ones are tried again).

Every request goes through the FHIR client, so the token decision, the wait policy and the retry budget
are the client's: an attachment URL on another origin is fetched without the token, and a relative URL
(``Binary/123``) resolves against the FHIR base URL.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import logging
import re
import threading
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal

from airflow_provider_smart.fhir.attachments import (
    ATTACHMENT_PATHS,
    MAX_BINARY_ENVELOPE,
    AttachmentError,
    AttachmentRef,
    BinaryUnwrapper,
    accept_header,
    is_wrapped_binary,
    iter_attachments,
    media_type,
    sha1_base64,
    type_allowed,
)
from airflow_provider_smart.storage.atomic import (
    TMP_PREFIX,
    StaleTemps,
    atomic_open,
    atomic_write_json,
    mark_complete,
    mark_incomplete,
    read_json,
    replace,
)
from airflow_provider_smart.storage.preflight import storage_uri
from airflow_provider_smart.transport.sanitize import safe_text
from airflow_provider_smart.transport.urls import UnsafeUrlError, check_url, redact_url, resolve, same_origin

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_smart.fhir.bulk.body import StreamLimits

log = logging.getLogger(__name__)

INDEX_NAME = "index.ndjson"
_RESOURCE_TYPE = re.compile(rb'"resourceType"\s*:\s*"([A-Za-z]{1,64})"')
_CHUNK = 256 * 1024

Status = Literal["landed", "inline", "skipped", "failed"]


@dataclass(frozen=True)
class AttachmentSettings:
    """What to fetch and how much.

    :param max_bytes: the largest attachment fetched; a larger one is recorded as skipped (oversize),
        whether its declared ``size`` says so or its bytes do while streaming.
    :param allowed_types: media types (``application/pdf``) and wildcards (``text/*``) to fetch; None
        fetches every type. Others are recorded as skipped.
    :param workers: attachments fetched at once.
    :param inline_max_bytes: text attachments (``text/*``) up to this size are written into the resource's
        ``attachment.data`` in the landed NDJSON (0: off).
    :param rewrite_urls: replace ``attachment.url`` in the landed NDJSON with the stored blob's location.
    :param on_error: ``"fail"`` (default) fails the task after every attachment was tried when one could
        not be fetched (404, 410, a bad body); ``"record"`` keeps the failure in the index and succeeds.
    :param max_seconds: the longest one attachment's body may take to arrive (600 s).
    :param min_bytes_per_second: the least average rate over each ``rate_window`` seconds (1 KiB/s over
        60 s; 0 turns the check off). Both are the file downloads' checks
        (:class:`~airflow_provider_smart.fhir.bulk.body.StreamLimits`); a body that breaks one is
        recorded as failed.
    """

    max_bytes: int = 50 * 1024 * 1024
    allowed_types: tuple[str, ...] | None = None
    workers: int = 4
    inline_max_bytes: int = 0
    rewrite_urls: bool = False
    on_error: Literal["fail", "record"] = "fail"
    max_seconds: float = 600.0
    min_bytes_per_second: float = 1024.0
    rate_window: float = 60.0

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError(f"attachments max_bytes must be positive; got {self.max_bytes}")
        if self.workers < 1:
            raise ValueError(f"attachments workers must be at least 1; got {self.workers}")
        if self.inline_max_bytes < 0:
            raise ValueError(f"attachments inline_max_bytes must be 0 (off) or positive; got {self.inline_max_bytes}")
        if self.on_error not in ("fail", "record"):
            raise ValueError(f"attachments on_error must be 'fail' or 'record'; got {self.on_error!r}")
        self.stream_limits()  # the time and rate bounds are checked where the file downloads' are

    def stream_limits(self) -> StreamLimits:
        """The body bounds of one attachment: the file downloads' checks with these settings. The size is
        checked on the stored bytes (an oversize attachment is skipped, not failed)."""
        from airflow_provider_smart.fhir.bulk.body import StreamLimits

        return StreamLimits(
            chunk_size=_CHUNK,
            max_file_bytes=None,
            max_seconds=self.max_seconds,
            min_bytes_per_second=self.min_bytes_per_second,
            rate_window=self.rate_window,
        )

    @classmethod
    def from_option(cls, option: bool | str | dict[str, Any] | AttachmentSettings | None) -> AttachmentSettings | None:
        """The operators' ``attachments`` argument: False/None (off), True (defaults) or a dict of fields.

        A rendered template arrives as text: ``"true"``/``"false"`` (any case; ``""`` and ``"none"`` are
        off) or a JSON object of fields.
        """
        if isinstance(option, str):
            option = _option_from_text(option)
        if option is None or option is False:
            return None
        if option is True:
            return cls()
        if isinstance(option, AttachmentSettings):
            return option
        if isinstance(option, dict):
            known = set(cls.__dataclass_fields__)
            unknown = sorted(set(option) - known)
            if unknown:
                raise ValueError(f"unknown attachments option(s) {unknown}; use {sorted(known)}")
            values = dict(option)
            if values.get("allowed_types") is not None:
                values["allowed_types"] = tuple(values["allowed_types"])
            return cls(**values)
        raise TypeError(f"attachments must be True, False or a dict of settings; got {type(option).__name__}")

    def to_option(self) -> dict[str, Any]:
        """These settings as a JSON-safe dict that :meth:`from_option` reads back (for XCom references)."""
        option = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if self.allowed_types is not None:
            option["allowed_types"] = list(self.allowed_types)
        return option


def check_attachments_option(option: Any) -> Any:
    """The operators' ``attachments`` argument checked when the DAG is parsed; a template is kept as it is
    and checked once rendered. Returns the option unchanged."""
    if isinstance(option, str) and ("{{" in option or "{%" in option):
        return option
    AttachmentSettings.from_option(option)
    return option


def _option_from_text(text: str) -> bool | dict[str, Any] | None:
    """``attachments`` given as text (a rendered template): a boolean word or a JSON object."""
    word = text.strip().lower()
    if word in ("", "none", "null", "false", "off", "no", "0"):
        return False
    if word in ("true", "on", "yes", "1"):
        return True
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ValueError(
            f"attachments={safe_text(text, limit=80)!r} is neither true/false nor a JSON object of settings; "
            'pass e.g. True or {"max_bytes": 10485760}'
        )
    return value


class AttachmentsFailedError(RuntimeError):
    """Some attachments could not be fetched; the index names each with its reason."""


#: Why an attachment was not fetched, as counted in the summary (``skipped`` by reason).
SKIP_REASONS = ("too_large", "type_not_allowed", "unsafe_url")


@dataclass
class _Totals:
    by_status: dict[str, int] = field(default_factory=dict)
    bytes_landed: int = 0
    #: Landed attachments whose content another attachment of the run had stored already.
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    contents: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: dict[str, Any]) -> None:
        with self.lock:
            status = record["status"]
            self.by_status[status] = self.by_status.get(status, 0) + 1
            if status == "landed":
                if record.get("sha256") in self.contents:
                    self.duplicates += 1
                self.contents.add(str(record.get("sha256")))
            if status == "landed" and not record.get("reused"):
                self.bytes_landed += int(record.get("size") or 0)
            if status == "skipped":
                code = str(record.get("reason_code") or "other")
                self.skipped[code] = self.skipped.get(code, 0) + 1
            if status == "failed" and len(self.failures) < 20:
                where = f"{record['resource_type']}/{record['resource_id']} {record['position']}"
                self.failures.append(f"{where}: {record.get('reason')}")


class AttachmentLanding:
    """Fetch and store every attachment URL of some landed NDJSON files.

    :param client: the FHIR client (``request(method, url, headers=, stream=, raise_for_status=)`` and
        ``base_url``); it decides where the token goes and how long to wait.
    :param destination: ``<output>/attachments/<label>``.
    """

    def __init__(
        self,
        client: Any,
        destination: ObjectStoragePath,
        settings: AttachmentSettings,
        *,
        logger: logging.Logger | Any = log,
    ) -> None:
        self.client = client
        self.destination = destination
        self.settings = settings
        self.log = logger
        self.blobs = destination / "blobs"
        self.records = destination / "_records"
        self.totals = _Totals()
        # One record per attachment goes into _records: list it once for killed writers' leftovers.
        self._stale = StaleTemps()

    # --- the run ---------------------------------------------------------------------------------

    def run(self, sources: Iterable[ObjectStoragePath]) -> dict[str, Any]:
        """Land every attachment of ``sources`` (NDJSON files, plain or gzipped); return the summary."""
        if self.destination.exists():
            mark_incomplete(self.destination)
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.records.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.destination / INDEX_NAME, "wb") as index:
            for source in sources:
                records = self._land_file(source, index)
                if records and (self.settings.inline_max_bytes or self.settings.rewrite_urls):
                    self._rewrite(source, records)
        summary = {
            "output": storage_uri(self.destination),
            "index": storage_uri(self.destination / INDEX_NAME),
            "counts": dict(sorted(self.totals.by_status.items())),
            "landed": self.totals.by_status.get("landed", 0),
            "duplicates": self.totals.duplicates,
            "skipped": dict(sorted(self.totals.skipped.items())),
            "failed": self.totals.by_status.get("failed", 0),
            "bytes_landed": self.totals.bytes_landed,
        }
        failed = self.totals.by_status.get("failed", 0)
        if failed:
            summary["failures"] = list(self.totals.failures)
            self.log.warning("%d attachment(s) could not be fetched: %s", failed, "; ".join(self.totals.failures))
        if failed and self.settings.on_error == "fail":
            raise AttachmentsFailedError(
                f"{failed} attachment(s) could not be fetched (first: {self.totals.failures[0]}); the index at "
                f"{self.destination / INDEX_NAME} lists each with its reason. A retry fetches only those; "
                "pass attachments={'on_error': 'record'} to keep going without them"
            )
        mark_complete(self.destination, summary)
        self.log.info("attachments landed under %s: %s", self.destination, summary["counts"])
        return summary

    def _land_file(self, source: ObjectStoragePath, index: IO[bytes]) -> dict[tuple[str, str, str], dict[str, Any]]:
        records: dict[tuple[str, str, str], dict[str, Any]] = {}
        pending: set[Future[dict[str, Any]]] = set()
        limit = self.settings.workers * 2
        with ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="attachment") as pool:

            def settle(done: Iterable[Future[dict[str, Any]]]) -> None:
                for future in done:
                    record = future.result()
                    records[(record["resource_type"], record["resource_id"], record["position"])] = record
                    index.write(json.dumps(record, sort_keys=True).encode() + b"\n")
                    self.totals.add(record)

            for ref in _refs(source):
                if len(pending) >= limit:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    settle(done)
                pending.add(pool.submit(self._settle, ref))
            done, _ = wait(pending)
            settle(done)
        return records

    # --- one attachment --------------------------------------------------------------------------

    def _settle(self, ref: AttachmentRef) -> dict[str, Any]:
        """The record of one attachment: reused from an earlier attempt, or fetched now."""
        stored = self._stored_here(ref)
        if stored is not None:
            return stored
        record_path = self.records / f"{ref.key}.json"
        earlier = _read_record(record_path)
        settled = earlier is not None and earlier.get("status") in ("landed", "inline", "skipped")
        if (
            earlier is not None
            and settled
            and (earlier["status"] != "landed" or (self.blobs / str(earlier.get("sha256"))).exists())
        ):
            return dict(earlier, reused=True)
        record = self._fetch(ref)
        atomic_write_json(record_path, record, stale=self._stale)
        return record

    def _stored_here(self, ref: AttachmentRef) -> dict[str, Any] | None:
        """An attachment whose URL an earlier attempt rewrote to its blob here (``rewrite_urls``): landed."""
        prefix = f"{storage_uri(self.blobs)}/"
        if not ref.url or not ref.url.startswith(prefix):
            return None
        name = ref.url[len(prefix) :]
        blob = self.blobs / name
        if not re.fullmatch(r"[0-9a-f]{64}", name) or not blob.exists():
            return None
        record = dict(self._base_record(ref), url=ref.url, status="landed", sha256=name, stored=ref.url)
        return dict(record, size=blob.stat().st_size, reused=True)

    def _base_record(self, ref: AttachmentRef) -> dict[str, Any]:
        return {
            "resource_type": ref.resource_type,
            "resource_id": ref.resource_id,
            "position": ref.position,
            "url": _recorded_url(ref.url, self.client.base_url) if ref.url else None,
            "content_type": ref.content_type,
            "title": ref.title,
        }

    def _fetch(self, ref: AttachmentRef) -> dict[str, Any]:
        record = self._base_record(ref)
        limit = self.settings.max_bytes
        if ref.url is None:
            return dict(record, status="inline", reason=None)
        if not type_allowed(ref.content_type, self.settings.allowed_types):
            kind = media_type(ref.content_type) or "unknown"
            return _skipped(record, "type_not_allowed", f"content type {kind!r} is not in allowed_types")
        if ref.declared_size is not None and ref.declared_size > limit:
            return _skipped(record, "too_large", f"declared size {ref.declared_size} > max_bytes {limit}")
        # Here, not at the top: the operators import this module when a DAG is parsed.
        from airflow_provider_smart.fhir.http import RefusedRequestError

        url = ref.url if "://" in ref.url else resolve(self.client.base_url + "/", ref.url)
        try:
            # The one URL check every request path uses; a URL parsers could read two ways is never sent.
            check_url(url)
            stored = self._download(url, ref)
        except _Skip as skip:
            return _skipped(record, "too_large", str(skip))
        except (UnsafeUrlError, RefusedRequestError) as exc:
            return _skipped(record, "unsafe_url", safe_text(str(exc), limit=300))
        except Exception as exc:  # one attachment's failure is recorded; the run goes on
            return dict(record, status="failed", reason=safe_text(str(exc) or type(exc).__name__, limit=300))
        return dict(record, status="landed", **stored)

    def _download(self, url: str, ref: AttachmentRef) -> dict[str, Any]:
        from airflow_provider_smart.fhir.bulk.body import iter_body

        limits = self.settings.stream_limits()
        response = self.client.request(
            "GET",
            url,
            headers={"Accept": accept_header(ref.content_type)},
            stream=True,
            raise_for_status=False,
            timeout=limits.stall_timeout,
        )
        try:
            if response.status_code >= 400:
                reason = {404: "not found", 410: "gone"}.get(response.status_code, "error")
                raise AttachmentError(f"HTTP {response.status_code} ({reason}) from {redact_url(url)}")
            answered = response.headers.get("Content-Type")
            length = response.headers.get("Content-Length")
            wrapped = is_wrapped_binary(url, answered, ref.content_type)
            # A wrapped Binary is base64 (4/3 of the bytes) in a small JSON envelope.
            most = self.settings.max_bytes * 4 // 3 + MAX_BINARY_ENVELOPE if wrapped else self.settings.max_bytes
            if length and length.isdigit() and int(length) > most:
                raise _Skip(f"Content-Length {length} > max_bytes {self.settings.max_bytes}")
            # Rate, total time and inflating as for export files; the bytes are kept as sent (no gunzip).
            body = iter_body(response, limits, gzip_body=False)
            if wrapped:
                unwrapper = BinaryUnwrapper()
                stored = self._store(unwrapper.unwrap(body))  # decoded while it streams, never held whole
                content_type = unwrapper.content_type or ref.content_type
            else:
                content_type = answered or ref.content_type
                stored = self._store(body)
        finally:
            response.close()
        if ref.declared_sha1 and stored["sha1"] != ref.declared_sha1:
            raise AttachmentError(
                f"the bytes' SHA-1 {stored['sha1']} differs from the attachment's hash {ref.declared_sha1}"
            )
        stored["content_type"] = media_type(content_type) or ref.content_type
        stored.pop("sha1")
        return stored

    def _store(self, chunks: Iterable[bytes]) -> dict[str, Any]:
        """Stream ``chunks`` into a blob named by its SHA-256; the same content is stored once."""
        sha256, sha1, size = hashlib.sha256(), hashlib.sha1(), 0  # noqa: S324 - FHIR's Attachment.hash is SHA-1
        tmp = self.blobs / f"{TMP_PREFIX}{uuid.uuid4().hex}.blob"
        try:
            with tmp.open("wb") as handle:  # type: ignore[no-untyped-call]
                for chunk in chunks:
                    if not chunk:
                        continue
                    size += len(chunk)
                    if size > self.settings.max_bytes:
                        raise _Skip(f"more than max_bytes {self.settings.max_bytes} bytes")
                    sha256.update(chunk)
                    sha1.update(chunk)
                    handle.write(chunk)
            name = sha256.hexdigest()
            final = self.blobs / name
            if final.exists():
                tmp.unlink()
            else:
                replace(tmp, final)
        except BaseException:
            with contextlib.suppress(Exception):
                if tmp.exists():
                    tmp.unlink()
            raise
        return {"sha256": name, "sha1": sha1_base64(sha1.digest()), "size": size, "stored": storage_uri(final)}

    # --- optional rewrite of the landed resources -------------------------------------------------

    def _rewrite(self, source: ObjectStoragePath, records: dict[tuple[str, str, str], dict[str, Any]]) -> None:
        """Write ``data`` (small text) and/or the stored ``url`` into the attachments of ``source``."""
        settings = self.settings
        changed = 0
        with _open_for_rewrite(source) as (lines, out):
            for line in lines:
                if not line.strip():
                    continue
                resource = json.loads(line)
                touched = False
                for position, element in _elements(resource):
                    key = (str(resource.get("resourceType")), str(resource.get("id")), position)
                    record = records.get(key)
                    if record is None or record.get("status") != "landed":
                        continue
                    blob = self.blobs / record["sha256"]
                    if (
                        settings.inline_max_bytes
                        and "data" not in element
                        and media_type(record.get("content_type")).startswith("text/")
                        and int(record["size"]) <= settings.inline_max_bytes
                    ):
                        element["data"] = base64.b64encode(blob.read_bytes()).decode("ascii")
                        touched = True
                    if settings.rewrite_urls:
                        element["url"] = record["stored"]
                        touched = True
                changed += touched
                out.write(json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        self.log.info("attachments written into %d resource(s) of %s", changed, source)


class _Skip(Exception):
    """The attachment is not fetched by the settings (oversize); recorded as skipped with the reason."""


def _skipped(record: dict[str, Any], code: str, reason: str) -> dict[str, Any]:
    """A record of an attachment not fetched: ``reason_code`` (one of :data:`SKIP_REASONS`) and the text."""
    return dict(record, status="skipped", reason=reason, reason_code=code)


def _elements(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    from airflow_provider_smart.fhir.attachments import iter_attachment_elements

    yield from iter_attachment_elements(resource)


def _recorded_url(url: str, base_url: str) -> str:
    """The URL as the index keeps it: relative ones as given, others without a query (presigned keys)."""
    if "://" not in url:
        return url
    return url if same_origin(url, base_url) and "?" not in url else redact_url(url)


def _read_record(path: ObjectStoragePath) -> dict[str, Any] | None:
    try:
        value = read_json(path)
    except ValueError:  # a torn record from a killed writer is just not there
        return None
    return value if isinstance(value, dict) else None


def _lines(path: ObjectStoragePath) -> Iterator[bytes]:
    with path.open("rb") as raw:  # type: ignore[no-untyped-call]
        stream: Any = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
        yield from stream


def _refs(source: ObjectStoragePath) -> Iterator[AttachmentRef]:
    for line in _lines(source):
        # Only types that can hold attachments are parsed; the rest (most of an export) is skipped cheaply.
        found = _RESOURCE_TYPE.search(line)
        if found is None or found.group(1).decode() not in ATTACHMENT_PATHS:
            continue
        resource = json.loads(line)
        if isinstance(resource, dict):
            yield from (ref for ref in iter_attachments(resource) if ref.url is not None or ref.has_data)


@contextlib.contextmanager
def _open_for_rewrite(source: ObjectStoragePath) -> Iterator[tuple[Iterator[bytes], Any]]:
    """Read ``source`` while writing its replacement, swapped in atomically at the end."""
    compressed = source.name.endswith(".gz")
    with atomic_open(source, "wb") as raw:
        out: Any = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) if compressed else raw
        try:
            yield _lines(source), out
        finally:
            if compressed:
                out.close()


def land_attachments(
    client: Any,
    sources: Iterable[ObjectStoragePath],
    destination: ObjectStoragePath,
    settings: AttachmentSettings,
    *,
    logger: logging.Logger | Any = log,
) -> dict[str, Any]:
    """Fetch every attachment URL in ``sources`` into ``destination``; see :class:`AttachmentLanding`."""
    return AttachmentLanding(client, destination, settings, logger=logger).run(sources)


def attachments_destination(output: ObjectStoragePath, label: str) -> ObjectStoragePath:
    """``<output>/attachments/<label>``: where a run's attachments land."""
    return output / "attachments" / label
