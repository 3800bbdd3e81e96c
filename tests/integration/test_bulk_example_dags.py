"""``airflow dags test`` of the example Bulk Data DAGs against the sandbox (deferral included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_smart.sandbox.server import SandboxServer
from tests.conftest import run_airflow
from tests.integration.asset_helpers import active_asset_uris, run_scheduler_asset_pass
from tests.integration.bulk_helpers import landed, store_view
from tests.integration.test_attachments_operators import _generated_notes, _index
from tests.integration.test_delta_dag import _asset_events
from tests.sandbox_fixtures import SmartClient

# Two `airflow dags test` runs in one test take minutes when the machine is busy.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _run(dag_id: str, conf: dict[str, str], date: str, *, succeeds: bool = True) -> str:
    result = run_airflow("dags", "test", dag_id, date, "--conf", json.dumps(conf))
    output = result.stdout[-6000:] + result.stderr[-6000:]
    if succeeds:
        assert result.returncode == 0, output
    return result.stdout + result.stderr


def _assert_listed(out: Path, locations: set[str]) -> None:
    """Airflow lists every location the run landed under ``out`` (relative paths): the example's output is
    a template, so they came through the task's alias and are listed after the scheduler's asset pass."""
    run_scheduler_asset_pass()
    assert active_asset_uris(f"file://{out}") == {f"file://{out}/{location}" for location in locations}


def _labels(root: Path, directory: str) -> list[str]:
    return sorted(p.name for p in (root / directory).iterdir() if p.is_dir())


def test_nightly_dag_exports_then_exports_only_changes(
    airflow_db: Path, sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path
) -> None:
    """Also the example DAG's ``attachments`` switch: the first night turns it on (one ``airflow dags test``
    fewer than a run of its own; attachments leave the landed NDJSON as it is, so nothing else changes)."""
    out = tmp_path / "nightly"
    _run("fhir_bulk_export_nightly", {"output": str(out), "attachments": True}, "2026-01-01")
    (label,) = _labels(out, "Patient")
    assert landed(out, label) == store_view(sandbox)
    assert (out / "_exports" / label / "_SUCCESS").exists()
    # The switch turned attachments on: every generated note landed, each attachment has its index line.
    assert _labels(out, "attachments") == [label]
    counts = json.loads((out / "_exports" / label / "state.json").read_text())["summary"]["attachments"]
    assert counts["landed"] == len(_generated_notes(sandbox)) > 0 and counts["failed"] == 0
    assert (out / "attachments" / label / "_SUCCESS").exists()
    _assert_listed(out, {f"{layer}{t}" for layer in ("", "parquet/") for t in store_view(sandbox)})
    assert len(_index(out, label)) == sum(
        len(d.get("content", [])) for d in sandbox.state.store.iter_type("DocumentReference")
    )
    (watermark,) = list((out / "_watermarks").glob("*.json"))
    first_tt = json.loads(watermark.read_text())["transaction_time"]

    # The next night exports only what changed since the first run's transactionTime.
    _run("fhir_bulk_export_nightly", {"output": str(out)}, "2026-01-02")
    second = [d for d in _labels(out, "_exports") if d != label]
    assert len(second) == 1
    state = json.loads((out / "_exports" / second[0] / "state.json").read_text())
    assert state["since"] == first_tt and state["phase"] == "complete"
    assert sum(state["summary"]["counts"].values()) == 0  # nothing changed in between


def test_group_fanout_dag(airflow_db: Path, sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path) -> None:
    out = tmp_path / "fanout"
    _run("fhir_bulk_export_group_fanout", {"output": str(out), "group_id": "grp-all"}, "2026-01-01")
    (label,) = _labels(out, "Patient")
    members = set(sandbox.state.store.group_member_ids("grp-all") or [])
    got = landed(out, label)
    assert got == store_view(sandbox, sorted(got), patients=members)
    assert set(got["Patient"]) == members
    state = json.loads((out / "_exports" / label / "state.json").read_text())
    assert state["phase"] == "complete" and state["summary"]["deleted_on_server"] is True
    # The finishing work ran as one mapped task per type: each type's tables and its record.
    assert set(state["summary"]["parquet"]["counts"]) == set(got)
    assert set(state["summary"]["delta"]["tables"]) == set(got)
    for rtype in got:
        assert (out / "parquet" / rtype / label / "_SUCCESS").exists()
        assert (out / "_exports" / label / "finished" / f"{rtype}.json").exists()
    assert list((out / "_watermarks").glob("*.json"))
    assert _asset_events(f"file://{out}")  # published: the finalize task's Asset events
    _assert_listed(out, {f"{layer}{t}" for layer in ("", "parquet/", "tables/") for t in got})


def test_group_fanout_dag_with_a_failed_type_keeps_the_watermark(
    airflow_db: Path, sandbox: SandboxServer, smart_client: SmartClient, tmp_path: Path
) -> None:
    out = tmp_path / "fanout"
    (out / "parquet").mkdir(parents=True)
    (out / "parquet" / "Observation").write_text("not a directory: the Observation table cannot be written")
    output = _run(
        "fhir_bulk_export_group_fanout", {"output": str(out), "group_id": "grp-all"}, "2026-01-01", succeeds=False
    )
    (label,) = _labels(out, "_exports")
    state = json.loads((out / "_exports" / label / "state.json").read_text())
    assert state["phase"] != "complete", output[-3000:]
    assert not list((out / "_watermarks").glob("*.json"))  # the watermark did not move
    finished = {p.stem for p in (out / "_exports" / label / "finished").glob("*.json")}
    assert "Observation" not in finished and "Patient" in finished  # the other types did finish
    assert not (out / "parquet" / "Observation").is_dir()
    # Nothing of the run is published: no marker readable, no NDJSON in a type's place, no Asset event.
    assert not (out / "_exports" / label / "_SUCCESS").exists()
    assert not [p.name for p in out.iterdir() if (p / label).exists() and p.name not in ("_exports", "parquet")]
    assert not list(out.glob(f"parquet/*/{label}/_SUCCESS"))
    assert (out / "parquet" / "Patient" / label).is_dir()  # its table committed, held back until published
    assert not _asset_events(f"file://{out}")
    # No DELETE: the export stays on the server for a retry (get() raises for a deleted export).
    assert sandbox.state.bulk.jobs.get(state["status_url"].rstrip("/").rsplit("/", 1)[-1])
