"""Reading a Bulk Data file's body with bounded memory and time, whatever the server sends.

- The raw bytes are read as they arrive (``read1``), so a slow sender is noticed while it trickles.
- ``Content-Encoding`` (gzip, deflate) and a gzip *body* are inflated here, at most ``chunk_size``
  bytes of output per step: a 1 MB body that inflates to 1 GB costs no more memory than a plain one.
  Concatenated gzip members are one valid gzip stream; a stream that ends early is an error.
- No bytes for ``stall_timeout`` seconds fails the attempt (the socket's read timeout); fewer than
  ``min_bytes_per_second`` on average over any ``rate_window`` seconds fails it too (a trickle of one
  line every few seconds would never stall), and so does taking more than ``max_seconds`` in all (when
  set); more than ``max_file_bytes`` of content fails the file.

No Airflow here.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

from airflow_provider_smart.fhir.bulk.lines import DEFAULT_MAX_LINE_BYTES

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class StreamLimits:
    """Bounds on one file download. Every one can be changed in the operators' ``download_limits``.

    :param chunk_size: bytes read, and inflated, per step (the unit of memory per worker).
    :param max_line_bytes: the longest NDJSON line accepted (64 MiB).
    :param max_file_bytes: the most content one file may have once inflated (16 GiB); None for no cap.
    :param max_export_bytes: the most content all files of one download step may have together once
        inflated (1 TiB); None for no cap.
    :param stall_timeout: seconds without a single byte before the attempt fails (120 s).
    :param min_bytes_per_second: the least average rate over each ``rate_window`` (1 KiB/s); 0 turns
        the check off.
    :param rate_window: seconds over which the rate is averaged (300 s).
    :param max_seconds: seconds one attempt may take from its first byte to its last; None (the default
        for export files, whose size the rate checks already tie to time) for no cap.
    :param max_manifest_bytes: the largest manifest page read (32 MiB, about 100,000 files with
        presigned URLs); a larger one fails naming this setting.
    :param max_manifest_files: the most files (output, error and deleted, over all pages) one manifest
        may list (100,000); more fails naming this setting.
    """

    chunk_size: int = 1 << 20
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_file_bytes: int | None = 16 << 30
    max_export_bytes: int | None = 1 << 40
    stall_timeout: float = 120.0
    min_bytes_per_second: float = 1024.0
    rate_window: float = 300.0
    max_seconds: float | None = None
    max_manifest_bytes: int = 32 << 20
    max_manifest_files: int = 100_000

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.max_line_bytes < 1:
            raise ValueError("chunk_size and max_line_bytes must be positive")
        for name in ("max_file_bytes", "max_export_bytes", "max_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or None for no cap), got {value!r}")
        if self.max_manifest_bytes < 1 or self.max_manifest_files < 1:
            raise ValueError("max_manifest_bytes and max_manifest_files must be positive")
        if self.stall_timeout <= 0 or self.rate_window <= 0 or self.min_bytes_per_second < 0:
            raise ValueError("stall_timeout and rate_window must be positive, min_bytes_per_second not negative")

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> StreamLimits:
        """The operators' ``download_limits`` mapping as limits; an unknown name is an error naming the known."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options or {}) - known)
        if unknown:
            raise ValueError(f"unknown download_limits {unknown}; the known ones are {sorted(known)}")
        return cls(**dict(options or {}))


class BodyError(Exception):
    """The body broke a bound or could not be decoded; the message says which and how to change it."""


class BodyTooLargeError(BodyError):
    """The content passed ``max_file_bytes``."""


class BodyTruncatedError(BodyError):
    """A compressed stream ended before its end marker (a cut connection): worth another attempt."""


class BodyTooSlowError(BodyError):
    """The server sent too little for too long (a trickle): worth another attempt."""


def iter_body(
    response: Any,
    limits: StreamLimits,
    *,
    clock: Callable[[], float] = time.monotonic,
    gzip_body: bool = True,
) -> Iterator[bytes]:
    """The decoded content of a streamed ``requests`` response, in pieces of at most ``chunk_size``.

    ``gzip_body``: inflate a body that is itself gzip (export files); off for bytes kept as they are
    (an attachment that is a ``.gz`` file). ``Content-Encoding`` is always undone.
    """
    chunks: Iterable[bytes] = raw_chunks(response.raw, limits, clock)
    for coding in reversed(_codings(response.headers.get("Content-Encoding"))):
        chunks = inflate(chunks, coding, limits.chunk_size)
    if gzip_body:
        chunks = _inflate_gzip_body(chunks, limits.chunk_size)
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if limits.max_file_bytes is not None and total > limits.max_file_bytes:
            raise BodyTooLargeError(
                f"more than max_file_bytes={limits.max_file_bytes} bytes of content; raise that limit in the "
                "download settings if files this big are expected"
            )
        yield chunk


def raw_chunks(raw: Any, limits: StreamLimits, clock: Callable[[], float] = time.monotonic) -> Iterator[bytes]:
    """Bytes as they arrive on the wire (still content-encoded), checking the average rate and the
    total time."""
    started = window_start = clock()
    window_bytes = 0
    while True:
        data = raw.read1(limits.chunk_size, decode_content=False)
        if not data:
            return
        window_bytes += len(data)
        now = clock()
        if limits.max_seconds is not None and now - started > limits.max_seconds:
            raise BodyTooSlowError(
                f"the body took more than max_seconds={limits.max_seconds:g} to arrive; raise it for a slow "
                "server or a large file"
            )
        elapsed = now - window_start
        if elapsed >= limits.rate_window:
            if window_bytes < limits.min_bytes_per_second * elapsed:
                raise BodyTooSlowError(
                    f"only {window_bytes} bytes in {elapsed:.0f}s, below min_bytes_per_second="
                    f"{limits.min_bytes_per_second:g}; lower it (or 0 to turn the check off) for a slow server"
                )
            window_start = now
            window_bytes = 0
        yield data


def inflate(chunks: Iterable[bytes], coding: str, max_out: int) -> Iterator[bytes]:
    """Undo one content coding (``gzip`` or ``deflate``), at most ``max_out`` bytes per piece."""
    if coding in ("gzip", "x-gzip"):
        return _inflate(chunks, zlib.MAX_WBITS | 16, max_out, members=True)
    if coding == "deflate":
        return _inflate_deflate(chunks, max_out)
    raise BodyError(
        f"the server used Content-Encoding {coding[:40]!r}, which the downloader does not decode "
        "(it asks for gzip, deflate or identity)"
    )


def _codings(header: str | None) -> list[str]:
    codings = [c.strip().lower() for c in (header or "").split(",")]
    return [c for c in codings if c and c != "identity"]


def _inflate_deflate(chunks: Iterable[bytes], max_out: int) -> Iterator[bytes]:
    # "deflate" should be zlib-wrapped; some servers send raw deflate. The first two bytes tell.
    stream = iter(chunks)
    first = _first_bytes(stream, 2)
    if not first:
        return
    zlib_wrapped = len(first) >= 2 and first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
    wbits = zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS
    yield from _inflate(_prepend(first, stream), wbits, max_out, members=False)


def _inflate_gzip_body(chunks: Iterable[bytes], max_out: int) -> Iterator[bytes]:
    """Inflate the body when it is itself a gzip file (as some servers store and serve them)."""
    stream = iter(chunks)
    first = _first_bytes(stream, 2)
    if not first:
        return
    body = _prepend(first, stream)
    if first.startswith(_GZIP_MAGIC):
        yield from _inflate(body, zlib.MAX_WBITS | 16, max_out, members=True)
    else:
        yield from body


def _inflate(chunks: Iterable[bytes], wbits: int, max_out: int, *, members: bool) -> Iterator[bytes]:
    """Inflate with bounded output per step; ``members`` allows concatenated gzip members."""
    inflater = zlib.decompressobj(wbits)
    started = False
    for chunk in chunks:
        data = chunk
        while data:
            if inflater.eof:
                if not members:
                    raise BodyError("the compressed body has data after its end")
                inflater = zlib.decompressobj(wbits)
            started = True
            try:
                out = inflater.decompress(data, max_out)
            except zlib.error as exc:
                raise BodyError(f"the compressed body is corrupt ({exc})") from None
            if out:
                yield out
            data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
    if started and not inflater.eof:
        raise BodyTruncatedError("the compressed body ended before its end marker (connection cut?)")


def _first_bytes(stream: Iterator[bytes], n: int) -> bytes:
    """At least ``n`` bytes from the start of ``stream`` (fewer only when it ends sooner)."""
    first = b""
    for chunk in stream:
        first = first + chunk if first else chunk
        if len(first) >= n:
            break
    return first


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest
