"""Integrity checks that a one-line change could switch off unnoticed, each pinned by a test of its own:
the attachment hash, a commit record without its data, deleted entries on later manifest pages, what the
token cache is keyed by, the Parquet width of FHIR integers, and the search de-duplication key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import responses

from airflow_provider_smart.auth import cache
from airflow_provider_smart.fhir.attachments import sha1_base64
from airflow_provider_smart.fhir.bulk import merge_pages, parse_manifest, plan_files
from airflow_provider_smart.parquet.writer import FhirParquetWriter
from airflow_provider_smart.storage.attachments import AttachmentSettings, land_attachments
from airflow_provider_smart.storage.export_landing import land_files
from airflow_provider_smart.storage.export_state import ExportLayout
from airflow_provider_smart.storage.ndjson import NdjsonRunWriter
from airflow_provider_smart.storage.paths import resolve_output
from tests.unit.bulk_fakes import FakeFhirClient
from tests.unit.parquet.helpers import write_ndjson

BASE = "http://fhir.test/fhir"


# -- attachments: bytes that differ from Attachment.hash never land ----------------------------------------
# The attachments tests' fake FHIR client: it answers ``Binary/<name>`` with the bytes ``<name>``.
from tests.unit.test_attachments import _Client  # noqa: E402


def _sha1(data: bytes) -> str:
    return sha1_base64(hashlib.sha1(data).digest())  # noqa: S324 - FHIR's Attachment.hash is SHA-1


def test_an_attachment_whose_bytes_differ_from_its_hash_fails_and_one_that_matches_lands(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    run = tmp_path / "DocumentReference" / "run1"
    run.mkdir(parents=True)
    docs = [
        {
            "resourceType": "DocumentReference",
            "id": "good",
            "content": [{"attachment": {"url": "Binary/a", "hash": _sha1(b"a")}}],
        },
        {
            "resourceType": "DocumentReference",
            "id": "bad",
            "content": [{"attachment": {"url": "Binary/b", "hash": _sha1(b"not b")}}],
        },
    ]
    source = write_ndjson(run / "part-00000.ndjson", docs)
    destination = ObjectStoragePath(f"file://{tmp_path}/attachments/run1")
    summary = land_attachments(
        _Client(), [ObjectStoragePath(f"file://{source}")], destination, AttachmentSettings(on_error="record")
    )
    assert (summary["landed"], summary["failed"]) == (1, 1)
    records = [json.loads(p.read_text()) for p in (tmp_path / "attachments/run1/_records").rglob("*.json")]
    by_resource = {r["resource_id"]: r for r in records}
    assert by_resource["good"]["status"] == "landed"
    bad = by_resource["bad"]
    assert bad["status"] == "failed"
    assert bad["reason"] == f"the bytes' SHA-1 {_sha1(b'b')} differs from the attachment's hash {_sha1(b'not b')}"
    # The bad bytes were stored by content before the check, but nothing points at them as landed.
    assert "sha256" not in bad


# -- bulk export: a commit record whose data file is gone is not a landed file --------------------------
@responses.activate
def test_a_record_whose_data_file_is_gone_is_not_committed_and_the_file_is_fetched_again(tmp_path: Path) -> None:
    body = b'{"resourceType":"Patient","id":"1"}\n'
    responses.get(f"{BASE}/p0", body=body)
    manifest = parse_manifest(
        {"transactionTime": "2024-01-01T00:00:00Z", "output": [{"type": "Patient", "url": f"{BASE}/p0"}]}
    )
    layout = ExportLayout(resolve_output(str(tmp_path)), "run1", export_id="abc")
    (planned,) = plan_files(manifest)
    assert land_files(FakeFhirClient(BASE), layout, manifest)["downloaded"] == 1
    assert layout.is_committed(planned)
    staged = Path(str(layout.staged_path(planned)).removeprefix("file://"))
    assert staged.read_bytes() == body
    staged.unlink()  # the record stays, the data is lost (a cleaned disk, a lifecycle rule)
    assert layout.read_record(planned.key) is not None
    assert not layout.is_committed(planned)
    again = land_files(FakeFhirClient(BASE), layout, manifest)
    assert (again["skipped"], again["downloaded"]) == (0, 1)
    assert staged.read_bytes() == body


# -- manifest pages: deleted entries on every page are kept ---------------------------------------------
def test_deleted_entries_on_pages_after_the_first_are_kept_in_page_order() -> None:
    def page(n: int, deleted: int) -> Any:
        return parse_manifest(
            {
                "transactionTime": "2024-01-01T00:00:00Z",
                "output": [{"type": "Patient", "url": f"{BASE}/p{n}"}],
                "deleted": [{"type": "Bundle", "url": f"{BASE}/d{n}-{i}"} for i in range(deleted)],
            }
        )

    merged = merge_pages([page(0, 1), page(1, 2), page(2, 0), page(3, 1)])
    assert [f.url for f in merged.deleted] == [f"{BASE}/d0-0", f"{BASE}/d1-0", f"{BASE}/d1-1", f"{BASE}/d3-0"]
    assert [f.url for f in merged.output] == [f"{BASE}/p{n}" for n in range(4)]


# -- token cache: an edited client id or scope never reuses the old token ----------------------------------
def test_the_token_cache_is_keyed_by_client_id_and_scope_as_well_as_the_connection() -> None:
    key = {"client_id": "c1", "kid": "k1", "scope": "system/*.read", "token_url": "http://a/token"}
    state = cache.shared_state("conn", "http://a/fhir", **key)
    assert cache.shared_state("conn", "http://a/fhir", **key) is state
    for field, edited in [
        ("client_id", "c2"),
        ("scope", "system/Patient.read"),
        ("kid", "k2"),
        ("token_url", "http://b/token"),
    ]:
        other = cache.shared_state("conn", "http://a/fhir", **dict(key, **{field: edited}))
        assert other is not state, f"a connection with another {field} must not share the cached token"
    assert cache.shared_state("other", "http://a/fhir", **key) is not state
    assert cache.shared_state("conn", "http://b/fhir", **key) is not state


# -- Parquet: FHIR integer is a 32-bit column ------------------------------------------------------------
def test_fhir_integers_are_stored_as_int32_columns(tmp_path: Path) -> None:
    source = write_ndjson(
        tmp_path / "p.ndjson",
        [{"resourceType": "Patient", "id": "p1", "multipleBirthInteger": 2147483647}],
    )
    with FhirParquetWriter(str(tmp_path / "out"), "run-1") as writer:
        writer.write_ndjson(str(source))
    (part,) = sorted((tmp_path / "out/Patient/run-1").glob("part-*.parquet"))
    assert str(pq.read_schema(part).field("multipleBirthInteger").type) == "int32"


# -- search: the de-duplication key is Type/id -------------------------------------------------------------
def test_deduplication_keeps_a_resource_of_another_type_with_the_same_id(tmp_path: Path) -> None:
    with NdjsonRunWriter(resolve_output(str(tmp_path)), "run1", primary_type="Observation") as writer:
        assert writer.write({"resourceType": "Observation", "id": "x1"}, deduplicate=True)
        # An _include'd Patient with the id of a match of another type is a different resource.
        assert writer.write({"resourceType": "Patient", "id": "x1"}, deduplicate=True)
        assert not writer.write({"resourceType": "Patient", "id": "x1"}, deduplicate=True)
        assert writer.duplicates == 1
        assert writer.counts == {"Observation": 1, "Patient": 1}
        writer.commit()
