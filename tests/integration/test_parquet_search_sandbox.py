"""The search operator writing NDJSON and Parquet from the sandbox over real HTTP and SMART auth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.operators.search import FhirSearchOperator
from airflow_provider_smart.parquet.reader import iter_resources
from tests.unit.parquet.helpers import canon

pytestmark = pytest.mark.integration


def test_search_to_ndjson_and_parquet(sandbox: Any, smart_client: Any, tmp_path: Path) -> None:
    op = FhirSearchOperator(
        task_id="search",
        resource_type="Observation",
        output=str(tmp_path / "out"),
        search_params={"_include": "Observation:patient"},
        incremental=None,
        page_size=100,
        formats=("ndjson", "parquet"),
        smart_fhir_conn_id=smart_client.conn_id,
    )
    summary = op.execute({"run_id": "manual__1"})  # type: ignore[arg-type]
    run = summary["run"]
    expected = {r["id"]: r for r in sandbox.state.store.iter_type("Observation")}
    assert summary["parquet"]["counts"]["Observation"] == len(expected) > 0
    for rtype in ("Observation", "Patient"):
        directory = tmp_path / "out" / "parquet" / rtype / run
        back = [r for p in sorted(directory.glob("part-*.parquet")) for r in iter_resources(str(p))]
        ndjson = [
            json.loads(line)
            for p in sorted((tmp_path / "out" / rtype / run).glob("part-*.ndjson"))
            for line in p.read_text().splitlines()
        ]
        assert [canon(r) for r in back] == [canon(r) for r in ndjson]
    back = {r["id"]: r for r in iter_resources(str(tmp_path / "out/parquet/Observation" / run / "part-00000.parquet"))}
    assert {k: canon(v) for k, v in back.items()} == {k: canon(json.loads(json.dumps(v))) for k, v in expected.items()}
