"""Hostile file servers (stdlib HTTP on 127.0.0.1): the download stays bounded in memory and time.

Each server misbehaves in one way: a gzip bomb (as a gzip body and as ``Content-Encoding: gzip``), a
line that never ends, a stream of valid lines that never ends, a file longer than its manifest count,
a trickle, a stall, an endless error body, a truncated gzip stream. Requests go through the real
``FhirHttpClient`` over loopback. Memory is the peak of Python allocations while the download runs
(``tracemalloc``: every byte buffer the downloader holds is one), compared with a stated bound.

The tests themselves are bounded too (``tests/bounds.py``): a server stops after a byte budget and the
download runs under a memory limit, so a lost cap fails its test in seconds instead of filling the machine.
"""

from __future__ import annotations

import gzip
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.fhir.bulk import parse_manifest
from airflow_provider_smart.fhir.bulk.body import StreamLimits
from airflow_provider_smart.fhir.bulk.manifest import PlannedFile
from airflow_provider_smart.fhir.download import BulkDownloader, DownloadError
from airflow_provider_smart.fhir.http import FhirHttpClient
from airflow_provider_smart.storage.atomic import TMP_PREFIX
from airflow_provider_smart.storage.export_landing import DownloadSettings, land_files
from airflow_provider_smart.storage.export_state import ExportLayout
from airflow_provider_smart.storage.paths import resolve_output
from tests.bounds import SERVER_BYTE_BUDGET, memory_limit
from tests.loopback import Answer, AnswerServer, ByteBudgetSpent, answering

LINE = b'{"resourceType":"Patient","id":"p","name":[{"family":"Hostile","given":["Server"]}]}\n'
MiB = 1 << 20


def send(req: BaseHTTPRequestHandler, status: int = 200, headers: dict[str, str] | None = None) -> None:
    req.send_response(status)
    for name, value in (headers or {}).items():
        req.send_header(name, value)
    req.end_headers()


def write(req: BaseHTTPRequestHandler, data: bytes) -> None:
    if req.server.sent + len(data) > SERVER_BYTE_BUDGET:  # type: ignore[attr-defined]
        raise ByteBudgetSpent(f"{SERVER_BYTE_BUDGET} bytes sent: hanging up")
    req.wfile.write(data)
    req.server.sent += len(data)  # type: ignore[attr-defined]


def base(server: AnswerServer) -> str:
    return f"{server.url}/fhir"


def planned(server: AnswerServer, count: int | None = None, kind: str = "output") -> PlannedFile:
    return PlannedFile(
        key="Patient.00000",
        kind=kind,  # type: ignore[arg-type]
        url=f"{base(server)}/files/p0",
        directory="Patient",
        filename="Patient.00000.ndjson",
        expected_type="Patient",
        count=count,
        resource_type="Patient",
    )


def downloader(server: AnswerServer, limits: StreamLimits, attempts: int = 1) -> BulkDownloader:
    client = FhirHttpClient(None, base(server), max_retries=0, backoff_base=0.01)
    return BulkDownloader(client, requires_access_token=False, max_attempts=attempts, backoff_base=0.01, limits=limits)


@contextmanager
def file_sink(tmp_path: Path) -> Iterator[Callable[[PlannedFile], Any]]:
    @contextmanager
    def sink(p: PlannedFile) -> Iterator[Any]:
        with (tmp_path / p.filename).open("wb") as handle:
            yield handle

    yield sink


@contextmanager
def peak_python_memory() -> Iterator[list[int]]:
    """Yields a one-item list that holds the peak of traced allocations (bytes) once the block ends."""
    result = [0]
    tracemalloc.start()
    try:
        yield result
    finally:
        result[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def failed_download(
    tmp_path: Path, answer: Answer, limits: StreamLimits, match: str, count: int | None = None
) -> tuple[AnswerServer, int]:
    """Download the one file ``answer`` serves and expect :class:`DownloadError` matching ``match``.

    Returns the (stopped) server and the peak of Python allocations, in bytes, while the download ran.
    """
    with (
        answering(answer) as server,
        file_sink(tmp_path) as sink,
        peak_python_memory() as peak,
        memory_limit(),
        pytest.raises(DownloadError, match=match),
    ):
        downloader(server, limits).download(planned(server, count), sink)
    return server, peak[0]


def gzip_of_repeats(piece: bytes, total: int, prefix: bytes = b"", level: int = 1) -> bytes:
    """A gzip body that inflates to ``total`` bytes of ``piece`` repeated (a compression bomb)."""
    comp = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = piece * (MiB // len(piece))
    parts = [comp.compress(prefix)] + [comp.compress(block) for _ in range(total // len(block))]
    parts.append(comp.flush())
    return b"".join(parts)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """Under 4 MiB of gzip inflating to 1 GiB of valid lines: 16 members of 64 MiB each (one valid gzip
    stream; one member alone would take an unbounded inflater to 64 MiB in a single step)."""
    member = gzip_of_repeats(LINE, 64 * MiB, level=6)
    body = member * 16
    assert len(body) < 4 * MiB
    return body


@pytest.mark.parametrize("content_encoding", [False, True], ids=["gzip-body", "content-encoding"])
def test_gzip_bomb_is_stopped_by_the_file_size_cap_with_flat_memory(
    tmp_path: Path, bomb: bytes, content_encoding: bool
) -> None:
    def handler(req: BaseHTTPRequestHandler) -> None:
        send(req, headers={"Content-Encoding": "gzip"} if content_encoding else {})
        write(req, bomb)

    limits = StreamLimits(max_file_bytes=64 * MiB)
    _server, peak = failed_download(tmp_path, handler, limits, "max_file_bytes=67108864")
    # 64 MiB went through; memory held a few chunks of 1 MiB, never the inflated body.
    assert peak < 12 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_gzip_bomb_of_one_endless_line_is_stopped_at_the_line_limit(tmp_path: Path) -> None:
    body = gzip_of_repeats(b"a" * 64, 256 * MiB, prefix=b'{"resourceType":"Patient","text":"')

    def handler(req: BaseHTTPRequestHandler) -> None:
        send(req)
        write(req, body)

    limits = StreamLimits(max_line_bytes=8 * MiB)
    _server, peak = failed_download(tmp_path, handler, limits, "line 1: longer than max_line_bytes=8388608")
    assert peak < 8 * MiB + 6 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_endless_line_fails_at_the_line_limit_without_growing(tmp_path: Path) -> None:
    def handler(req: BaseHTTPRequestHandler) -> None:
        send(req)
        write(req, LINE * 3 + b'{"resourceType":"Patient","text":"')
        chunk = b"x" * 65536
        while True:
            write(req, chunk)

    limits = StreamLimits(max_line_bytes=4 * MiB)
    server, peak = failed_download(tmp_path, handler, limits, "line 4: longer than max_line_bytes=4194304")
    assert server.sent < 64 * MiB  # stopped while it arrived, not at some later point
    assert peak < 4 * MiB + 6 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_endless_stream_of_valid_lines_without_count_stops_at_the_file_cap(tmp_path: Path) -> None:
    def handler(req: BaseHTTPRequestHandler) -> None:
        send(req)
        block = LINE * 1000
        while True:
            write(req, block)

    limits = StreamLimits(max_file_bytes=32 * MiB)
    _server, peak = failed_download(tmp_path, handler, limits, "more than max_file_bytes=33554432 bytes")
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_file_over_its_count_fails_at_once(tmp_path: Path) -> None:
    def handler(req: BaseHTTPRequestHandler) -> None:
        send(req)
        for _ in range(20_000):  # the manifest says 10 lines; sending all of these would take 10 s
            write(req, LINE)
            time.sleep(0.0005)

    limits = StreamLimits(max_file_bytes=None, min_bytes_per_second=0)
    started = time.monotonic()
    with (
        answering(handler) as server,
        file_sink(tmp_path) as sink,
        pytest.raises(DownloadError, match="more than the 10 lines the manifest's count promises"),
    ):
        downloader(server, limits).download(planned(server, count=10), sink)
    assert time.monotonic() - started < 5


def test_trickle_fails_on_the_least_average_rate(tmp_path: Path) -> None:
    def handler(req: BaseHTTPRequestHandler) -> None:
        send(req)
        for _ in range(200):  # one line every 50 ms: never a stall, far too slow
            write(req, LINE)
            req.wfile.flush()
            time.sleep(0.05)

    limits = StreamLimits(stall_timeout=5, min_bytes_per_second=10_000, rate_window=0.5)
    started = time.monotonic()
    with (
        answering(handler) as server,
        file_sink(tmp_path) as sink,
        pytest.raises(DownloadError, match=r"failed after 2 attempts: only .* below min_bytes_per_second=10000"),
    ):
        downloader(server, limits, attempts=2).download(planned(server), sink)
    assert time.monotonic() - started < 5


def test_stall_fails_the_attempt_after_the_stall_timeout(tmp_path: Path) -> None:
    release = threading.Event()

    def handler(req: BaseHTTPRequestHandler) -> None:
        send(req)
        write(req, LINE)
        req.wfile.flush()
        release.wait(10)

    limits = StreamLimits(stall_timeout=0.5)
    started = time.monotonic()
    with answering(handler) as server, file_sink(tmp_path) as sink:
        try:
            with pytest.raises(DownloadError, match="failed after 1 attempts: connection lost"):
                downloader(server, limits).download(planned(server), sink)
        finally:
            release.set()
    assert time.monotonic() - started < 5


def test_endless_error_body_is_read_only_up_to_its_cap(tmp_path: Path) -> None:
    def handler(req: BaseHTTPRequestHandler) -> None:
        send(req, 400, {"Content-Type": "text/plain"})
        write(req, b"no such file " * 10)
        while True:
            write(req, b"x" * 65536)

    server, peak = failed_download(
        tmp_path, handler, StreamLimits(), r"answered HTTP 400: non-JSON answer \(text/plain\): 'no such file"
    )
    assert server.sent < 32 * MiB
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_concatenated_gzip_members_are_one_file_and_a_truncated_stream_is_retried(tmp_path: Path) -> None:
    whole = gzip.compress(LINE * 3) + gzip.compress(LINE * 2)
    calls = []

    def handler(req: BaseHTTPRequestHandler) -> None:
        calls.append(req.path)
        send(req, headers={"Content-Encoding": "gzip"})
        write(req, whole if len(calls) > 1 else whole[: len(whole) - 12])  # the first answer is cut

    with answering(handler) as server, file_sink(tmp_path) as sink:
        result = downloader(server, StreamLimits(), attempts=2).download(planned(server, count=5), sink)
    assert (result.lines, result.attempts, len(calls)) == (5, 2, 2)
    assert (tmp_path / "Patient.00000.ndjson").read_bytes() == LINE * 5


def test_truncated_gzip_stream_fails_after_its_attempts(tmp_path: Path) -> None:
    body = gzip.compress(LINE * 50)

    def handler(req: BaseHTTPRequestHandler) -> None:
        send(req)
        write(req, body[:-20])

    with (
        answering(handler) as server,
        file_sink(tmp_path) as sink,
        pytest.raises(DownloadError, match="failed after 2 attempts: the compressed body ended before"),
    ):
        downloader(server, StreamLimits(), attempts=2).download(planned(server), sink)


def test_land_files_leaves_nothing_visible_when_a_bound_trips(tmp_path: Path) -> None:
    """Through the operator's path: the atomic writer drops the partial file; nothing is committed."""

    def handler(req: BaseHTTPRequestHandler) -> None:
        send(req)
        while True:
            write(req, LINE * 1000)

    with answering(handler) as server:
        manifest = parse_manifest(
            {
                "transactionTime": "2024-01-01T00:00:00Z",
                "requiresAccessToken": False,
                "output": [{"type": "Patient", "url": f"{base(server)}/files/p0"}],
                "error": [],
            }
        )
        layout = ExportLayout(resolve_output(str(tmp_path)), "run1")
        client = FhirHttpClient(None, base(server), max_retries=0)
        settings = DownloadSettings(max_attempts=1, limits=StreamLimits(max_file_bytes=8 * MiB))
        with memory_limit(), pytest.raises(DownloadError, match="max_file_bytes"):
            land_files(client, layout, manifest, settings=settings)
    assert layout.read_record("Patient.00000") is None
    assert not [p for p in tmp_path.rglob("*.ndjson")]
    assert not list(tmp_path.rglob(f"{TMP_PREFIX}*"))


def test_endless_files_together_stop_at_the_export_cap_and_nothing_is_committed(tmp_path: Path) -> None:
    """Every file is an endless stream of valid lines (the server gives up after 256 MiB per file, so a
    regression ends instead of filling the disk); no file cap: the export's cap stops all of them."""

    def handler(req: BaseHTTPRequestHandler) -> None:
        send(req)
        block = LINE * 1000
        for _ in range(256 * MiB // len(block)):
            write(req, block)

    with answering(handler) as server:
        files = [{"type": "Patient", "url": f"{base(server)}/files/p{i}"} for i in range(3)]
        manifest = parse_manifest(
            {"transactionTime": "2024-01-01T00:00:00Z", "requiresAccessToken": False, "output": files, "error": []}
        )
        layout = ExportLayout(resolve_output(str(tmp_path)), "run1")
        client = FhirHttpClient(None, base(server), max_retries=0)
        limits = StreamLimits(max_file_bytes=None, max_export_bytes=24 * MiB, min_bytes_per_second=0)
        settings = DownloadSettings(max_workers=3, max_attempts=3, limits=limits)
        with pytest.raises(DownloadError, match="more than max_export_bytes=25165824 bytes"):
            land_files(client, layout, manifest, settings=settings)
    # Stopped near the cap (each file at most one more chunk past it), and not retried.
    assert server.sent < 3 * 24 * MiB
    assert all(layout.read_record(f"Patient.{i:05d}") is None for i in range(3))
    assert not [p for p in tmp_path.rglob("*.ndjson")]
