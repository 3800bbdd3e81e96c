"""Current-state Delta tables from real exports of the sandbox: full, then incremental with changes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.sandbox.state import SandboxConfig
from tests.integration.bulk_helpers import context, export_operator, run_deferred, store_view
from tests.sandbox_fixtures import SmartClient

pytestmark = pytest.mark.integration


def export(tmp_path: Path, run_id: str, **kwargs: Any) -> dict[str, Any]:
    summary, _ = run_deferred(export_operator(tmp_path / "out", since="watermark", **kwargs), context(run_id))
    return dict(summary)


def tables_of(tmp_path: Path) -> Any:
    from airflow_provider_smart.storage.paths import resolve_output
    from airflow_provider_smart.tables.merge import DeltaTables

    return DeltaTables(resolve_output(str(tmp_path / "tables")))


def merge_label(tmp_path: Path, label: str) -> dict[str, Any]:
    from airflow_provider_smart.storage.paths import resolve_output
    from airflow_provider_smart.tables.runs import find_landed_run

    run = find_landed_run(resolve_output(str(tmp_path / "out")), label)
    return tables_of(tmp_path).merge_run(run)


def table_view(base: Path) -> dict[str, dict[str, str | None]]:
    """resourceType -> id -> meta.versionId, as the tables hold them now."""
    from deltalake import DeltaTable

    from airflow_provider_smart.tables.read import read_table

    out: dict[str, dict[str, str | None]] = {}
    for child in sorted((base / "tables").iterdir()):
        if child.name.startswith("_"):
            continue
        rows = read_table(DeltaTable(str(child)), ["id", "meta"]).to_pylist()
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)), f"{child.name}: an id appears twice"
        if rows:
            out[child.name] = {r["id"]: (r["meta"] or {}).get("versionId") for r in rows}
    return out


def server_view(server: SandboxServer) -> dict[str, dict[str, str | None]]:
    return {
        rtype: {rid: (r.get("meta") or {}).get("versionId") for rid, r in resources.items()}
        for rtype, resources in store_view(server).items()
    }


def test_full_then_incremental_exports_give_the_servers_current_state(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    server, _ = bulk_server(patients=8, seed=11)
    store = server.state.store
    first = export(tmp_path, "scheduled__1")
    results = merge_label(tmp_path, "scheduled__1")
    assert {r.resource_type for r in results.values() if r.committed} == set(first["counts"])
    assert table_view(tmp_path) == server_view(server)

    time.sleep(1.1)
    patient = dict(store.get("Patient", "pat-3") or {})
    patient["active"] = False
    store.put(patient)
    store.put({"resourceType": "Observation", "id": "obs-new-1", "status": "final", "code": {"text": "new"}})
    gone = sorted(store_view(server, ["Condition"])["Condition"])[:2]
    for rid in gone:
        store.delete("Condition", rid)
    export(tmp_path, "scheduled__2")
    second = merge_label(tmp_path, "scheduled__2")
    assert second["Patient"].updated == 1 and second["Patient"].inserted == 0
    assert second["Observation"].inserted == 1
    assert second["Condition"].deleted == 2
    view = table_view(tmp_path)
    assert view == server_view(server)
    assert not set(gone) & set(view["Condition"])

    # The same export again: nothing changes, not even the version.
    versions = {t: r.version for t, r in second.items()}
    again = merge_label(tmp_path, "scheduled__2")
    assert not any(r.committed for r in again.values())
    assert {t: r.version for t, r in again.items() if t in versions} == versions
    assert table_view(tmp_path) == server_view(server)
    # An older export merged late does not bring back old copies or deleted rows it held.
    merge_label(tmp_path, "scheduled__1")
    assert table_view(tmp_path)["Patient"] == server_view(server)["Patient"]


def test_export_operator_with_delta_format_keeps_tables_current(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    server, _ = bulk_server(patients=8, seed=11)
    first = export(tmp_path, "scheduled__1", formats=("ndjson", "delta"))
    assert first["delta"]["source"] == "export:scheduled__1"
    assert table_view(tmp_path / "out") == server_view(server)
    time.sleep(1.1)
    store = server.state.store
    victim = sorted(store_view(server, ["Observation"])["Observation"])[0]
    store.delete("Observation", victim)
    encounter = dict(next(iter(store_view(server, ["Encounter"])["Encounter"].values())))
    encounter["status"] = "cancelled"
    store.put(encounter)
    second = export(tmp_path, "scheduled__2", formats=("ndjson", "delta"))
    results = second["delta"]["results"]
    assert results["Observation"]["deleted"] == 1 and results["Encounter"]["updated"] == 1
    assert table_view(tmp_path / "out") == server_view(server)


def test_resources_without_an_id_are_refused_from_the_tables_and_counted(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    server, _ = bulk_server(patients=8, seed=11)
    server.state.bulk.faults.strip_ids = 1  # the first resource of every data file comes without its id
    summary = export(tmp_path, "scheduled__1", formats=("ndjson", "delta"))
    results = summary["delta"]["results"]
    files = summary["files"]
    assert summary["delta"]["without_id"] == sum(len(files[t]) for t in results) > 0
    assert all(results[t]["without_id"] == len(files[t]) for t in results)
    want = server_view(server)
    for rtype, rows in table_view(tmp_path / "out").items():
        assert len(rows) == len(want[rtype]) - results[rtype]["without_id"]
        assert set(rows) <= set(want[rtype])


def test_merge_operator_merges_a_landed_export_and_emits_assets(
    bulk_server: Callable[..., Any], tmp_path: Path
) -> None:
    from airflow_provider_smart.operators.tables import FhirDeltaMergeOperator

    server, _ = bulk_server(patients=8, seed=11)
    export(tmp_path, "scheduled__1")
    op = FhirDeltaMergeOperator(
        task_id="merge",
        output=str(tmp_path / "out"),
        run_label="scheduled__1",
        resource_types=["Patient", "Observation"],
        compact=True,
        vacuum_retention_hours=0,
    )
    assert {a.uri for a in op.outlets} == {
        f"file://{tmp_path}/out/tables/Patient",
        f"file://{tmp_path}/out/tables/Observation",
    }
    summary = op.execute({"run_id": "merge1"})
    assert set(summary["results"]) == {"Patient", "Observation"}
    assert set(table_view(tmp_path / "out")) == {"Patient", "Observation"}
    want = server_view(server)
    assert table_view(tmp_path / "out") == {t: want[t] for t in ("Patient", "Observation")}

    with pytest.raises(ValueError, match="no committed export or search run 'nope'"):
        FhirDeltaMergeOperator(task_id="m2", output=str(tmp_path / "out"), run_label="nope").execute({})


def test_search_operator_with_delta_format_merges_matches_and_includes(
    sandbox_factory: Callable[..., SandboxServer], smart_client_factory: Callable[..., SmartClient], tmp_path: Path
) -> None:
    from airflow_provider_smart.operators.search import FhirSearchOperator

    server = sandbox_factory(SandboxConfig(patients=8, seed=11))
    smart_client_factory(server=server)
    hba1c = "http://loinc.org|4548-4"

    def search(run_id: str) -> dict[str, Any]:
        op = FhirSearchOperator(
            task_id="search",
            resource_type="Observation",
            output=str(tmp_path / "out"),
            search_params={"code": hba1c, "_include": "Observation:patient"},
            incremental="watermark",
            formats=("ndjson", "delta"),
        )
        return dict(op.execute({"run_id": run_id}))

    def wanted() -> dict[str, dict[str, str | None]]:
        matches = {
            r["id"]: (r.get("meta") or {}).get("versionId")
            for r in server.state.store.iter_type("Observation")
            if any(c.get("code") == "4548-4" for c in (r.get("code") or {}).get("coding") or [])
        }
        patients = server_view(server)["Patient"]
        subjects = {
            r["subject"]["reference"].split("/")[-1]
            for r in server.state.store.iter_type("Observation")
            if r["id"] in matches
        }
        return {"Observation": matches, "Patient": {p: patients[p] for p in subjects}}

    first = search("run1")
    assert first["delta"]["source"] == "search:run1"
    assert table_view(tmp_path / "out") == wanted()
    time.sleep(1.1)
    amended_id = sorted(wanted()["Observation"])[0]
    amended = dict(server.state.store.get("Observation", amended_id) or {}, status="amended")
    server.state.store.put(amended)
    second = search("run2")
    assert second["delta"]["results"]["Observation"]["updated"] == 1
    assert table_view(tmp_path / "out")["Observation"] == wanted()["Observation"]
