"""Attachments over real HTTP: the sandbox's DocumentReferences, same-origin Binaries and presigned files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.operators.attachments import FhirAttachmentsDownloadOperator
from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.storage.attachments import AttachmentsFailedError
from tests.integration.bulk_helpers import context
from tests.integration.sandbox_content import admin, put_binary, put_document
from tests.sandbox_fixtures import SmartClient

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


def _land_documents(client: SmartClient, root: Path) -> Path:
    """The server's DocumentReferences as a landed NDJSON run (what a search or export leaves)."""
    session = client.session()
    bundle = session.get(client.server.fhir_base + "/DocumentReference", params={"_count": 1000}, timeout=30).json()
    assert "next" not in {link["relation"] for link in bundle.get("link", [])}
    run = root / "DocumentReference" / "run1"
    run.mkdir(parents=True)
    with (run / "part-00000.ndjson").open("w") as out:
        for entry in bundle["entry"]:
            out.write(json.dumps(entry["resource"]) + "\n")
    return run


def _index(root: Path, label: str = "run1") -> list[dict[str, Any]]:
    text = (root / "attachments" / label / "index.ndjson").read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def server(sandbox_factory: Callable[..., SandboxServer]) -> SandboxServer:
    return sandbox_factory(patients=6, seed=7)


@pytest.fixture
def client(server: SandboxServer, smart_client_factory: Callable[..., SmartClient]) -> SmartClient:
    """The connection allows the sandbox's presigned origin (another loopback port), where the scan lives."""
    return smart_client_factory(server=server, extra={"allowed_internal_hosts": server.files_base_url})


def _operator(root: Path, run: Path, **options: Any) -> FhirAttachmentsDownloadOperator:
    return FhirAttachmentsDownloadOperator(
        task_id="attachments", source=str(run), output=str(root), label="run1", **options
    )


def test_every_attachment_lands_once_with_its_bytes_and_the_token_stays_home(
    server: SandboxServer, client: SmartClient, tmp_path: Path
) -> None:
    put_binary(server, "scan-1", PDF, "application/pdf")
    presigned = admin(server, "POST", "/_sandbox/binary/scan-1/presign").json()["url"]
    put_document(server, "doc-scan", {"contentType": "application/pdf", "url": presigned, "title": "scan"})
    # The same note twice: stored once.
    first = client.session().get(server.fhir_base + "/DocumentReference", params={"_count": 1}, timeout=30).json()
    note_url = first["entry"][0]["resource"]["content"][1]["attachment"]["url"]
    put_document(server, "doc-copy", {"contentType": "text/plain", "url": note_url})
    put_binary(server, "wrapped-1", b"wrapped note text\n", "text/plain", wrapped=True)
    put_document(server, "doc-wrapped", {"contentType": "text/plain", "url": "Binary/wrapped-1"})
    run = _land_documents(client, tmp_path)

    result = _operator(tmp_path, run).execute(context())

    records = _index(tmp_path)
    by_id = {(r["resource_id"], r["position"]): r for r in records}
    generated = [r for r in records if r["url"] and r["url"].startswith("Binary/note-")]
    assert generated, "the generated documents link Binary notes"
    blobs = tmp_path / "attachments" / "run1" / "blobs"
    for record in records:
        if record["status"] == "inline":
            continue
        assert record["status"] == "landed", record
        data = (blobs / record["sha256"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert record["size"] == len(data)
    # Same-origin Binary: the generated note's exact bytes.
    note = by_id[("doc-copy", "content[0].attachment")]
    expected = server.state.binaries.get(note_url.removeprefix("Binary/"))
    assert expected is not None and (blobs / note["sha256"]).read_bytes() == expected.data
    original = next(r for r in generated if r["url"] == note_url and r["resource_id"] != "doc-copy")
    assert original["sha256"] == note["sha256"]
    # Wrapped Binary answers unwrap to the bytes; the presigned file lands as stored.
    assert (blobs / by_id[("doc-wrapped", "content[0].attachment")]["sha256"]).read_bytes() == b"wrapped note text\n"
    scan = by_id[("doc-scan", "content[0].attachment")]
    assert (blobs / scan["sha256"]).read_bytes() == PDF
    assert scan["content_type"] == "application/pdf"
    assert "signature" not in scan["url"], "presigned signatures stay out of the index"
    # One blob per distinct content; nothing half-written is visible.
    names = sorted(p.name for p in blobs.iterdir())
    assert names == sorted({r["sha256"] for r in records if r["status"] == "landed"})
    assert (tmp_path / "attachments" / "run1" / "_SUCCESS").exists()
    assert result["counts"]["landed"] == len([r for r in records if r["status"] == "landed"])
    # The file origin was used and never saw the FHIR token.
    origins = server.state.bulk.origins
    assert origins.requests.get("files", 0) >= 1
    assert not origins.authorization_seen("files")


def test_oversize_and_disallowed_types_are_recorded_as_skipped(
    server: SandboxServer, client: SmartClient, tmp_path: Path
) -> None:
    put_binary(server, "big-1", b"x" * 5000, "text/plain")
    put_document(server, "doc-big", {"contentType": "text/plain", "url": "Binary/big-1"})
    put_document(server, "doc-declared-big", {"contentType": "text/plain", "url": "Binary/big-1", "size": 10**9})
    put_binary(server, "img-1", b"\x89PNG....", "image/png")
    put_document(server, "doc-img", {"contentType": "image/png", "url": "Binary/img-1"})
    run = _land_documents(client, tmp_path)

    _operator(tmp_path, run, max_bytes=1000, allowed_types=["text/*"]).execute(context())

    by_id = {r["resource_id"]: r for r in _index(tmp_path) if r["url"] and not r["url"].startswith("Binary/note-")}
    assert by_id["doc-big"]["status"] == "skipped" and "max_bytes" in by_id["doc-big"]["reason"]
    assert by_id["doc-declared-big"]["status"] == "skipped" and "declared size" in by_id["doc-declared-big"]["reason"]
    assert by_id["doc-img"]["status"] == "skipped" and "image/png" in by_id["doc-img"]["reason"]
    # The oversize body was cut off while streaming: no blob of it exists, no temp file is left.
    blobs = tmp_path / "attachments" / "run1" / "blobs"
    assert hashlib.sha256(b"x" * 5000).hexdigest() not in {p.name for p in blobs.iterdir()}
    assert not [p for p in blobs.iterdir() if p.name.startswith("_")]
    # The declared-size check spent no request on it, the type filter neither.
    assert server.state.faults.requests.get("/fhir/Binary/img-1", 0) == 0


def test_a_failed_attachment_fails_the_run_and_a_rerun_fetches_only_it(
    server: SandboxServer, client: SmartClient, tmp_path: Path
) -> None:
    put_document(server, "doc-late", {"contentType": "text/plain", "url": "Binary/late-1"})
    run = _land_documents(client, tmp_path)

    with pytest.raises(AttachmentsFailedError, match="1 attachment"):
        _operator(tmp_path, run).execute(context())
    failed = [r for r in _index(tmp_path) if r["status"] == "failed"]
    assert [(r["resource_id"], "404" in r["reason"]) for r in failed] == [("doc-late", True)]
    assert not (tmp_path / "attachments" / "run1" / "_SUCCESS").exists()
    requests_before = dict(server.state.faults.requests)

    put_binary(server, "late-1", b"arrived later\n", "text/plain")
    _operator(tmp_path, run).execute(context())

    after = server.state.faults.requests
    fetched_again = {p for p in after if p.startswith("/fhir/Binary/") and after[p] > requests_before.get(p, 0)}
    assert fetched_again == {"/fhir/Binary/late-1"}
    assert (tmp_path / "attachments" / "run1" / "_SUCCESS").exists()
    assert all(r["status"] in ("landed", "inline") for r in _index(tmp_path))


def test_on_error_record_keeps_going(server: SandboxServer, client: SmartClient, tmp_path: Path) -> None:
    put_document(server, "doc-missing", {"contentType": "text/plain", "url": "Binary/missing-1"})
    put_binary(server, "gone-1", b"withdrawn\n", "text/plain")
    put_document(server, "doc-gone", {"contentType": "text/plain", "url": "Binary/gone-1"})
    server.state.faults.fail("/fhir/Binary/gone-1", status=410, times=None)
    run = _land_documents(client, tmp_path)
    result = _operator(tmp_path, run, on_error="record").execute(context())
    assert result["counts"]["failed"] == 2
    reasons = {r["resource_id"]: r["reason"] for r in _index(tmp_path) if r["status"] == "failed"}
    assert "HTTP 404" in reasons["doc-missing"] and "HTTP 410 (gone)" in reasons["doc-gone"]
    assert (tmp_path / "attachments" / "run1" / "_SUCCESS").exists()


def test_inline_small_text_and_rewrite_urls(server: SandboxServer, client: SmartClient, tmp_path: Path) -> None:
    run = _land_documents(client, tmp_path)
    _operator(tmp_path, run, inline_max_bytes=10_000, rewrite_urls=True).execute(context())

    resources = [json.loads(line) for line in (run / "part-00000.ndjson").read_text().splitlines()]
    assert resources
    blobs = tmp_path / "attachments" / "run1" / "blobs"
    for resource in resources:
        linked = resource["content"][1]["attachment"]
        assert linked["url"].startswith(f"file://{blobs}/"), linked["url"]
        stored = Path(linked["url"].removeprefix("file://"))
        assert stored.read_bytes().startswith(b"VISIT NOTE")
        import base64

        assert base64.b64decode(linked["data"]) == stored.read_bytes()
    assert not [p for p in run.iterdir() if p.name.startswith("_tmp.")]
