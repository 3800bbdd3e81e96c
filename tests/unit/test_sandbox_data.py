"""The sandbox's generator, store and scope rules (in-process, no HTTP)."""

from __future__ import annotations

import copy
import gzip
import json
from datetime import UTC, datetime

import pytest

from airflow_provider_smart.sandbox.generator import SyntheticDataset, load_ndjson_dir
from airflow_provider_smart.sandbox.scopes import ScopeError, allows, grant_scopes
from airflow_provider_smart.sandbox.store import ResourceStore, reference_id, to_micros


def _all(dataset: SyntheticDataset) -> dict[str, list[dict]]:
    return {t: [r for _, r in dataset.iter_entries(t)] for t in dataset.types()}


def test_same_seed_same_data_other_seed_other_data():
    first, second, other = (
        _all(SyntheticDataset(25, seed=7)),
        _all(SyntheticDataset(25, seed=7)),
        _all(SyntheticDataset(25, seed=8)),
    )
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert json.dumps(first, sort_keys=True) != json.dumps(other, sort_keys=True)


def test_references_are_consistent_and_keys_ordered():
    dataset = SyntheticDataset(40, seed=3)
    store = ResourceStore()
    store.add_source(dataset)
    ids = {(t, r["id"]) for t in dataset.types() for _, r in dataset.iter_entries(t)}
    checked = 0
    for resource_type in dataset.types():
        keys = [key for key, _ in dataset.iter_entries(resource_type)]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert dataset.count(resource_type) == len(keys) > 0
        for _, resource in dataset.iter_entries(resource_type):
            assert dataset.get(resource_type, resource["id"]) == resource
            for text in _references(resource):
                target_type, target_id = text.split("/")
                assert (target_type, target_id) in ids, f"{resource['id']} -> {text}"
                checked += 1
    assert checked > 1000
    members = store.group_member_ids("grp-diabetes")
    assert members and all(store.get("Patient", pid) for pid in members)
    hba1c = [r for r in store.iter_type("Observation") if r["code"]["coding"][0]["code"] == "4548-4"]
    assert {r["subject"]["reference"][len("Patient/") :] for r in hba1c} == set(members)


def _references(value: object) -> list[str]:
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [ref for item in value.values() for ref in _references(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in _references(item)]
    return []


def test_generated_content_has_the_shapes_tests_need():
    dataset = SyntheticDataset(30, seed=42)
    observations = [r for _, r in dataset.iter_entries("Observation")]
    values = [r["valueQuantity"]["value"] for r in observations if "valueQuantity" in r]
    assert any(isinstance(v, int) for v in values) and any(isinstance(v, float) for v in values)
    assert any("valueCodeableConcept" in r for r in observations)
    assert any("valueString" in r and "_valueString" in r for r in observations)
    assert any("component" in r for r in observations)
    patients = [r for _, r in dataset.iter_entries("Patient")]
    assert any("_birthDate" in p for p in patients)

    def depth(extensions: list[dict]) -> int:
        return 1 + max((depth(e["extension"]) for e in extensions if "extension" in e), default=0)

    assert max(depth(p["extension"]) for p in patients) == 3
    stamps = sorted(r["meta"]["lastUpdated"] for r in observations)
    assert stamps[0][:4] == "2023" and stamps[-1][:4] == "2024"  # spread over the two-year span


def test_reads_of_shared_resources_and_unknown_ids():
    dataset = SyntheticDataset(120, seed=5)
    practitioners = [r for _, r in dataset.iter_entries("Practitioner")]
    assert len(practitioners) == dataset.count("Practitioner") == 6
    assert all(dataset.get("Practitioner", p["id"]) == p for p in practitioners)
    assert dataset.get("Group", "grp-all")["quantity"] == 120
    for resource_type, resource_id in [
        ("Practitioner", "prac-6"),
        ("Practitioner", "prac-01"),
        ("Organization", "prac-0"),
        ("Group", "grp-none"),
        ("Patient", "pat-120"),
        ("Patient", "pat-x"),
        ("Observation", "obs-1-999"),
    ]:
        assert dataset.get(resource_type, resource_id) is None
    assert dataset.type_of("enc-3-0") == "Encounter" and dataset.type_of("zzz-1") is None


def test_lazy_iteration_starts_at_a_key():
    dataset = SyntheticDataset(200, seed=1)
    entries = list(dataset.iter_entries("Encounter"))
    middle = entries[len(entries) // 2][0][0]
    assert list(dataset.iter_entries("Encounter", middle)) == [e for e in entries if e[0][0] >= middle]


def test_store_versions_snapshots_and_deletions():
    store = ResourceStore(load_time=datetime(2024, 1, 1, tzinfo=UTC))
    store.load([{"resourceType": "Patient", "id": "a"}, {"resourceType": "Patient", "id": "b"}])
    store.add_source(SyntheticDataset(3, seed=1))
    snapshot = store.now()
    assert store.count("Patient") == 5
    assert (store.get("Patient", "a") or {}).get("meta") is None  # loaded as is
    updated = store.put({**copy.deepcopy(store.get("Patient", "pat-0")), "active": False})
    assert updated["meta"]["versionId"] == "2"
    assert to_micros(updated["meta"]["lastUpdated"]) > snapshot
    assert store.count("Patient") == 5
    assert [r["id"] for r in store.iter_type("Patient")][-1] == "pat-0"  # moved to the end
    old_view = {r["id"]: r for r in store.iter_type("Patient", as_of=snapshot)}
    assert old_view["pat-0"]["meta"]["versionId"] == "1" and len(old_view) == 5
    # Resources without lastUpdated answer _since as of the load time.
    since = [r["id"] for r in store.iter_type("Patient", since="2023-12-31T00:00:00Z")]
    assert {"a", "b"} <= set(since)
    assert store.delete("Patient", "a") and not store.delete("Patient", "a")
    assert store.get("Patient", "a") is None and store.count("Patient") == 4
    assert "a" in {r["id"] for r in store.iter_type("Patient", as_of=snapshot)}
    assert [rid for _, rid, _ in store.iter_deletions("Patient")] == ["a"]
    with pytest.raises(ValueError, match="resourceType"):
        store.put({"id": "x"})


def test_store_resolves_every_reference_form():
    store = ResourceStore()
    store.load([{"resourceType": "Patient", "id": "u1"}, {"resourceType": "Observation", "id": "o1"}])
    assert store.resolve("Patient/u1")["id"] == "u1"
    assert store.resolve("urn:uuid:u1")["resourceType"] == "Patient"
    assert store.resolve("http://example.org/fhir/Patient/u1/_history/3")["id"] == "u1"
    assert store.resolve("urn:uuid:o1", "Patient") is None
    assert reference_id("Practitioner/x", "Patient") is None
    obs = {"resourceType": "Observation", "id": "o2", "subject": {"reference": "urn:uuid:u1"}}
    assert store.patient_refs(obs) == {"u1"}


def test_load_ndjson_dir_reads_gzip_and_plain(tmp_path):
    with gzip.open(tmp_path / "Patient.ndjson.gz", "wt") as handle:
        handle.write(json.dumps({"resourceType": "Patient", "id": "p"}) + "\n\n")
    (tmp_path / "Observation.ndjson").write_text(json.dumps({"resourceType": "Observation", "id": "o"}) + "\n")
    (tmp_path / "notes.txt").write_text("ignored")
    assert sorted(r["id"] for r in load_ndjson_dir(tmp_path)) == ["o", "p"]
    (tmp_path / "Bad.ndjson").write_text('{"resourceType": "Patient"}\n')
    with pytest.raises(ValueError, match=r"Bad.ndjson line 1"):
        list(load_ndjson_dir(tmp_path))
    with pytest.raises(ValueError, match="not a directory"):
        list(load_ndjson_dir(tmp_path / "missing"))


TYPES = ["Observation", "Patient", "Condition"]


@pytest.mark.parametrize(
    ("requested", "registered", "granted"),
    [
        ("system/*.read", "system/*.read", [f"system/{t}.read" for t in sorted(TYPES)]),
        ("system/*.rs", "system/*.read", [f"system/{t}.rs" for t in sorted(TYPES)]),
        ("system/Observation.read", "system/*.rs", ["system/Observation.read"]),
        (
            "system/*.read",
            "system/Observation.read system/Patient.rs",
            ["system/Observation.read", "system/Patient.read"],
        ),
        ("system/*.cruds", "system/*.read", [f"system/{t}.rs" for t in sorted(TYPES)]),
        ("system/Patient.r", "system/*.*", ["system/Patient.r"]),
    ],
)
def test_scope_grants(requested, registered, granted):
    assert grant_scopes(requested.split(), registered.split(), TYPES) == granted


@pytest.mark.parametrize(
    ("requested", "registered", "message"),
    [
        ("system/Condition.read", "system/Observation.read", "outside"),
        ("system/*.write", "system/*.read", "outside"),
        ("patient/*.read", "patient/*.read", "system/ scopes only"),
        ("system/Observation.rs?category=lab", "system/*.read", "granular"),
        ("system/Observation.sr", "system/*.read", "malformed"),
        ("openid", "system/*.read", "outside"),
    ],
)
def test_scope_refusals(requested, registered, message):
    with pytest.raises(ScopeError, match=message):
        grant_scopes(requested.split(), registered.split(), TYPES)


def test_allows_reads_and_searches():
    assert allows(["system/Observation.read"], "Observation", "search")
    assert allows(["system/Observation.r"], "Observation", "read")
    assert not allows(["system/Observation.r"], "Observation", "search")
    assert not allows(["system/Observation.read"], "Patient", "read")
    assert allows(["system/*.rs"], "Patient", "search")
