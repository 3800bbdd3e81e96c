"""Lines the Arrow parser cannot give exactly take the exact path one by one, never a whole chunk."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from airflow_provider_smart.parquet.writer import FhirParquetWriter
from tests.conftest import SHARED_FIXTURES
from tests.unit.parquet.helpers import canon, read_table

SYNTHEA = SHARED_FIXTURES / "synthea-100"
needs_synthea = pytest.mark.skipif(not SYNTHEA.is_dir(), reason="synthea-100 fixture not present")


def observations() -> list[dict[str, Any]]:
    with gzip.open(SYNTHEA / "Observation.ndjson.gz", "rb") as handle:
        return [json.loads(line) for line in handle if line.strip()][:1500]


def spoil(resources: list[dict[str, Any]], every: int) -> list[dict[str, Any]]:
    """One odd line every ``every`` lines, in turn: a null, a non-R4 field, a nested non-R4 field, an empty
    object, a null inside a list."""
    out = []
    for i, resource in enumerate(resources):
        resource = json.loads(json.dumps(resource))
        if i % every == every - 1:
            kind = (i // every) % 5
            if kind == 0:
                resource["issued"] = None
            elif kind == 1:
                resource["vendorFlag"] = {"a": [1, "x"]}
            elif kind == 2:
                resource["code"]["coding"][0]["vendorCode"] = 7
            elif kind == 3:
                resource["method"] = {}
            else:
                resource["category"] = [None, *resource.get("category", [])]
        out.append(resource)
    return out


def convert(tmp: Path, name: str, lines: bytes, rtype: str = "Observation", **options: Any) -> FhirParquetWriter:
    source = tmp / f"{name}.ndjson"
    source.write_bytes(lines)
    with FhirParquetWriter(str(tmp / name), "r", chunk_bytes=64 << 10, **options) as writer:
        writer.write_ndjson(str(source), rtype)
    return writer


def ndjson(resources: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in resources)


@needs_synthea
def test_odd_lines_take_the_exact_path_alone_and_keep_their_place(tmp_path: Path) -> None:
    resources = spoil(observations(), 97)
    fast = convert(tmp_path, "fast", ndjson(resources))
    convert(tmp_path, "exact", ndjson(resources), fast=False)
    summary = fast.writers["Observation"].summary
    assert summary.exact_chunks == 0 and summary.fast_chunks > 5  # no chunk went the exact way whole
    assert summary.exact_lines == len(resources) // 97
    back = read_table(tmp_path / "fast" / "Observation" / "r")
    assert [canon(r) for r in back] == [canon(r) for r in resources]  # every line, in input order
    tables = [pq.read_table(tmp_path / side / "Observation" / "r") for side in ("fast", "exact")]
    assert tables[0].to_pylist() == tables[1].to_pylist()
    records = [(tmp_path / side / "Observation" / "_schema.json").read_text() for side in ("fast", "exact")]
    assert json.loads(records[0]) == json.loads(records[1])
    unmapped = [json.loads(u) for u in tables[0].column("unmapped_json").to_pylist() if u]
    # The odd lines carry unmapped values (a null inside a list stays a typed null: kind 4 has none).
    assert len(unmapped) == sum(1 for i in range(len(resources)) if i % 97 == 96 and (i // 97) % 5 != 4)


@needs_synthea
def test_a_line_of_another_type_with_a_null_goes_to_its_own_table(tmp_path: Path) -> None:
    resources: list[dict[str, Any]] = observations()[:200]
    resources.insert(50, {"resourceType": "Patient", "id": "p1", "gender": None, "active": True})
    convert(tmp_path, "out", ndjson(resources))
    assert [r["id"] for r in read_table(tmp_path / "out" / "Patient" / "r")] == ["p1"]
    back = read_table(tmp_path / "out" / "Observation" / "r")
    assert [r["id"] for r in back] == [r["id"] for r in resources if r["resourceType"] == "Observation"]


@needs_synthea
def test_many_odd_lines_send_the_chunk_the_exact_way(tmp_path: Path) -> None:
    resources = spoil(observations()[:300], 2)
    writer = convert(tmp_path, "out", ndjson(resources))
    summary = writer.writers["Observation"].summary
    assert summary.exact_chunks > 0 and summary.exact_lines == 0
    assert [canon(r) for r in read_table(tmp_path / "out" / "Observation" / "r")] == [canon(r) for r in resources]


def test_a_bad_line_that_holds_a_null_is_named(tmp_path: Path) -> None:
    lines = [b'{"resourceType":"Patient","id":"%d","active":true}' % i for i in range(40)]
    lines[17] = b'{"resourceType":"Patient","id":"17","gender":null,,}'
    with pytest.raises(ValueError, match=r"p\.ndjson line 18: not valid JSON"):
        convert(tmp_path, "p", b"\n".join(lines) + b"\n", "Patient")
    assert not list((tmp_path / "p").rglob("*.parquet"))


def test_blank_lines_are_skipped_and_two_values_on_a_line_are_refused(tmp_path: Path) -> None:
    lines = [b'{"resourceType":"Patient","id":"%d","active":true}' % i for i in range(40)]
    with_blanks = b"\n".join(lines[:10]) + b"\n\n   \n" + b"\n".join(lines[10:]) + b"\n"
    writer = convert(tmp_path, "blank", with_blanks, "Patient")
    assert writer.writers["Patient"].summary.exact_chunks == 0
    assert [r["id"] for r in read_table(tmp_path / "blank" / "Patient" / "r")] == [str(i) for i in range(40)]
    # A whitespace-only line and a line holding two resources give as many rows as lines: still refused.
    doubled = [*lines[:5], b"  ", lines[5] + b" " + lines[6], *lines[7:]]
    with pytest.raises(ValueError, match=r"line 7: not valid JSON"):
        convert(tmp_path, "two", b"\n".join(doubled) + b"\n", "Patient")


def test_pinned_record_sends_lines_with_fields_outside_it_the_exact_way(tmp_path: Path) -> None:
    record = {"format": 1, "resourceType": "Patient", "decimal": "float64", "fields": {"id": "string"}}
    resources = [{"resourceType": "Patient", "id": str(i)} for i in range(60)]
    resources[30]["active"] = True
    source = tmp_path / "p.ndjson"
    source.write_bytes(ndjson(resources))
    with FhirParquetWriter(str(tmp_path / "out"), "r", schemas={"Patient": record}) as writer:
        writer.write_ndjson(str(source), "Patient")
    assert writer.writers["Patient"].summary.exact_lines == 1
    table = pq.read_table(tmp_path / "out" / "Patient" / "r")
    assert table.schema.names == ["resourceType", "id", "unmapped_json"]
    assert [canon(r) for r in read_table(tmp_path / "out" / "Patient" / "r")] == [canon(r) for r in resources]
