"""Declared column types become Arrow types; a value that does not fit says which column and how to fix it."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pyarrow as pa
import pytest

from airflow_provider_smart.views import ViewError, compile_view, iter_rows
from airflow_provider_smart.views.arrow import BatchBuilder

VIEW = {
    "name": "typed",
    "resource": "Patient",
    "select": [
        {
            "column": [
                {"name": "id", "path": "id", "type": "id"},
                {"name": "active", "path": "active", "type": "boolean"},
                {"name": "born", "path": "birthDate", "type": "date"},
                {"name": "seen", "path": "meta.lastUpdated", "type": "instant"},
                {"name": "births", "path": "multipleBirth.ofType(integer)", "type": "integer"},
                {"name": "score", "path": "extension.value.ofType(decimal)", "type": "decimal"},
                {"name": "given", "path": "name.given", "type": "string", "collection": True},
                {"name": "born_at", "path": "birthDate", "type": "dateTime"},
            ]
        }
    ],
}
PATIENTS = [
    {
        "resourceType": "Patient",
        "id": "a",
        "active": True,
        "birthDate": "1970-06",
        "meta": {"lastUpdated": "2024-01-02T03:04:05.5+02:00"},
        "multipleBirthInteger": 2,
        "extension": [{"url": "x", "valueDecimal": 1.5}],
        "name": [{"given": ["Ann", "Bo"]}],
    },
    {"resourceType": "Patient", "id": "b"},
]


def test_declared_types_become_arrow_types() -> None:
    plan = compile_view(VIEW)
    batch = BatchBuilder(plan).batch(list(iter_rows(plan, PATIENTS)))
    types = {f.name: f.type for f in batch.schema}
    assert types == {
        "id": pa.string(),
        "active": pa.bool_(),
        "born": pa.date32(),
        "seen": pa.timestamp("us", tz="UTC"),
        "births": pa.int64(),
        "score": pa.float64(),
        "given": pa.list_(pa.string()),
        "born_at": pa.timestamp("us", tz="UTC"),
    }
    rows = batch.to_pylist()
    assert rows[0]["born"] == date(1970, 6, 1)  # a partial date is stored as its first day
    assert rows[0]["seen"] == datetime(2024, 1, 2, 1, 4, 5, 500000, tzinfo=UTC)
    # ... and a partial dateTime as its first instant; without a zone it is read as UTC, as DuckDB reads it.
    assert rows[0]["born_at"] == datetime(1970, 6, 1, tzinfo=UTC)
    assert rows[0]["given"] == ["Ann", "Bo"] and rows[0]["births"] == 2 and rows[0]["score"] == 1.5
    assert rows[1] == {k: None for k in types} | {"id": "b", "given": []}
    assert batch.schema.field("born").metadata[b"fhir.type"] == b"date"


def test_a_value_of_the_wrong_type_names_the_column() -> None:
    view = {
        "name": "bad",
        "resource": "Patient",
        "select": [{"column": [{"name": "n", "path": "id", "type": "integer"}]}],
    }
    plan = compile_view(view)
    with pytest.raises(ViewError, match=r"column 'n' \(declared integer\): 'a' is not an integer; fix the column"):
        BatchBuilder(plan).batch(list(iter_rows(plan, PATIENTS)))
