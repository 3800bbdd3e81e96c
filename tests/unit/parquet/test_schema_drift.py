"""Schema stability: one schema per type within a run, only added columns across runs, pinning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from airflow_provider_smart.parquet.schema import SchemaError
from airflow_provider_smart.parquet.writer import FhirParquetWriter
from tests.unit.parquet.helpers import canon, read_table, write_ndjson


def _obs(i: int, value: Any, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{i}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": value, "unit": "/min"},
        **extra,
    }


FIRST = [_obs(i, 60 + i) for i in range(50)]  # integers only: an inferring reader would pick int64
SECOND = [
    _obs(
        100 + i,
        61.5 + i,
        extension=[{"url": "a", "extension": [{"url": "b", "extension": [{"url": "c", "valueDecimal": 1.25}]}]}],
        _status={"extension": [{"url": "http://example.org/why", "valueString": "amended"}]},
    )
    for i in range(50)
]
LATER = [_obs(200, 70, issued="2024-01-01T10:00:00+01:00", _issued={"id": "x"})]


def _files(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet"))


def test_two_drifting_files_share_one_schema_within_a_run(tmp_path: Path) -> None:
    first = write_ndjson(tmp_path / "a.ndjson", FIRST)
    second = write_ndjson(tmp_path / "b.ndjson", SECOND)
    out = tmp_path / "out"
    # Tiny parts and row groups: the first part is written before the second file widens the schema.
    with FhirParquetWriter(str(out), "run-1", row_group_bytes=1, part_bytes=1) as writer:
        writer.write_ndjson(str(first))
        writer.write_ndjson(str(second))
    parts = _files(out / "Observation" / "run-1")
    assert len(parts) >= 2
    schemas = [pq.read_schema(p) for p in parts]
    assert all(s == schemas[0] for s in schemas[1:])
    value = schemas[0].field("valueQuantity").type.field("value").type
    assert value == "double"
    ext3 = schemas[0].field("extension").type.value_type
    ext3 = ext3.field("extension").type.value_type.field("extension").type.value_type
    assert ext3.field("valueDecimal").type == "double"
    assert schemas[0].field("_status").type.field("extension").type.value_type.field("valueString").type == "string"
    back = read_table(out / "Observation" / "run-1")
    assert [canon(r) for r in back] == [canon(r) for r in FIRST + SECOND]
    assert (out / "Observation" / "run-1" / "_SUCCESS").exists()
    assert not [p for p in (out / "Observation" / "run-1").iterdir() if p.name.startswith("_tmp.")]


def _columns(schema: Any, prefix: str = "") -> dict[str, str]:
    """Every leaf path with its type, to compare schemas field by field."""
    out: dict[str, str] = {}
    for field in schema:
        typ = field.type
        name = prefix + field.name
        while hasattr(typ, "value_type"):
            typ = typ.value_type
            name += "[]"
        if hasattr(typ, "num_fields") and typ.num_fields:
            out.update(_columns(list(typ), name + "."))
        else:
            out[name] = str(typ)
    return out


def test_a_later_run_only_adds_columns_and_duckdb_reads_both(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with FhirParquetWriter(str(out), "run-1") as writer:
        writer.write_ndjson(str(write_ndjson(tmp_path / "a.ndjson", FIRST)))
        writer.write_ndjson(str(write_ndjson(tmp_path / "b.ndjson", SECOND)))
    record_1 = json.loads((out / "Observation" / "_schema.json").read_text())
    with FhirParquetWriter(str(out), "run-2") as writer:
        writer.write_ndjson(str(write_ndjson(tmp_path / "c.ndjson", LATER)))
    record_2 = json.loads((out / "Observation" / "_schema.json").read_text())

    cols_1 = _columns(pq.read_schema(_files(out / "Observation" / "run-1")[0]))
    cols_2 = _columns(pq.read_schema(_files(out / "Observation" / "run-2")[0]))
    assert set(cols_2) > set(cols_1)
    assert all(cols_2[k] == v for k, v in cols_1.items())  # no type ever changes
    assert "issued" in cols_2 and "issued" not in cols_1 and "_issued.id" in cols_2
    assert record_2["fields"]["valueQuantity"] == record_1["fields"]["valueQuantity"]
    assert set(record_2["fields"]) > set(record_1["fields"])

    rows = duckdb.sql(
        f"""
        SELECT id, valueQuantity.value AS v, issued, _status.extension[1].valueString AS why,
               extension[1].extension[1].extension[1].valueDecimal AS deep
        FROM read_parquet('{out}/Observation/*/part-*.parquet', union_by_name = true)
        ORDER BY id
        """  # noqa: S608 - a test's own temp path
    ).fetchall()
    by_id = {r[0]: r[1:] for r in rows}
    assert len(rows) == 101
    assert by_id["obs-0"] == (60.0, None, None, None)
    assert by_id["obs-100"] == (61.5, None, "amended", 1.25)
    assert by_id["obs-200"] == (70.0, "2024-01-01T10:00:00+01:00", None, None)


def test_pinned_schema_sends_unknown_fields_to_the_json_column(tmp_path: Path) -> None:
    pinned = {
        "resourceType": "Observation",
        "decimal": "float64",
        "fields": {"resourceType": "string", "id": "string", "valueQuantity": {"value": "decimal"}},
    }
    out = tmp_path / "out"
    source = write_ndjson(tmp_path / "b.ndjson", SECOND[:3])
    with FhirParquetWriter(str(out), "r", schemas={"Observation": pinned}) as writer:
        writer.write_ndjson(str(source))
    table = pq.read_table(out / "Observation" / "r")
    assert table.column_names == ["resourceType", "id", "valueQuantity", "unmapped_json"]
    unmapped = json.loads(table.column("unmapped_json")[0].as_py())
    paths = {tuple(p) for p, _ in unmapped}
    assert {("status",), ("code",), ("valueQuantity", "unit"), ("extension",), ("_status",)} <= paths
    assert [canon(r) for r in read_table(out / "Observation" / "r")] == [canon(r) for r in SECOND[:3]]
    assert not (out / "Observation" / "_schema.json").exists()  # a pinned record is the user's, not grown


def test_pinned_schema_from_a_file_must_fit_fhir(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"resourceType": "Observation", "fields": {"status": "int32"}}))
    with pytest.raises(SchemaError, match=r"Observation.status .*FHIR R4 makes it 'string'"):
        FhirParquetWriter(str(tmp_path / "o"), "r", schemas={"Observation": str(bad)})
    bad.write_text(json.dumps({"resourceType": "Observation", "fields": {"madeUp": "string"}}))
    with pytest.raises(SchemaError, match="not an element of FHIR R4"):
        FhirParquetWriter(str(tmp_path / "o"), "r", schemas={"Observation": str(bad)})
    with pytest.raises(SchemaError, match="does not exist"):
        FhirParquetWriter(str(tmp_path / "o"), "r", schemas={"Observation": str(tmp_path / "nope.json")})


def test_decimal_mode_cannot_change_between_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    source = write_ndjson(tmp_path / "a.ndjson", FIRST[:2])
    with FhirParquetWriter(str(out), "r1") as writer:
        writer.write_ndjson(str(source))
    with (
        pytest.raises(SchemaError, match="keeps decimals as float64"),
        FhirParquetWriter(str(out), "r2", decimal="string") as writer,
    ):
        writer.write_ndjson(str(source))
    assert not (out / "Observation" / "r2" / "_SUCCESS").exists()
