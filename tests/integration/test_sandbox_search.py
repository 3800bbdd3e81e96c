"""FHIR read and search on the sandbox over real HTTP: paging under change, filters, _include, strictness."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest
import requests

from airflow_provider_smart.sandbox.search import date_range
from airflow_provider_smart.sandbox.store import to_micros
from tests.conftest import SHARED_FIXTURES

pytestmark = pytest.mark.integration


def _pages(session: requests.Session, url: str, params: Any = None, between=None) -> list[dict[str, Any]]:
    bundles = []
    response = session.get(url, params=params, timeout=30)
    while True:
        assert response.status_code == 200, response.text
        bundle = response.json()
        bundles.append(bundle)
        if between is not None:
            between(len(bundles))
        next_url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        if next_url is None:
            return bundles
        response = session.get(next_url, timeout=30)


def _matches(bundles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["resource"] for b in bundles for e in b.get("entry", []) if e["search"]["mode"] == "match"]


def test_read_returns_the_stored_resource(sandbox, smart_client):
    session = smart_client.session()
    response = session.get(f"{sandbox.fhir_base}/Patient/pat-3", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.json() == sandbox.state.store.get("Patient", "pat-3")
    assert response.headers["etag"] == 'W/"1"'
    missing = session.get(f"{sandbox.fhir_base}/Patient/nope", timeout=10)
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
    unknown_type = session.get(f"{sandbox.fhir_base}/NotAType/x", timeout=10)
    assert unknown_type.status_code == 404


def test_paging_returns_every_match_once_with_a_total(sandbox, smart_client):
    bundles = _pages(smart_client.session(), f"{sandbox.fhir_base}/Observation", {"_count": 7})
    ids = [r["id"] for r in _matches(bundles)]
    expected = [r["id"] for r in sandbox.state.store.iter_type("Observation")]
    assert ids == expected and len(bundles) > 3
    assert all(b["total"] == len(expected) and b["type"] == "searchset" for b in bundles)
    assert all(len(b["entry"]) == 7 for b in bundles[:-1])
    entry = bundles[0]["entry"][0]
    assert entry["fullUrl"] == f"{sandbox.fhir_base}/Observation/{entry['resource']['id']}"


def test_paging_stays_exact_while_data_changes(fresh_sandbox, smart_client_factory):
    client = smart_client_factory(server=fresh_sandbox)
    store = fresh_sandbox.state.store
    before = {r["id"]: r for r in store.iter_type("Observation")}
    order = list(before)

    def change(pages_seen: int) -> None:
        if pages_seen != 1:
            return
        first_id, last_id = order[0], order[-1]  # one already sent, one not yet sent
        for rid in (first_id, last_id):
            updated = copy.deepcopy(store.get("Observation", rid))
            updated["status"] = "corrected"
            store.put(updated)
        added = copy.deepcopy(store.get("Observation", order[3]))
        added["id"] = "obs-added-mid-paging"
        store.put(added)

    bundles = _pages(client.session(), f"{fresh_sandbox.fhir_base}/Observation", {"_count": 10}, between=change)
    got = _matches(bundles)
    assert Counter(r["id"] for r in got) == Counter(order)  # each once, nothing added, nothing lost
    assert all(r == before[r["id"]] for r in got)  # in the version current when the search began
    again = _matches(_pages(client.session(), f"{fresh_sandbox.fhir_base}/Observation", {"_count": 10}))
    latest = {r["id"]: r for r in again}
    assert "obs-added-mid-paging" in latest
    assert latest[order[-1]]["status"] == "corrected" and latest[order[-1]]["meta"]["versionId"] == "2"
    assert [r["id"] for r in again][-3:] == [order[0], order[-1], "obs-added-mid-paging"]


@pytest.mark.parametrize("style", ["relative", "path", "absolute"])
def test_next_link_styles(sandbox, smart_client, style):
    sandbox.state.config.next_links = style
    try:
        session = smart_client.session()
        bundle = session.get(f"{sandbox.fhir_base}/Patient", params={"_count": 3}, timeout=10).json()
        link = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
        prefix = {"relative": "Patient?", "path": "/fhir/Patient?", "absolute": f"{sandbox.fhir_base}/Patient?"}
        assert link.startswith(prefix[style])
        resolved = {"relative": f"{sandbox.fhir_base}/{link}", "path": f"{sandbox.base_url}{link}"}.get(style, link)
        assert session.get(resolved, timeout=10).status_code == 200
    finally:
        sandbox.state.config.next_links = "absolute"


def test_code_search_for_hba1c(sandbox, smart_client):
    session = smart_client.session()
    expected = {
        r["id"]
        for r in sandbox.state.store.iter_type("Observation")
        if any(c["code"] == "4548-4" for c in r["code"]["coding"])
    }
    assert expected
    for code in ("http://loinc.org|4548-4", "4548-4", "http://loinc.org|4548-4,http://loinc.org|none"):
        bundles = _pages(session, f"{sandbox.fhir_base}/Observation", {"code": code, "_count": 4})
        assert {r["id"] for r in _matches(bundles)} == expected
    other_system = session.get(f"{sandbox.fhir_base}/Observation", params={"code": "http://snomed.info/sct|4548-4"})
    assert other_system.json()["total"] == 0


def test_last_updated_windows_split_cleanly(sandbox, smart_client):
    session = smart_client.session()
    all_obs = list(sandbox.state.store.iter_type("Observation"))
    stamps = sorted(r["meta"]["lastUpdated"] for r in all_obs)
    middle = stamps[len(stamps) // 2]
    first = _matches(_pages(session, f"{sandbox.fhir_base}/Observation", [("_lastUpdated", f"lt{middle}")]))
    second = _matches(_pages(session, f"{sandbox.fhir_base}/Observation", [("_lastUpdated", f"ge{middle}")]))
    assert {r["id"] for r in first}.isdisjoint({r["id"] for r in second})
    assert len(first) + len(second) == len(all_obs) and first and second
    assert all(r["meta"]["lastUpdated"] < middle for r in first)
    # Repeated parameters are ANDed: a closed window.
    low, high = stamps[3], stamps[10]
    window = _matches(
        _pages(
            session, f"{sandbox.fhir_base}/Observation", [("_lastUpdated", f"gt{low}"), ("_lastUpdated", f"le{high}")]
        )
    )
    assert [r["meta"]["lastUpdated"] for r in window] == stamps[4:11]
    day = stamps[0][:10]
    same_day = _matches(_pages(session, f"{sandbox.fhir_base}/Observation", {"_lastUpdated": day}))
    assert {r["id"] for r in same_day} == {r["id"] for r in all_obs if r["meta"]["lastUpdated"].startswith(day)}


def test_patient_subject_date_status_and_id(sandbox, smart_client):
    session = smart_client.session()
    base = sandbox.fhir_base
    for params in ({"patient": "pat-2"}, {"patient": "Patient/pat-2"}, {"subject": "Patient/pat-2"}):
        found = _matches(_pages(session, f"{base}/Observation", params))
        assert found and all(r["subject"]["reference"] == "Patient/pat-2" for r in found)
    since = _matches(_pages(session, f"{base}/Encounter", {"date": "ge2020-01-01"}))
    everything = list(sandbox.state.store.iter_type("Encounter"))
    assert {r["id"] for r in since} == {r["id"] for r in everything if r["period"]["end"] >= "2020-01-01"}
    amended = _matches(_pages(session, f"{base}/Observation", {"status": "amended"}))
    assert amended and all(r["status"] == "amended" for r in amended)
    by_id = _matches(_pages(session, f"{base}/Patient", {"_id": "pat-1,pat-4"}))
    assert sorted(r["id"] for r in by_id) == ["pat-1", "pat-4"]


def test_post_search_matches_get(sandbox, smart_client):
    session = smart_client.session()
    get = _matches(_pages(session, f"{sandbox.fhir_base}/Observation", {"code": "4548-4", "_count": 3}))
    response = session.post(f"{sandbox.fhir_base}/Observation/_search", data={"code": "4548-4", "_count": "3"})
    bundles = [response.json()]
    next_url = next((link["url"] for link in bundles[0]["link"] if link["relation"] == "next"), None)
    bundles += _pages(session, next_url) if next_url else []
    assert [r["id"] for r in _matches(bundles)] == [r["id"] for r in get]
    as_json = session.post(f"{sandbox.fhir_base}/Observation/_search", json={"code": "4548-4"}, timeout=10)
    assert as_json.status_code == 400


def test_include_adds_referenced_resources_once(sandbox, smart_client):
    session = smart_client.session()
    bundles = _pages(
        session,
        f"{sandbox.fhir_base}/Observation",
        [("code", "4548-4"), ("_include", "Observation:patient"), ("_include", "Observation:encounter"), ("_count", 5)],
    )
    for bundle in bundles:
        matches = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
        included = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
        wanted = {r["subject"]["reference"] for r in matches} | {r["encounter"]["reference"] for r in matches}
        got = [f"{r['resourceType']}/{r['id']}" for r in included]
        assert sorted(got) == sorted(wanted)  # every reference once per page, nothing else
    subject = session.get(
        f"{sandbox.fhir_base}/Observation", params={"_include": "Observation:subject", "_count": 2}, timeout=10
    ).json()
    assert any(
        e["search"]["mode"] == "include" and e["resource"]["resourceType"] == "Patient" for e in subject["entry"]
    )


def test_include_leaves_out_types_the_token_cannot_read(sandbox, smart_client_factory):
    client = smart_client_factory(scope="system/Observation.read")
    bundle = (
        client.session()
        .get(f"{sandbox.fhir_base}/Observation", params={"_include": "Observation:patient"}, timeout=10)
        .json()
    )
    assert bundle["entry"] and all(e["search"]["mode"] == "match" for e in bundle["entry"])


def test_scope_enforcement_on_search(sandbox, smart_client_factory):
    client = smart_client_factory(scope="system/Observation.rs")
    session = client.session()
    assert session.get(f"{sandbox.fhir_base}/Observation", timeout=10).status_code == 200
    forbidden = session.get(f"{sandbox.fhir_base}/Condition", timeout=10)
    assert forbidden.status_code == 403 and "Condition" in forbidden.json()["issue"][0]["diagnostics"]
    read_only = smart_client_factory(scope="system/Observation.r").session()
    assert read_only.get(f"{sandbox.fhir_base}/Observation/obs-0-0", timeout=10).status_code == 200
    assert read_only.get(f"{sandbox.fhir_base}/Observation", timeout=10).status_code == 403


def test_unknown_parameters_strict_and_lenient(sandbox, smart_client):
    session = smart_client.session()
    strict = session.get(f"{sandbox.fhir_base}/Observation", params={"bogus": "1"}, timeout=10)
    assert strict.status_code == 400
    assert "bogus" in strict.json()["issue"][0]["diagnostics"]
    lenient = session.get(
        f"{sandbox.fhir_base}/Observation",
        params={"bogus": "1", "_count": 5},
        headers={"Prefer": "handling=lenient"},
        timeout=10,
    ).json()
    outcome = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcome) == 1 and "bogus" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert lenient["total"] == sandbox.state.store.count("Observation")


@pytest.mark.parametrize(
    "params",
    [
        {"_count": "many"},
        {"date": "yesterday"},
        {"_lastUpdated": "ge2024-13-01"},
        {"_page_token": "garbage"},
        {"_total": "maybe"},
        {"_sort": "-date"},
        {"_include": "Observation:nothing"},
    ],
)
def test_bad_search_requests_get_an_operation_outcome(sandbox, smart_client, params):
    response = smart_client.session().get(f"{sandbox.fhir_base}/Observation", params=params, timeout=10)
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_total_and_count_zero(sandbox, smart_client):
    session = smart_client.session()
    none = session.get(f"{sandbox.fhir_base}/Patient", params={"_total": "none", "_count": 2}, timeout=10).json()
    assert "total" not in none and len(none["entry"]) == 2
    zero = session.get(f"{sandbox.fhir_base}/Patient", params={"_count": 0}, timeout=10).json()
    assert zero["total"] == 10 and zero["entry"] == [] and [link["relation"] for link in zero["link"]] == ["self"]
    sorted_ok = session.get(f"{sandbox.fhir_base}/Patient", params={"_sort": "_lastUpdated"}, timeout=10)
    assert sorted_ok.status_code == 200


def test_date_range_precision():
    assert date_range("2024") == (to_micros("2024-01-01T00:00:00Z"), to_micros("2025-01-01T00:00:00Z"))
    assert date_range("2024-02") == (to_micros("2024-02-01T00:00:00Z"), to_micros("2024-03-01T00:00:00Z"))
    start, end = date_range("2024-02-03T04:05:06+02:00")
    assert start == to_micros("2024-02-03T02:05:06Z") and end - start == 1_000_000


SYNTHEA = SHARED_FIXTURES / "synthea-100"


@pytest.mark.skipif(not SYNTHEA.is_dir(), reason="the synthea-100 fixture is not available")
def test_synthea_fixture_urn_uuid_references(sandbox_factory, smart_client_factory):
    from airflow_provider_smart.sandbox.state import SandboxConfig

    server = sandbox_factory(SandboxConfig(patients=0, ndjson_dirs=[SYNTHEA]))
    store = server.state.store
    assert store.count("Observation") == 16315 and store.count("Patient") == 100
    group = next(store.iter_type("Group"))
    members = store.group_member_ids(group["id"])
    assert members and all(store.get("Patient", pid) is not None for pid in members)
    client = smart_client_factory(server=server)
    session = client.session()
    # Resources without meta.lastUpdated answer _lastUpdated as of the load time.
    loaded = session.get(f"{server.fhir_base}/Patient", params={"_lastUpdated": "ge2000-01-01", "_count": 0}).json()
    assert loaded["total"] == 100
    bundle = session.get(
        f"{server.fhir_base}/Observation", params={"_include": "Observation:patient", "_count": 50}, timeout=30
    ).json()
    assert any(e["search"]["mode"] == "include" for e in bundle["entry"])


def test_patient_search_uses_the_compartment_and_agrees_with_a_scan(sandbox, smart_client):
    store = sandbox.state.store
    for resource_type in ("Observation", "Immunization", "Encounter"):
        scanned = [r["id"] for r in store.iter_type(resource_type) if store.patient_refs(r) & {"pat-3", "pat-7"}]
        direct = [r["id"] for _, r in store.iter_entries(resource_type, patient_ids={"pat-3", "pat-7"})]
        assert direct == scanned and direct
    session = smart_client.session()
    found = _matches(
        _pages(session, f"{sandbox.fhir_base}/Observation", {"patient": "pat-3,Patient/pat-7", "_count": 4})
    )
    assert sorted(r["id"] for r in found) == sorted(
        r["id"] for r in store.iter_type("Observation") if store.patient_refs(r) & {"pat-3", "pat-7"}
    )


def test_total_is_left_out_of_expensive_filtered_searches(sandbox, smart_client, monkeypatch):
    from airflow_provider_smart.sandbox import fhir_rest

    session = smart_client.session()
    monkeypatch.setattr(fhir_rest, "TOTAL_SCAN_LIMIT", 5)
    filtered = session.get(f"{sandbox.fhir_base}/Observation", params={"status": "final", "_count": 2}).json()
    assert "total" not in filtered
    plain = session.get(f"{sandbox.fhir_base}/Observation", params={"_count": 2}).json()
    assert plain["total"] == sandbox.state.store.count("Observation")
    asked = session.get(
        f"{sandbox.fhir_base}/Observation", params={"status": "final", "_count": 2, "_total": "accurate"}
    ).json()
    assert asked["total"] == sum(1 for r in sandbox.state.store.iter_type("Observation") if r["status"] == "final")
