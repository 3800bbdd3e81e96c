"""Writer mechanics: layout, atomic commit, reruns, bad input, row groups, gzip, ObjectStoragePath."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_smart.parquet.reader import iter_resources
from airflow_provider_smart.parquet.writer import FhirParquetWriter
from tests.unit.parquet.helpers import canon, write_ndjson

PATIENTS = [
    {"resourceType": "Patient", "id": f"p{i}", "gender": "female", "birthDate": "1980-01-01", "name": [{"family": "F"}]}
    for i in range(300)
]


def test_layout_zstd_statistics_and_bounded_row_groups(tmp_path: Path) -> None:
    source = tmp_path / "Patient.ndjson.gz"
    source.write_bytes(gzip.compress("".join(json.dumps(p) + "\n" for p in PATIENTS).encode()))
    out = ObjectStoragePath(f"file://{tmp_path}/out")
    with FhirParquetWriter(out, "manual__2024-01-01T00:00:00+00:00", row_group_bytes=4096, chunk_bytes=2048) as w:
        assert w.write_ndjson(ObjectStoragePath(f"file://{source}")) == 300
    run_dir = tmp_path / "out" / "Patient" / "manual__2024-01-01T00_00_00_00_00"
    assert sorted(p.name for p in run_dir.iterdir()) == ["_SUCCESS", "_schema.json", "part-00000.parquet"]
    meta = pq.ParquetFile(run_dir / "part-00000.parquet").metadata
    assert meta.num_rows == 300 and meta.num_row_groups > 1
    column = meta.row_group(0).column(1)
    assert column.compression == "ZSTD" and column.statistics is not None and column.statistics.has_min_max
    assert [canon(r) for r in iter_resources(out / "Patient" / run_dir.name / "part-00000.parquet")] == [
        canon(p) for p in PATIENTS
    ]


def test_mixed_types_in_one_file_land_in_their_own_tables(tmp_path: Path) -> None:
    mixed = [PATIENTS[0], {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p0"}}]
    source = write_ndjson(tmp_path / "mixed.ndjson", mixed)
    with FhirParquetWriter(str(tmp_path / "out"), "r") as writer:
        writer.write_ndjson(str(source))
        writer.write_lines([json.dumps(PATIENTS[1]).encode()], "Patient")
        writer.write_resources([PATIENTS[2]])
    patients = [r["id"] for r in iter_resources(str(tmp_path / "out" / "Patient" / "r" / "part-00000.parquet"))]
    assert patients == ["p0", "p1", "p2"]
    assert (tmp_path / "out" / "Condition" / "r" / "_SUCCESS").exists()


def test_a_failed_run_leaves_no_complete_looking_output_and_a_rerun_replaces(tmp_path: Path) -> None:
    good = write_ndjson(tmp_path / "good.ndjson", PATIENTS[:10])
    bad = tmp_path / "bad.ndjson"
    bad.write_text(json.dumps(PATIENTS[0]) + "\n{not json\n")
    run_dir = tmp_path / "out" / "Patient" / "r"
    with (
        pytest.raises(ValueError, match=r"bad.ndjson line 2: not valid JSON"),
        FhirParquetWriter(str(tmp_path / "out"), "r") as writer,
    ):
        writer.write_ndjson(str(good))
        writer.write_ndjson(str(bad))
    assert not run_dir.exists()

    for _ in range(2):  # the same run twice: replaced, never duplicated
        with FhirParquetWriter(str(tmp_path / "out"), "r") as writer:
            writer.write_ndjson(str(good))
    assert sorted(p.name for p in run_dir.iterdir()) == ["_SUCCESS", "_schema.json", "part-00000.parquet"]
    assert pq.read_metadata(run_dir / "part-00000.parquet").num_rows == 10

    # A rerun that fails leaves the committed attempt as it was, marker included.
    with pytest.raises(ValueError, match="not valid JSON"), FhirParquetWriter(str(tmp_path / "out"), "r") as writer:
        writer.write_ndjson(str(write_ndjson(tmp_path / "more.ndjson", PATIENTS[:50])))
        writer.write_ndjson(str(bad))
    assert sorted(p.name for p in run_dir.iterdir()) == ["_SUCCESS", "_schema.json", "part-00000.parquet"]
    assert pq.read_metadata(run_dir / "part-00000.parquet").num_rows == 10

    # A rerun with less data replaces every part of the earlier one.
    with FhirParquetWriter(str(tmp_path / "out"), "r", row_group_bytes=1, part_bytes=1, chunk_bytes=64) as writer:
        writer.write_ndjson(str(write_ndjson(tmp_path / "three.ndjson", PATIENTS[:3])))
    assert len(list(run_dir.glob("part-*.parquet"))) == 3
    with FhirParquetWriter(str(tmp_path / "out"), "r") as writer:
        writer.write_ndjson(str(write_ndjson(tmp_path / "one.ndjson", PATIENTS[:1])))
    assert sorted(p.name for p in run_dir.iterdir()) == ["_SUCCESS", "_schema.json", "part-00000.parquet"]
    assert json.loads((run_dir / "_SUCCESS").read_text())["rows"] == 1


def test_lines_that_are_not_resources_are_refused_with_the_line_number(tmp_path: Path) -> None:
    source = tmp_path / "x.ndjson"
    source.write_text(json.dumps(PATIENTS[0]) + "\n\n" + json.dumps({"id": "no-type"}) + "\n")
    writer = FhirParquetWriter(str(tmp_path / "out"), "r")
    with pytest.raises(ValueError, match=r"x.ndjson line 3: not a FHIR resource"):
        writer.write_ndjson(str(source))
    writer.abort()
    with pytest.raises(RuntimeError, match="already committed or aborted"):
        writer.write_ndjson(str(source))


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="decimal must be"):
        FhirParquetWriter(str(tmp_path), "r", decimal="exact")
    with pytest.raises(ValueError, match="cannot build a path segment"):
        FhirParquetWriter(str(tmp_path), "///")


def test_a_run_directory_holding_other_files_is_never_cleared(tmp_path: Path) -> None:
    run_dir = tmp_path / "fhir" / "Patient" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "part-00000.ndjson").write_text(json.dumps(PATIENTS[0]) + "\n")
    with (
        pytest.raises(ValueError, match=r"holds other files .*part-00000.ndjson.*own root"),
        FhirParquetWriter(str(tmp_path / "fhir"), "r") as writer,
    ):
        writer.write_ndjson(str(run_dir / "part-00000.ndjson"))
    assert (run_dir / "part-00000.ndjson").exists()


def test_convert_passes_the_type_the_file_names_tell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_smart.parquet.convert import convert_ndjson_to_parquet, known_type

    source = tmp_path / "in"
    (source / "Patient" / "run-1").mkdir(parents=True)
    write_ndjson(source / "Patient.00001.ndjson", PATIENTS[:2])
    write_ndjson(source / "Patient" / "run-1" / "part-00000.ndjson", PATIENTS[2:4])
    write_ndjson(source / "block.00000.ndjson", PATIENTS[4:6])  # organised by patient: no type in the name
    write_ndjson(source / "Nonsense.ndjson", PATIENTS[6:8])  # not a resource type: no hint
    seen: list[tuple[str, str | None]] = []
    original = FhirParquetWriter.write_ndjson

    def spy(self: FhirParquetWriter, path: object, resource_type: str | None = None) -> int:
        seen.append((str(path).rsplit("/in/", 1)[1], resource_type))
        return original(self, path, resource_type)

    monkeypatch.setattr(FhirParquetWriter, "write_ndjson", spy)
    result = convert_ndjson_to_parquet(str(source), str(tmp_path / "out"), "r")
    assert sorted(seen) == [
        ("Nonsense.ndjson", None),
        ("Patient.00001.ndjson", "Patient"),
        ("Patient/run-1/part-00000.ndjson", "Patient"),
        ("block.00000.ndjson", None),
    ]
    assert result["Patient"]["rows"] == 8
    assert known_type(ObjectStoragePath("file:///x/Observation.ndjson.gz")) == "Observation"
