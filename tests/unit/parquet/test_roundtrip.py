"""Round trip: Parquet back to JSON equals the original, for the synthea-100 fixture and odd inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from airflow_provider_smart.parquet.writer import FhirParquetWriter
from tests.conftest import SHARED_FIXTURES
from tests.unit.parquet.helpers import canon, read_ndjson, read_table, write_ndjson

SYNTHEA = SHARED_FIXTURES / "synthea-100"
needs_synthea = pytest.mark.skipif(not SYNTHEA.is_dir(), reason="synthea-100 fixture not present")


def _convert(out: Path, files: list[Path], **options: Any) -> dict[str, dict[str, Any]]:
    with FhirParquetWriter(str(out), "run-1", **options) as writer:
        for path in files:
            writer.write_ndjson(str(path))
    return {}


@needs_synthea
@pytest.mark.parametrize("fast", [True, False], ids=["arrow-parser", "exact-path"])
def test_every_synthea_resource_round_trips(tmp_path: Path, fast: bool) -> None:
    files = sorted(SYNTHEA.glob("*.ndjson.gz"))
    _convert(tmp_path, files, fast=fast)
    total = 0
    for path in files:
        rtype = path.name.split(".")[0]
        original = read_ndjson(path)
        back = read_table(tmp_path / rtype / "run-1")
        assert len(back) == len(original), rtype
        for a, b in zip(original, back, strict=True):
            assert canon(b) == canon(a), f"{rtype}/{a.get('id')}"
        total += len(original)
        schema = pq.read_schema(tmp_path / rtype / "run-1" / "part-00000.parquet")
        assert schema.field("unmapped_json").type == "string"
    assert total == 38483


@needs_synthea
def test_fast_and_exact_paths_write_the_same_tables(tmp_path: Path) -> None:
    files = [SYNTHEA / "Patient.ndjson.gz", SYNTHEA / "ExplanationOfBenefit.ndjson.gz"]
    _convert(tmp_path / "fast", files, fast=True)
    _convert(tmp_path / "exact", files, fast=False)
    for rtype in ("Patient", "ExplanationOfBenefit"):
        records = [json.loads((tmp_path / side / rtype / "_schema.json").read_text()) for side in ("fast", "exact")]
        assert json.dumps(records[0], sort_keys=True) == json.dumps(records[1], sort_keys=True)
        rows = [pq.read_table(tmp_path / side / rtype / "run-1").to_pylist() for side in ("fast", "exact")]
        for row in rows[0] + rows[1]:  # contained resources are JSON text: compare them parsed
            row["contained"] = [json.loads(c) for c in row.get("contained") or []]
        assert rows[0] == rows[1]


@needs_synthea
def test_exact_decimal_option_keeps_the_text(tmp_path: Path) -> None:
    files = [SYNTHEA / "Observation.ndjson.gz", SYNTHEA / "Claim.ndjson.gz"]
    _convert(tmp_path, files, decimal="string")
    for path in files:
        rtype = path.name.split(".")[0]
        original = read_ndjson(path, exact=True)
        back = read_table(tmp_path / rtype / "run-1")
        for a, b in zip(original, back, strict=True):
            assert canon(b, exact=True) == canon(a, exact=True)
    schema = pq.read_schema(tmp_path / "Observation" / "run-1" / "part-00000.parquet")
    assert schema.field("valueQuantity").type.field("value").type == "string"


ODD: list[dict[str, Any]] = [
    {
        "resourceType": "Patient",
        "id": "odd-1",
        "name": [{"given": ["A", "B", "C"], "_given": [None, {"extension": [{"url": "u", "valueCode": "x"}]}, None]}],
        "_birthDate": {"extension": [{"url": "http://x/ext", "valueDateTime": "2020-01-01T00:00:00+05:00"}]},
        "birthDate": "2020-01",
        "notAnR4Field": {"deep": [1, 2, {"x": None}]},
        "gender": 7,
        "active": "yes",
        "multipleBirthInteger": 3000000000,
        "contained": [{"resourceType": "Organization", "id": "o1", "name": "Org"}],
        "extension": [
            {
                "url": "l1",
                "extension": [
                    {"url": "l2", "extension": [{"url": "l3", "extension": [{"url": "l4", "valueString": "deep"}]}]}
                ],
            }
        ],
        "communication": [{"language": {"text": "en"}, "preferred": True, "surplus": 1}],
        "telecom": {"system": "phone"},
        "address": [{"line": ["1 Main"], "city": None}, "not-an-object"],
        "photo": [],
        "maritalStatus": {},
        "deceasedBoolean": False,
    },
    {"resourceType": "Observation", "id": "o", "status": "final", "valueQuantity": {"value": 1e400}, "code": {}},
    {"resourceType": "SubscriptionTopic", "id": "r5-only", "status": "active", "url": "http://x"},
    {"resourceType": "Bundle", "id": "b", "type": "collection", "entry": [{"resource": {"resourceType": "Patient"}}]},
]


@pytest.mark.parametrize("fast", [True, False], ids=["arrow-parser", "exact-path"])
def test_non_conformant_input_round_trips(tmp_path: Path, fast: bool) -> None:
    source = write_ndjson(tmp_path / "odd.ndjson", ODD)
    with FhirParquetWriter(str(tmp_path / "out"), "r", fast=fast) as writer:
        assert writer.write_ndjson(str(source)) == len(ODD)
    for resource in ODD:
        back = read_table(tmp_path / "out" / resource["resourceType"] / "r")
        assert len(back) == 1
        assert canon(back[0]) == canon(json.loads(json.dumps(resource)))
    table = pq.read_table(tmp_path / "out" / "Patient" / "r")
    unmapped = json.loads(table.column("unmapped_json")[0].as_py())
    paths = [tuple(p) for p, _ in unmapped]
    assert ("notAnR4Field",) in paths and ("gender",) in paths and ("active",) in paths
    assert ("multipleBirthInteger",) in paths and ("address", 1) in paths and ("address", 0, "city") in paths
    assert ("communication", 0, "surplus") in paths and ("telecom",) in paths
    # Typed where R4 allows: three levels of extension are structs, the fourth is JSON text.
    ext = table.schema.field("extension").type.value_type
    level3 = ext.field("extension").type.value_type.field("extension").type.value_type
    assert level3.field("extension").type.value_type == "string"
    assert table.schema.field("contained").type.value_type == "string"
    assert table.schema.field("_birthDate").type.field("extension").type.value_type.field("valueDateTime").type == (
        "string"
    )
