"""FhirBulkExportOperator with formats=("ndjson", "parquet") against the sandbox, inline and fanned out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.operators.bulk_export import (
    FhirBulkDownloadOperator,
    FhirBulkExportFinalizeOperator,
    FhirBulkExportOperator,
)
from airflow_provider_smart.parquet.reader import iter_resources
from airflow_provider_smart.sandbox.server import SandboxServer
from tests.integration.bulk_helpers import context, export_operator, landed, run_deferred, store_view
from tests.unit.parquet.helpers import canon

pytestmark = pytest.mark.integration
LABEL = "manual__run1"


@pytest.fixture
def server(bulk_server: Callable[..., tuple[SandboxServer, Any]]) -> SandboxServer:
    return bulk_server(max_file_resources=25)[0]


def _op(tmp_path: Path, **kwargs: Any) -> FhirBulkExportOperator:
    return export_operator(tmp_path / "out", formats=("ndjson", "parquet"), **kwargs)


def _parquet(root: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for part in sorted(root.glob(f"*/{LABEL}/part-*.parquet")):
        for resource in iter_resources(str(part)):
            found.setdefault(resource["resourceType"], {})[resource["id"]] = resource
    return found


def _same(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> bool:
    return {t: {i: canon(r) for i, r in rs.items()} for t, rs in a.items()} == {
        t: {i: canon(json.loads(json.dumps(r))) for i, r in rs.items()} for t, rs in b.items()
    }


def test_inline_export_lands_ndjson_and_the_same_resources_as_parquet(server: SandboxServer, tmp_path: Path) -> None:
    summary, _ = run_deferred(_op(tmp_path, parquet_output=str(tmp_path / "tables")), context())
    expected = store_view(server)
    assert _same(landed(tmp_path / "out", LABEL), expected)
    assert _same(_parquet(tmp_path / "tables"), expected)
    assert summary["parquet"]["counts"] == {t: len(v) for t, v in expected.items()}
    assert (tmp_path / "tables" / "Observation" / LABEL / "_SUCCESS").exists()
    assert (tmp_path / "tables" / "Observation" / "_schema.json").exists()
    json.dumps(summary)


def test_fanned_out_export_converts_in_the_finalize_task(server: SandboxServer, tmp_path: Path) -> None:
    ctx = context()
    batches, _ = run_deferred(_op(tmp_path, download_mode="fanout", max_batches=3), ctx)
    ref = ctx["ti"].xcoms["export"]
    assert ref["parquet"] == {"output": None, "output_conn_id": None, "options": {}}
    for n, batch in enumerate(batches):
        FhirBulkDownloadOperator(task_id=f"download_{n}", batch=batch).execute(context())
    summary = FhirBulkExportFinalizeOperator(task_id="finalize", export=ref).execute(context())
    assert _same(_parquet(tmp_path / "out" / "parquet"), store_view(server))
    assert summary["parquet"]["output"] == f"file://{tmp_path}/out/parquet"


def test_formats_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported output format"):
        _op(tmp_path).__class__(task_id="x", output=str(tmp_path), formats=("csv",))
