"""The SQL compiler and its DuckDB runs: same rows as the evaluator, refusals named at compile time."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_smart.operators.views import FhirViewRunOperator
from airflow_provider_smart.parquet.convert import convert_ndjson_to_parquet
from airflow_provider_smart.views import ViewError, compile_view, iter_rows, library, run_view
from airflow_provider_smart.views.arrow import BatchBuilder, arrow_schema
from airflow_provider_smart.views.sql import ViewCompileError, compile_sql
from airflow_provider_smart.views.sql.duckdb_engine import connect, iter_batches, run_rows
from tests.conftest import REPO, SHARED_FIXTURES

SYNTHEA = SHARED_FIXTURES / "synthea-100"
PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"use": "official", "family": "F", "given": ["A", "B"]}],
    "birthDate": "1970-06",
}


def _view(*columns: tuple[str, str], **extra: Any) -> dict[str, Any]:
    select = [{"column": [{"name": n, "path": p} for n, p in columns]}]
    return {"resource": "Patient", "select": select, **extra}


def _sorted_rows(table: pa.Table) -> list[str]:
    return sorted(map(repr, table.to_pylist()))


@pytest.mark.parametrize("name", library.names())
def test_shipped_views_give_the_evaluators_typed_rows_from_ndjson_and_parquet(name: str, tmp_path: Path) -> None:
    plan = compile_view(library.load(name))
    ndjson = SYNTHEA / f"{plan.resource}.ndjson.gz"
    with gzip.open(ndjson) as lines:
        resources = [json.loads(line) for line in lines]
    expected = pa.Table.from_batches([BatchBuilder(plan).batch(list(iter_rows(plan, resources)))])
    assert expected.num_rows > 0
    compiled = compile_sql(plan)
    convert_ndjson_to_parquet(str(ndjson), str(tmp_path / "pq"), "r1")
    parquet = sorted(str(p) for p in (tmp_path / "pq" / plan.resource / "r1").glob("*.parquet"))
    for files in ([str(ndjson)], parquet):
        con = connect(str(tmp_path))
        got = pa.Table.from_batches(list(iter_batches(compiled, files, con, arrow_schema(plan))), arrow_schema(plan))
        assert got.schema == expected.schema
        assert _sorted_rows(got) == _sorted_rows(expected), files


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ("birthDate.lowBoundary(6)", "lowBoundary() with a precision"),
        ("name.family.matches('F')", "function matches()"),
        ("deceased", "'deceased' (a choice element) without ofType()"),
        ("nickname", "'nickname', which FHIR R4 Patient does not define"),
    ],
)
def test_what_the_compiler_cannot_express_is_refused_naming_it(path: str, refused: str) -> None:
    with pytest.raises(ViewCompileError, match=refused.replace("(", r"\(").replace(")", r"\)")) as caught:
        compile_sql(_view(("x", path)))
    assert "column[0] (x)" in str(caught.value)
    # The evaluator still runs what the compiler refuses; "auto" falls back to it, "duckdb" does not.
    if path != "nickname":
        assert run_view(_view(("x", path)), [PATIENT], engine="auto") == run_view(
            _view(("x", path)), [PATIENT], engine="python"
        )
    with pytest.raises(ViewCompileError):
        run_view(_view(("x", path)), [PATIENT], engine="duckdb")


def test_repeat_and_unknown_dialects_are_refused() -> None:
    view = {"resource": "Questionnaire", "select": [{"repeat": ["item"], "column": [{"name": "l", "path": "linkId"}]}]}
    with pytest.raises(ViewCompileError, match="'repeat' cannot be compiled"):
        compile_sql(view)
    with pytest.raises(ViewCompileError, match="dialect 'tsql' is not supported"):
        compile_sql(_view(("id", "id")), dialect="tsql")


def test_run_time_rules_fail_with_the_evaluators_message() -> None:
    with pytest.raises(ViewError, match=r"column 'given' got 2 values for one row; set \"collection\": true"):
        run_rows(_view(("given", "name.given")), [PATIENT])
    with pytest.raises(ViewError, match="complex element"):
        compile_sql(_view(("name", "name")))
    typed = {"resource": "Patient", "select": [{"column": [{"name": "b", "path": "gender", "type": "integer"}]}]}
    with pytest.raises(ViewCompileError, match="column 'b': a string value declared integer"):
        compile_sql(typed)


def test_partial_dates_are_stored_as_their_first_day(tmp_path: Path) -> None:
    source = tmp_path / "Patient.ndjson"
    source.write_text(json.dumps(PATIENT) + "\n")
    view = {"resource": "Patient", "select": [{"column": [{"name": "b", "path": "birthDate", "type": "date"}]}]}
    plan = compile_view(view)
    batches = list(iter_batches(compile_sql(plan), [str(source)], connect(str(tmp_path)), arrow_schema(plan)))
    assert pa.Table.from_batches(batches).column("b").to_pylist() == [__import__("datetime").date(1970, 6, 1)]


TYPED_OBSERVATIONS = [
    {
        "resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
        "effectiveDateTime": "2020-03-04T05:06:07+02:00", "issued": "2020-03-04T05:06:07.123Z", "valueTime": "10:11:12",
        "component": [
            {"code": {"text": "a"}, "valueDateTime": "2021-01-02T03:04:05Z", "valueInteger": 3},
            {"code": {"text": "b"}, "valueDateTime": "2022"},
        ],
        "category": [{"coding": [{"code": "c1"}, {"code": "c2"}]}],
    },
    {"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "y"}, "valueBoolean": True},
]  # fmt: skip
TYPED_COLUMNS = [
    ("id", "id", "id", False), ("effective", "effective.ofType(dateTime)", "dateTime", False),
    ("issued", "issued", "instant", False), ("time", "value.ofType(time)", "time", False),
    ("flag", "value.ofType(boolean)", "boolean", False), ("n", "value.ofType(integer)", "integer", False),
    ("when", "component.value.ofType(dateTime)", "dateTime", True), ("codes", "category.coding.code", "code", True),
    ("counts", "component.value.ofType(integer)", "integer", True),
]  # fmt: skip


def test_every_declared_type_comes_out_in_the_tables_exact_schema(tmp_path: Path) -> None:
    """DuckDB's Arrow types name the time zone and list items its own way: the batches carry the table's."""
    view = {
        "resource": "Observation",
        "select": [{"column": [{"name": n, "path": p, "type": t, "collection": c} for n, p, t, c in TYPED_COLUMNS]}],
    }
    plan = compile_view(view)
    expected = pa.Table.from_batches([BatchBuilder(plan).batch(list(iter_rows(plan, TYPED_OBSERVATIONS)))])
    source = tmp_path / "Observation.ndjson"
    source.write_text("\n".join(json.dumps(o) for o in TYPED_OBSERVATIONS) + "\n")
    batches = list(iter_batches(compile_sql(plan), [str(source)], connect(str(tmp_path)), arrow_schema(plan)))
    got = pa.Table.from_batches(batches)
    assert got.schema.equals(arrow_schema(plan), check_metadata=True)
    for column in got.columns:
        column.validate(full=True)
    assert _sorted_rows(got) == _sorted_rows(expected)
    assert got.column("when").to_pylist()[0] is not None


def _operator(tmp_path: Path, views: list[Any], engine: str) -> FhirViewRunOperator:
    return FhirViewRunOperator(
        task_id="v",
        views=views,
        source=str(tmp_path / "src"),
        destination=str(tmp_path / "out"),
        run="r1",
        engine=engine,
    )


def _source(tmp_path: Path) -> None:
    directory = tmp_path / "src" / "Patient"
    directory.mkdir(parents=True)
    (directory / "Patient.000.ndjson").write_text(json.dumps(PATIENT) + "\n" + json.dumps({**PATIENT, "id": "p2"}))


def test_operator_runs_compiled_views_on_duckdb_and_refused_ones_on_the_evaluator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _source(tmp_path)
    refused = {"name": "matching", "resource": "Patient"} | {
        "select": [{"column": [{"name": "b", "path": "name.family.matches('F')", "type": "boolean"}]}]
    }
    result = _operator(tmp_path, ["patient_demographics", refused], "auto").execute({})  # type: ignore[arg-type]
    log = capsys.readouterr().out
    views = result["views"]
    assert views["patient_demographics"]["engine"] == "duckdb"
    assert views["matching"]["engine"] == "python"
    assert "view matching: engine python (the SQL compiler refused it" in log
    assert "view patient_demographics: engine duckdb" in log
    table = pq.read_table(tmp_path / "out" / "patient_demographics" / "r1" / "part-00000.parquet")
    assert sorted(table.column("patient_id").to_pylist()) == ["p1", "p2"]
    assert table.column("given").to_pylist() == ["A B", "A B"]
    marker = json.loads((tmp_path / "out" / "patient_demographics" / "r1" / "_SUCCESS").read_text())
    assert marker["rows"] == 2 and marker["engine"] == "duckdb"


def test_operator_engine_choice_is_explicit(tmp_path: Path) -> None:
    _source(tmp_path)
    result = _operator(tmp_path, ["patient_demographics"], "python").execute({})  # type: ignore[arg-type]
    assert result["views"]["patient_demographics"]["engine"] == "python"
    refused = {"name": "matching", "resource": "Patient"} | {
        "select": [{"column": [{"name": "b", "path": "name.family.matches('F')"}]}]
    }
    with pytest.raises(ValueError, match="cannot run on DuckDB \\(engine='duckdb'\\): the SQL compiler refused"):
        _operator(tmp_path, [refused], "duckdb").execute({})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="engine must be one of auto, duckdb, python"):
        _operator(tmp_path, [refused], "spark")


def test_a_failing_duckdb_view_commits_nothing_of_its_resource_type(tmp_path: Path) -> None:
    _source(tmp_path)
    bad = {"name": "bad", "resource": "Patient", "select": [{"column": [{"name": "given", "path": "name.given"}]}]}
    with pytest.raises(ViewError, match="'given' got 2 values"):
        _operator(tmp_path, ["patient_demographics", bad], "duckdb").execute({})  # type: ignore[arg-type]
    out = tmp_path / "out"
    assert not list(out.rglob("_SUCCESS"))
    assert not [p for p in out.rglob("*.parquet") if not p.name.startswith("_")]


def test_view_sql_command_prints_sql_that_duckdb_runs_as_the_view(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import duckdb

    from airflow_provider_smart.cli import main

    _source(tmp_path)
    (tmp_path / "src" / "Patient" / "Observation.000.ndjson").write_text(json.dumps({"resourceType": "Observation"}))
    assert main(["view-sql", "patient_demographics", "--source", str(tmp_path / "src")]) == 0
    sql = capsys.readouterr().out
    assert "Patient.000.ndjson" in sql and "Observation.000.ndjson" not in sql
    rows = duckdb.connect().execute(sql).fetchall()
    assert sorted(r[0] for r in rows) == ["p1", "p2"]
    expected = run_view(library.load("patient_demographics"), [PATIENT], engine="python")[0]
    assert rows[0][6] == expected["given"] == "A B"

    assert main(["view-sql", "no_such_view"]) == 1
    assert "neither a shipped view" in capsys.readouterr().err
    assert main(["view-sql", "patient_demographics", "--source", str(tmp_path / "src" / "nothing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_views_sql_is_the_same_text_whatever_was_compiled_before() -> None:
    first = compile_sql(library.load("patient_demographics")).sql
    compile_sql(library.load("observations"))
    assert compile_sql(library.load("patient_demographics")).sql == first
    assert "lambda x0:" in first


def test_the_docs_show_the_sql_the_command_prints_today(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/views.rst quotes ``smart-fhir view-sql patient_demographics``: a compiler change must update it."""
    from airflow_provider_smart.cli import main

    text = (REPO / "docs" / "views.rst").read_text()
    block = text.split("``smart-fhir view-sql patient_demographics`` prints:", 1)[1].split(".. code-block:: text", 1)[1]
    quoted = []
    for line in block.splitlines()[2:]:
        if line and not line.startswith("    "):
            break
        quoted.append(line[4:])
    assert main(["view-sql", "patient_demographics"]) == 0
    assert "\n".join(quoted).strip() == capsys.readouterr().out.strip()


def test_a_source_not_named_for_the_type_runs_on_the_evaluator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "src"
    directory.mkdir()
    lines = [json.dumps(PATIENT), json.dumps({"resourceType": "Observation", "id": "o1", "code": {"text": "x"}})]
    (directory / "everything.ndjson").write_text("\n".join(lines))
    result = _operator(tmp_path, ["patient_demographics"], "auto").execute({})  # type: ignore[arg-type]
    assert result["views"]["patient_demographics"]["engine"] == "python"
    assert "not every source file is named for Patient" in capsys.readouterr().out


REFERENCES = [
    "Patient/p1", "Patient/p1/_history/3", "https://ehr.example/fhir/Patient/p1/_history/3", "urn:uuid:p1",
    "urn:oid:1.2.3", "", "p1", "/p1", "Patient/", "Patient/_history/1", "Obs/Patient/_history/1", "a/Patient/x/y",
    "Patient/x/_history/", "Group/g1", "https://h/fhir/Group/g1", "Patient//x", "#contained",
    "Patient/x/_history", "Patient/a:b", "urn:uuid:Patient/x", "urn:x/y", "PatientX/p1", "XPatient/p1", "/",
    "Patient/x/", "a:b/Patient/p1", "https://h/fhir/Patient/p1",
]  # fmt: skip


@pytest.mark.parametrize("wanted", [None, "Patient", "Group"])
def test_reference_keys_match_the_evaluator_on_every_form(wanted: str | None) -> None:
    path = "subject.getReferenceKey()" if wanted is None else f"subject.getReferenceKey({wanted})"
    view = {
        "resource": "Observation",
        "select": [{"column": [{"name": "id", "path": "id"}, {"name": "k", "path": path}]}],
    }
    observations = [
        {"resourceType": "Observation", "id": f"o{i}", "subject": {"reference": r}} for i, r in enumerate(REFERENCES)
    ]
    expected = run_view(view, observations, engine="python")
    assert len(expected) == len(REFERENCES)
    assert sorted(run_rows(view, observations), key=lambda r: r["id"]) == sorted(expected, key=lambda r: r["id"])


BOUNDARY_TEXTS = [
    "1970", "1970-06", "1970-02", "2000-02", "1970-06-15", "2010-10-10T10:11", "2010-10-10T10:11:12.5Z",
    "2010-10-10T10:11:12.123456+02:00", "2010-10-10T", "2010-10-10TZ", "2010-10-10T25:61-03:30", "2010-10Tx",
    "12", "12:34", "12:34:56", "12:34:56.7", "12:34:56.1234", "12:34Z", "abc", "", "T", "19700", "1970-6",
    "1970\n", "\u0661\u0669\u0667\u0660", "1970-06-15T10:11:12+0200", "0000-02", "1900-02", "1970-13-01",
]  # fmt: skip


@pytest.mark.parametrize("source", ["status", "value.ofType(dateTime)", "value.ofType(time)", "ext"])
def test_boundaries_of_dates_datetimes_and_times_match_the_evaluator(source: str) -> None:
    """lowBoundary()/highBoundary() in SQL give the evaluator's text on every form, valid or not."""
    if source == "ext":
        path = "extension('u').value.ofType(date)"
        where = [{"url": "u", "valueDate": text} for text in BOUNDARY_TEXTS]
        observations = [{"resourceType": "Observation", "id": f"o{i}", "extension": [e]} for i, e in enumerate(where)]
    else:
        path = source
        key = {"status": "status", "value.ofType(dateTime)": "valueDateTime", "value.ofType(time)": "valueTime"}[source]
        observations = [{"resourceType": "Observation", "id": f"o{i}", key: t} for i, t in enumerate(BOUNDARY_TEXTS)]
    observations.append({"resourceType": "Observation", "id": "empty"})
    columns = [{"name": "id", "path": "id"}]
    columns += [{"name": f, "path": f"{path}.{f}()"} for f in ("lowBoundary", "highBoundary")]
    view = {"resource": "Observation", "select": [{"column": columns}]}
    expected = run_view(view, observations, engine="python")
    assert any(row["lowBoundary"] is not None for row in expected)
    assert sorted(run_rows(view, observations), key=lambda r: r["id"]) == sorted(expected, key=lambda r: r["id"])


def test_boundaries_the_compiler_cannot_express_are_refused() -> None:
    quantity = {
        "resource": "Observation",
        "select": [{"column": [{"name": "v", "path": "value.ofType(Quantity).value.lowBoundary()"}]}],
    }
    with pytest.raises(ViewCompileError, match=r"lowBoundary\(\) of a number"):
        compile_sql(quantity)
    with pytest.raises(ViewCompileError, match=r"highBoundary\(\) with a precision"):
        compile_sql(_view(("b", "birthDate.highBoundary(6)")))


def test_the_table_is_written_in_row_groups_of_useful_size_whatever_the_batches(tmp_path: Path) -> None:
    """Small batches (DuckDB's stream, the evaluator's 8,192 rows) are held and written as large row groups."""
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_smart.views import writer as writer_module

    plan = compile_view(_view(("id", "id")))
    writer = writer_module.ViewTableWriter(plan, ObjectStoragePath(f"file://{tmp_path}"), "r")
    writer.start()
    schema = arrow_schema(plan)
    total = writer_module.ROW_GROUP_ROWS * 2 + 5_000
    for start in range(0, total, 20_000):
        ids = [f"p{i}" for i in range(start, min(start + 20_000, total))]
        writer.add_batch(pa.RecordBatch.from_arrays([pa.array(ids)], schema=schema))
    writer.add([("last",)])
    assert writer.commit({})["rows"] == total + 1
    parquet = pq.ParquetFile(tmp_path / plan.name / "r" / "part-00000.parquet")
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
    assert len(sizes) == 2 and sizes[0] >= writer_module.ROW_GROUP_ROWS, sizes  # 14 batches, 2 row groups
    column = parquet.read().column("id").to_pylist()
    assert column == [f"p{i}" for i in range(total)] + ["last"]
