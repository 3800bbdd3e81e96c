"""Serving an export file: streamed NDJSON, gzip when the client accepts it.

Shared by the FHIR origin (token needed) and the presigned file origin (no token allowed). The
"connection drops midway" fault is the generic ``state.faults.drop`` on the file paths.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

from starlette.responses import Response, StreamingResponse

from airflow_provider_smart.fhir.bulk.kickoff import NDJSON

#: Large chunks: each one is a hop to the thread pool, so fewer hops serve big files faster.
_CHUNK = 1024 * 1024


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True when ``Accept-Encoding`` lists gzip without ``q=0``."""
    for part in (accept_encoding or "").split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def _gzip_chunks(path: Path) -> Iterator[bytes]:
    # Level 1: speed over ratio, so big benchmark exports are not bound by the sandbox's compressor.
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip container
    for chunk in _read_chunks(path):
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()


def gzip_fault_response(path: Path, mode: str) -> Response:
    """The file as gzip bytes *without* ``Content-Encoding`` (the ``file_gzip`` fault): one member, two
    concatenated members, or one member missing its last 20 bytes. Read whole: a fault for small files."""
    import gzip

    data = path.read_bytes()
    if mode == "members":
        cut = data.find(b"\n", len(data) // 2) + 1 or len(data)
        body = gzip.compress(data[:cut]) + gzip.compress(data[cut:])
    else:
        body = gzip.compress(data)
        if mode == "truncated":
            body = body[:-20]
    return Response(body, media_type=NDJSON, headers={"Content-Length": str(len(body))})


def endless_response(path: Path, budget: int) -> Response:
    """The file's lines repeated without end (the ``endless_files`` fault), until ``budget`` bytes."""

    def lines() -> Iterator[bytes]:
        block = path.read_bytes() or b"{}\n"
        block = block * max(1, _CHUNK // len(block))
        sent = 0
        while sent < budget:
            piece = block[: budget - sent]
            sent += len(piece)
            yield piece

    return StreamingResponse(lines(), media_type=NDJSON)


def without_ids_response(path: Path, first: int) -> Response:
    """The file with the ``id`` of its first ``first`` resources removed (the ``strip_ids`` fault)."""
    import json

    out = []
    for n, line in enumerate(path.read_bytes().splitlines(keepends=True)):
        if n < first and line.strip():
            resource = json.loads(line)
            resource.pop("id", None)
            line = json.dumps(resource, separators=(",", ":")).encode() + b"\n"
        out.append(line)
    body = b"".join(out)
    return Response(body, media_type=NDJSON, headers={"Content-Length": str(len(body))})


def file_response(path: Path, *, accept_encoding: str | None, gzip_fault: str | None = None) -> Response:
    """The file, gzip-compressed on the fly when ``Accept-Encoding`` allows it (then without a length)."""
    if gzip_fault is not None:
        return gzip_fault_response(path, gzip_fault)
    if accepts_gzip(accept_encoding):
        return StreamingResponse(
            _gzip_chunks(path), media_type=NDJSON, headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        )
    size = path.stat().st_size
    return StreamingResponse(
        _read_chunks(path), media_type=NDJSON, headers={"Content-Length": str(size), "Vary": "Accept-Encoding"}
    )
