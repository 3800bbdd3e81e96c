"""The finishing steps below the operators: per-type jobs, the process pool, resuming a finish, and the
finish options. Real files on local disk and real child processes; no server (DELETE is off)."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.export import finish
from airflow_provider_smart.export.finish import FINISHED_TYPES, Finisher, finished_types, record_finished_type
from airflow_provider_smart.export.options import FinishOptions, available_cpus, check_finish_workers
from airflow_provider_smart.export.per_type import MIXED, StrayTypeError, TypeJob, finish_type, plan_type_jobs
from airflow_provider_smart.export.pool import run_jobs
from airflow_provider_smart.fhir.bulk import parse_manifest, plan_files
from airflow_provider_smart.storage.export_state import ExportLayout
from airflow_provider_smart.storage.paths import resolve_output

TYPES = {"Patient": 3, "Observation": 12, "Encounter": 6}
TT = "2024-01-01T00:00:00Z"


def _line(rtype: str, i: int) -> str:
    return json.dumps({"resourceType": rtype, "id": f"{rtype.lower()}-{i}", "meta": {"versionId": "1"}})


def landed_export(tmp_path: Path, types: dict[str, int] = TYPES, *, stray: bool = False) -> tuple[ExportLayout, Any]:
    """An export whose files all landed (staged, with records), as the download leaves it."""
    layout = ExportLayout(resolve_output(str(tmp_path / "out")), "run1", export_id="e1")
    output = [{"type": t, "url": f"http://fhir.test/f/{t}"} for t in types]
    manifest = parse_manifest({"transactionTime": "2024-01-01T00:00:00Z", "output": output})
    for p in plan_files(manifest):
        lines = [_line(p.expected_type or "", i) for i in range(types[p.expected_type or ""])]
        if stray and p.expected_type == "Patient":
            lines.append(_line("Encounter", 99))
        body = ("\n".join(lines) + "\n").encode()
        staged = layout.staged_path(p)
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(body)
        layout.write_record(p, {"kind": p.kind, "lines": len(lines), "bytes": len(body)})
    return layout, manifest


def state_of(layout: ExportLayout) -> dict[str, Any]:
    state = {"scope": {"level": "system"}, "conn_id": "c", "export_id": "e1", "phase": "downloading"}
    layout.write_state(state)
    return layout.read_state() or {}


def parquet_options(**extra: Any) -> FinishOptions:
    return FinishOptions(
        delete_on_success=False, parquet={"output": None, "output_conn_id": None, "options": {}}, **extra
    )


# -- planning ------------------------------------------------------------------------------------------
def test_one_job_per_type_largest_first(tmp_path: Path) -> None:
    layout, manifest = landed_export(tmp_path)
    jobs = plan_type_jobs(layout, manifest, output="x", output_conn_id=None, parquet={}, delta=None)
    assert [j.resource_type for j in jobs] == ["Observation", "Encounter", "Patient"]
    assert all(len(j.files) == 1 and j.size > 0 for j in jobs)
    assert TypeJob.from_json(json.loads(json.dumps(jobs[0].to_json()))) == jobs[0]  # travels as JSON


def test_files_of_mixed_types_make_one_job_for_everything(tmp_path: Path) -> None:
    layout = ExportLayout(resolve_output(str(tmp_path)), "run1", export_id="e1")
    output = [{"type": "Patient", "url": "http://fhir.test/a"}, {"type": "Patient", "url": "http://fhir.test/b"}]
    manifest = parse_manifest(
        {"transactionTime": "2024-01-01T00:00:00Z", "output": output, "outputOrganizedBy": "Patient"}
    )
    assert {p.directory for p in plan_files(manifest)} == {"by-Patient"}
    jobs = plan_type_jobs(layout, manifest, output="x", output_conn_id=None, parquet={}, delta=None)
    assert [(j.resource_type, len(j.files)) for j in jobs] == [(MIXED, 2)]


def test_types_with_deletions_only_are_merged_by_a_job(tmp_path: Path) -> None:
    layout, manifest = landed_export(tmp_path)
    jobs = plan_type_jobs(
        layout, manifest, output="x", output_conn_id=None, parquet=None, delta={}, extra_delta_types=["Condition"]
    )
    assert jobs[0].delta_types == ("Condition",)
    none = plan_type_jobs(
        layout,
        parse_manifest({"transactionTime": "2024-01-01T00:00:00Z", "output": []}),
        output="x",
        output_conn_id=None,
        parquet=None,
        delta={},
        extra_delta_types=["Condition"],
    )
    assert [(j.resource_type, j.files, j.delta_types) for j in none] == [(MIXED, (), ("Condition",))]


# -- the pool ------------------------------------------------------------------------------------------
def _square_or_fail(n: int) -> int:
    if n < 0:
        raise ValueError(f"negative job {n}")
    return n * n


def _pid(_: int) -> int:
    return os.getpid()


def test_pool_runs_jobs_in_child_processes_and_leaves_none_behind() -> None:
    done: list[int] = []
    assert run_jobs(_square_or_fail, [1, 2, 3, 4], workers=2, cpus=2, on_done=lambda j, r: done.append(j)) == [
        1,
        4,
        9,
        16,
    ]
    assert sorted(done) == [1, 2, 3, 4]
    pids = run_jobs(_pid, [0, 1, 2, 3], workers=2, cpus=2)
    assert pids[0] == os.getpid()  # this process takes the first (largest) job itself
    assert pids[1] != os.getpid()  # the next one went to a child
    assert not multiprocessing.active_children()


def _imported(_: int) -> list[str]:
    import sys

    return sorted(name for name in ("airflow", "airflow.sdk") if name in sys.modules)


def test_pool_children_do_not_rerun_this_process_main_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a task, ``__main__`` is the ``airflow`` command: a spawned child re-running it imports all of
    Airflow before its first job. The children skip it, and the parent's module is left as it was."""
    import sys

    script = tmp_path / "main_script.py"
    ran = tmp_path / "ran"
    script.write_text(f"open({str(ran)!r}, 'w').close()\n")
    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "__file__", str(script), raising=False)
    monkeypatch.setattr(main, "__spec__", None, raising=False)
    run_jobs(_imported, [0, 1], workers=2, cpus=2)
    assert not ran.exists(), "a child ran the parent's __main__ script"
    assert main.__file__ == str(script) and main.__spec__ is None


def test_a_finishing_child_imports_no_airflow_for_local_places(tmp_path: Path) -> None:
    """The parent resolves the places; the child's job runs on plain local paths (no Airflow import, which
    cost a child ~4 CPU-seconds before its first job)."""
    import functools

    from airflow_provider_smart.export.places import portable_places

    spec: dict[str, Any] = {"output": None, "output_conn_id": None, "options": {}}
    jobs = []
    for rtype in ("Patient", "Observation"):
        source = tmp_path / f"{rtype}.ndjson"
        source.write_text(_line(rtype, 1) + "\n")
        delta: dict[str, Any] = {
            "options": {},
            "output_conn_id": None,
        }  # the Delta merge too: it stages Parquet locally
        jobs.append(
            TypeJob(rtype, (f"file://{source}",), str(tmp_path), None, "run1", spec, delta, transaction_time=TT)
        )
    places = portable_places(jobs[0])
    assert places is not None and places.local
    fn = functools.partial(_finish_and_report, places=places)
    _, (result, modules) = run_jobs(fn, jobs, workers=2, cpus=2)
    assert result["parquet"] == {"Observation": 1} and result["delta"]["results"]["Observation"]["rows"] == 1
    assert "airflow" not in modules and "airflow.sdk" not in modules
    # The table committed its part; its _SUCCESS marker waits for the export's publication.
    assert (tmp_path / "parquet/Observation/run1/part-00000.parquet").exists()
    assert not (tmp_path / "parquet/Observation/run1/_SUCCESS").exists()


def _finish_and_report(job: TypeJob, places: Any) -> tuple[dict[str, Any], list[str]]:
    import sys

    return finish_type(job, places), [name for name in ("airflow", "airflow.sdk") if name in sys.modules]


def test_places_on_an_object_store_are_resolved_by_the_child() -> None:
    from airflow_provider_smart.export.places import portable_places

    spec: dict[str, Any] = {"output": None, "output_conn_id": None, "options": {}}
    assert portable_places(TypeJob("Patient", (), "s3://bucket/fhir", None, "run1", spec)) is None


def test_pool_of_one_runs_in_this_process() -> None:
    assert run_jobs(_pid, [0, 1], workers=1, cpus=4) == [os.getpid(), os.getpid()]


def test_pool_raises_the_first_failure_and_reports_what_finished() -> None:
    done: list[int] = []
    with pytest.raises(ValueError, match="negative job -1"):
        run_jobs(_square_or_fail, [2, -1, 3], workers=2, cpus=2, on_done=lambda j, r: done.append(j))
    assert 2 in done and -1 not in done
    assert not multiprocessing.active_children()


# -- finishing -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
def test_finish_converts_every_type_and_records_each(
    tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(finish, "MIN_BYTES_PER_PROCESS", 1)  # a process per type even for tiny files
    layout, manifest = landed_export(tmp_path)
    summary = Finisher(None, layout, state_of(layout), manifest, parquet_options(max_workers=workers)).run()
    assert summary["parquet"]["counts"] == dict(sorted(TYPES.items()))
    for rtype in TYPES:
        directory = tmp_path / "out" / "parquet" / rtype / "run1"
        assert (directory / "_SUCCESS").exists()
        assert [p.name for p in directory.iterdir() if p.name.endswith(".parquet")] == ["part-00000.parquet"]
    state = layout.read_state() or {}
    assert state["phase"] == "complete" and set(state[FINISHED_TYPES]) == set(TYPES)


def test_resumed_finish_redoes_only_the_types_that_did_not_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(finish, "MIN_BYTES_PER_PROCESS", 1)
    layout, manifest = landed_export(tmp_path)
    state = state_of(layout)
    finisher = Finisher(None, layout, state, manifest, parquet_options(max_workers=1))
    finisher.check()
    # An earlier attempt committed Observation, then died: its table and its record are there.
    first = next(j for j in finisher.type_jobs() if j.resource_type == "Observation")
    recorded = finish_type(first)
    record_finished_type(layout, first, recorded)
    kept = tmp_path / "out/parquet/Observation/run1/part-00000.parquet"
    before = kept.stat().st_mtime_ns, kept.stat().st_ino
    summary = Finisher(None, layout, layout.read_state() or {}, manifest, parquet_options(max_workers=2)).run()
    assert (kept.stat().st_mtime_ns, kept.stat().st_ino) == before  # not converted again
    assert summary["parquet"]["counts"] == dict(sorted(TYPES.items()))
    assert (tmp_path / "out/parquet/Patient/run1/_SUCCESS").exists()


def test_a_type_file_holding_another_type_fails_clearly_and_commits_nothing_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(finish, "MIN_BYTES_PER_PROCESS", 1)
    layout, manifest = landed_export(tmp_path, stray=True)
    with pytest.raises(StrayTypeError, match="Patient files of export run1 also hold Encounter"):
        Finisher(None, layout, state_of(layout), manifest, parquet_options(max_workers=2)).run()
    assert not (tmp_path / "out/parquet/Patient/run1/_SUCCESS").exists()
    state = layout.read_state() or {}
    assert state["phase"] == "downloading"  # the watermark did not move; a retry finishes the rest
    assert "Patient" not in (state.get(FINISHED_TYPES) or []) and "Patient" not in finished_types(layout)
    # Nothing of the run is published: the other types finished, but no marker of the run is readable.
    assert set(finished_types(layout)) == {"Observation", "Encounter"}
    out = tmp_path / "out"
    assert not (out / "_exports/run1/_SUCCESS").exists()
    published = [p.name for p in out.iterdir() if p.name in ("Patient", "Observation", "Encounter")]
    assert not published  # no NDJSON in a type's visible place
    assert not list((out / "parquet").glob("*/run1/_SUCCESS"))
    assert (out / "parquet/Observation/run1/part-00000.parquet").exists()  # committed, kept for the retry
    assert not (out / "_watermarks").exists()


def test_finish_workers_option() -> None:
    assert check_finish_workers(None) is None and check_finish_workers(3) == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="max_finish_workers"):
            check_finish_workers(bad)
    assert FinishOptions().workers == available_cpus() == len(os.sched_getaffinity(0))
    ref = FinishOptions(max_workers=3).to_ref()
    assert FinishOptions.from_ref(json.loads(json.dumps(ref))).max_workers == 3
    assert FinishOptions.from_ref(ref, max_workers=1).max_workers == 1


def test_small_exports_are_finished_in_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_smart.export import pool

    used: list[int] = []
    original = pool.run_jobs

    def spy(fn: Any, jobs: Any, *, workers: int, cpus: int, on_done: Any = None) -> Any:
        used.append(workers)
        return original(fn, jobs, workers=workers, cpus=cpus, on_done=on_done)

    monkeypatch.setattr(pool, "run_jobs", spy)
    layout, manifest = landed_export(tmp_path)
    Finisher(None, layout, state_of(layout), manifest, parquet_options(max_workers=4)).run()
    assert used == [1]  # a few kB: no process is worth starting


# -- a large type in shards ------------------------------------------------------------------------------
def test_a_large_type_is_written_in_shards_combined_into_one_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One large Observation file is cut into byte ranges written by two processes; the combine gives one
    table: every row once, part names that never collide, one schema for every part (the shard that met
    a field later is rewritten to it), the type's record grown once, no shard left."""
    import pyarrow.parquet as pq

    from airflow_provider_smart.export import shards

    monkeypatch.setattr(finish, "MIN_BYTES_PER_PROCESS", 1)
    monkeypatch.setattr(shards, "MIN_PIECE_BYTES", 1)
    counts = {"Observation": 400, "Patient": 3}
    layout, manifest = landed_export(tmp_path, counts)
    # The second half of the Observations has a field the first half lacks: the shards' records differ.
    obs = next(p for p in plan_files(manifest) if p.expected_type == "Observation")
    lines = [
        json.dumps({"resourceType": "Observation", "id": f"o-{i}", **({"status": "final"} if i >= 200 else {})})
        for i in range(400)
    ]
    body = ("\n".join(lines) + "\n").encode()
    layout.staged_path(obs).write_bytes(body)
    layout.write_record(obs, {"kind": "output", "lines": 400, "bytes": len(body)})
    summary = Finisher(None, layout, state_of(layout), manifest, parquet_options(max_workers=2)).run()
    assert summary["parquet"]["counts"] == {"Observation": 400, "Patient": 3}
    table = tmp_path / "out/parquet/Observation/run1"
    parts = sorted(p.name for p in table.glob("*.parquet"))
    assert len(parts) >= 2 and all(p.startswith("part-") for p in parts) and len(set(parts)) == len(parts)
    schemas = {str(pq.read_schema(table / p)) for p in parts}
    assert len(schemas) == 1 and "status" in schemas.pop()
    ids = [i for p in parts for i in pq.read_table(table / p, columns=["id"]).column("id").to_pylist()]
    assert sorted(ids) == sorted(f"o-{i}" for i in range(400))  # every row once
    record = json.loads((tmp_path / "out/parquet/Observation/_schema.json").read_text())
    assert "status" in record["fields"]
    assert (table / "_SUCCESS").exists()  # published
    assert not (tmp_path / "out/parquet/_shards").exists()
    assert finished_types(layout)["Observation"]["parquet"] == {"Observation": 400}


def test_split_for_pool_cuts_only_large_plain_types(tmp_path: Path) -> None:
    from dataclasses import replace

    from airflow_provider_smart.export import shards

    spec: dict[str, Any] = {"output": None, "output_conn_id": None, "options": {}}
    mb = 1 << 20
    big = TypeJob("Observation", ("file:///a.ndjson",), "/o", None, "r", spec, size=400 * mb)
    small = TypeJob("Patient", ("file:///p.ndjson",), "/o", None, "r", spec, size=40 * mb)
    out = shards.split_for_pool([big, small], 2, {"file:///a.ndjson": 400 * mb, "file:///p.ndjson": 40 * mb})
    cut = [j for j in out if j.resource_type == "Observation"]
    assert len(cut) == 4 and {j.shards for j in cut} == {4} and sorted(j.shard for j in cut) == [0, 1, 2, 3]
    assert [r for j in cut for r in j.ranges] == [(i * 100 * mb, (i + 1) * 100 * mb) for i in range(4)]
    assert all(j.delta is None for j in cut)  # the type's Delta merge runs once, after the combine
    assert out[-1] == small and out[0].size >= out[-2].size  # largest first
    gz = replace(big, files=("file:///a.ndjson.gz",))
    assert shards.split_for_pool([gz, small], 2, {"file:///a.ndjson.gz": 400 * mb}) == [gz, small]  # stays whole
    assert shards.split_for_pool([big, small], 1, {}) == [big, small]  # one process: nothing to balance


def test_a_mapped_type_task_writes_a_large_type_in_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fan-out: the one task of a large type spreads it over the task's CPUs too, and records it once."""
    import pyarrow.parquet as pq

    from airflow_provider_smart.export import shards
    from airflow_provider_smart.fhir.bulk.manifest import manifest_to_dict
    from airflow_provider_smart.operators.bulk_common import fanout_reference
    from airflow_provider_smart.operators.bulk_finish import FhirBulkFinishTypeOperator

    monkeypatch.setattr(shards, "MIN_PIECE_BYTES", 1)
    layout, manifest = landed_export(tmp_path, {"Observation": 300})
    layout.write_state(dict(state_of(layout), manifest=manifest_to_dict(manifest)))
    options = parquet_options(max_workers=2)
    ref = fanout_reference(str(tmp_path / "out"), None, layout, manifest.transaction_time, options)
    finisher = Finisher(None, layout, layout.read_state() or {}, manifest, options)
    (job,) = finisher.type_jobs()
    result = FhirBulkFinishTypeOperator(task_id="finish_type", export=ref, job=job.to_json()).execute({})  # type: ignore[arg-type]
    assert result["parquet"] == {"Observation": 300}
    table = tmp_path / "out/parquet/Observation/run1"
    parts = sorted(table.glob("part-*.parquet"))
    assert len(parts) > 1 and sum(pq.read_metadata(p).num_rows for p in parts) == 300
    assert finished_types(layout) == {"Observation": result}
    assert not (table / "_SUCCESS").exists()  # the finalize task publishes
