"""The ``attachments`` option of the export and search operators, over loopback against the sandbox."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from airflow_provider_smart.operators.bulk_export import (
    FhirBulkDownloadOperator,
    FhirBulkExportFinalizeOperator,
    FhirBulkExportOperator,
)
from airflow_provider_smart.operators.search import FhirSearchOperator
from airflow_provider_smart.sandbox.bulk_runtime import FHIR_FILE_PATHS
from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.storage.attachments import AttachmentsFailedError
from tests.integration.bulk_helpers import (
    committed_records,
    context,
    export_operator,
    kickoffs,
    kill_worker_when,
    run_deferred,
    start_worker,
)
from tests.integration.sandbox_content import admin, put_binary, put_document
from tests.loopback import AnswerServer, answering
from tests.s3_fixtures import MotoS3
from tests.sandbox_fixtures import SmartClient

pytestmark = pytest.mark.integration
LABEL = "manual__run1"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 64 + b"\n%%EOF\n"


# -- the sandbox and its content -----------------------------------------------------------------------


@pytest.fixture
def server(bulk_server: Callable[..., tuple[SandboxServer, SmartClient]]) -> SandboxServer:
    """A small sandbox (a registered client as the default connection) whose exports complete at once.

    The connection allows the sandbox's presigned file origin (another loopback port): the scan document
    names a presigned URL there, as documents naming an object store do."""
    return bulk_server(patients=4, seed=11, allow_files_origin=True)[0]


def _generated_notes(server: SandboxServer) -> dict[str, str]:
    """doc id -> the Binary URL of its full note, for the generated documents."""
    notes = {}
    for doc in server.state.store.iter_type("DocumentReference"):
        for content in doc.get("content", []):
            url = content.get("attachment", {}).get("url")
            if isinstance(url, str) and url.startswith("Binary/note-"):
                notes[doc["id"]] = url
    return notes


def _binary_fetches(server: SandboxServer) -> dict[str, int]:
    return {p: n for p, n in server.state.faults.requests.items() if p.startswith("/fhir/Binary/")}


def _index(root: Path, label: str = LABEL) -> list[dict[str, Any]]:
    text = (root / "attachments" / label / "index.ndjson").read_text()
    return [json.loads(line) for line in text.splitlines()]


def _export_op(out: Path, **kwargs: Any) -> FhirBulkExportOperator:
    return export_operator(out, **{"types": ["DocumentReference"], "max_download_attempts": 3, **kwargs})


def _watermarks(out: Path) -> list[Path]:
    return list((out / "_watermarks").glob("*.json")) if (out / "_watermarks").exists() else []


# -- the export ------------------------------------------------------------------------------------------


def test_export_lands_every_attachment_once_and_the_token_stays_home(server: SandboxServer, tmp_path: Path) -> None:
    put_binary(server, "scan-1", PDF, "application/pdf")
    presigned = admin(server, "POST", "/_sandbox/binary/scan-1/presign").json()["url"]
    put_document(server, "doc-scan", {"contentType": "application/pdf", "url": presigned, "title": "scan"})
    notes = _generated_notes(server)
    copied_from, copied_url = sorted(notes.items())[0]
    put_document(server, "doc-copy", {"contentType": "text/plain", "url": copied_url})  # the same note again
    put_binary(server, "wrapped-1", b"wrapped note text\n", "text/plain", wrapped=True)
    put_document(server, "doc-wrapped", {"contentType": "text/plain", "url": "Binary/wrapped-1"})
    sha1 = base64.b64encode(hashlib.sha1(b"inline only").digest()).decode()  # noqa: S324 - FHIR's hash
    inline = {"contentType": "text/plain", "data": base64.b64encode(b"inline only").decode(), "hash": sha1}
    put_document(server, "doc-inline", inline)
    out = tmp_path / "out"

    summary, triggers = run_deferred(_export_op(out, attachments=True), context())

    assert len(triggers) == 1  # the deferred path: the attachments came in execute_complete
    records = _index(out)
    # Every attachment of every landed resource once, and nothing else.
    landed_docs = [json.loads(line) for p in (out / "DocumentReference" / LABEL).glob("*.ndjson") for line in p.open()]
    expected_keys = sorted(
        (d["id"], f"content[{i}].attachment") for d in landed_docs for i, _ in enumerate(d.get("content", []))
    )
    assert sorted((r["resource_id"], r["position"]) for r in records) == expected_keys
    blobs = out / "attachments" / LABEL / "blobs"
    by_key = {(r["resource_id"], r["position"]): r for r in records}
    fetched = [r for r in records if r["status"] == "landed"]
    assert {r["status"] for r in records} == {"landed", "inline"}
    for record in fetched:
        data = (blobs / record["sha256"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"] and record["size"] == len(data)
    for doc_id, url in notes.items():  # same-origin Binary reads: the server's very bytes
        stored = (blobs / by_key[(doc_id, "content[1].attachment")]["sha256"]).read_bytes()
        content = server.state.binaries.get(url.removeprefix("Binary/"))
        assert content is not None and stored == content.data
    assert (blobs / by_key[("doc-scan", "content[0].attachment")]["sha256"]).read_bytes() == PDF
    assert (blobs / by_key[("doc-wrapped", "content[0].attachment")]["sha256"]).read_bytes() == b"wrapped note text\n"
    copy, original = by_key[("doc-copy", "content[0].attachment")], by_key[(copied_from, "content[1].attachment")]
    assert copy["sha256"] == original["sha256"]
    assert sorted(p.name for p in blobs.iterdir()) == sorted({r["sha256"] for r in fetched})  # stored once
    assert "signature" not in json.dumps(records), "presigned signatures stay out of the index"

    # The summary (the XCom) counts them; the state and watermark moved only after them.
    counts = summary["attachments"]
    assert counts["landed"] == len(fetched) == len(notes) + 3
    assert counts["duplicates"] == 1 and counts["skipped"] == {} and counts["failed"] == 0
    assert counts["counts"]["inline"] == len(notes) + 1
    state = json.loads((out / "_exports" / LABEL / "state.json").read_text())
    assert state["phase"] == "complete" and state["summary"]["attachments"] == counts
    assert len(_watermarks(out)) == 1 and (out / "attachments" / LABEL / "_SUCCESS").exists()
    # The presigned second origin got its one request, never with the FHIR token.
    origins = server.state.bulk.origins
    assert origins.requests.get("files") == 1
    assert not origins.authorization_seen("files")
    assert all(n == 1 for p, n in _binary_fetches(server).items() if not p.endswith(copied_url))


def test_export_records_oversize_and_disallowed_types_as_skipped(server: SandboxServer, tmp_path: Path) -> None:
    put_binary(server, "big-1", b"x" * 5000, "text/plain")
    put_document(server, "doc-big", {"contentType": "text/plain", "url": "Binary/big-1"})
    put_document(server, "doc-declared-big", {"contentType": "text/plain", "url": "Binary/big-1", "size": 10**9})
    put_binary(server, "img-1", b"\x89PNG....", "image/png")
    put_document(server, "doc-img", {"contentType": "image/png", "url": "Binary/img-1"})
    out = tmp_path / "out"
    options = {"max_bytes": 1000, "allowed_types": ["text/*"]}

    summary, triggers = run_deferred(_export_op(out, attachments=options, deferrable=False), context())

    assert triggers == []  # polled in the worker
    by_id = {r["resource_id"]: r for r in _index(out) if r["resource_id"] in ("doc-big", "doc-declared-big", "doc-img")}
    assert {k: (r["status"], r["reason_code"]) for k, r in by_id.items()} == {
        "doc-big": ("skipped", "too_large"),
        "doc-declared-big": ("skipped", "too_large"),
        "doc-img": ("skipped", "type_not_allowed"),
    }
    assert "max_bytes 1000" in by_id["doc-big"]["reason"] and "image/png" in by_id["doc-img"]["reason"]
    assert summary["attachments"]["skipped"] == {"too_large": 2, "type_not_allowed": 1}
    assert summary["attachments"]["landed"] == len(_generated_notes(server))
    blobs = out / "attachments" / LABEL / "blobs"
    assert hashlib.sha256(b"x" * 5000).hexdigest() not in {p.name for p in blobs.iterdir()}
    assert not [p for p in blobs.iterdir() if p.name.startswith("_")]
    assert "/fhir/Binary/img-1" not in _binary_fetches(server)  # the type filter spent no request


def test_a_fatal_attachment_failure_keeps_the_watermark_and_the_retry_fetches_only_it(
    server: SandboxServer, tmp_path: Path
) -> None:
    put_document(server, "doc-late", {"contentType": "text/plain", "url": "Binary/late-1"})
    out = tmp_path / "out"

    with pytest.raises(AttachmentsFailedError, match="1 attachment"):
        run_deferred(_export_op(out, attachments=True, retries=2), context())

    state = json.loads((out / "_exports" / LABEL / "state.json").read_text())
    assert state["phase"] == "downloading"  # not reported complete
    assert _watermarks(out) == []  # the watermark did not move
    assert not (out / "attachments" / LABEL / "_SUCCESS").exists()
    assert [r["resource_id"] for r in _index(out) if r["status"] == "failed"] == ["doc-late"]
    before_binaries, before_files = _binary_fetches(server), server.state.faults.count(FHIR_FILE_PATHS)

    put_binary(server, "late-1", b"arrived later\n", "text/plain")
    summary, _ = run_deferred(_export_op(out, attachments=True, retries=2), context())

    after = _binary_fetches(server)
    assert {p for p, n in after.items() if n > before_binaries.get(p, 0)} == {"/fhir/Binary/late-1"}
    assert server.state.faults.count(FHIR_FILE_PATHS) == before_files  # the resources were not fetched again
    assert kickoffs(server) == 1
    assert summary["attachments"]["failed"] == 0 and len(_watermarks(out)) == 1
    assert json.loads((out / "_exports" / LABEL / "state.json").read_text())["phase"] == "complete"


def test_fanned_out_export_fetches_the_attachments_in_its_finalize_task(server: SandboxServer, tmp_path: Path) -> None:
    put_binary(server, "fan-1", b"fanned note\n", "text/plain")
    put_document(server, "doc-fan", {"contentType": "text/plain", "url": "Binary/fan-1"})
    out = tmp_path / "out"
    ctx = context()
    option = {"allowed_types": ["text/*"], "workers": 2}

    batches, _ = run_deferred(_export_op(out, attachments=option, download_mode="fanout"), ctx)
    ref = ctx["ti"].xcoms["export"]
    assert ref["attachments"]["allowed_types"] == ["text/*"] and ref["attachments"]["workers"] == 2
    for n, batch in enumerate(batches):
        FhirBulkDownloadOperator(task_id=f"download_{n}", batch=batch).execute(context())
    assert not (out / "attachments").exists()  # not before every resource landed
    summary = FhirBulkExportFinalizeOperator(task_id="finalize", export=ref).execute(context())

    assert summary["attachments"]["landed"] == len(_generated_notes(server)) + 1
    doc = next(r for r in _index(out) if r["resource_id"] == "doc-fan")
    assert (out / "attachments" / LABEL / "blobs" / doc["sha256"]).read_bytes() == b"fanned note\n"
    assert len(_watermarks(out)) == 1


_WORKER = """
import sys
from airflow_provider_smart.operators.bulk_export import (
    FhirBulkDownloadOperator,
    FhirBulkExportFinalizeOperator,
    FhirBulkExportOperator,
)
from tests.integration.bulk_helpers import context, run_deferred
op = FhirBulkExportOperator(task_id="export", output=sys.argv[1], types=["DocumentReference"], deferrable=False,
                            poll_interval=0.2, min_poll_interval=0, max_poll_interval=1,
                            attachments={"workers": 1})
run_deferred(op, context())
"""


def test_a_run_killed_mid_attachments_resumes_without_fetching_again(server: SandboxServer, tmp_path: Path) -> None:
    for k in range(8):
        put_binary(server, f"kill-{k}", f"note {k}\n".encode(), "text/plain")
        put_document(server, f"doc-kill-{k}", {"contentType": "text/plain", "url": f"Binary/kill-{k}"})
    total = len(_generated_notes(server)) + 8
    out = tmp_path / "out"
    records = out / "attachments" / LABEL / "_records"
    server.state.faults.slow("/fhir/Binary/*", delay=0.7)  # slow notes: the kill comes between two of them
    kill_worker_when(start_worker(_WORKER, str(out)), lambda: len(committed_records(records)) >= 3)
    fetched = [json.loads(p.read_text()) for p in committed_records(records)]
    settled = len([r for r in fetched if r["status"] == "landed"])  # the inline ones needed no request
    assert 1 <= settled < total
    assert json.loads((out / "_exports" / LABEL / "state.json").read_text())["phase"] == "downloading"
    assert _watermarks(out) == [] and not (out / "attachments" / LABEL / "index.ndjson").exists()
    server.state.faults.reset()  # clears the request log too

    summary, _ = run_deferred(_export_op(out, attachments={"workers": 1}, deferrable=False), context())

    assert sum(_binary_fetches(server).values()) == total - settled
    assert kickoffs(server) == 0 and server.state.faults.count(FHIR_FILE_PATHS) == 0
    assert summary["attachments"]["landed"] == total
    assert len([r for r in _index(out) if r["status"] == "landed"]) == total and len(_watermarks(out)) == 1


# -- the search --------------------------------------------------------------------------------------------


def _search_op(out: Path, **kwargs: Any) -> FhirSearchOperator:
    return FhirSearchOperator(
        task_id="docs", resource_type="DocumentReference", output=str(out), incremental="watermark", **kwargs
    )


def test_search_lands_the_attachments_before_its_watermark(server: SandboxServer, tmp_path: Path) -> None:
    put_binary(server, "scan-2", PDF, "application/pdf")
    presigned = admin(server, "POST", "/_sandbox/binary/scan-2/presign").json()["url"]
    put_document(server, "doc-scan", {"contentType": "application/pdf", "url": presigned})
    put_document(server, "doc-late", {"contentType": "text/plain", "url": "Binary/late-2"})
    out = tmp_path / "out"

    def watermarks() -> list[Path]:
        return list((out / "DocumentReference").glob("_watermark.*.json"))

    with pytest.raises(AttachmentsFailedError):
        _search_op(out, attachments=True).execute(context())
    assert watermarks() == []  # the mark did not move

    put_binary(server, "late-2", b"late note\n", "text/plain")
    before = _binary_fetches(server)
    summary = _search_op(out, attachments={"on_error": "fail"}).execute(context())

    assert {p for p, n in _binary_fetches(server).items() if n > before.get(p, 0)} == {"/fhir/Binary/late-2"}
    assert len(watermarks()) == 1
    counts = summary["attachments"]
    assert counts["landed"] == len(_generated_notes(server)) + 2 and counts["failed"] == 0
    index = _index(out, summary["run"])
    blobs = out / "attachments" / summary["run"] / "blobs"
    scan = next(r for r in index if r["resource_id"] == "doc-scan")
    assert (blobs / scan["sha256"]).read_bytes() == PDF
    assert not server.state.bulk.origins.authorization_seen("files")


def test_throttled_and_dropped_attachments_are_retried_under_the_wait_policy(
    server: SandboxServer, tmp_path: Path
) -> None:
    put_binary(server, "busy-1", b"busy note\n", "text/plain")
    put_document(server, "doc-busy", {"contentType": "text/plain", "url": "Binary/busy-1"})
    put_binary(server, "flaky-1", PDF, "application/pdf")
    put_document(server, "doc-flaky", {"contentType": "application/pdf", "url": "Binary/flaky-1"})
    server.state.faults.throttle("/fhir/Binary/busy-1", times=1, retry_after=1)
    server.state.faults.fail("/fhir/Binary/flaky-1", status=503, times=1)
    out = tmp_path / "out"

    summary = _search_op(out, attachments=True).execute(context())

    fetches = _binary_fetches(server)
    assert fetches["/fhir/Binary/busy-1"] == 2 and fetches["/fhir/Binary/flaky-1"] == 2
    assert summary["attachments"]["failed"] == 0
    by_id = {r["resource_id"]: r for r in _index(out, summary["run"])}
    blobs = out / "attachments" / summary["run"] / "blobs"
    assert (blobs / by_id["doc-busy"]["sha256"]).read_bytes() == b"busy note\n"
    assert (blobs / by_id["doc-flaky"]["sha256"]).read_bytes() == PDF


def test_search_attachments_on_s3_with_rewritten_urls_and_a_rerun_that_fetches_nothing(
    server: SandboxServer, moto_s3: MotoS3
) -> None:
    put_binary(server, "s3-note", b"note kept on S3\n", "text/plain")
    put_document(server, "doc-s3", {"contentType": "text/plain", "url": "Binary/s3-note"})
    output = f"s3://{moto_s3.bucket}/fhir"
    option = {"rewrite_urls": True}

    def search() -> dict[str, Any]:
        return FhirSearchOperator(
            task_id="docs",
            resource_type="DocumentReference",
            output=output,
            output_conn_id=moto_s3.conn_id,
            incremental=None,
            attachments=option,
        ).execute(context())

    summary = search()

    run = summary["run"]
    counts = summary["attachments"]
    assert counts["landed"] == len(_generated_notes(server)) + 1 and counts["failed"] == 0
    assert counts["output"] == f"{output}/attachments/{run}"  # the location, without the connection id
    keys = moto_s3.keys(f"fhir/attachments/{run}/")
    assert f"fhir/attachments/{run}/index.ndjson" in keys and f"fhir/attachments/{run}/_SUCCESS" in keys
    assert not [k for k in keys if "/_tmp." in k]
    index = [json.loads(line) for line in moto_s3.read(f"fhir/attachments/{run}/index.ndjson").splitlines()]
    record = next(r for r in index if r["resource_id"] == "doc-s3")
    blob_key = f"fhir/attachments/{run}/blobs/{record['sha256']}"
    assert moto_s3.read(blob_key) == b"note kept on S3\n"
    assert record["stored"] == f"s3://{moto_s3.bucket}/{blob_key}"
    (part,) = [k for k in moto_s3.keys(f"fhir/DocumentReference/{run}/") if k.endswith(".ndjson")]
    landed = {d["id"]: d for d in map(json.loads, moto_s3.read(part).splitlines())}
    assert landed["doc-s3"]["content"][0]["attachment"]["url"] == record["stored"]

    # The same run again: the search lands the resources anew, the attachments are all reused.
    before = _binary_fetches(server)
    again = search()
    assert _binary_fetches(server) == before
    assert again["attachments"]["landed"] == counts["landed"] and again["attachments"]["bytes_landed"] == 0


# -- hostile URLs ---------------------------------------------------------------------------------------------


@pytest.fixture
def foreign() -> Iterator[tuple[AnswerServer, list[str]]]:
    """A stdlib server on loopback, another origin than the sandbox's, and the paths it was asked for."""
    hits: list[str] = []

    def answer(request: BaseHTTPRequestHandler) -> None:
        hits.append(request.path)
        request.send_response(200)
        request.send_header("Content-Length", "6")
        request.end_headers()
        request.wfile.write(b"stolen")

    with answering(answer) as started:
        yield started, hits


def test_ambiguous_attachment_urls_are_refused_and_recorded(
    server: SandboxServer, foreign: tuple[AnswerServer, list[str]], tmp_path: Path
) -> None:
    fhir_port = urlsplit(server.fhir_base).port
    evil = urlsplit(foreign[0].url).port
    tricks = {
        # urllib.parse reads port FHIR; urllib3 and browsers connect to EVIL.
        "doc-backslash": f"http://127.0.0.1:{evil}\\@127.0.0.1:{fhir_port}/fhir/Binary/note-0-0",
        "doc-userinfo": f"http://127.0.0.1:{fhir_port}@127.0.0.1:{evil}/fhir/Binary/note-0-0",
    }
    for doc_id, url in tricks.items():
        put_document(server, doc_id, {"contentType": "text/plain", "url": url})
    out = tmp_path / "out"

    summary = _search_op(out, attachments=True).execute(context())

    assert foreign[1] == []
    records = {r["resource_id"]: r for r in _index(out, summary["run"]) if r["resource_id"] in tricks}
    assert {k: (r["status"], r["reason_code"]) for k, r in records.items()} == {
        "doc-backslash": ("skipped", "unsafe_url"),
        "doc-userinfo": ("skipped", "unsafe_url"),
    }
    assert "backslash" in records["doc-backslash"]["reason"]
    assert "user information" in records["doc-userinfo"]["reason"]
    assert summary["attachments"]["skipped"] == {"unsafe_url": 2}
    assert summary["attachments"]["landed"] == len(_generated_notes(server))


# -- the example DAG's switch ---------------------------------------------------------------------------------


# The example DAG's ``attachments`` switch is checked by the first night of
# tests/integration/test_bulk_example_dags.py::test_nightly_dag_exports_then_exports_only_changes (one
# ``airflow dags test`` run serves both).
