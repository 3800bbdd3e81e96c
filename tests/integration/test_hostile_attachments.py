"""Hostile attachment servers (stdlib HTTP on 127.0.0.1): a trickle, a body that never finishes in time, and
a 49 MiB wrapped Binary, each against the real client and the real landing. The servers stop after a
byte budget, so a regression ends instead of hanging."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.fhir.http import FhirHttpClient
from airflow_provider_smart.storage.attachments import AttachmentSettings, land_attachments
from tests.integration.test_hostile_downloads import MiB, peak_python_memory, send, write
from tests.loopback import answering
from tests.unit.test_attachments import _landed_run

pytestmark = pytest.mark.integration


def land(tmp_path: Path, answer: Callable[[BaseHTTPRequestHandler], None], **settings: Any) -> dict[str, Any]:
    """Land the one attachment (``Binary/x`` on the server's own origin) of one DocumentReference."""
    from airflow.sdk import ObjectStoragePath

    with answering(answer) as server:
        source = _landed_run(tmp_path, "Binary/x")
        client = FhirHttpClient(None, f"{server.url}/fhir", max_retries=0)
        destination = ObjectStoragePath(f"file://{tmp_path}/attachments/run1")
        options = AttachmentSettings(on_error="record", **settings)
        return land_attachments(client, [ObjectStoragePath(f"file://{source}")], destination, options)


def index(tmp_path: Path) -> list[dict[str, Any]]:
    text = (tmp_path / "attachments/run1/index.ndjson").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_a_trickle_fails_on_the_least_average_rate(tmp_path: Path) -> None:
    def answer(req: BaseHTTPRequestHandler) -> None:
        send(req, headers={"Content-Type": "application/pdf"})
        for _ in range(400):  # one byte every 50 ms: never a stall, far too slow; 20 s at most
            write(req, b"x")
            req.wfile.flush()
            time.sleep(0.05)

    started = time.monotonic()
    summary = land(tmp_path, answer, min_bytes_per_second=1024, rate_window=0.5)
    assert summary["failed"] == 1 and summary["landed"] == 0
    (record,) = index(tmp_path)
    assert "min_bytes_per_second=1024" in record["reason"]
    assert time.monotonic() - started < 10
    assert not list((tmp_path / "attachments/run1/blobs").iterdir())


def test_a_body_that_takes_too_long_fails_at_max_seconds(tmp_path: Path) -> None:
    def answer(req: BaseHTTPRequestHandler) -> None:
        send(req, headers={"Content-Type": "application/pdf"})
        for _ in range(300):  # 64 KiB every 50 ms: a good rate, but 15 s in all
            write(req, b"x" * 65536)
            req.wfile.flush()
            time.sleep(0.05)

    summary = land(tmp_path, answer, max_seconds=1.0, min_bytes_per_second=0)
    assert summary["failed"] == 1
    (record,) = index(tmp_path)
    assert "max_seconds=1" in record["reason"]
    assert not list((tmp_path / "attachments/run1/blobs").iterdir())


def test_a_49_mib_wrapped_binary_is_decoded_while_it_streams(tmp_path: Path) -> None:
    block = bytes(range(256)) * (3 * 1024)  # 768 KiB, a multiple of 3: its base64 joins cleanly
    blocks = 49 * MiB // len(block) + 1
    digest = hashlib.sha256(block * blocks).hexdigest()
    encoded = base64.b64encode(block)

    def answer(req: BaseHTTPRequestHandler) -> None:
        send(req, headers={"Content-Type": "application/fhir+json"})
        write(req, b'{"resourceType":"Binary","id":"x","contentType":"application/pdf","data":"')
        for _ in range(blocks):
            write(req, encoded)
        write(req, b'"}')

    with peak_python_memory() as peak:
        summary = land(tmp_path, answer, max_bytes=64 * MiB)
    assert summary["landed"] == 1, index(tmp_path)
    (record,) = index(tmp_path)
    assert record["sha256"] == digest and record["size"] == len(block) * blocks
    assert record["content_type"] == "application/pdf"
    # Held whole, the answer, its text and its bytes took about 3 x 49 MiB; streaming keeps a few chunks.
    assert peak[0] < 16 * MiB, f"peak {peak[0] / MiB:.1f} MiB"


def test_a_wrapped_binary_over_max_bytes_is_skipped_while_it_streams(tmp_path: Path) -> None:
    def answer(req: BaseHTTPRequestHandler) -> None:
        send(req, headers={"Content-Type": "application/fhir+json"})
        write(req, b'{"resourceType":"Binary","data":"')
        for _ in range(256):  # endless base64 (1 GiB of it at most)
            write(req, b"QUFB" * (MiB // 4))
        write(req, b'"}')

    summary = land(tmp_path, answer, max_bytes=4 * MiB)
    assert summary["skipped"] == {"too_large": 1}
    assert not list((tmp_path / "attachments/run1/blobs").iterdir())
