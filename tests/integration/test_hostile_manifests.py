"""Hostile status servers (stdlib HTTP on 127.0.0.1): a completed manifest is read with bounded memory.

The server streams a manifest of 1,000,000 file entries (about 72 MB, the size that once took the
client to 1.65 GiB) or a page of tiny entries. The client side runs in a child process under an
address-space limit, so a regression fails there at once instead of eating the machine; the server
stops after its own byte budget either way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.loopback import answering

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
#: The child's address-space limit: the interpreter, requests and the parsed caps fit well inside it.
CHILD_LIMIT = 1536 << 20

CHILD = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from airflow_provider_smart.fhir.bulk.body import StreamLimits
    from airflow_provider_smart.fhir.bulk.status import ExportComplete
    from airflow_provider_smart.fhir.bulk.sync import fetch_manifest, poll_once
    from airflow_provider_smart.fhir.http import FhirHttpClient

    base, status = sys.argv[1], sys.argv[2]
    limits = StreamLimits(**{options})
    client = FhirHttpClient(None, base, max_retries=0)
    result = poll_once(client, status, limits=limits)
    if isinstance(result, ExportComplete):
        try:
            manifest = fetch_manifest(client, result.manifest, status, limits=limits)
            print("PARSED", len(manifest.output))
        except Exception as exc:
            print("REFUSED", type(exc).__name__, exc)
    else:
        print("REFUSED", type(result).__name__, result.message)
    # VmHWM: this process's own peak (ru_maxrss would keep the parent's peak across exec on Linux).
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print("PEAK_KIB", int(hwm.split()[1]))
    """
)


def serve_manifest(entries: int, url_of: str) -> object:
    """An answer streaming a manifest of ``entries`` outputs without holding it (HTTP/1.0, no length)."""

    def answer(req: BaseHTTPRequestHandler) -> None:
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.end_headers()
        req.wfile.write(b'{"transactionTime":"2024-01-01T00:00:00Z","requiresAccessToken":false,"output":[')
        batch: list[bytes] = []
        for n in range(entries):
            item = json.dumps({"type": "Observation", "url": url_of.format(n=n), "count": 1000}).encode()
            batch.append(item if n == 0 else b"," + item)
            if len(batch) == 5000:
                req.wfile.write(b"".join(batch))
                batch.clear()
        req.wfile.write(b"".join(batch) + b'],"error":[]}')

    return answer


def run_child(url: str, options: dict[str, int]) -> tuple[str, int]:
    code = CHILD.format(limit=CHILD_LIMIT, options=repr(options))
    done = subprocess.run(
        [sys.executable, "-c", code, url, f"{url}/status/1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    return lines[0], int(lines[-1].split()[1])


def test_a_72_mb_manifest_of_a_million_files_is_refused_at_the_page_cap() -> None:
    url_of = "https://bucket.example.com/exports/abc/Observation-{n:07d}.ndjson?X-Amz-Signature=0123456789"
    with answering(serve_manifest(1_000_000, url_of)) as server:  # type: ignore[arg-type]
        outcome, peak_kib = run_child(server.url, {})
    assert outcome.startswith("REFUSED ExportFailed") and "max_manifest_bytes=33554432" in outcome
    # Measured 126 MiB (the whole interpreter); parsing all of it took 725 MiB.
    assert peak_kib < 256 * 1024, f"peak {peak_kib / 1024:.0f} MiB"


def test_a_page_of_tiny_entries_under_the_byte_cap_is_refused_at_the_file_cap() -> None:
    # About 300,000 entries in 16 MB: under the page cap, over the 100,000-file cap.
    with answering(serve_manifest(300_000, "/f/{n}")) as server:  # type: ignore[arg-type]
        outcome, peak_kib = run_child(server.url, {})
    assert outcome.startswith("REFUSED ManifestTooLargeError") and "max_manifest_files=100000" in outcome
    # Measured 181 MiB: the page is parsed once, its entries counted before any is turned into a file.
    assert peak_kib < 384 * 1024, f"peak {peak_kib / 1024:.0f} MiB"


def test_raised_caps_parse_the_same_page() -> None:
    with answering(serve_manifest(20_000, "/f/{n}")) as server:  # type: ignore[arg-type]
        outcome, _ = run_child(server.url, {"max_manifest_files": 20_000})
    assert outcome == "PARSED 20000"
