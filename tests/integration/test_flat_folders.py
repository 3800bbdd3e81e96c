"""The flat export folder of bulk-data-client / smart-fetch: our exports presented as one (the flat view),
and such folders merged into Delta tables (``FhirDeltaMergeOperator(source_layout="flat")``)."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.operators.flat_view import FhirExportFlatViewOperator
from airflow_provider_smart.storage.paths import resolve_output
from airflow_provider_smart.tables.bulk_folder import read_bulk_folder, write_flat_view
from airflow_provider_smart.tables.runs import LandedRunError
from tests.integration.bulk_helpers import context, export_operator, run_deferred
from tests.integration.test_delta_tables import server_view, table_view
from tests.integration.test_export_log_sandbox import cumulus_lookups

pytestmark = pytest.mark.integration


def merge_flat(folder: Path, tables: Path, **kwargs: Any) -> dict[str, Any]:
    from airflow_provider_smart.operators.tables import FhirDeltaMergeOperator

    op = FhirDeltaMergeOperator(
        task_id="merge", output=str(folder), tables=str(tables / "tables"), source_layout="flat", **kwargs
    )
    return op.execute({"run_id": "merge"})  # type: ignore[arg-type]


def test_flat_view_of_an_export_reads_back_into_the_same_tables(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    server, _ = bulk_server(patients=6, seed=5, max_file_resources=15)
    out = tmp_path / "out"
    summary, _ = run_deferred(export_operator(out, deferrable=False), context("scheduled__1"))
    flat = tmp_path / "flat"
    op = FhirExportFlatViewOperator(task_id="flat", output=str(out), run_label="scheduled__1", destination=str(flat))
    written = op.execute({})  # type: ignore[arg-type]
    names = sorted(p.name for p in flat.iterdir() if p.is_file())
    assert "log.ndjson" in names
    data = [n for n in names if n != "log.ndjson"]
    assert data and all(re.fullmatch(r"[A-Z][A-Za-z]*\.\d{3}\.ndjson", n) for n in data), data
    assert written["files"] == {t: sum(1 for n in data if n.startswith(f"{t}.")) for t in summary["counts"]}
    lines = {
        t: sum(len((flat / n).read_text().splitlines()) for n in data if n.startswith(f"{t}."))
        for t in written["files"]
    }
    assert lines == summary["counts"]
    # The log is the export's own, whole; cumulus-etl's two lookups find the system export and its time.
    events = [json.loads(line) for line in (flat / "log.ndjson").read_text().splitlines()]
    assert events == [json.loads(line) for line in (out / "_exports/scheduled__1/log.ndjson").read_text().splitlines()]
    assert cumulus_lookups(events) == ("", summary["transaction_time"])

    merged = merge_flat(flat, tmp_path)
    assert merged["source"] == "export:flat"
    assert table_view(tmp_path) == server_view(server)

    with pytest.raises(LandedRunError, match="is not empty; pick an empty folder"):
        write_flat_view(resolve_output(str(out)), "scheduled__1", resolve_output(str(flat)))
    again = write_flat_view(resolve_output(str(out)), "scheduled__1", resolve_output(str(flat)), replace=True)
    assert again["files"] == written["files"]


def _log_line(event_id: str, detail: dict[str, Any], export_id: str = "https://ehr.example/status/1") -> str:
    row = {"exportId": export_id, "timestamp": "2024-03-01T10:00:00.000Z", "eventId": event_id, "eventDetail": detail}
    return json.dumps(row)


def bulk_data_client_folder(folder: Path, transaction_time: str, *, complete: bool = True) -> None:
    """A log as bulk-data-client writes it (a false start, then the export of Group/g1)."""
    lines = [
        _log_line("kickoff", {"exportUrl": "https://ehr.example/fhir/Group/old/$export", "errorCode": 429}, "x"),
        _log_line("kickoff", {"exportUrl": "https://ehr.example/fhir/Group/g1/$export", "errorCode": None}),
        _log_line("status_progress", {"body": None, "xProgress": "50%", "retryAfter": "5"}),
        _log_line("status_complete", {"transactionTime": transaction_time}),
        _log_line("download_complete", {"fileUrl": "https://ehr.example/f/1", "resourceCount": 2, "fileSize": 10}),
    ]
    if complete:
        lines.append(_log_line("export_complete", {"files": 2, "resources": 3, "bytes": 30, "duration": 5}))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.ndjson").write_text("\n".join(lines) + "\n")


def _patient(pid: str, version: str, active: bool = True) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "meta": {"versionId": version}, "active": active}


def test_folders_in_bulk_data_client_layout_merge_with_their_time_and_deletions(tmp_path: Path) -> None:
    first = tmp_path / "export-1"
    bulk_data_client_folder(first, "2024-03-01T09:00:00Z")
    with gzip.open(first / "Patient.000.ndjson.gz", "wt") as handle:
        handle.write("\n".join(json.dumps(_patient(p, "1")) for p in ("p1", "p2")) + "\n")
    conditions = [{"resourceType": "Condition", "id": f"c{i}", "meta": {"versionId": "1"}} for i in range(3)]
    (first / "Condition.000.ndjson").write_text("\n".join(json.dumps(c) for c in conditions) + "\n")
    (first / "error").mkdir()
    (first / "error/OperationOutcome.000.ndjson").write_text('{"resourceType": "OperationOutcome"}\n')
    run = read_bulk_folder(resolve_output(str(first)))
    assert (run.transaction_time, run.resource_types, run.label) == (
        "2024-03-01T09:00:00Z",
        ["Condition", "Patient"],
        "export-1",
    )

    result = merge_flat(first, tmp_path)
    assert result["results"]["Patient"]["inserted"] == 2 and result["results"]["Condition"]["inserted"] == 3

    second = tmp_path / "export-2"
    bulk_data_client_folder(second, "2024-03-02T09:00:00Z")
    (second / "Patient.000.ndjson").write_text(json.dumps(_patient("p1", "2", active=False)) + "\n")
    (second / "deleted").mkdir()
    deleted = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": "Condition/c1"}}],
    }
    (second / "deleted/Bundle.000.ndjson").write_text(json.dumps(deleted) + "\n")
    result = merge_flat(second, tmp_path)
    assert result["results"]["Patient"]["updated"] == 1
    assert result["results"]["Condition"]["deleted"] == 1
    view = table_view(tmp_path)
    assert view == {"Patient": {"p1": "2", "p2": "1"}, "Condition": {"c0": "1", "c2": "1"}}


def test_unfinished_or_unlogged_folders_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "half"
    bulk_data_client_folder(folder, "2024-03-01T09:00:00Z", complete=False)
    (folder / "Patient.000.ndjson").write_text(json.dumps(_patient("p1", "1")) + "\n")
    with pytest.raises(LandedRunError, match="no export_complete event after its last kickoff"):
        merge_flat(folder, tmp_path)
    # The user who knows the files are whole says when they are from.
    run = read_bulk_folder(resolve_output(str(folder)), transaction_time="2024-03-01T09:00:00Z")
    assert run.resource_types == ["Patient"]

    (folder / "log.ndjson").unlink()
    with pytest.raises(LandedRunError, match=r"holds no log\.ndjson"):
        read_bulk_folder(resolve_output(str(folder)))
    (folder / "log.a.ndjson").write_text("")
    (folder / "log.b.ndjson").write_text("")
    with pytest.raises(LandedRunError, match="holds 2 export logs"):
        read_bulk_folder(resolve_output(str(folder)))

    pending = tmp_path / "pending"
    pending.mkdir()
    (pending / "log.ndjson").write_text(_log_line("kickoff", {"exportUrl": "https://e/$export"}) + "\n")
    (pending / "Patient.000.ndjson").write_text("")
    with pytest.raises(LandedRunError, match="no status_complete event"):
        read_bulk_folder(resolve_output(str(pending)))
    with pytest.raises(LandedRunError, match="is not a folder"):
        read_bulk_folder(resolve_output(str(tmp_path / "missing")))


def test_parquet_and_views_read_a_flat_folder_but_not_its_log(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from airflow_provider_smart.operators.parquet import FhirNdjsonToParquetOperator
    from airflow_provider_smart.operators.views import FhirViewRunOperator

    folder = tmp_path / "export"
    bulk_data_client_folder(folder, "2024-03-01T09:00:00Z")
    with gzip.open(folder / "Patient.000.ndjson.gz", "wt") as handle:
        handle.write("\n".join(json.dumps(_patient(p, "1")) for p in ("p1", "p2")) + "\n")
    (folder / "Patient.001.ndjson").write_text(json.dumps(_patient("p3", "1")) + "\n")
    (folder / "deleted").mkdir()
    (folder / "deleted/Bundle.000.ndjson").write_text('{"resourceType": "Bundle", "type": "transaction"}\n')

    parquet = FhirNdjsonToParquetOperator(
        task_id="parquet", source=str(folder), destination=str(tmp_path / "parquet"), run="r1", source_layout="flat"
    ).execute({})  # type: ignore[arg-type]
    assert set(parquet["tables"]) == {"Patient"} and parquet["tables"]["Patient"]["rows"] == 3

    views = FhirViewRunOperator(
        task_id="views",
        views=["patient_demographics"],
        source=str(folder),
        destination=str(tmp_path / "views"),
        run="r1",
        engine="python",
        source_layout="flat",
    ).execute({})  # type: ignore[arg-type]
    assert views["views"]["patient_demographics"]["rows"] == 3
    table = pq.read_table(tmp_path / "views/patient_demographics/r1/part-00000.parquet")
    assert sorted(table.column("patient_id").to_pylist()) == ["p1", "p2", "p3"]

    (folder / "log.ndjson").write_text(_log_line("kickoff", {"exportUrl": "https://e/$export"}) + "\n")
    with pytest.raises(LandedRunError, match="no status_complete event"):
        FhirNdjsonToParquetOperator(
            task_id="p2", source=str(folder), destination=str(tmp_path / "parquet"), run="r2", source_layout="flat"
        ).execute({})  # type: ignore[arg-type]


@pytest.mark.parametrize("operator", ["parquet", "views", "delta"])
def test_every_operator_that_reads_runs_refuses_an_unknown_source_layout(operator: str) -> None:
    from airflow_provider_smart.operators.parquet import FhirNdjsonToParquetOperator
    from airflow_provider_smart.operators.tables import FhirDeltaMergeOperator
    from airflow_provider_smart.operators.views import FhirViewRunOperator

    build: dict[str, Callable[[], Any]] = {
        "parquet": lambda: FhirNdjsonToParquetOperator(
            task_id="p", source="/in", destination="/out", source_layout="bulk"
        ),
        "views": lambda: FhirViewRunOperator(
            task_id="v", views=["patient_demographics"], source="/in", destination="/out", source_layout="bulk"
        ),
        "delta": lambda: FhirDeltaMergeOperator(task_id="d", output="/in", source_layout="bulk"),
    }
    with pytest.raises(ValueError, match=r"source_layout must be 'provider' or 'flat', not 'bulk'"):
        build[operator]()
