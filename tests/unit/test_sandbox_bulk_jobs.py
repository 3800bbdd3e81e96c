"""Export jobs of the sandbox: selection, file splitting, resource blocks, deletions and manifests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from airflow_provider_smart.sandbox.bulk_jobs import (
    BulkJobs,
    BulkSettings,
    Deletion,
    JobGone,
    build_manifest,
    last_updated,
)
from airflow_provider_smart.sandbox.bulk_params import KickoffError, parse_kickoff

T0 = datetime(2024, 1, 1, tzinfo=UTC)
TX = datetime(2024, 6, 1, tzinfo=UTC)


def stamp(day: int) -> dict[str, str]:
    return {"lastUpdated": f"2024-01-{day:02d}T00:00:00Z"}


class FakeSnapshot:
    def __init__(self, data: dict[str, list[dict[str, Any]]], deletions: list[Deletion] | None = None):
        self.data = data
        self.transaction_time = TX
        self._deletions = deletions or []
        self.groups = {"g1": ["p1"]}

    def types(self) -> list[str]:
        return sorted(self.data)

    def entries(self, resource_type: str) -> Iterable[tuple[datetime | None, dict[str, Any]]]:
        return [(last_updated(r), r) for r in self.data.get(resource_type, [])]

    def patients_of(self, resource: dict[str, Any]) -> set[str]:
        ref = (resource.get("subject") or {}).get("reference", "")
        return {ref.split("/")[1]} if ref.startswith("Patient/") else set()

    def group_members(self, group_id: str) -> list[str] | None:
        return self.groups.get(group_id)

    def deletions(self, resource_types: list[str]) -> Iterator[Deletion]:
        return iter([d for d in self._deletions if d.resource_type in resource_types])


def dataset() -> FakeSnapshot:
    patients = [{"resourceType": "Patient", "id": f"p{i}", "meta": stamp(i)} for i in (1, 2, 3)]
    observations = [
        {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": "final" if i % 2 else "amended",
            "subject": {"reference": f"Patient/p{1 + i % 3}"},
            "meta": stamp(10 + i),
        }
        for i in range(7)
    ]
    orgs = [{"resourceType": "Organization", "id": "org", "meta": stamp(2)}]
    return FakeSnapshot({"Patient": patients, "Observation": observations, "Organization": orgs})


def request(pairs=(), *, level="system", method="GET", group_id=None, lenient=False):
    return parse_kickoff(
        list(pairs),
        level=level,
        request_url="http://h/fhir/$export",
        method=method,
        supported_types=["Patient", "Observation", "Organization"],
        compartment_types=["Patient", "Observation"],
        lenient=lenient,
        group_id=group_id,
    )


def read(path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def jobs():
    registry = BulkJobs(BulkSettings(max_file_resources=3))
    yield registry
    registry.close()


def start(jobs, req, snapshot=None, types=None, **kwargs):
    snap = snapshot or dataset()
    job = jobs.start(
        req,
        snap,
        types=types or ["Patient", "Observation", "Organization"],
        compartment_types={"Patient", "Observation"},
        client_id="c",
        **kwargs,
    )
    assert job.written.wait(10)
    return job


def test_system_export_splits_files_with_exact_counts(jobs):
    job = start(jobs, request())
    by_type: dict[str, list[str]] = {}
    for f in job.outputs:
        lines = read(f.path)
        assert len(lines) == f.count <= 3
        assert {r["resourceType"] for r in lines} == {f.resource_type}
        by_type.setdefault(f.resource_type, []).extend(r["id"] for r in lines)
    assert by_type == {
        "Patient": ["p1", "p2", "p3"],
        "Observation": [f"o{i}" for i in range(7)],
        "Organization": ["org"],
    }
    assert [f.count for f in job.outputs if f.resource_type == "Observation"] == [3, 3, 1]


def test_byte_limit_splits_too():
    registry = BulkJobs(BulkSettings(max_file_resources=1000, max_file_bytes=150))
    try:
        job = start(registry, request([("_type", "Observation")]), types=["Observation"])
        assert len(job.outputs) > 1
        assert all(f.size <= 150 or f.count == 1 for f in job.outputs)
        assert sum(f.count for f in job.outputs) == 7
    finally:
        registry.close()


def test_since_until_and_snapshot_time(jobs):
    snapshot = dataset()
    snapshot.data["Observation"].append(
        {"resourceType": "Observation", "id": "late", "meta": {"lastUpdated": "2024-07-01T00:00:00Z"}}
    )
    job = start(jobs, request([("_since", "2024-01-12T00:00:00Z"), ("_until", "2024-01-15T00:00:00Z")]), snapshot)
    ids = [r["id"] for f in job.outputs for r in read(f.path)]
    # lastUpdated 13th and 14th only: _since is exclusive, _until too, and "late" is after transactionTime.
    assert ids == ["o3", "o4"]


def test_patient_level_only_compartment(jobs):
    job = start(jobs, request(level="patient"), types=["Patient", "Observation"])
    types = {f.resource_type for f in job.outputs}
    assert types == {"Patient", "Observation"}


def test_group_level_and_patient_parameter(jobs):
    job = start(jobs, request(level="group", group_id="g1"), types=["Patient", "Observation"])
    ids = sorted(r["id"] for f in job.outputs for r in read(f.path))
    assert ids == ["o0", "o3", "o6", "p1"]
    with pytest.raises(KickoffError) as info:
        start(jobs, request(level="group", group_id="nope"))
    assert info.value.status == 404
    with pytest.raises(KickoffError, match="not members"):
        start(jobs, request([("patient", "Patient/p2")], level="group", group_id="g1", method="POST"))
    lenient = request([("patient", "Patient/p2"), ("patient", "Patient/p1")], level="patient", method="POST")
    job = start(jobs, lenient, types=["Patient"])
    assert sorted(r["id"] for f in job.outputs for r in read(f.path)) == ["p1", "p2"]


def test_type_filter_or_semantics(jobs):
    req = request(
        [("_type", "Observation"), ("_typeFilter", "Observation?status=amended"), ("_typeFilter", "Observation?_id=o1")]
    )
    job = start(jobs, req, types=["Observation"])
    assert sorted(r["id"] for f in job.outputs for r in read(f.path)) == ["o0", "o1", "o2", "o4", "o6"]


def test_deleted_bundles_only_with_since(jobs):
    deletion = Deletion("Observation", "gone", datetime(2024, 3, 1, tzinfo=UTC), frozenset({"p1"}))
    snapshot = FakeSnapshot(dataset().data, [deletion])
    job = start(jobs, request(), snapshot)
    assert not [f for f in job.files if f.kind == "deleted"]
    job = start(jobs, request([("_since", "2024-02-01T00:00:00Z")]), snapshot)
    (deleted,) = [f for f in job.files if f.kind == "deleted"]
    (bundle,) = read(deleted.path)
    assert bundle["type"] == "transaction"
    assert bundle["entry"][0]["request"] == {"method": "DELETE", "url": "Observation/gone"}


def test_lenient_warnings_and_error_fault_in_error_file(jobs):
    job = start(jobs, request([("_outputFormat", "csv")], lenient=True), error_file_fault=True)
    (errors,) = [f for f in job.files if f.kind == "error"]
    outcomes = read(errors.path)
    severities = [o["issue"][0]["severity"] for o in outcomes]
    assert severities == ["warning", "fatal", "information"]
    assert errors.count == 3


def test_organize_output_by_patient_blocks(jobs):
    job = start(jobs, request([("organizeOutputBy", "Patient")], level="patient"), types=["Patient", "Observation"])
    lines = [r for f in job.outputs for r in read(f.path)]
    assert all(f.resource_type is None for f in job.outputs)
    # Each block: header, the Patient, then its observations; a split block repeats its header.
    headers = [r for r in lines if r["resourceType"] == "Parameters"]
    assert headers[0]["parameter"][0]["valueReference"]["reference"] == "Patient/p1"
    continued = [f for f in job.outputs if f.continues_in]
    for f in continued:
        nxt = job.file(f.continues_in)
        first = read(nxt.path)[0]
        assert first["resourceType"] == "Parameters"
    real = [r for r in lines if r["resourceType"] != "Parameters"]
    assert sorted(r["id"] for r in real) == sorted(["p1", "p2", "p3"] + [f"o{i}" for i in range(7)])
    assert sum(f.count for f in job.outputs) == len(lines)


def test_polls_then_complete_then_delete(jobs):
    job = start(jobs, request())
    assert jobs.poll(job.id).completed_at is None  # polls_to_complete=1: one 202 first
    assert jobs.poll(job.id).completed_at is not None
    jobs.delete(job.id)
    with pytest.raises(JobGone):
        jobs.poll(job.id)
    assert not job.directory.exists()


def test_manifest_fields_and_pages(jobs):
    job = start(jobs, request([("allowPartialManifests", "true")]))
    url = lambda f: f"http://h/files/{f.name}"  # noqa: E731
    first = build_manifest(
        job, url_for=url, requires_access_token=True, page=1, page_size=2, page_url=lambda n: f"http://h/m/{n}"
    )
    assert first["transactionTime"] == "2024-06-01T00:00:00.000000Z"
    assert first["requiresAccessToken"] is True
    assert first["request"] == "http://h/fhir/$export"
    assert len(first["output"]) == 2
    assert first["link"] == [{"relation": "next", "url": "http://h/m/2"}]
    seen = list(first["output"])
    page = 2
    while True:
        manifest = build_manifest(
            job, url_for=url, requires_access_token=True, page=page, page_size=2, page_url=lambda n: f"http://h/m/{n}"
        )
        seen += manifest["output"]
        if "link" not in manifest:
            break
        page += 1
    assert len(seen) == len(job.outputs)
    with pytest.raises(JobGone):
        build_manifest(job, url_for=url, requires_access_token=True, page=page + 1, page_size=2, page_url=str)
    whole = build_manifest(job, url_for=url, requires_access_token=False)
    assert len(whole["output"]) == len(job.outputs) and "link" in first and "link" not in whole


class BlockingSnapshot(FakeSnapshot):
    """Holds the writer inside the first Observation until released (or raises, when told to)."""

    def __init__(self, error: Exception | None = None):
        super().__init__(dataset().data)
        self.release = threading.Event()
        self.error = error

    def entries(self, resource_type: str) -> Iterable[tuple[datetime | None, dict[str, Any]]]:
        for item in super().entries(resource_type):
            if resource_type == "Observation":
                assert self.release.wait(10)
                if self.error is not None:
                    raise self.error
            yield item


def test_job_in_progress_until_files_are_written(jobs):
    snapshot = BlockingSnapshot()
    job = jobs.start(request(), snapshot, types=["Observation"], compartment_types=set(), client_id="c")
    for _ in range(3):
        assert jobs.poll(job.id).completed_at is None
    assert jobs.progress(job) == "writing files"
    snapshot.release.set()
    assert job.written.wait(10)
    assert jobs.poll(job.id).completed_at is not None
    assert sum(f.count for f in job.outputs) == 7


def test_write_failure_fails_the_job(jobs):
    snapshot = BlockingSnapshot(error=RuntimeError("disk on fire"))
    snapshot.release.set()
    job = jobs.start(request(), snapshot, types=["Observation"], compartment_types=set(), client_id="c")
    assert job.written.wait(10)
    polled = jobs.poll(job.id)
    assert polled.completed_at is None
    assert polled.failed is not None
    assert polled.failed["issue"][0]["severity"] == "fatal"
    assert "disk on fire" in polled.failed["issue"][0]["diagnostics"]


def test_delete_while_writing_stops_and_cleans_up(jobs):
    snapshot = BlockingSnapshot()
    job = jobs.start(request(), snapshot, types=["Patient", "Observation"], compartment_types=set(), client_id="c")
    jobs.delete(job.id)
    snapshot.release.set()
    assert job.written.wait(10)
    assert job.failed is None  # a cancelled job is gone, not failed
    assert not job.directory.exists()
    with pytest.raises(JobGone):
        jobs.get(job.id)
