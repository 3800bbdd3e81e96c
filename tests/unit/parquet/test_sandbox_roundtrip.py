"""Round trip of the sandbox's generated data: every resource of every type, both parser paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_smart.parquet.writer import FhirParquetWriter
from airflow_provider_smart.sandbox.generator import SyntheticDataset
from tests.unit.parquet.helpers import canon, read_table


@pytest.mark.parametrize("fast", [True, False], ids=["arrow-parser", "exact-path"])
def test_every_generated_resource_round_trips(tmp_path: Path, fast: bool) -> None:
    dataset = SyntheticDataset(60, seed=7)
    originals: dict[str, list[dict[str, object]]] = {}
    with FhirParquetWriter(str(tmp_path), "r", fast=fast, chunk_bytes=64 << 10) as writer:
        for rtype in dataset.types():
            resources = [json.loads(json.dumps(r)) for _, r in dataset.iter_entries(rtype)]
            originals[rtype] = resources
            source = tmp_path / f"{rtype}.ndjson"
            source.write_text("".join(json.dumps(r) + "\n" for r in resources))
            writer.write_ndjson(str(source), rtype)
    assert sum(map(len, originals.values())) > 1000
    for rtype, resources in originals.items():
        if not resources:
            continue
        back = read_table(tmp_path / rtype / "r")
        assert [canon(r) for r in back] == [canon(r) for r in resources], rtype
