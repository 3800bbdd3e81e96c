"""Streaming, parallel, checked downloads of Bulk Data files (no Airflow here).

Each file streams through the line checks into a sink the caller opens (an atomic writer), so memory
stays flat however big the file is, and a file that fails midway never becomes visible. Each file is
retried on its own; a 410 Gone makes the downloader ask once for a fresh manifest.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import requests

from airflow_provider_smart.fhir.bulk.lines import LineChecker, NdjsonCheckError
from airflow_provider_smart.fhir.bulk.manifest import PlannedFile
from airflow_provider_smart.fhir.bulk.outcomes import OutcomeSummary
from airflow_provider_smart.fhir.errors import FhirError, describe_error_body
from airflow_provider_smart.fhir.retry import backoff_delays, is_retryable_status, parse_retry_after
from airflow_provider_smart.fhir.urls import redact_url, same_origin

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"


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
    ) -> requests.Response: ...


class DownloadError(FhirError):
    """A file could not be downloaded; the message names the file (with any presigned query redacted)."""


class FileExpiredError(DownloadError):
    """The server answered 410 Gone: the file URL expired."""


class _RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
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
    _last: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, nbytes: int, nlines: int) -> None:
        with self._lock:
            self.bytes_done += nbytes
            self.lines_done += nlines
            now = time.monotonic()
            if now - self._last >= self.interval:
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
        elapsed = (now or time.monotonic()) - self.started
        if self.total_lines and self.lines_done:
            return max(0.0, elapsed * (self.total_lines - self.lines_done) / self.lines_done)
        if self.files_done:
            return max(0.0, elapsed * (self.total_files - self.files_done) / self.files_done)
        return None

    def rate(self, now: float | None = None) -> float:
        elapsed = max(1e-6, (now or time.monotonic()) - self.started)
        return self.bytes_done / elapsed

    def _line(self, now: float) -> str:
        eta = self.eta_seconds(now)
        eta_text = "unknown" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))
        return (
            f"downloaded {self.files_done}/{self.total_files} files, {self.lines_done} resources, "
            f"{self.bytes_done / 1e6:.1f} MB at {self.rate(now) / 1e6:.1f} MB/s, ETA {eta_text}"
        )

    def summary(self) -> str:
        return self._line(time.monotonic())


Sink = Callable[[PlannedFile], AbstractContextManager[IO[bytes]]]
Committed = Callable[[PlannedFile, FileResult], None]
RefreshUrls = Callable[[], Mapping[str, str]]


class BulkDownloader:
    """Download planned manifest files in parallel with a bounded thread pool.

    :param client: a FhirHttpClient (sends the token only to the FHIR server's origin).
    :param requires_access_token: the manifest's ``requiresAccessToken``; when false no token is sent at all.
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
        chunk_size: int = 1 << 20,
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
        self.chunk_size = chunk_size
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.refresh_urls = refresh_urls
        self.progress = progress
        self._refresh_lock = threading.Lock()
        self._fresh: Mapping[str, str] | None = None
        self._cancel = threading.Event()

    def should_authorize(self, url: str) -> bool:
        """Token only when the manifest requires it AND the file is on the FHIR server's origin."""
        return self.requires_access_token and same_origin(url, self.client.base_url)

    def cancel(self) -> None:
        self._cancel.set()

    # -- one file -------------------------------------------------------------------------------
    def download(self, planned: PlannedFile, sink: Sink) -> FileResult:
        """Download one file into ``sink(planned)``, retrying transport failures with backoff."""
        url = planned.url
        delays = backoff_delays(self.max_attempts, base=self.backoff_base, maximum=self.backoff_max)
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            if self._cancel.is_set():
                raise DownloadError(f"download of {planned.key} cancelled")
            try:
                result = self._attempt(planned, url, sink)
                result.attempts = attempt
                return result
            except FileExpiredError:
                if refreshed:
                    raise
                fresh = self._fresh_url(planned)
                if fresh is None:
                    raise
                refreshed = True
                url = fresh
                attempt -= 1  # a fresh URL is a fresh start, not a failed attempt
                log.info("file %s expired (410); retrying with the URL from a re-fetched manifest", planned.key)
            except _RetryableError as exc:
                if attempt >= self.max_attempts:
                    raise DownloadError(
                        f"{planned.key} from {redact_url(url)} failed after {attempt} attempts: {exc}"
                    ) from None
                wait_for = exc.retry_after if exc.retry_after is not None else next(delays, self.backoff_max)
                log.warning(
                    "file %s attempt %d failed (%s); restarting it in %.1fs", planned.key, attempt, exc, wait_for
                )
                self._cancel.wait(wait_for)

    def _fresh_url(self, planned: PlannedFile) -> str | None:
        if self.refresh_urls is None:
            return None
        with self._refresh_lock:
            if self._fresh is None:
                self._fresh = dict(self.refresh_urls())
        fresh = self._fresh.get(planned.key)
        return fresh

    def _attempt(self, planned: PlannedFile, url: str, sink: Sink) -> FileResult:
        source = f"{planned.key} ({redact_url(url)})"
        try:
            response = self.client.request(
                "GET",
                url,
                headers={"Accept": "application/fhir+ndjson"},
                stream=True,
                authorize=self.should_authorize(url),
                raise_for_status=False,
            )
        except FhirError as exc:
            if getattr(exc, "status", None) == 410:
                raise FileExpiredError(f"{source} expired: {exc}", status=410) from None
            if getattr(exc, "status", None) is None or is_retryable_status(int(exc.status or 0)):
                raise _RetryableError(str(exc), getattr(exc, "retry_after", None)) from None
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
                text = describe_error_body(response.content[:4096], response.headers.get("Content-Type"))
                if is_retryable_status(status):
                    retry_after = parse_retry_after(response.headers.get("Retry-After"), maximum=self.backoff_max)
                    raise _RetryableError(f"HTTP {status}: {text}", retry_after)
                raise DownloadError(f"{source} answered HTTP {status}: {text}", status=status)
            checker = LineChecker(source, planned.expected_type, planned.count)
            outcomes = OutcomeSummary() if planned.kind == "error" else None
            nbytes = 0
            nlines = 0
            try:
                with sink(planned) as out:
                    for block in self._line_blocks(response):
                        for line in block:
                            obj = checker.check(line)
                            if outcomes is not None:
                                outcomes.add_outcome(obj)
                        data = b"\n".join(block) + b"\n"
                        out.write(data)
                        nbytes += len(data)
                        nlines += len(block)
                        if self.progress:
                            self.progress.add(len(data), len(block))
                    checker.finish()
            except NdjsonCheckError as exc:
                if self.progress:
                    self.progress.undo(nbytes, nlines)
                raise DownloadError(str(exc)) from None
            except (requests.RequestException, OSError, zlib.error) as exc:
                if self.progress:
                    self.progress.undo(nbytes, nlines)
                if isinstance(exc, OSError) and not _is_transport_error(exc):
                    raise
                raise _RetryableError(f"connection lost after {nbytes} bytes ({type(exc).__name__})") from None
            except BaseException:
                if self.progress:
                    self.progress.undo(nbytes, nlines)
                raise
        if self.progress:
            self.progress.file_done()
        return FileResult(planned.key, checker.count, nbytes, 1, outcomes)

    def _chunks(self, response: requests.Response) -> Iterator[bytes]:
        """Decoded body chunks: Content-Encoding is undone by requests; gzip bodies are inflated here."""
        raw = response.iter_content(chunk_size=self.chunk_size)
        first = b""
        for chunk in raw:
            if chunk:
                first = chunk
                break
        if not first:
            return
        if not first.startswith(_GZIP_MAGIC):
            yield first
            yield from (c for c in raw if c)
            return
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
        pending = first
        while True:
            data = inflater.decompress(pending)
            if data:
                yield data
            if inflater.eof and inflater.unused_data:
                # Concatenated gzip members are one valid gzip file.
                pending = inflater.unused_data
                inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
                continue
            nxt = next(raw, None)
            if nxt is None:
                tail = inflater.flush()
                if tail:
                    yield tail
                if not inflater.eof:
                    raise zlib.error("gzip stream ended early")
                return
            pending = nxt

    def _line_blocks(self, response: requests.Response) -> Iterator[list[bytes]]:
        """Lists of non-empty lines, one list per received chunk; a line may span chunks."""
        rest = b""
        for chunk in self._chunks(response):
            data = rest + chunk if rest else chunk
            parts = data.split(b"\n")
            rest = parts.pop()
            block = [p.strip() for p in parts]
            block = [p for p in block if p]
            if block:
                yield block
        rest = rest.strip()
        if rest:
            yield [rest]

    # -- many files -----------------------------------------------------------------------------
    def download_all(
        self, files: Sequence[PlannedFile], sink: Sink, on_committed: Committed | None = None
    ) -> list[FileResult]:
        """Download ``files`` in parallel. Every file that can finish does; then the first failure is raised."""
        results: list[FileResult] = []
        failures: list[BaseException] = []
        lock = threading.Lock()

        def one(planned: PlannedFile) -> None:
            result = self.download(planned, sink)
            if on_committed is not None:
                on_committed(planned, result)
            with lock:
                results.append(result)

        if not files:
            return results
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
            first = failures[0]
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
