"""Benchmark: the export's finishing step on one core and on two (``taskset``), with its per-type pool.

First the start-up of one pool child (spawned as the pool spawns it, handed the places the parent
resolved, running a one-line job: its CPU seconds). Then two
measurements, each run in a child process pinned with ``taskset -c 0`` and then ``taskset -c 0,1``
(``max_finish_workers`` is left at its default, the CPUs the task may use, so the pinned child uses one
process and then two):

* ``parquet``: the ~1 GB 19-type corpus (synthea-100 replicated with ids rewritten, as
  ``bench_parquet.py`` builds it) converted to Parquet by the finishing step's per-type jobs, large types
  in shards (:func:`airflow_provider_smart.export.shards.finish_jobs`);
* ``finish``: the finishing step of a sandbox export of the synthea-100 fixture with
  ``formats=("ndjson", "parquet", "delta")``: the export is downloaded once (fanned out, not pinned),
  then each pinned child finishes a fresh copy of it (Parquet, Delta, publish, watermark).

Prints wall seconds, MB/s, CPU seconds (the child and its pool's processes: on a shared machine they
tell more than the wall clock) and the load average before and after; then one ``SPEED-UP`` line per
measurement (one core over two, wall clock; for Parquet also the critical path of CPU time and the
per-core rate in MB of NDJSON per CPU-second), and all the ratios as one JSON line. Run on demand::

    .venv/bin/python benchmarks/bench_finish_parallel.py [--mb 1000] [--repeat 1] [--skip-finish]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from bench_parquet import DEFAULT_FIXTURE, build_corpus  # noqa: E402

PINS = {"1 core": "0", "2 cores": "0,1"}


def cpu_split() -> tuple[float, float]:
    """CPU seconds of this process, and of every child it waited for (the pool's processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def cpu_seconds() -> float:
    return sum(cpu_split())


def peak_rss() -> float:
    """Peak RSS in MB of the largest single process: this one or one of its pool's."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return max(own.ru_maxrss, kids.ru_maxrss) / 1024


# -- children --------------------------------------------------------------------------------------------
def child_parquet(corpus: str, out: str) -> dict[str, Any]:
    from airflow_provider_smart.export.options import available_cpus
    from airflow_provider_smart.export.per_type import TypeJob, finish_type
    from airflow_provider_smart.export.shards import finish_jobs

    files = sorted(Path(corpus).glob("*.ndjson"), key=lambda p: -p.stat().st_size)
    spec: dict[str, Any] = {"output": out, "output_conn_id": None, "options": {}}
    jobs = [
        TypeJob(p.name.split(".")[0], (str(p),), corpus, None, "bench", spec, None, p.stat().st_size) for p in files
    ]
    warm = Path(out).with_name("warm-up")  # one line first: imports are not conversion
    warm.mkdir(parents=True, exist_ok=True)
    (warm / "Patient.ndjson").write_text('{"resourceType":"Patient","id":"w"}\n')
    finish_type(
        TypeJob("Patient", (str(warm / "Patient.ndjson"),), str(warm), None, "warm", dict(spec, output=str(warm)))
    )
    shutil.rmtree(warm)
    workers = available_cpus()
    sizes = {str(p): p.stat().st_size for p in files}
    start, (own, kids) = time.perf_counter(), cpu_split()
    # As the finishing step does: places resolved here (a child imports no Airflow), large types in shards.
    finish_jobs(jobs, workers=workers, cpus=workers, file_bytes=sizes, on_done=lambda job, result: None)
    own_after, kids_after = cpu_split()
    return {
        "seconds": time.perf_counter() - start,
        "cpu": own_after - own + kids_after - kids,
        "cpu_here": own_after - own,
        "cpu_children": kids_after - kids,
        "workers": workers,
        "rss": peak_rss(),
    }


def child_finish(ref_json: str) -> dict[str, Any]:
    from airflow_provider_smart.export.finish import MIN_BYTES_PER_PROCESS, Finisher
    from airflow_provider_smart.export.options import FinishOptions
    from airflow_provider_smart.fhir.bulk.manifest import parse_manifest
    from airflow_provider_smart.operators.bulk_common import bound_state

    ref = json.loads(ref_json)
    layout, state = bound_state(ref)
    options = FinishOptions.from_ref(ref, delete_on_success=False)
    import deltalake  # noqa: F401  (imports are not finishing)
    import pyarrow.parquet  # noqa: F401

    finisher = Finisher(None, layout, state, parse_manifest(state["manifest"]), options)
    jobs = finisher.type_jobs()
    processes = min(options.workers, len(jobs), max(1, sum(j.size for j in jobs) // MIN_BYTES_PER_PROCESS))
    start, cpu = time.perf_counter(), cpu_seconds()
    finisher.run()
    return {
        "processes": processes,
        "seconds": time.perf_counter() - start,
        "cpu": cpu_seconds() - cpu,
        "workers": options.workers,
        "rss": peak_rss(),
    }


def child_startup(work: Path) -> float:
    """CPU seconds of a finishing pool's child running a one-line job: spawned as the pool spawns it,
    handed the places the parent resolved (so almost all of it is the child's start-up)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from airflow_provider_smart.export.per_type import TypeJob, finish_type
    from airflow_provider_smart.export.places import portable_places
    from airflow_provider_smart.export.pool import _children_skip_main

    source = work / "startup" / "Patient.ndjson"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text('{"resourceType":"Patient","id":"s"}\n')
    spec: dict[str, Any] = {"output": str(work / "startup" / "pq"), "output_conn_id": None, "options": {}}
    job = TypeJob("Patient", (str(source),), str(source.parent), None, "startup", spec)
    places = portable_places(job)
    _, before = cpu_split()
    with _children_skip_main(), ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(finish_type, job, places).result()
    _, after = cpu_split()  # the child was waited for when the pool shut down
    shutil.rmtree(source.parent)
    return after - before


def pinned(cores: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        ["taskset", "-c", cores, sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise SystemExit(f"child {args[:1]} on cores {cores} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# -- the sandbox export ------------------------------------------------------------------------------------
def landed_sandbox_export(fixture: Path, work: Path, mb: float) -> dict[str, Any]:
    """Download an export of the fixture, replicated to about ``mb`` MB, from the sandbox (fanned out, so
    nothing is finished yet)."""
    from airflow_provider_smart.operators.bulk_export import FhirBulkDownloadOperator
    from airflow_provider_smart.sandbox.bulk_jobs import BulkSettings
    from airflow_provider_smart.sandbox.server import SandboxServer
    from airflow_provider_smart.sandbox.state import SandboxConfig
    from tests.integration.bulk_helpers import context, export_operator, run_deferred
    from tests.sandbox_fixtures import SmartClient, make_key, register_client

    data = work / "sandbox-data"
    build_corpus(fixture, data, replicas_for(fixture, mb))
    config = SandboxConfig(patients=0, ndjson_dirs=[data], bulk=BulkSettings(retry_after=1))
    with SandboxServer(config) as server:
        key, pem, public = make_key()
        register_client(server, "bench", jwks={"keys": [public]})
        client = SmartClient(
            server, "bench", "smart_fhir_default", "RS384", key, pem, public, "system/*.read", None, None
        )
        os.environ["AIRFLOW_CONN_SMART_FHIR_DEFAULT"] = client.connection_json()
        ctx = context()
        op = export_operator(
            work / "landed", formats=("ndjson", "parquet", "delta"), download_mode="fanout", delete_on_success=False
        )
        batches, _ = run_deferred(op, ctx)
        for n, batch in enumerate(batches):
            FhirBulkDownloadOperator(task_id=f"download_{n}", batch=batch).execute(context())
        return dict(ctx["ti"].xcoms["export"])


def replicas_for(fixture: Path, mb: float) -> int:
    import gzip

    base = sum(len(gzip.decompress(p.read_bytes())) for p in fixture.glob("*.ndjson.gz"))
    return max(1, -(-int(mb * 1e6) // base))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=1000.0, help="corpus size in MB (default 1000)")
    parser.add_argument("--finish-mb", type=float, default=250.0, help="sandbox export size in MB (default 250)")
    parser.add_argument("--repeat", type=int, default=1, help="pinned runs per setting (alternating)")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--skip-parquet", action="store_true")
    parser.add_argument("--skip-finish", action="store_true")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        print(json.dumps(child_parquet(*rest) if kind == "parquet" else child_finish(*rest)), flush=True)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-finish-"))
    print(f"load average before: {os.getloadavg()}; CPUs of this process: {len(os.sched_getaffinity(0))}")
    ratios: dict[str, Any] = {}
    try:
        startup = min(child_startup(work) for _ in range(3))
        print(f"pool child start-up: {startup:.2f} CPU-s for a one-line job (best of 3)", flush=True)
        ratios["child_startup_cpu_s"] = round(startup, 2)
        if not args.skip_parquet:
            corpus = work / "corpus"
            build_corpus(args.fixture, corpus, replicas_for(args.fixture, args.mb))
            size = sum(p.stat().st_size for p in corpus.glob("*.ndjson")) / 1e6
            walls: dict[str, list[float]] = {name: [] for name in PINS}
            paths: dict[str, list[float]] = {name: [] for name in PINS}
            rates: list[float] = []  # CPU seconds of the one-core runs
            for _ in range(args.repeat):
                for name, cores in PINS.items():
                    out = work / "parquet"
                    shutil.rmtree(out, ignore_errors=True)
                    got = pinned(cores, "--child", "parquet", str(corpus), str(out))
                    walls[name].append(got["seconds"])
                    if name == "1 core":
                        rates.append(got["cpu"])
                    # With one child, the longer of the two processes' CPU time is the step's critical path:
                    # its wall time on cores nobody else uses.
                    paths[name].append(max(got["cpu_here"], got["cpu_children"]))
                    print(
                        f"parquet {size:7.1f} MB, {len(list(corpus.glob('*.ndjson')))} types, {name} "
                        f"({got['workers']} process(es)): {got['seconds']:6.1f} s wall, {size / got['seconds']:6.1f} "
                        f"MB/s, {got['cpu']:6.1f} CPU-s ({size / got['cpu']:5.1f} MB per CPU-s), peak RSS per process "
                        f"{got['rss']:.0f} MB; CPU-s in the task's process {got['cpu_here']:.1f}, in children "
                        f"{got['cpu_children']:.1f}",
                        flush=True,
                    )
            ratios["parquet_cpu_path_1_core_over_2_cores"] = round(min(paths["1 core"]) / min(paths["2 cores"]), 2)
            ratios["parquet_1_core_over_2_cores"] = round(min(walls["1 core"]) / min(walls["2 cores"]), 2)
            ratios["parquet_goal"] = 1.6
            ratios["parquet_mb_per_cpu_s_1_core"] = round(size / min(rates), 1)
            print(
                f"SPEED-UP parquet {size:.0f} MB, 1 core -> 2 cores: {ratios['parquet_1_core_over_2_cores']:.2f}x wall "
                f"(goal 1.6x; best of {args.repeat}), {ratios['parquet_cpu_path_1_core_over_2_cores']:.2f}x on the "
                f"critical path of CPU time; PER-CORE RATE {ratios['parquet_mb_per_cpu_s_1_core']:.1f} MB of NDJSON "
                "per CPU-second (1 core)",
                flush=True,
            )
            shutil.rmtree(corpus, ignore_errors=True)
        if not args.skip_finish:
            ref = landed_sandbox_export(args.fixture, work, args.finish_mb)
            landed = Path(ref["output"])
            nbytes = sum(p.stat().st_size for p in landed.rglob("*.ndjson")) / 1e6
            finish_walls: dict[str, list[float]] = {name: [] for name in PINS}
            for _ in range(args.repeat):
                for name, cores in PINS.items():
                    copy = work / "finish"
                    shutil.rmtree(copy, ignore_errors=True)
                    shutil.copytree(landed, copy)
                    got = pinned(cores, "--child", "finish", json.dumps(dict(ref, output=str(copy))))
                    finish_walls[name].append(got["seconds"])
                    print(
                        f"finish (ndjson+parquet+delta) of a {nbytes:.1f} MB sandbox export, {name} "
                        f"({got['processes']} process(es)): {got['seconds']:6.1f} s wall, {got['cpu']:6.1f} CPU-s, "
                        f"peak RSS per process {got['rss']:.0f} MB",
                        flush=True,
                    )
            ratios["finish_1_core_over_2_cores"] = round(min(finish_walls["1 core"]) / min(finish_walls["2 cores"]), 2)
            print(
                f"SPEED-UP finish (ndjson+parquet+delta) {nbytes:.0f} MB, 1 core -> 2 cores: "
                f"{ratios['finish_1_core_over_2_cores']:.2f}x wall (best of {args.repeat})",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {os.getloadavg()}")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
