"""Streaming, parallel, checked downloads of Bulk Data files (no Airflow here).

Each file streams through the line checks into a sink the caller opens (an atomic writer), so memory
stays flat however big the file is, and a file that fails midway never becomes visible. Each file is
retried on its own, within ONE :class:`~..transport.retry.RetryBudget` per file that the HTTP client's own retries
draw from too (so a 503 storm costs at most ``max_attempts`` requests per file, not the client's
retries times the downloader's); a 410 Gone makes the downloader ask once for a fresh manifest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import requests
import urllib3

from airflow_provider_smart.fhir.bulk.body import (
    BodyError,
    BodyTooLargeError,
    BodyTooSlowError,
    BodyTruncatedError,
    StreamLimits,
    iter_body,
)
from airflow_provider_smart.fhir.bulk.lines import LineChecker, NdjsonCheckError, NdjsonStream, prepare_checks
from airflow_provider_smart.fhir.bulk.manifest import PlannedFile
from airflow_provider_smart.fhir.bulk.outcomes import OutcomeSummary
from airflow_provider_smart.fhir.errors import FhirError, OverLimitError, describe_error_body
from airflow_provider_smart.fhir.http import RefusedRequestError
from airflow_provider_smart.transport.bodies import read_limited
from airflow_provider_smart.transport.retry import (
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_MAX_TOTAL_WAIT,
    RetryBudget,
    WaitPolicy,
    is_retryable_status,
)
from airflow_provider_smart.transport.urls import redact_url, same_origin

log = logging.getLogger(__name__)


class HttpClient(Protocol):
    """The part of :class:`~airflow_provider_smart.fhir.http.FhirHttpClient` the downloader uses."""

    @property
    def base_url(self) -> str: ...

    def request(
        self,
        method: str,
        url_or_path: str,
        *,
        headers: dict[str, str] | None = ...,
        stream: bool = ...,
        authorize: bool | None = ...,
        raise_for_status: bool = ...,
        timeout: float | None = ...,
        budget: RetryBudget | None = ...,
    ) -> requests.Response: ...


class DownloadError(FhirError):
    """A file could not be downloaded; the message names the file (with any presigned query redacted)."""


class FileExpiredError(DownloadError):
    """The server answered 410 Gone: the file URL expired."""


class ExportTooLargeError(DownloadError, OverLimitError):
    """The files of one download step hold more content than ``max_export_bytes``: not retried."""


class FileTooLargeError(DownloadError, OverLimitError):
    """One file holds more content than ``max_file_bytes``: not retried."""


class _ExportBytes:
    """The content all files of one downloader wrote, against ``max_export_bytes`` (thread-safe).

    A failed attempt gives its bytes back (its partial file is dropped); the cap stops an export whose
    files never end (each bounded by ``max_file_bytes``, all together by this).
    """

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.used = 0
        self.exceeded = False  # once over, every file stops (bytes given back do not reopen the cap)
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> None:
        with self._lock:
            self.used += nbytes
            self.exceeded = self.exceeded or (self.cap is not None and self.used > self.cap)
            over = self.exceeded
        if over:
            raise ExportTooLargeError(
                f"the export's files hold more than max_export_bytes={self.cap} bytes of content; raise that "
                "download limit if exports this big are expected"
            )

    def give_back(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes


class _RetryableError(Exception):
    # retry_after: seconds, or the raw Retry-After header (the wait policy reads every form).
    def __init__(self, message: str, retry_after: float | str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class FileResult:
    key: str
    lines: int
    bytes: int
    attempts: int
    outcomes: OutcomeSummary | None = None


@dataclass
class Progress:
    """Thread-safe progress: files and bytes done, rate and ETA, logged at most every ``interval`` seconds."""

    total_files: int
    total_lines: int | None = None
    interval: float = 10.0
    logger: logging.Logger = field(default_factory=lambda: log)
    files_done: int = 0
    bytes_done: int = 0
    lines_done: int = 0
    started: float = field(default_factory=time.monotonic)
    _last: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    #: Share of the work done before an ETA is given: from the first few chunks it is noise (the first
    #: line, logged at the first chunk, once promised 50 minutes for a 50-second download).
    MIN_SHARE_FOR_ETA = 0.02

    def __post_init__(self) -> None:
        if self._last is None:
            self._last = self.started  # the first line after one interval, with something to say

    def add(self, nbytes: int, nlines: int) -> None:
        with self._lock:
            self.bytes_done += nbytes
            self.lines_done += nlines
            now = time.monotonic()
            if now - (self._last or 0.0) >= self.interval:
                self._last = now
                self.logger.info("%s", self._line(now))

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1

    def undo(self, nbytes: int, nlines: int) -> None:
        """A failed attempt's bytes do not count: the file starts again."""
        with self._lock:
            self.bytes_done -= nbytes
            self.lines_done -= nlines

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left at the rate so far, or None until enough is done for the rate to mean something
        (one interval and :attr:`MIN_SHARE_FOR_ETA` of the resources, or of the files without counts)."""
        elapsed = (now or time.monotonic()) - self.started
        if elapsed < self.interval:
            return None
        if self.total_lines:
            done = self.lines_done / self.total_lines
            if done < self.MIN_SHARE_FOR_ETA:
                return None
            return max(0.0, elapsed * (1 - done) / done)
        if self.total_files and self.files_done / self.total_files >= self.MIN_SHARE_FOR_ETA:
            return max(0.0, elapsed * (self.total_files - self.files_done) / self.files_done)
        return None

    def rate(self, now: float | None = None) -> float:
        elapsed = max(1e-6, (now or time.monotonic()) - self.started)
        return self.bytes_done / elapsed

    def _line(self, now: float) -> str:
        eta = self.eta_seconds(now)
        eta_text = "" if eta is None else f", about {_duration(eta)} left"
        resources = f"{self.lines_done:,}" + (f"/{self.total_lines:,}" if self.total_lines else "")
        return (
            f"downloaded {self.files_done}/{self.total_files} files, {resources} resources, "
            f"{self.bytes_done / 1e6:.1f} MB at {self.rate(now) / 1e6:.1f} MB/s{eta_text}"
        )

    def summary(self) -> str:
        return self._line(time.monotonic())


def _duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h 05 min``: what a person reads in a progress line."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


Sink = Callable[[PlannedFile], AbstractContextManager[IO[bytes]]]
Committed = Callable[[PlannedFile, FileResult], None]
RefreshUrls = Callable[[], Mapping[str, str]]


class BulkDownloader:
    """Download planned manifest files in parallel with a bounded thread pool.

    :param client: a FhirHttpClient (sends the token only to the FHIR server's origin).
    :param requires_access_token: the manifest's ``requiresAccessToken``; when false no token is sent at all.
    :param limits: bounds on each file (line and file size, stall timeout, least rate, chunk size).
    :param refresh_urls: called once, on the first 410 Gone, to fetch the manifest again; returns
        file key -> fresh URL.
    """

    def __init__(
        self,
        client: HttpClient,
        *,
        requires_access_token: bool,
        max_workers: int = 4,
        max_attempts: int = 5,
        limits: StreamLimits | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        refresh_urls: RefreshUrls | None = None,
        progress: Progress | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.client = client
        self.requires_access_token = requires_access_token
        self.max_workers = max_workers
        self.max_attempts = max_attempts
        self.limits = limits or StreamLimits()
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.refresh_urls = refresh_urls
        self.progress = progress
        self._refresh_lock = threading.Lock()
        self._fresh: Mapping[str, str] | None = None
        self._cancel = threading.Event()
        self._export_bytes = _ExportBytes(self.limits.max_export_bytes)

    def should_authorize(self, url: str) -> bool:
        """Token only when the manifest requires it AND the file is on the FHIR server's origin."""
        return self.requires_access_token and same_origin(url, self.client.base_url)

    def cancel(self) -> None:
        self._cancel.set()

    # -- one file -------------------------------------------------------------------------------
    def budget(self, planned: PlannedFile) -> RetryBudget:
        """The one retry budget of a file: the downloader's attempts and the HTTP client's retries of
        each request draw from it, under the client's wait policy (``max_retry_after``, total wait)."""
        policy = getattr(self.client, "wait_policy", None)
        budget_policy = WaitPolicy(
            max_retry_after=getattr(policy, "max_retry_after", DEFAULT_MAX_RETRY_AFTER),
            max_attempts=self.max_attempts,
            max_total_wait=getattr(policy, "max_total_wait", DEFAULT_MAX_TOTAL_WAIT),
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
        )

        def sleep(seconds: float) -> None:
            self._cancel.wait(seconds)  # a cancelled download stops waiting at once

        return budget_policy.budget(f"file {planned.key}", sleep=sleep, logger=log)

    def download(self, planned: PlannedFile, sink: Sink) -> FileResult:
        """Download one file into ``sink(planned)``, retrying transport failures within its budget."""
        url = planned.url
        budget = self.budget(planned)
        refreshed = False
        while True:
            if self._cancel.is_set():
                raise DownloadError(f"download of {planned.key} cancelled")
            try:
                result = self._attempt(planned, url, sink, budget)
                result.attempts = budget.attempts
                return result
            except FileExpiredError:
                if refreshed:
                    raise
                fresh = self._fresh_url(planned)
                if fresh is None:
                    raise
                refreshed = True
                url = fresh  # a fresh URL is a fresh start, but it draws from the same budget
                log.info("file %s expired (410); retrying with the URL from a re-fetched manifest", planned.key)
            except _RetryableError as exc:
                if not budget.wait(f"attempt failed ({exc})", retry_after=exc.retry_after):
                    raise DownloadError(
                        f"{planned.key} from {redact_url(url)} failed after {budget.attempts} attempts: {exc} "
                        f"(gave up: {budget.give_up_text()})"
                    ) from None

    def _fresh_url(self, planned: PlannedFile) -> str | None:
        if self.refresh_urls is None:
            return None
        with self._refresh_lock:
            if self._fresh is None:
                self._fresh = dict(self.refresh_urls())
        fresh = self._fresh.get(planned.key)
        return fresh

    def _attempt(self, planned: PlannedFile, url: str, sink: Sink, budget: RetryBudget) -> FileResult:
        source = f"{planned.key} ({redact_url(url)})"
        try:
            response = self.client.request(
                "GET",
                url,
                # Only codings the body reader inflates with bounded memory (never br or zstd).
                headers={"Accept": "application/fhir+ndjson", "Accept-Encoding": "gzip, deflate"},
                stream=True,
                authorize=self.should_authorize(url),
                raise_for_status=False,
                timeout=self.limits.stall_timeout,
                budget=budget,
            )
        except FhirError as exc:
            if getattr(exc, "status", None) == 410:
                raise FileExpiredError(f"{source} expired: {exc}", status=410) from None
            # A refused request (an unsafe URL or address) says retryable=False: trying again cannot help.
            if exc.retryable or is_retryable_status(int(exc.status or 0)):
                raise _RetryableError(str(exc), getattr(exc, "retry_after", None)) from None
            if isinstance(exc, RefusedRequestError):  # keeps its kind: no retry of the task can help either
                raise RefusedRequestError(f"{source}: {exc}", status=exc.status) from None
            raise DownloadError(f"{source}: {exc}", status=exc.status) from None
        except requests.RequestException as exc:
            raise _RetryableError(f"{type(exc).__name__}: {exc}") from None
        with response:
            status = response.status_code
            if status == 410:
                raise FileExpiredError(f"{source} answered 410 Gone (the file URL expired)", status=410)
            if status == 403 and not same_origin(url, self.client.base_url):
                # Presigned storage URLs answer 403 once their signature has expired (S3, GCS, Azure).
                raise FileExpiredError(f"{source} answered 403 (a presigned URL past its expiry?)", status=403)
            if status != 200:
                text = describe_error_body(read_limited(response, 4096), response.headers.get("Content-Type"))
                if is_retryable_status(status):
                    raise _RetryableError(f"HTTP {status}: {text}", response.headers.get("Retry-After"))
                raise DownloadError(f"{source} answered HTTP {status}: {text}", status=status)
            return self._receive(planned, source, response, sink)

    def _receive(self, planned: PlannedFile, source: str, response: requests.Response, sink: Sink) -> FileResult:
        """Stream the body through the line checks into the sink; nothing is committed unless all passes."""
        checker = LineChecker(source, planned.expected_type, planned.count)
        outcomes = OutcomeSummary() if planned.holds_outcomes else None
        lines = NdjsonStream(
            checker,
            max_line_bytes=self.limits.max_line_bytes,
            on_object=outcomes.add_outcome if outcomes is not None else None,
        )
        nbytes = 0
        reported = [0, 0]  # bytes and lines already added to the progress (taken back on failure)
        counted = [0]  # bytes already counted against max_export_bytes (given back on failure)

        def report() -> None:
            if self.progress:
                self.progress.add(nbytes - reported[0], checker.count - reported[1])
            reported[:] = [nbytes, checker.count]
            fresh, counted[0] = nbytes - counted[0], nbytes
            self._export_bytes.take(fresh)

        try:
            with sink(planned) as out:
                write = out.write
                for chunk in iter_body(response, self.limits):
                    for run in lines.feed(chunk):
                        write(run)
                        nbytes += len(run)
                    report()
                for run in lines.finish():
                    write(run)
                    nbytes += len(run)
                report()  # inside: over max_export_bytes, the file is not committed
        except BaseException as exc:
            if self.progress:
                self.progress.undo(reported[0], reported[1])
            self._export_bytes.give_back(counted[0])
            if isinstance(exc, ExportTooLargeError):
                self.cancel()  # the other files stop too: the cap is the export's
            raise self._classify(exc, source, nbytes) from None
        if self.progress:
            self.progress.file_done()
        return FileResult(planned.key, checker.count, nbytes, 1, outcomes)

    @staticmethod
    def _classify(exc: BaseException, source: str, nbytes: int) -> BaseException:
        """What a failure while receiving becomes: a file error, a retryable one, or itself."""
        if isinstance(exc, NdjsonCheckError):
            return DownloadError(str(exc))
        if isinstance(exc, BodyTruncatedError | BodyTooSlowError):
            return _RetryableError(f"{exc} after {nbytes} bytes")
        if isinstance(exc, BodyTooLargeError):
            return FileTooLargeError(f"{source}: {exc}")
        if isinstance(exc, BodyError):
            return DownloadError(f"{source}: {exc}")
        transport = requests.RequestException, urllib3.exceptions.HTTPError
        if isinstance(exc, transport) or (isinstance(exc, OSError) and _is_transport_error(exc)):
            return _RetryableError(f"connection lost after {nbytes} bytes ({type(exc).__name__})")
        return exc

    # -- many files -----------------------------------------------------------------------------
    def download_all(
        self,
        files: Sequence[PlannedFile],
        sink: Sink,
        on_committed: Committed | None = None,
        *,
        on_started: Callable[[PlannedFile], None] | None = None,
        on_failed: Callable[[PlannedFile, BaseException], None] | None = None,
    ) -> list[FileResult]:
        """Download ``files`` in parallel. Every file that can finish does; then the first failure is raised.

        ``on_started``/``on_failed`` see each file's first request and its final failure (after its retries):
        the export log's ``download_request`` and ``download_error`` events.
        """
        results: list[FileResult] = []
        failures: list[BaseException] = []
        lock = threading.Lock()

        def one(planned: PlannedFile) -> None:
            if on_started is not None:
                on_started(planned)
            try:
                result = self.download(planned, sink)
            except BaseException as exc:
                if on_failed is not None:
                    on_failed(planned, exc)
                raise
            if on_committed is not None:
                on_committed(planned, result)
            with lock:
                results.append(result)

        if not files:
            return results
        prepare_checks(f.expected_type for f in files if f.kind != "error")
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(files)), thread_name_prefix="bulk-dl") as pool:
            futures = [pool.submit(one, f) for f in files]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
                for fut in futures:
                    exc = fut.exception()
                    if exc is not None:
                        failures.append(exc)
            except BaseException:
                self.cancel()
                for fut in futures:
                    fut.cancel()
                raise
        if failures:
            # A refusal first: it decides whether a retry of the task can help (failures.retry_cannot_fix).
            first = next((f for f in failures if isinstance(f, RefusedRequestError)), failures[0])
            if len(failures) > 1:
                message = f"{len(failures)} of {len(files)} files failed; first: {first}"
                raise DownloadError(message) from first
            raise first
        return results


def _is_transport_error(exc: OSError) -> bool:
    """Socket-level errors are worth a retry; a full disk or a storage error is not."""
    import errno

    return isinstance(exc, ConnectionError | TimeoutError) or exc.errno in (
        errno.ECONNRESET,
        errno.EPIPE,
        errno.ETIMEDOUT,
        None,
    )


def describe_results(results: Sequence[FileResult]) -> dict[str, Any]:
    return {"files": len(results), "lines": sum(r.lines for r in results), "bytes": sum(r.bytes for r in results)}
