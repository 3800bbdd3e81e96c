"""run_view beyond the official suite: error messages that name the fix, and the real-data shapes."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_smart.views import ViewError, compile_view, run_view

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "gender": "female",
    "birthDate": "1970-01-02",
    "name": [{"use": "official", "family": "Smith", "given": ["Ann", "B"]}],
}
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "subject": {"reference": "urn:uuid:p1"},
    "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
    "valueQuantity": {"value": 6.1, "unit": "%"},
    "effectiveDateTime": "2020-01-01T10:00:00Z",
}


def _view(*columns: tuple[str, str], resource: str = "Patient", **extra: Any) -> dict[str, Any]:
    return {"resource": resource, "select": [{"column": [{"name": n, "path": p} for n, p in columns]}], **extra}


@pytest.mark.parametrize(
    ("view", "message"),
    [
        ({"select": [{"column": [{"name": "id", "path": "id"}]}]}, "no 'resource'"),
        ({"resource": "Patient"}, "no 'select'"),
        ({"resource": "Patient", "select": []}, "no 'select'"),
        (_view(("1bad", "id")), "must start with a letter"),
        (_view(("id", "id"), ("id", "gender")), "appear more than once"),
        (_view(("id", "name.family.")), "expected a name after '.'"),
        (_view(("id", "name.nosuch()")), "nosuch() is not supported"),
        (_view(("id", "%missing")), "%missing is not defined"),
        (_view(("id", "id"), constant=[{"name": "x"}]), "exactly one value[x]"),
        ({"resource": "Patient", "select": [{"forEach": 1, "column": []}]}, "must be a string"),
        ({"resource": "Patient", "select": [{"colum": []}]}, "unknown key(s) ['colum']"),
    ],
)
def test_invalid_views_name_the_problem(view: dict[str, Any], message: str) -> None:
    with pytest.raises(ViewError) as info:
        compile_view(view)
    assert message in str(info.value)


def test_two_values_in_a_plain_column_say_how_to_fix_it() -> None:
    with pytest.raises(ViewError, match=r"'given' got 2 values.*\"collection\": true"):
        run_view(_view(("given", "name.given")), [PATIENT])


def test_a_complex_element_in_a_column_is_refused() -> None:
    with pytest.raises(ViewError, match="complex element"):
        run_view(_view(("name", "name")), [PATIENT])


def test_where_must_give_a_boolean() -> None:
    with pytest.raises(ViewError, match="must give true or false"):
        run_view(_view(("id", "id"), where=[{"path": "gender"}]), [PATIENT])


def test_observation_shape_from_real_exports() -> None:
    view = _view(
        ("id", "getResourceKey()"),
        ("patient_id", "subject.getReferenceKey(Patient)"),
        ("code", "code.coding.where(system = 'http://loinc.org').code.first()"),
        ("value", "value.ofType(Quantity).value"),
        ("unit", "value.ofType(Quantity).unit"),
        ("effective", "effective.ofType(dateTime)"),
        ("value_string", "value.ofType(string)"),
        resource="Observation",
    )
    rows = run_view(view, [PATIENT, OBSERVATION])
    assert rows == [
        {
            "id": "o1",
            "patient_id": "p1",
            "code": "4548-4",
            "value": 6.1,
            "unit": "%",
            "effective": "2020-01-01T10:00:00Z",
            "value_string": None,
        }
    ]


@pytest.mark.parametrize(
    ("reference", "wanted", "key"),
    [
        ("Patient/p1", None, "p1"),
        ("Patient/p1", "Patient", "p1"),
        ("Patient/p1", "Group", None),
        ("https://ehr.example/fhir/Patient/p1/_history/3", "Patient", "p1"),
        ("urn:uuid:p1", "Patient", "p1"),
        ("", None, None),
    ],
)
def test_reference_keys(reference: str, wanted: str | None, key: str | None) -> None:
    path = "link.other.getReferenceKey()" if wanted is None else f"link.other.getReferenceKey({wanted})"
    resource = {**PATIENT, "link": [{"other": {"reference": reference}}]}
    assert run_view(_view(("key", path)), [resource]) == [{"key": key}]


def test_expressions_compile_once_and_run_many_times() -> None:
    plan = compile_view(_view(("id", "id"), ("family", "name.where(use = 'official').family")))
    assert plan.column_names == ["id", "family"]
    people = [{**PATIENT, "id": f"p{i}"} for i in range(50)]
    rows = run_view(_view(("id", "id"), ("family", "name.where(use = 'official').family")), people)
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(50)]
    assert {r["family"] for r in rows} == {"Smith"}
