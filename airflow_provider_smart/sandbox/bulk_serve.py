"""Serving an export file: NDJSON, gzip when asked, and the "connection drops midway" fault.

Shared by the FHIR origin (token needed) and the presigned file origin (no token allowed).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

NDJSON = "application/fhir+ndjson"
_CHUNK = 64 * 1024


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
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip container
    for chunk in _read_chunks(path):
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()


class TruncatedResponse(Response):
    """Announces the whole file in Content-Length, sends half of it, then drops the connection."""

    def __init__(self, path: Path):
        super().__init__(status_code=200, media_type=NDJSON)
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        data = self.path.read_bytes()
        headers = [(b"content-type", NDJSON.encode()), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
        # Returning before the body is complete makes the server close the connection abruptly.


def file_response(path: Path, *, accept_encoding: str | None, drop_midway: bool = False) -> Response:
    if drop_midway:
        return TruncatedResponse(path)
    if accepts_gzip(accept_encoding):
        return StreamingResponse(
            _gzip_chunks(path), media_type=NDJSON, headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        )
    size = path.stat().st_size
    return StreamingResponse(
        _read_chunks(path), media_type=NDJSON, headers={"Content-Length": str(size), "Vary": "Accept-Encoding"}
    )
