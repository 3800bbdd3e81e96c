from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from airflow_provider_smart.fhir.bulk import ExportRequest, ExportRequestError, build_kickoff

BASE = "https://ehr.example.org/fhir/"


def test_system_get_with_all_list_parameters_comma_joined() -> None:
    req = ExportRequest.create(
        since="2024-01-01T00:00:00+02:00",
        until=datetime(2024, 2, 1, tzinfo=UTC),
        types=["Patient", "Observation"],
        elements=["id", "meta"],
        type_filters=["Observation?status=final,amended", "Patient?active=true"],
        include_associated_data=["LatestProvenanceResources"],
        organize_output_by="Patient",
        allow_partial_manifests=True,
    )
    kick = build_kickoff(BASE, req)
    assert kick.method == "GET"
    assert kick.url == "https://ehr.example.org/fhir/$export"
    assert kick.json is None
    assert kick.headers == {"Accept": "application/fhir+json", "Prefer": "respond-async"}
    assert kick.params == [
        ("_outputFormat", "application/fhir+ndjson"),
        ("_since", "2023-12-31T22:00:00Z"),
        ("_until", "2024-02-01T00:00:00Z"),
        ("_type", "Patient,Observation"),
        ("_elements", "id,meta"),
        ("includeAssociatedData", "LatestProvenanceResources"),
        # _typeFilter values carry commas of their own: always one parameter per value.
        ("_typeFilter", "Observation?status=final,amended"),
        ("_typeFilter", "Patient?active=true"),
        ("organizeOutputBy", "Patient"),
        ("allowPartialManifests", "true"),
    ]


def test_repeated_type_style_and_lenient_prefer() -> None:
    req = ExportRequest.create(level="patient", types=["Patient", "Condition"], type_style="repeat", lenient=True)
    kick = build_kickoff(BASE, req)
    assert kick.url.endswith("/Patient/$export")
    assert ("_type", "Patient") in kick.params and ("_type", "Condition") in kick.params
    assert kick.headers["Prefer"] == "respond-async, handling=lenient"


def test_group_level_url_and_post_parameters_with_patients() -> None:
    req = ExportRequest.create(
        level="group",
        group_id="g 1",
        patients=["123", "Patient/456"],
        since="2024-03-01T00:00:00Z",
        types=["Patient"],
        allow_partial_manifests=False,
        include_associated_data=["RelevantProvenanceResources"],
    )
    kick = build_kickoff(BASE, req)
    assert kick.method == "POST"
    assert kick.url == "https://ehr.example.org/fhir/Group/g%201/$export"
    assert kick.params == []
    assert kick.headers["Content-Type"] == "application/fhir+json"
    body = kick.json
    assert body is not None and body["resourceType"] == "Parameters"
    params = body["parameter"]
    assert {"name": "_since", "valueInstant": "2024-03-01T00:00:00Z"} in params
    assert {"name": "_type", "valueString": "Patient"} in params
    assert {"name": "allowPartialManifests", "valueBoolean": False} in params
    assert {"name": "includeAssociatedData", "valueCode": "RelevantProvenanceResources"} in params
    refs = [p["valueReference"]["reference"] for p in params if p["name"] == "patient"]
    assert refs == ["Patient/123", "Patient/456"]


def test_post_only_setting_for_system_level() -> None:
    kick = build_kickoff(BASE, ExportRequest.create(method="post", type_filters=["Observation?code=1,2"]))
    assert kick.method == "POST"
    assert kick.json is not None
    assert {"name": "_typeFilter", "valueString": "Observation?code=1,2"} in kick.json["parameter"]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"level": "tenant"}, "level='tenant'"),
        ({"level": "group"}, "needs group_id"),
        ({"level": "system", "group_id": "1"}, "only used with level='group'"),
        ({"level": "group", "group_id": "Group/1"}, "bare id"),
        ({"since": "yesterday"}, "not an ISO 8601"),
        ({"since": datetime(2024, 1, 1)}, "no timezone"),
        ({"type_filters": ["status=active"]}, "ResourceType?search-params"),
        ({"type_filters": ["Obs?a=1,2"], "type_filter_style": "comma"}, "type_filter_style='repeat'"),
        ({"level": "patient", "patients": ["1"], "method": "GET"}, "POST"),
        ({"patients": ["1"]}, "not level='system'"),
        ({"types": ["patient"]}, "not a FHIR resource type"),
        ({"method": "PUT"}, "method='PUT'"),
        ({"type_style": "space"}, "type_style"),
        ({"patients": ["Group/1"], "level": "patient"}, "Patient id"),
    ],
)
def test_bad_input_names_the_problem(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ExportRequestError, match=None) as info:
        ExportRequest.create(**kwargs)  # type: ignore[arg-type]
    assert words in str(info.value)


def test_scope_ignores_the_time_window_and_order() -> None:
    a = ExportRequest.create(types=["A", "B"], since="2024-01-01T00:00:00Z").scope()
    b = ExportRequest.create(types=["B", "A"]).scope()
    assert a == b
    assert ExportRequest.create(types=["A"]).scope() != b


def test_with_since_formats_aware_datetimes() -> None:
    req = ExportRequest.create().with_since(datetime(2024, 5, 1, 12, tzinfo=timezone(timedelta(hours=-5))))
    assert req.since == "2024-05-01T17:00:00Z"
