"""The sandbox's Bulk Data Access over real HTTP (127.0.0.1): kick-off, status, manifest, files, faults."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from airflow_provider_smart.fhir.bulk import parse_manifest
from airflow_provider_smart.fhir.errors import is_transient_outcome
from airflow_provider_smart.sandbox.bulk_jobs import BulkSettings
from airflow_provider_smart.sandbox.bulk_runtime import FHIR_FILE_PATHS, KICKOFF_PATHS, STATUS_PATHS
from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.sandbox.state import SandboxConfig

pytestmark = pytest.mark.integration

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


# -- helpers ---------------------------------------------------------------------------------------
def kickoff(
    session: requests.Session,
    url: str,
    params: list[tuple[str, str]] | None = None,
    *,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    if body is not None:
        return session.post(url, json=body, headers={**ASYNC, **(headers or {})}, timeout=30)
    return session.get(url, params=params, headers={**ASYNC, **(headers or {})}, timeout=30)


def started(response: requests.Response) -> str:
    assert response.status_code == 202, response.text
    return response.headers["Content-Location"]


def wait(session: requests.Session, status_url: str, polls: int = 200) -> requests.Response:
    """Poll until the export is no longer in progress (a short pause instead of the 1 s Retry-After)."""
    for _ in range(polls):
        response = session.get(status_url, headers={"Accept": "application/json"}, timeout=30)
        if response.status_code != 202:
            return response
        assert response.headers["X-Progress"]
        assert int(response.headers["Retry-After"]) >= 0
        time.sleep(0.02)
    raise AssertionError(f"export not complete after {polls} polls")


def export(session: requests.Session, url: str, params: list[tuple[str, str]] | None = None, **kw: Any) -> dict:
    response = wait(session, started(kickoff(session, url, params, **kw)))
    assert response.status_code == 200, response.text
    manifest: dict[str, Any] = response.json()
    parse_manifest(manifest)  # the provider's own client reads it
    return manifest


def lines(session: requests.Session | Any, url: str) -> list[dict[str, Any]]:
    response = session.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/fhir+ndjson")
    return [json.loads(line) for line in response.text.splitlines()]


def landed(session: requests.Session, manifest: dict[str, Any], key: str = "output") -> dict[str, list[dict]]:
    """Resources by type from every file of a manifest section, checking each file's count."""
    found: dict[str, list[dict[str, Any]]] = {}
    for item in manifest[key]:
        resources = lines(session, item["url"])
        assert len(resources) == item["count"]
        for resource in resources:
            if "type" in item:
                assert resource["resourceType"] == item["type"]
            found.setdefault(resource["resourceType"], []).append(resource)
    return found


def store_resources(server: SandboxServer, resource_type: str, patients: set[str] | None = None) -> list[dict]:
    store = server.state.store
    return [r for r in store.iter_type(resource_type) if patients is None or store.patient_refs(r) & patients]


def by_id(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in resources}


@pytest.fixture
def session(smart_client: Any) -> requests.Session:
    return smart_client.session()


@pytest.fixture
def server_with(sandbox_factory: Callable[..., SandboxServer], smart_client_factory: Callable[..., Any]):
    """A fresh server with Bulk settings of the test's choosing, and an authorized session on it."""

    def start(**settings: Any) -> tuple[SandboxServer, requests.Session]:
        server = sandbox_factory(SandboxConfig(patients=10, seed=42, bulk=BulkSettings(**settings)))
        client = smart_client_factory(server=server, set_connection=False)
        return server, client.session()

    return start


# -- kick-off, status, manifest, files ---------------------------------------------------------------
def test_system_export_lands_exactly_the_store(sandbox: SandboxServer, session: requests.Session) -> None:
    url = f"{sandbox.fhir_base}/$export"
    status_url = started(kickoff(session, url))
    first = session.get(status_url, timeout=30)
    assert first.status_code == 202
    assert 0 < len(first.headers["X-Progress"]) < 100
    assert first.headers["Retry-After"] == "1"
    response = wait(session, status_url)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    expires = parsedate_to_datetime(response.headers["Expires"])
    assert expires > datetime.now(UTC)
    manifest = response.json()
    assert manifest["request"] == url
    assert manifest["requiresAccessToken"] is True
    assert manifest["error"] == []
    transaction_time = datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00"))
    assert transaction_time <= datetime.now(UTC)
    found = landed(session, manifest)
    assert sorted(found) == sandbox.state.store.types()
    for resource_type, resources in found.items():
        assert by_id(resources) == by_id(store_resources(sandbox, resource_type)), resource_type


def test_patient_level_post_exports_the_compartment(sandbox: SandboxServer, session: requests.Session) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "_type", "valueString": "Patient,Observation,Organization"}],
    }
    response = kickoff(session, f"{sandbox.fhir_base}/Patient/$export", body=body)
    # Organization is outside the Patient compartment: strict mode refuses it.
    assert response.status_code == 400
    assert "Patient compartment" in response.json()["issue"][0]["diagnostics"]
    body["parameter"] = [{"name": "_type", "valueString": "Patient,Observation"}]
    manifest = export(session, f"{sandbox.fhir_base}/Patient/$export", body=body)
    assert manifest["request"] == f"{sandbox.fhir_base}/Patient/$export"  # POST: no parameters in it
    found = landed(session, manifest)
    assert sorted(found) == ["Observation", "Patient"]
    assert by_id(found["Observation"]) == by_id(store_resources(sandbox, "Observation"))


def test_patient_level_get_covers_compartment_types_only(sandbox: SandboxServer, session: requests.Session) -> None:
    found = landed(session, export(session, f"{sandbox.fhir_base}/Patient/$export"))
    compartment = sandbox.state.store.patient_compartment_types()
    assert set(found) <= set(compartment)
    assert "Organization" not in found and "Practitioner" not in found
    assert by_id(found["Encounter"]) == by_id(store_resources(sandbox, "Encounter"))


def test_group_export_get_and_post_patient(sandbox: SandboxServer, session: requests.Session) -> None:
    members = set(sandbox.state.store.group_member_ids("grp-diabetes") or [])
    assert 0 < len(members) < 10
    found = landed(session, export(session, f"{sandbox.fhir_base}/Group/grp-diabetes/$export"))
    assert set(by_id(found["Patient"])) == members
    assert by_id(found["Observation"]) == by_id(store_resources(sandbox, "Observation", members))

    one = sorted(members)[0]
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{one}"}},
            {"name": "_type", "valueString": "Patient"},
            {"name": "_type", "valueString": "Condition"},
        ],
    }
    found = landed(session, export(session, f"{sandbox.fhir_base}/Group/grp-diabetes/$export", body=body))
    assert set(by_id(found["Patient"])) == {one}
    assert by_id(found.get("Condition", [])) == by_id(store_resources(sandbox, "Condition", {one}))

    outsider = next(p["id"] for p in store_resources(sandbox, "Patient") if p["id"] not in members)
    body["parameter"][0] = {"name": "patient", "valueReference": {"reference": f"Patient/{outsider}"}}
    response = kickoff(session, f"{sandbox.fhir_base}/Group/grp-diabetes/$export", body=body)
    assert response.status_code == 400
    assert "not members" in response.json()["issue"][0]["diagnostics"]
    missing = kickoff(session, f"{sandbox.fhir_base}/Group/no-such-group/$export")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"


def test_kickoff_needs_prefer_respond_async_and_a_token(sandbox: SandboxServer, session: requests.Session) -> None:
    url = f"{sandbox.fhir_base}/$export"
    response = session.get(url, headers={"Accept": "application/fhir+json"}, timeout=30)
    assert response.status_code == 400
    assert "respond-async" in response.json()["issue"][0]["diagnostics"]
    assert requests.get(url, headers=ASYNC, timeout=30).status_code == 401
    response = session.get(url, headers={**ASYNC, "Accept": "text/csv"}, timeout=30)
    assert response.status_code == 406
    response = session.post(url, data="not json", headers={**ASYNC, "Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 400


@pytest.mark.parametrize("fmt", ["application/fhir+ndjson", "application/ndjson", "ndjson"])
def test_output_formats(sandbox: SandboxServer, session: requests.Session, fmt: str) -> None:
    manifest = export(session, f"{sandbox.fhir_base}/$export", [("_outputFormat", fmt), ("_type", "Patient")])
    assert [item["type"] for item in manifest["output"]] == ["Patient"]


def test_type_repeated_and_comma_list(sandbox: SandboxServer, session: requests.Session) -> None:
    params = [("_type", "Patient,Condition"), ("_type", "Immunization")]
    found = landed(session, export(session, f"{sandbox.fhir_base}/$export", params))
    assert sorted(found) == ["Condition", "Immunization", "Patient"]


def test_elements_subsets_and_tags(sandbox: SandboxServer, session: requests.Session) -> None:
    params = [("_type", "Patient,Observation"), ("_elements", "Patient.birthDate,Observation.subject")]
    found = landed(session, export(session, f"{sandbox.fhir_base}/$export", params))
    for patient in found["Patient"]:
        assert set(patient) <= {"resourceType", "id", "meta", "birthDate"}
        assert any(tag["code"] == "SUBSETTED" for tag in patient["meta"]["tag"])
    for observation in found["Observation"]:
        # status and code are mandatory in Observation: kept whatever _elements says.
        assert set(observation) == {"resourceType", "id", "meta", "subject", "status", "code"}


def test_type_filter_or_semantics(sandbox: SandboxServer, session: requests.Session) -> None:
    observations = store_resources(sandbox, "Observation")
    codes = sorted({o["code"]["coding"][0]["code"] for o in observations})
    assert len(codes) >= 3
    wanted = codes[:2]
    params = [("_type", "Observation,Patient")] + [
        ("_typeFilter", f"Observation?code=http://loinc.org|{code}") for code in wanted
    ]
    found = landed(session, export(session, f"{sandbox.fhir_base}/$export", params))
    expected = [o for o in observations if o["code"]["coding"][0]["code"] in wanted]
    assert by_id(found["Observation"]) == by_id(expected)
    assert len(found["Patient"]) == len(store_resources(sandbox, "Patient"))  # other types unfiltered

    params = [("_type", "Observation"), ("_typeFilter", "Observation?value-quantity=5")]
    response = kickoff(session, f"{sandbox.fhir_base}/$export", params)
    assert response.status_code == 400
    assert "value-quantity" in response.json()["issue"][0]["diagnostics"]


def test_since_and_until_window(sandbox: SandboxServer, session: requests.Session) -> None:
    observations = store_resources(sandbox, "Observation")
    stamps = sorted({o["meta"]["lastUpdated"] for o in observations})
    since, until = stamps[len(stamps) // 4], stamps[3 * len(stamps) // 4]
    params = [("_type", "Observation"), ("_since", since), ("_until", until)]
    found = landed(session, export(session, f"{sandbox.fhir_base}/$export", params))
    expected = [o for o in observations if since < o["meta"]["lastUpdated"] < until]
    assert expected and by_id(found["Observation"]) == by_id(expected)


def test_strict_refuses_and_lenient_warns_in_the_error_file(sandbox: SandboxServer, session: requests.Session) -> None:
    url = f"{sandbox.fhir_base}/$export"
    params = [("_type", "Patient,Starship"), ("_count", "5"), ("includeAssociatedData", "_custom")]
    strict = kickoff(session, url, params)
    assert strict.status_code == 400
    assert strict.json()["resourceType"] == "OperationOutcome"
    manifest = export(session, url, params, headers={"Prefer": "respond-async, handling=lenient"})
    assert [item["type"] for item in manifest["output"]] == ["Patient"]
    (error_file,) = manifest["error"]
    assert error_file["type"] == "OperationOutcome"
    outcomes = lines(session, error_file["url"])
    assert len(outcomes) == error_file["count"] == 3
    texts = " ".join(o["issue"][0]["diagnostics"] for o in outcomes)
    assert "Starship" in texts and "_count" in texts and "_custom" in texts
    assert {o["issue"][0]["severity"] for o in outcomes} == {"warning"}


def test_scopes_limit_the_export(sandbox: SandboxServer, smart_client_factory: Callable[..., Any]) -> None:
    client = smart_client_factory(scope="system/Patient.read system/Condition.read", set_connection=False)
    session = client.session()
    url = f"{sandbox.fhir_base}/$export"
    refused = kickoff(session, url, [("_type", "Observation")])
    assert refused.status_code == 403
    assert "Observation" in refused.json()["issue"][0]["diagnostics"]
    found = landed(session, export(session, url))
    assert sorted(found) == ["Condition", "Patient"]
    manifest = export(
        session, url, [("_type", "Patient,Observation")], headers={"Prefer": "respond-async,handling=lenient"}
    )
    assert [item["type"] for item in manifest["output"]] == ["Patient"]
    (error_file,) = manifest["error"]
    assert "Observation" in lines(session, error_file["url"])[0]["issue"][0]["diagnostics"]


def test_status_and_files_belong_to_the_client(
    sandbox: SandboxServer, session: requests.Session, smart_client_factory: Callable[..., Any]
) -> None:
    manifest_url = started(kickoff(session, f"{sandbox.fhir_base}/$export", [("_type", "Patient")]))
    manifest = wait(session, manifest_url).json()
    other = smart_client_factory(set_connection=False).session()
    assert other.get(manifest_url, timeout=30).status_code == 404
    assert other.get(manifest["output"][0]["url"], timeout=30).status_code == 404
    assert requests.get(manifest["output"][0]["url"], timeout=30).status_code == 401


def test_delete_then_404(sandbox: SandboxServer, session: requests.Session) -> None:
    status_url = started(kickoff(session, f"{sandbox.fhir_base}/$export", [("_type", "Patient")]))
    manifest = wait(session, status_url).json()
    deleted = session.delete(status_url, timeout=30)
    assert deleted.status_code == 202
    gone = session.get(status_url, timeout=30)
    assert gone.status_code == 404
    assert gone.json()["resourceType"] == "OperationOutcome"
    assert session.get(manifest["output"][0]["url"], timeout=30).status_code == 404
    assert session.delete(status_url, timeout=30).status_code == 404
    # Deleting a running export cancels it.
    running = started(kickoff(session, f"{sandbox.fhir_base}/$export", [("_type", "Patient")]))
    assert session.delete(running, timeout=30).status_code == 202
    assert session.get(running, timeout=30).status_code == 404


def test_gzip_on_request(sandbox: SandboxServer, session: requests.Session) -> None:
    manifest = export(session, f"{sandbox.fhir_base}/$export", [("_type", "Observation")])
    url = manifest["output"][0]["url"]
    plain = session.get(url, headers={"Accept-Encoding": "identity"}, timeout=30)
    assert "Content-Encoding" not in plain.headers
    assert int(plain.headers["Content-Length"]) == len(plain.content)
    packed = session.get(url, headers={"Accept-Encoding": "gzip"}, stream=True, timeout=30)
    assert packed.headers["Content-Encoding"] == "gzip"
    raw = packed.raw.read(decode_content=False)
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw) == plain.content


def test_files_split_by_size_with_exact_counts(server_with: Callable[..., Any]) -> None:
    server, session = server_with(max_file_resources=7)
    manifest = export(session, f"{server.fhir_base}/$export", [("_type", "Observation")])
    counts = [item["count"] for item in manifest["output"]]
    total = len(store_resources(server, "Observation"))
    assert len(counts) == -(-total // 7) and sum(counts) == total and max(counts) == 7
    found = landed(session, manifest)
    assert by_id(found["Observation"]) == by_id(store_resources(server, "Observation"))

    server, session = server_with(max_file_resources=1000, max_file_bytes=4000)
    manifest = export(session, f"{server.fhir_base}/$export", [("_type", "Observation")])
    assert len(manifest["output"]) > 1
    assert sum(item["count"] for item in manifest["output"]) == len(store_resources(server, "Observation"))


def test_organize_output_by_patient(server_with: Callable[..., Any]) -> None:
    server, session = server_with(max_file_resources=4)
    manifest = export(
        session,
        f"{server.fhir_base}/Patient/$export",
        [("organizeOutputBy", "Patient"), ("_type", "Patient,Encounter")],
    )
    assert manifest["outputOrganizedBy"] == "Patient"
    assert all("type" not in item for item in manifest["output"])
    continued = [item for item in manifest["output"] if "continuesInFile" in item]
    urls = [item["url"] for item in manifest["output"]]
    current = None
    seen: list[dict[str, Any]] = []
    for item in manifest["output"]:
        resources = lines(session, item["url"])
        assert len(resources) == item["count"]
        for resource in resources:
            if resource["resourceType"] == "Parameters":
                current = resource["parameter"][0]["valueReference"]["reference"].split("/")[1]
                continue
            owner = resource["id"] if resource["resourceType"] == "Patient" else resource["subject"]["reference"]
            assert owner.rsplit("/", 1)[-1] == current
            seen.append(resource)
        if "continuesInFile" in item:
            assert item["continuesInFile"] in urls
            assert lines(session, item["continuesInFile"])[0]["resourceType"] == "Parameters"
    expected = store_resources(server, "Patient") + store_resources(server, "Encounter")
    assert by_id(seen) == by_id(expected)
    assert continued, "a 4-line limit must split some patient block"


def test_partial_manifests_page_with_next_links(server_with: Callable[..., Any]) -> None:
    server, session = server_with(max_file_resources=10, manifest_page_size=3)
    manifest = export(session, f"{server.fhir_base}/$export", [("allowPartialManifests", "true")])
    pages = [manifest]
    while "link" in pages[-1]:
        (link,) = pages[-1]["link"]
        assert link["relation"] == "next"
        response = session.get(link["url"], timeout=30)
        assert response.status_code == 200
        pages.append(response.json())
    assert len(pages) > 1
    assert all(len(page["output"]) <= 3 for page in pages)
    assert {page["transactionTime"] for page in pages} == {manifest["transactionTime"]}
    found: dict[str, list[dict[str, Any]]] = {}
    for page in pages:
        for resource_type, resources in landed(session, page).items():
            found.setdefault(resource_type, []).extend(resources)
    for resource_type, resources in found.items():
        assert by_id(resources) == by_id(store_resources(server, resource_type))


# -- presigned file origin ----------------------------------------------------------------------------
def test_presigned_origin_serves_without_token_and_rejects_authorization(server_with: Callable[..., Any]) -> None:
    server, session = server_with(presigned_files=True)
    manifest = export(session, f"{server.fhir_base}/$export", [("_type", "Patient,Condition")])
    assert manifest["requiresAccessToken"] is False
    origins = server.state.bulk.origins
    for item in manifest["output"]:
        assert item["url"].startswith(server.files_base_url + "/")
        assert urlsplit(item["url"]).port != server.port
    found = landed(requests, manifest)  # plain requests: no token anywhere
    assert by_id(found["Patient"]) == by_id(store_resources(server, "Patient"))
    assert origins.requests["files"] == len(manifest["output"])
    assert not origins.authorization_seen("files")
    assert origins.authorization_seen("fhir") and origins.requests["fhir"] >= 3  # kick-off and polls

    url = manifest["output"][0]["url"]
    token = session.headers["Authorization"]
    leaked = requests.get(url, headers={"Authorization": token}, timeout=30)
    assert leaked.status_code == 400
    assert "InvalidArgument" in leaked.text
    assert origins.authorization_seen("files")

    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    tampered = parts._replace(query=urlencode({**query, "signature": "0" * 64})).geturl()
    assert requests.get(tampered, timeout=30).status_code == 403
    job_id, name = parts.path.split("/")[2], parts.path.split("/")[3].removesuffix(".ndjson")
    stale = server.state.bulk.signer.sign(server.files_base_url, job_id, name, int(query["generation"]), ttl=-5)
    expired = requests.get(stale, timeout=30)
    assert expired.status_code == 403 and "expired" in expired.text


# -- fault switches -------------------------------------------------------------------------------------
def test_fault_throttled_kickoff(sandbox: SandboxServer, session: requests.Session) -> None:
    sandbox.state.faults.throttle(KICKOFF_PATHS, times=1, retry_after=3)
    url = f"{sandbox.fhir_base}/$export"
    throttled = kickoff(session, url, [("_type", "Patient")])
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "3"
    started(kickoff(session, url, [("_type", "Patient")]))


def test_fault_one_export_per_client(sandbox: SandboxServer, session: requests.Session) -> None:
    sandbox.state.bulk.faults.one_export_per_client = True
    try:
        url = f"{sandbox.fhir_base}/$export"
        first = started(kickoff(session, url, [("_type", "Patient")]))
        busy = kickoff(session, url, [("_type", "Patient")])
        assert busy.status_code == 429
        assert busy.headers["Retry-After"] == "1"
        assert "another export" in busy.json()["issue"][0]["diagnostics"]
        assert session.delete(first, timeout=30).status_code == 202
        started(kickoff(session, url, [("_type", "Patient")]))
    finally:
        sandbox.state.bulk.faults.reset()


def test_fault_throttled_and_transient_status(sandbox: SandboxServer, session: requests.Session) -> None:
    status_url = started(kickoff(session, f"{sandbox.fhir_base}/$export", [("_type", "Patient")]))
    sandbox.state.faults.throttle(STATUS_PATHS, times=1, retry_after=2)
    sandbox.state.faults.fail(STATUS_PATHS, status=503, times=1)
    throttled = session.get(status_url, timeout=30)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "2"
    transient = session.get(status_url, timeout=30)
    assert transient.status_code == 503
    assert is_transient_outcome(transient.json())
    assert wait(session, status_url).status_code == 200


def test_fault_failed_export(sandbox: SandboxServer, session: requests.Session) -> None:
    sandbox.state.bulk.faults.fail_exports = True
    try:
        status_url = started(kickoff(session, f"{sandbox.fhir_base}/$export", [("_type", "Patient")]))
    finally:
        sandbox.state.bulk.faults.reset()
    failed = session.get(status_url, timeout=30)
    assert failed.status_code == 500
    assert failed.headers["Content-Type"].startswith("application/fhir+json")
    assert failed.json()["issue"][0]["severity"] == "fatal"
    assert not is_transient_outcome(failed.json())


def test_fault_error_file(sandbox: SandboxServer, session: requests.Session) -> None:
    sandbox.state.bulk.faults.error_file = True
    try:
        manifest = export(session, f"{sandbox.fhir_base}/$export", [("_type", "Patient")])
    finally:
        sandbox.state.bulk.faults.reset()
    (error_file,) = manifest["error"]
    severities = sorted(o["issue"][0]["severity"] for o in lines(session, error_file["url"]))
    assert severities == ["fatal", "information"]
    assert by_id(landed(session, manifest)["Patient"]) == by_id(store_resources(sandbox, "Patient"))


def test_fault_connection_dropped_midway(sandbox: SandboxServer, session: requests.Session) -> None:
    manifest = export(session, f"{sandbox.fhir_base}/$export", [("_type", "Observation")])
    url = manifest["output"][0]["url"]
    sandbox.state.faults.drop(FHIR_FILE_PATHS, times=1)
    with pytest.raises(requests.exceptions.RequestException):
        session.get(url, headers={"Accept-Encoding": "identity"}, timeout=30).content  # noqa: B018
    assert len(lines(session, url)) == manifest["output"][0]["count"]


def test_fault_connection_dropped_on_presigned_origin(server_with: Callable[..., Any]) -> None:
    server, session = server_with(presigned_files=True)
    manifest = export(session, f"{server.fhir_base}/$export", [("_type", "Observation")])
    server.state.faults.drop("/bulk-files/*", times=1)
    url = manifest["output"][0]["url"]
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(url, headers={"Accept-Encoding": "identity"}, timeout=30).content  # noqa: B018
    assert len(lines(requests, url)) == manifest["output"][0]["count"]


@pytest.mark.parametrize("presigned", [False, True])
def test_fault_expired_file_then_fresh_manifest(server_with: Callable[..., Any], presigned: bool) -> None:
    server, session = server_with(presigned_files=presigned)
    status_url = started(kickoff(session, f"{server.fhir_base}/$export", [("_type", "Patient")]))
    manifest = wait(session, status_url).json()
    getter = requests if presigned else session
    server.state.bulk.faults.expire_files = 1
    old_url = manifest["output"][0]["url"]
    gone = getter.get(old_url, timeout=30)
    assert gone.status_code == 410
    assert getter.get(old_url, timeout=30).status_code == 410  # an expired URL stays expired
    fresh = session.get(status_url, timeout=30)
    assert fresh.status_code == 200
    new_manifest = fresh.json()
    assert new_manifest["transactionTime"] == manifest["transactionTime"]
    new_url = new_manifest["output"][0]["url"]
    assert new_url != old_url
    assert len(lines(getter, new_url)) == new_manifest["output"][0]["count"]


def test_fault_token_revoked_during_downloads(
    sandbox: SandboxServer, smart_client: Any, session: requests.Session
) -> None:
    manifest = export(session, f"{sandbox.fhir_base}/$export", [("_type", "Patient,Condition")])
    sandbox.state.bulk.faults.invalidate_tokens_after_downloads = 1
    first, second = manifest["output"][0]["url"], manifest["output"][1]["url"]
    assert session.get(first, timeout=30).status_code == 200
    refused = session.get(second, timeout=30)
    assert refused.status_code == 401
    assert refused.json()["resourceType"] == "OperationOutcome"
    renewed = smart_client.session()
    assert len(lines(renewed, second)) == manifest["output"][1]["count"]


def test_faults_over_the_admin_endpoint(sandbox: SandboxServer, session: requests.Session) -> None:
    admin = f"{sandbox.base_url}/_sandbox/faults"
    response = requests.put(admin, json={"bulk": {"fail_exports": True}}, auth=sandbox.admin_auth, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["bulk"]["fail_exports"] is True
    status_url = started(kickoff(session, f"{sandbox.fhir_base}/$export", [("_type", "Patient")]))
    assert session.get(status_url, timeout=30).status_code == 500
    response = requests.put(admin, json={"bulk": {"nonsense": 1}}, auth=sandbox.admin_auth, timeout=30)
    assert response.status_code == 400
    requests.put(admin, json={"reset": True}, auth=sandbox.admin_auth, timeout=30)
    assert sandbox.state.bulk.faults.fail_exports is False


# -- incremental exports ------------------------------------------------------------------------------
def test_since_returns_only_changes_and_deletions(fresh_sandbox: SandboxServer, smart_client_factory: Any) -> None:
    server = fresh_sandbox
    session = smart_client_factory(server=server, set_connection=False).session()
    url = f"{server.fhir_base}/$export"
    first = export(session, url)
    store = server.state.store
    patient = dict(store_resources(server, "Patient")[0])
    patient["gender"] = "other" if patient.get("gender") != "other" else "female"
    changed = store.put(patient)
    new_obs = store.put(
        {
            "resourceType": "Observation",
            "id": "obs-new",
            "status": "final",
            "code": {"text": "new"},
            "subject": {"reference": f"Patient/{patient['id']}"},
        }
    )
    removed = store_resources(server, "Condition")[0]
    assert store.delete("Condition", removed["id"])

    second = export(session, url, [("_since", first["transactionTime"])])
    found = landed(session, second)
    assert found == {"Patient": [changed], "Observation": [new_obs]}
    deleted = landed(session, second, "deleted")
    (bundle,) = deleted["Bundle"]
    assert bundle["type"] == "transaction"
    assert bundle["entry"] == [{"request": {"method": "DELETE", "url": f"Condition/{removed['id']}"}}]
    assert second["transactionTime"] > first["transactionTime"]

    third = export(session, url, [("_since", second["transactionTime"])])
    assert third["output"] == [] and third.get("deleted", []) == []


def test_fault_polling_faster_than_retry_after(sandbox: SandboxServer, session: requests.Session) -> None:
    sandbox.state.faults.bulk.enforce_retry_after = True
    sandbox.state.clock.freeze()  # "too soon" must not depend on how fast a busy machine sends two requests
    status_url = started(kickoff(session, f"{sandbox.fhir_base}/$export", [("_type", "Patient")]))
    first = session.get(status_url, timeout=30)
    assert first.status_code == 202
    too_soon = session.get(status_url, timeout=30)
    assert too_soon.status_code == 429
    assert too_soon.headers["Retry-After"] == "1"
    assert "too frequently" in too_soon.json()["issue"][0]["diagnostics"]
    assert first.headers["Retry-After"] == "1"
    sandbox.state.clock.advance(0.5)
    assert session.get(status_url, timeout=30).status_code == 429  # still half a second short
    sandbox.state.clock.advance(0.5)
    assert session.get(status_url, timeout=30).status_code == 200


def test_retry_after_http_date_and_time_to_complete(server_with: Callable[..., Any]) -> None:
    server, session = server_with(retry_after=30, retry_after_http_date=True, seconds_to_complete=0.5)
    server.state.clock.freeze()
    status_url = started(kickoff(session, f"{server.fhir_base}/$export", [("_type", "Patient")]))
    pending = [session.get(status_url, timeout=30) for _ in range(3)]
    assert {r.status_code for r in pending} == {202}  # polls alone do not finish it: 0.5 s must pass
    ask = parsedate_to_datetime(pending[0].headers["Retry-After"])
    assert ask == server.state.clock.now().replace(microsecond=0) + timedelta(seconds=30)
    server.state.clock.advance(0.25)
    assert session.get(status_url, timeout=30).status_code == 202
    server.state.clock.advance(0.25)
    assert session.get(status_url, timeout=30).status_code == 200


def test_files_gone_after_their_expiry(server_with: Callable[..., Any]) -> None:
    server, session = server_with(files_ttl=0)
    status_url = started(kickoff(session, f"{server.fhir_base}/$export", [("_type", "Patient")]))
    response = wait(session, status_url)
    assert parsedate_to_datetime(response.headers["Expires"]) <= datetime.now(UTC)
    gone = session.get(response.json()["output"][0]["url"], timeout=30)
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "expired"


def test_partial_manifest_while_running(server_with: Callable[..., Any]) -> None:
    server, session = server_with(
        partial_manifests_while_running=True, polls_to_complete=3, max_file_resources=10, manifest_page_size=2
    )
    url = f"{server.fhir_base}/$export"
    plain = started(kickoff(session, url, [("_type", "Observation")]))
    assert session.get(plain, timeout=30).content == b""  # without allowPartialManifests: no body
    status_url = started(kickoff(session, url, [("_type", "Observation"), ("allowPartialManifests", "true")]))
    partial = None
    for _ in range(200):
        response = session.get(status_url, timeout=30)
        if response.status_code == 202 and response.content:
            partial = response.json()
            break
        assert response.status_code == 202
        time.sleep(0.02)
    assert partial is not None and "link" not in partial
    assert len(partial["output"]) == 2
    complete = wait(session, status_url)
    assert complete.status_code == 200
    final = complete.json()
    assert final["output"] == partial["output"]  # unchanged, only the link is added
    assert final["link"][0]["relation"] == "next"


def test_include_associated_provenance(fresh_sandbox: SandboxServer, smart_client_factory: Any) -> None:
    server = fresh_sandbox
    store = server.state.store
    patients = store_resources(server, "Patient")
    older = store.put(
        {
            "resourceType": "Provenance",
            "id": "prov-old",
            "recorded": "2024-01-01T00:00:00Z",
            "target": [{"reference": f"Patient/{patients[0]['id']}"}],
            "agent": [{"who": {"display": "a"}}],
        }
    )
    newer = store.put(
        {
            "resourceType": "Provenance",
            "id": "prov-new",
            "recorded": "2024-02-01T00:00:00Z",
            "target": [{"reference": f"Patient/{patients[0]['id']}"}],
            "agent": [{"who": {"display": "b"}}],
        }
    )
    store.put(
        {
            "resourceType": "Provenance",
            "id": "prov-obs",
            "recorded": "2024-02-01T00:00:00Z",
            "target": [{"reference": "Observation/not-exported"}],
            "agent": [{"who": {"display": "c"}}],
        }
    )
    session = smart_client_factory(server=server, set_connection=False).session()  # token knows Provenance
    url = f"{server.fhir_base}/$export"
    relevant = landed(
        session, export(session, url, [("_type", "Patient"), ("includeAssociatedData", "RelevantProvenanceResources")])
    )
    assert by_id(relevant["Provenance"]) == by_id([older, newer])
    latest = landed(
        session, export(session, url, [("_type", "Patient"), ("includeAssociatedData", "LatestProvenanceResources")])
    )
    assert by_id(latest["Provenance"]) == by_id([newer])
    assert "Provenance" not in landed(session, export(session, url, [("_type", "Patient")]))
    # Patient level without _type: the compartment's Provenance comes along (Bulk Data SHALL).
    patient_level = landed(session, export(session, f"{server.fhir_base}/Patient/$export"))
    assert by_id(patient_level["Provenance"]) == by_id([older, newer])

    narrow = smart_client_factory(server=server, scope="system/Patient.read", set_connection=False).session()
    refused = kickoff(narrow, url, [("_type", "Patient"), ("includeAssociatedData", "LatestProvenanceResources")])
    assert refused.status_code == 403
    assert "Provenance" in refused.json()["issue"][0]["diagnostics"]
