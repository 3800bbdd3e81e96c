"""FhirSearchOperator with formats=("ndjson", "parquet") and ("parquet",), over faked HTTP."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import pytest
import responses

from airflow_provider_smart.parquet.reader import iter_resources
from tests.fhir_fakes import BASE, bundle, resource
from tests.unit.parquet.helpers import canon
from tests.unit.test_search_operator import context, make

OBS = f"{BASE}/Observation"
LABEL = "20240301T000000Z_20240302T000000Z"


def _serve() -> list[dict[str, object]]:
    matches = [
        resource("Observation", "1", "2024-03-01T05:00:00Z", valueQuantity={"value": 7, "unit": "%"}),
        resource("Observation", "2", "2024-03-01T07:00:00Z", valueQuantity={"value": 6.5, "unit": "%"}),
    ]
    responses.get(OBS, json=bundle(matches, includes=[resource("Patient", "p")], next_url="Observation?page=2"))
    third = resource("Observation", "3", "2024-03-01T06:00:00Z", _status={"extension": [{"url": "u"}]})
    responses.get(
        OBS,
        match=[responses.matchers.query_param_matcher({"page": "2"})],
        json=bundle([third], includes=[resource("Patient", "p")]),
    )
    return [*matches, third]


def _parquet(root: Path, rtype: str) -> list[dict[str, object]]:
    return list(iter_resources(str(root / rtype / LABEL / "part-00000.parquet")))


@responses.activate
def test_both_formats_write_the_same_resources(tmp_path: Path) -> None:
    observations = _serve()
    op = make(
        tmp_path,
        search_params={"code": "x", "_include": "Observation:patient"},
        formats=("ndjson", "parquet"),
        compression="gzip",
    )
    summary = op.execute(context())
    json.dumps(summary)
    raw = gzip.decompress((tmp_path / "out" / "Observation" / LABEL / "part-00000.ndjson.gz").read_bytes())
    ndjson = [json.loads(line) for line in raw.splitlines()]
    parquet_root = tmp_path / "out" / "parquet"
    assert [canon(r) for r in _parquet(parquet_root, "Observation")] == [canon(r) for r in ndjson]
    assert [canon(r) for r in ndjson] == [canon(r) for r in observations]
    assert [r["id"] for r in _parquet(parquet_root, "Patient")] == ["p"]  # the duplicate include is dropped
    assert summary["parquet"]["counts"] == {"Observation": 3, "Patient": 1}
    assert summary["parquet"]["directories"]["Observation"] == f"file://{parquet_root}/Observation/{LABEL}"
    assert (parquet_root / "Observation" / "_schema.json").exists()
    assert (parquet_root / "Observation" / LABEL / "_SUCCESS").exists()


@responses.activate
def test_parquet_only_to_its_own_root(tmp_path: Path) -> None:
    observations = _serve()
    op = make(
        tmp_path,
        search_params={"code": "x", "_include": "Observation:patient"},
        formats=["parquet"],
        parquet_output=str(tmp_path / "tables"),
        parquet_options={"decimal": "string"},
    )
    summary = op.execute(context())
    assert not (tmp_path / "out" / "Observation").exists()
    back = _parquet(tmp_path / "tables", "Observation")
    # The search client parses responses with floats, so the decimal text is that float's shortest form.
    originals = [json.loads(json.dumps(r), parse_float=Decimal) for r in observations]
    assert [canon(r, exact=True) for r in back] == [canon(r, exact=True) for r in originals]
    assert summary["counts"] == {"Observation": 3, "Patient": 1} and summary["duplicates_dropped"] == 1
    assert summary["paths"]["Observation"] == [f"file://{tmp_path}/tables/Observation/{LABEL}/part-00000.parquet"]


@responses.activate
def test_an_empty_window_still_commits_the_searched_type(tmp_path: Path) -> None:
    responses.get(OBS, json=bundle([]))
    summary = make(tmp_path, formats=("ndjson", "parquet")).execute(context())
    assert summary["parquet"]["counts"] == {"Observation": 0}
    assert (tmp_path / "out" / "parquet" / "Observation" / LABEL / "_SUCCESS").exists()


def test_unknown_formats_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"one or more of the supported formats \['ndjson', 'parquet', 'delta'\]"):
        make(tmp_path, formats=("parquet", "orc"))
    with pytest.raises(ValueError, match="unsupported output format"):
        make(tmp_path, formats=())


def test_includes_without_an_id_are_never_dropped_as_repeats(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_smart.parquet.sink import ParquetRunSink

    no_id = [{"resourceType": "Patient", "name": [{"family": name}]} for name in ("A", "B")]
    with ParquetRunSink(ObjectStoragePath(f"file://{tmp_path}"), "run1") as sink:
        assert sink.write(resource("Patient", "p"), deduplicate=True)
        assert not sink.write(resource("Patient", "p"), deduplicate=True)  # a real repeat
        assert all(sink.write(r, deduplicate=True) for r in no_id)
        sink.commit()
    names = [r.get("name") for r in iter_resources(str(tmp_path / "Patient" / "run1" / "part-00000.parquet"))]
    assert names == [None, [{"family": "A"}], [{"family": "B"}]]
