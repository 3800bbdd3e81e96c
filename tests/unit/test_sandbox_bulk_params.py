"""Kick-off parameter checks of the sandbox's Bulk Data export (strict and lenient)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from airflow_provider_smart.sandbox.bulk_filters import ElementSelection, apply_elements, parse_type_filter
from airflow_provider_smart.sandbox.bulk_params import KickoffError, parameters_from_resource, parse_kickoff

TYPES = ["Patient", "Observation", "Condition", "Organization", "Provenance"]
COMPARTMENT = ["Patient", "Observation", "Condition"]


def kickoff(pairs, *, level="system", method="GET", lenient=False, group_id=None):
    return parse_kickoff(
        pairs,
        level=level,
        request_url="http://x/fhir/$export",
        method=method,
        supported_types=TYPES,
        compartment_types=COMPARTMENT,
        lenient=lenient,
        group_id=group_id,
    )


def test_defaults():
    request = kickoff([])
    assert request.types is None
    assert request.since is None
    assert not request.allow_partial_manifests
    assert request.warnings == []


@pytest.mark.parametrize("fmt", ["application/fhir+ndjson", "application/ndjson", "ndjson"])
def test_output_formats_accepted(fmt):
    assert kickoff([("_outputFormat", fmt)]).warnings == []


def test_unsupported_output_format_strict_and_lenient():
    with pytest.raises(KickoffError) as info:
        kickoff([("_outputFormat", "text/csv")])
    assert info.value.status == 400
    assert "text/csv" in info.value.issues[0]["diagnostics"]
    request = kickoff([("_outputFormat", "text/csv")], lenient=True)
    assert request.warnings[0]["severity"] == "warning"
    assert "text/csv" in request.warnings[0]["diagnostics"]


def test_type_comma_list_and_repeated_are_merged():
    request = kickoff([("_type", "Patient,Observation"), ("_type", "Condition"), ("_type", "Patient")])
    assert request.types == ["Patient", "Observation", "Condition"]


def test_unknown_type_strict_400_lenient_warning():
    with pytest.raises(KickoffError):
        kickoff([("_type", "Patient,Spaceship")])
    request = kickoff([("_type", "Patient,Spaceship")], lenient=True)
    assert request.types == ["Patient"]
    assert "Spaceship" in request.warnings[0]["diagnostics"]


def test_type_outside_compartment_refused_at_patient_level():
    with pytest.raises(KickoffError) as info:
        kickoff([("_type", "Organization")], level="patient")
    assert "Patient compartment" in info.value.issues[0]["diagnostics"]


def test_since_and_until():
    request = kickoff([("_since", "2024-01-01T00:00:00Z"), ("_until", "2024-02-01T00:00:00+00:00")])
    assert request.since == datetime(2024, 1, 1, tzinfo=UTC)
    assert request.until == datetime(2024, 2, 1, tzinfo=UTC)
    with pytest.raises(KickoffError, match="FHIR instant"):
        kickoff([("_since", "2024-01-01")])
    with pytest.raises(KickoffError, match="_until must be later"):
        kickoff([("_since", "2024-02-01T00:00:00Z"), ("_until", "2024-01-01T00:00:00Z")])


def test_unknown_parameter():
    with pytest.raises(KickoffError, match="unknown kick-off parameter"):
        kickoff([("_count", "10")])
    assert kickoff([("_count", "10")], lenient=True).warnings


def test_patient_parameter_only_in_post():
    with pytest.raises(KickoffError, match="POST"):
        kickoff([("patient", "Patient/1")], level="patient")
    request = kickoff([("patient", "Patient/1"), ("patient", "Patient/2")], level="patient", method="POST")
    assert request.patients == ["1", "2"]
    with pytest.raises(KickoffError, match="system-level"):
        kickoff([("patient", "Patient/1")], method="POST")


def test_type_filter_repeated_or_and_comma_inside_values():
    request = kickoff(
        [
            ("_type", "Observation,Condition"),
            ("_typeFilter", "Observation?status=final,amended"),
            ("_typeFilter", "Observation?code=http://loinc.org|1234-5"),
        ]
    )
    queries = request.type_filters["Observation"]
    assert len(queries) == 2
    final = {"resourceType": "Observation", "status": "final"}
    amended = {"resourceType": "Observation", "status": "amended"}
    coded = {
        "resourceType": "Observation",
        "status": "preliminary",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]},
    }
    other = {"resourceType": "Observation", "status": "preliminary"}
    assert [any(q.matches(r) for q in queries) for r in (final, amended, coded, other)] == [True, True, True, False]


def test_type_filter_comma_joined_queries_in_one_value():
    request = kickoff([("_typeFilter", "Observation?status=final,Condition?code=44054006")])
    assert set(request.type_filters) == {"Observation", "Condition"}


def test_type_filter_unsupported_parameter():
    with pytest.raises(KickoffError, match="not supported"):
        kickoff([("_typeFilter", "Observation?value-quantity=5")])
    with pytest.raises(KickoffError, match="search result parameter"):
        kickoff([("_typeFilter", "Observation?_sort=date")])
    request = kickoff([("_typeFilter", "Observation?value-quantity=5")], lenient=True)
    assert request.type_filters == {}
    assert request.warnings


def test_type_filter_for_type_not_in_type_list():
    with pytest.raises(KickoffError, match="does not match any _type"):
        kickoff([("_type", "Patient"), ("_typeFilter", "Observation?status=final")])


def test_last_updated_filter():
    query = parse_type_filter("Observation?_lastUpdated=gt2024-01-01T00:00:00Z", TYPES)
    assert query.matches({"meta": {"lastUpdated": "2024-01-02T00:00:00Z"}})
    assert not query.matches({"meta": {"lastUpdated": "2023-12-31T00:00:00Z"}})
    assert not query.matches({})


def test_include_associated_data_and_organize_and_partial():
    request = kickoff(
        [
            ("includeAssociatedData", "LatestProvenanceResources"),
            ("organizeOutputBy", "Patient"),
            ("allowPartialManifests", "true"),
        ]
    )
    assert request.include_associated == ["LatestProvenanceResources"]
    assert request.organize_output_by == "Patient"
    assert request.allow_partial_manifests
    with pytest.raises(KickoffError):
        kickoff([("includeAssociatedData", "_custom")])
    with pytest.raises(KickoffError):
        kickoff([("organizeOutputBy", "Encounter")])
    with pytest.raises(KickoffError):
        kickoff([("allowPartialManifests", "maybe")])


def test_parameters_resource():
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueString": "Patient"},
            {"name": "_since", "valueInstant": "2024-01-01T00:00:00Z"},
            {"name": "patient", "valueReference": {"reference": "Patient/7"}},
            {"name": "allowPartialManifests", "valueBoolean": True},
        ],
    }
    assert parameters_from_resource(body) == [
        ("_type", "Patient"),
        ("_since", "2024-01-01T00:00:00Z"),
        ("patient", "Patient/7"),
        ("allowPartialManifests", "true"),
    ]
    with pytest.raises(KickoffError, match="Parameters"):
        parameters_from_resource({"resourceType": "Bundle"})
    with pytest.raises(KickoffError, match="exactly one"):
        parameters_from_resource({"resourceType": "Parameters", "parameter": [{"name": "_type"}]})


def test_elements_subset_keeps_mandatory_and_tags():
    selection = kickoff([("_elements", "Patient.birthDate,id")]).elements
    assert isinstance(selection, ElementSelection)
    patient = {
        "resourceType": "Patient",
        "id": "1",
        "birthDate": "2000-01-01",
        "gender": "male",
        "meta": {"versionId": "1"},
    }
    subset = apply_elements(patient, selection)
    assert set(subset) == {"resourceType", "id", "birthDate", "meta"}
    assert subset["meta"]["tag"][-1]["code"] == "SUBSETTED"
    obs = {"resourceType": "Observation", "id": "o", "status": "final", "code": {}, "valueQuantity": {}, "subject": {}}
    assert set(apply_elements(obs, selection)) == {"resourceType", "id", "status", "code", "meta"}
    assert patient["gender"] == "male"  # the stored resource is untouched
