"""The row semantics of a ViewDefinition, tested without the official suite (which skips when
``../shared/fixtures/sql-on-fhir-v2`` is absent, so ``make unit`` alone must still see them): ``where``,
``forEach`` / ``forEachOrNull``, nested ``select``, ``unionAll``, ``%rowIndex`` and ``collection``.

Each view runs on both engines: the Python evaluator (the reference: its rows, their order and its messages
are what the assertions read) and the SQL compiler on DuckDB, which must give the same rows (SQL promises no
row order, so they are compared as multisets) or the same ``ViewError``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_provider_smart.views import ViewError, run_view

ANN: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "ann",
    "active": True,
    "gender": "female",
    "name": [{"family": "Smith", "given": ["Ann", "B"]}, {"family": "Jones", "given": ["Annie"]}],
    "telecom": [{"system": "phone", "value": "555"}],
}
BOB: dict[str, Any] = {"resourceType": "Patient", "id": "bob", "active": False, "gender": "male"}
PEOPLE = [ANN, BOB, {"resourceType": "Observation", "id": "o1", "status": "final"}]


def _columns(*pairs: tuple[str, str], **extra: Any) -> dict[str, Any]:
    return {"column": [{"name": n, "path": p} for n, p in pairs], **extra}


def _rows(*select: dict[str, Any], where: list[str] | None = None) -> list[dict[str, Any]]:
    view: dict[str, Any] = {"resource": "Patient", "select": list(select)}
    if where is not None:
        view["where"] = [{"path": path} for path in where]
    try:
        rows = run_view(view, PEOPLE, engine="python")
    except ViewError:
        with pytest.raises(ViewError):
            run_view(view, PEOPLE, engine="duckdb")
        raise
    assert _multiset(run_view(view, PEOPLE, engine="duckdb")) == _multiset(rows), "DuckDB rows differ"
    return rows


def _multiset(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True, default=str) for row in rows)


# -- where -----------------------------------------------------------------------------------------------
def test_where_false_drops_the_resource_and_true_keeps_it() -> None:
    assert _rows(_columns(("id", "id")), where=["active"]) == [{"id": "ann"}]
    assert _rows(_columns(("id", "id")), where=["active = false"]) == [{"id": "bob"}]


def test_where_with_no_value_drops_the_resource() -> None:
    # Bob has no name: an empty result is not true.
    assert _rows(_columns(("id", "id")), where=["name.family.exists()"]) == [{"id": "ann"}]
    assert _rows(_columns(("id", "id")), where=["name.first().family = 'Smith'"]) == [{"id": "ann"}]


def test_every_where_must_hold() -> None:
    assert _rows(_columns(("id", "id")), where=["active", "gender = 'male'"]) == []
    assert _rows(_columns(("id", "id")), where=["active", "gender = 'female'"]) == [{"id": "ann"}]


def test_where_of_several_values_is_an_error_naming_the_fix() -> None:
    with pytest.raises(
        ViewError, match=r"^Patient/ann: where path 'name.family' must give true or false, got .*'Smith'"
    ):
        _rows(_columns(("id", "id")), where=["name.family"])


# -- forEach and forEachOrNull ----------------------------------------------------------------------------
def test_for_each_gives_one_row_per_element_and_none_for_a_resource_without_any() -> None:
    rows = _rows(_columns(("id", "id")), _columns(("family", "family"), forEach="name"))
    assert rows == [{"id": "ann", "family": "Smith"}, {"id": "ann", "family": "Jones"}]


def test_for_each_or_null_keeps_a_resource_without_elements_as_one_row_of_nulls() -> None:
    rows = _rows(_columns(("id", "id")), _columns(("family", "family"), forEachOrNull="name"))
    assert rows == [
        {"id": "ann", "family": "Smith"},
        {"id": "ann", "family": "Jones"},
        {"id": "bob", "family": None},
    ]


def test_nested_for_each_crosses_each_parent_element_with_its_children() -> None:
    inner = _columns(("given", "$this"), forEach="given")
    rows = _rows(
        _columns(("id", "id")), {"forEach": "name", "column": [{"name": "family", "path": "family"}], "select": [inner]}
    )
    assert [(r["family"], r["given"]) for r in rows] == [("Smith", "Ann"), ("Smith", "B"), ("Jones", "Annie")]


def test_a_child_select_without_rows_removes_its_parents_row() -> None:
    # The telecom forEach finds nothing for Bob, so Bob's id row is crossed with nothing.
    rows = _rows(_columns(("id", "id")), _columns(("phone", "value"), forEach="telecom"))
    assert rows == [{"id": "ann", "phone": "555"}]


def test_row_index_counts_within_each_for_each() -> None:
    rows = _rows(_columns(("id", "id")), _columns(("family", "family"), ("at", "%rowIndex"), forEach="name"))
    assert [(r["family"], r["at"]) for r in rows] == [("Smith", 0), ("Jones", 1)]


# -- unionAll and collection -----------------------------------------------------------------------------
def test_union_all_appends_the_branches_rows_in_order() -> None:
    union = {
        "unionAll": [
            _columns(("contact", "value"), forEach="telecom"),
            _columns(("contact", "family"), forEach="name"),
        ]
    }
    rows = _rows(_columns(("id", "id")), union)
    assert rows == [
        {"id": "ann", "contact": "555"},
        {"id": "ann", "contact": "Smith"},
        {"id": "ann", "contact": "Jones"},
    ]


def test_a_collection_column_keeps_every_value_as_a_list() -> None:
    select = {"column": [{"name": "id", "path": "id"}, {"name": "given", "path": "name.given", "collection": True}]}
    assert _rows(select) == [{"id": "ann", "given": ["Ann", "B", "Annie"]}, {"id": "bob", "given": []}]
