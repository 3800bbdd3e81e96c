from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest
import requests
import responses

from airflow_provider_smart.fhir.bulk import parse_manifest
from airflow_provider_smart.fhir.bulk.manifest import plan_files
from airflow_provider_smart.fhir.download import BulkDownloader, DownloadError, Progress
from airflow_provider_smart.storage.atomic import TMP_PREFIX
from airflow_provider_smart.storage.export_landing import DownloadSettings, finalize, land_files, summarize
from airflow_provider_smart.storage.export_state import ExportLayout
from airflow_provider_smart.storage.paths import resolve_output
from tests.unit.bulk_fakes import TOKEN, FakeFhirClient

BASE = "http://fhir.test/fhir"
STATUS = f"{BASE}/status/1"
PRESIGNED = "http://bucket.test"


def ndjson(rtype: str, n: int, start: int = 0) -> bytes:
    return b"".join(json.dumps({"resourceType": rtype, "id": str(i)}).encode() + b"\n" for i in range(start, start + n))


def manifest(requires_token: bool = True, **extra: object) -> dict[str, object]:
    data: dict[str, object] = {
        "transactionTime": "2024-01-01T00:00:00Z",
        "requiresAccessToken": requires_token,
        "output": [
            {"type": "Patient", "url": f"{BASE}/files/p0", "count": 3},
            {"type": "Patient", "url": f"{BASE}/files/p1", "count": 2},
            {"type": "Observation", "url": f"{PRESIGNED}/o0?X-Amz-Signature=abc", "count": 4},
        ],
        "error": [],
    }
    data.update(extra)
    return data


def layout_for(tmp_path: Path) -> ExportLayout:
    return ExportLayout(resolve_output(str(tmp_path)), "run1")


def auth_of(call: responses.Call) -> str | None:
    return call.request.headers.get("Authorization")


@responses.activate
def test_lands_files_token_only_to_fhir_origin(tmp_path: Path) -> None:
    responses.get(f"{BASE}/files/p0", body=ndjson("Patient", 3))
    responses.get(f"{BASE}/files/p1", body=gzip.compress(ndjson("Patient", 2, 3)))  # a gzip file body
    responses.get(f"{PRESIGNED}/o0", body=ndjson("Observation", 4))
    m = parse_manifest(manifest())
    layout = layout_for(tmp_path)
    counts = land_files(FakeFhirClient(BASE), layout, m, settings=DownloadSettings(max_workers=2))
    assert counts == {"planned": 3, "skipped": 0, "downloaded": 3, "bytes": counts["bytes"], "lines": 9}
    for call in responses.calls:
        if call.request.url.startswith(PRESIGNED):
            assert auth_of(call) is None
        else:
            assert auth_of(call) == f"Bearer {TOKEN}"
    # Landed in the export's staging area; nothing under Patient/ until the commit.
    assert (tmp_path / "_exports/run1/staging/Patient/Patient.00001.ndjson").read_bytes() == ndjson("Patient", 2, 3)
    assert not (tmp_path / "Patient").exists()
    summary = finalize(layout, m)
    assert summary["counts"] == {"Observation": 4, "Patient": 5}
    assert (tmp_path / "Patient/run1/Patient.00001.ndjson").read_bytes() == ndjson("Patient", 2, 3)
    assert not list((tmp_path / "_exports/run1/staging").rglob("*.ndjson"))
    assert (tmp_path / "Patient/run1/_SUCCESS").exists() and (tmp_path / "_exports/run1/_SUCCESS").exists()
    assert json.loads((tmp_path / "_exports/run1/manifest.json").read_text())["transactionTime"] == m.transaction_time
    assert not list(tmp_path.rglob(f"{TMP_PREFIX}*"))


@responses.activate
def test_requires_access_token_false_sends_no_token_anywhere(tmp_path: Path) -> None:
    responses.get(f"{BASE}/files/p0", body=ndjson("Patient", 3))
    responses.get(f"{BASE}/files/p1", body=ndjson("Patient", 2))
    responses.get(f"{PRESIGNED}/o0", body=ndjson("Observation", 4))
    land_files(FakeFhirClient(BASE), layout_for(tmp_path), parse_manifest(manifest(requires_token=False)))
    assert [auth_of(c) for c in responses.calls] == [None, None, None]


class DropOnce:
    """Serves a body whose first attempt is cut midway (as a dropped connection is)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.calls = 0

    def __call__(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        self.calls += 1
        if self.calls == 1:
            raise requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead")
        return 200, {}, self.body


@responses.activate
def test_one_file_retried_on_its_own(tmp_path: Path) -> None:
    drop = DropOnce(ndjson("Patient", 2))
    responses.get(f"{BASE}/files/p0", body=ndjson("Patient", 3))
    responses.add_callback(responses.GET, f"{BASE}/files/p1", callback=drop)
    responses.get(f"{PRESIGNED}/o0", body=ndjson("Observation", 4))
    layout = layout_for(tmp_path)
    land_files(FakeFhirClient(BASE), layout, parse_manifest(manifest()), settings=DownloadSettings(backoff_base=0.01))
    assert drop.calls == 2
    assert [c.request.url.rsplit("/", 1)[-1] for c in responses.calls].count("p0") == 1
    assert layout.read_record("Patient.00001")["attempts"] == 2  # type: ignore[index]


@responses.activate
def test_resume_downloads_only_missing_files(tmp_path: Path) -> None:
    responses.get(f"{BASE}/files/p0", body=ndjson("Patient", 3))
    responses.get(f"{BASE}/files/p1", status=404, body=b"gone for now")
    responses.get(f"{PRESIGNED}/o0", body=ndjson("Observation", 4))
    m = parse_manifest(manifest())
    layout = layout_for(tmp_path)
    with pytest.raises(DownloadError, match="HTTP 404"):
        land_files(FakeFhirClient(BASE), layout, m)
    assert summarize(layout, m)["missing"] == ["Patient.00001"]
    with pytest.raises(RuntimeError, match="have not landed"):
        finalize(layout, m)
    responses.reset()
    responses.get(f"{BASE}/files/p1", body=ndjson("Patient", 2))
    counts = land_files(FakeFhirClient(BASE), layout, m)
    assert counts["skipped"] == 2 and counts["downloaded"] == 1
    assert [c.request.url for c in responses.calls] == [f"{BASE}/files/p1"]
    assert finalize(layout, m)["counts"] == {"Observation": 4, "Patient": 5}


@responses.activate
def test_line_checks_fail_the_file_and_leave_nothing_visible(tmp_path: Path) -> None:
    responses.get(f"{BASE}/files/p0", body=ndjson("Patient", 3))
    responses.get(f"{BASE}/files/p1", body=ndjson("Patient", 1))  # manifest says 2
    responses.get(f"{PRESIGNED}/o0", body=ndjson("Patient", 4))  # wrong type
    with pytest.raises(DownloadError, match="2 of 3 files failed"):
        land_files(FakeFhirClient(BASE), layout_for(tmp_path), parse_manifest(manifest()))
    assert not (tmp_path / "_exports/run1/staging/Patient/Patient.00001.ndjson").exists()
    assert not (tmp_path / "_exports/run1/staging/Observation/Observation.00000.ndjson").exists()
    # The good file stays staged: nothing is where a reader of <root>/<Type> looks.
    assert [p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*.ndjson")] == ["_exports"]
    assert not list(tmp_path.rglob(f"{TMP_PREFIX}*"))


@responses.activate
def test_410_refetches_manifest_once_for_fresh_urls(tmp_path: Path) -> None:
    responses.get(f"{BASE}/files/p0", status=410)
    responses.get(f"{BASE}/files/p0-fresh", body=ndjson("Patient", 3))
    responses.get(f"{BASE}/files/p1", body=ndjson("Patient", 2))
    responses.get(f"{PRESIGNED}/o0", body=ndjson("Observation", 4))
    m = parse_manifest(manifest())
    fresh_data = manifest()
    fresh_data["output"][0]["url"] = f"{BASE}/files/p0-fresh"  # type: ignore[index]
    refreshes = []

    def refresh():  # type: ignore[no-untyped-def]
        refreshes.append(1)
        return parse_manifest(fresh_data)

    land_files(FakeFhirClient(BASE), layout_for(tmp_path), m, refresh_manifest=refresh)
    assert refreshes == [1]
    assert (tmp_path / "_exports/run1/staging/Patient/Patient.00000.ndjson").read_bytes() == ndjson("Patient", 3)


@responses.activate
def test_410_twice_fails_with_a_clear_message(tmp_path: Path) -> None:
    responses.get(f"{BASE}/files/p0", status=410)
    m = parse_manifest({"transactionTime": "T", "output": [{"type": "Patient", "url": f"{BASE}/files/p0"}]})
    with pytest.raises(DownloadError, match="410"):
        land_files(FakeFhirClient(BASE), layout_for(tmp_path), m, refresh_manifest=lambda: m)


@pytest.mark.parametrize("listed_under", ["error", "output"])
@responses.activate
def test_outcome_files_fatal_fail_after_data_kept(tmp_path: Path, listed_under: str) -> None:
    """OperationOutcomes count the same whether the manifest lists them under error[] or output[]."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "fatal", "code": "exception", "diagnostics": "lost Observation 7"}],
    }
    info = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": "skipped drafts"}],
    }
    body = (json.dumps(info) + "\n" + json.dumps(outcome) + "\n").encode()
    responses.get(f"{BASE}/files/p0", body=ndjson("Patient", 3))
    responses.get(f"{BASE}/files/e0", body=body)
    data: dict[str, list[dict[str, str]]] = {"output": [{"type": "Patient", "url": f"{BASE}/files/p0"}], "error": []}
    data[listed_under].append({"type": "OperationOutcome", "url": f"{BASE}/files/e0"})
    m = parse_manifest({"transactionTime": "T", **data})
    outcomes_dir = "errors" if listed_under == "error" else "OperationOutcome"
    layout = layout_for(tmp_path)
    land_files(FakeFhirClient(BASE), layout, m)
    from airflow_provider_smart.storage.export_landing import ExportOutcomeError

    with pytest.raises(ExportOutcomeError, match="lost Observation 7"):
        finalize(layout, m)
    # Kept, but unpublished: a reader of Patient/ sees nothing of an export with missing resources.
    assert (tmp_path / "_exports/run1/staging/Patient/Patient.00000.ndjson").exists()
    assert (tmp_path / f"_exports/run1/staging/{outcomes_dir}/OperationOutcome.00000.ndjson").exists()
    assert not (tmp_path / "Patient").exists() and not (tmp_path / outcomes_dir).exists()
    assert not (tmp_path / "_exports/run1/_SUCCESS").exists()
    summary = finalize(layout, m, fail_on_severity="none")
    assert (tmp_path / "Patient/run1/Patient.00000.ndjson").exists()
    assert summary["errors"]["counts"]["fatal"] == 1
    assert summary["warnings"] == ["[information] information/informational: skipped drafts"]
    if listed_under == "output":  # still data of the export: counted as lines of its type as well
        assert summary["counts"]["OperationOutcome"] == 2


def test_progress_rate_and_eta() -> None:
    p = Progress(total_files=4, total_lines=100, interval=5)
    p.started -= 10
    p.add(5_000_000, 25)
    p.file_done()
    assert p.eta_seconds() == pytest.approx(30, rel=0.05)
    assert "1/4 files" in p.summary() and "MB/s" in p.summary()
    assert "25/100 resources" in p.summary() and "about 30 s left" in p.summary()


def test_progress_gives_no_eta_before_it_means_something(caplog: pytest.LogCaptureFixture) -> None:
    """The first chunk of a 50-second download once logged ETA 00:49:47: no ETA before one interval and
    a few percent of the resources, and no line at all before the first interval has passed."""
    logger = logging.getLogger("progress-test")
    p = Progress(total_files=10, total_lines=100_000, interval=10, logger=logger)
    with caplog.at_level(logging.INFO, logger="progress-test"):
        p.add(64_000, 50)  # the first chunk, at once
    assert caplog.records == []
    assert p.eta_seconds() is None
    p.started -= 20  # 20 s in, but only 0.05 % done: still no ETA
    p._last = p.started  # and no line logged since the start
    assert p.eta_seconds() is None and "left" not in p.summary()
    p.add(5_000_000, 9_950)  # 10 % done after 20 s: 3 minutes left
    assert p.eta_seconds() == pytest.approx(180, rel=0.05)
    assert "about 3 min left" in p.summary()
    with caplog.at_level(logging.INFO, logger="progress-test"):
        p.add(1, 1)
        p.add(1, 1)
    assert len(caplog.records) == 1  # one line per interval


def test_downloader_never_authorises_foreign_origins() -> None:
    d = BulkDownloader(FakeFhirClient(BASE), requires_access_token=True)
    assert d.should_authorize(f"{BASE}/files/x")
    assert not d.should_authorize("http://fhir.test:8080/files/x")
    assert not d.should_authorize("https://fhir.test/fhir/files/x")
    assert not BulkDownloader(FakeFhirClient(BASE), requires_access_token=False).should_authorize(f"{BASE}/x")


@responses.activate
def test_an_outcome_file_committed_without_its_issues_read_fails_rather_than_passes(tmp_path: Path) -> None:
    """A record from a version that read only error[] files: its OperationOutcomes were never counted."""
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
    responses.get(f"{BASE}/files/o0", body=json.dumps(outcome) + "\n")
    m = parse_manifest(
        {"transactionTime": "T", "output": [{"type": "OperationOutcome", "url": f"{BASE}/files/o0"}], "error": []}
    )
    layout = layout_for(tmp_path)
    land_files(FakeFhirClient(BASE), layout, m)
    (planned,) = plan_files(m)
    record = layout.read_record(planned.key)
    assert record is not None and record["outcomes"]["counts"]["error"] == 1
    record.pop("outcomes")
    layout.write_record(planned, record)
    from airflow_provider_smart.storage.export_landing import ExportOutcomeError

    with pytest.raises(ExportOutcomeError, match="landed by an earlier version without their issues read"):
        finalize(layout, m)
