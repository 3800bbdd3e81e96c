"""Merge cost against table size: the same run merged into current-state tables of 1 M and 4 M rows.

The rows are realistic: the synthea-100 fixture's Observations, replicated with their ids rewritten (one
unique id per row) and a ``meta`` (versionId, lastUpdated) added. For each table size N:

- ``build``: the table of N rows (version 1), merged in runs of at most 1,000,000 new ids; built once per
  benchmark run and kept under ``benchmarks/out/`` (gitignored) with ``--keep``;
- ``merge``: the fixed 100,000-row run merged into a copy of it: 10,000 newer versions of ids spread over
  the table, 90,000 new ids, and 1,000 other ids of the table in the run's deleted Bundles;
- ``insert``: 100,000 new ids merged into another copy.

Each step runs in its own process and prints wall time, CPU time and peak RSS of the work (the interpreter
with Airflow, pyarrow and deltalake loaded is counted in the peak: it is what a worker holds), the
buckets the run touched and the files and bytes rewritten and added. Then the goals:
peak RSS of ``merge`` at the largest size <= 1.25x that at the smallest and <= 1.5 GiB, and ``insert`` CPU
at the largest size <= 1.5x that at the smallest.

Run: ``.venv/bin/python benchmarks/bench_delta_merge.py [--sizes 1000000 4000000] [--keep]``
(``--sizes 1000000 4000000 20000000`` by hand: the 20 M table needs ~15 GB of disk under benchmarks/out/).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "synthea-100" / "Observation.ndjson.gz"
OUT = REPO / "benchmarks" / "out" / "delta-merge"
RUN_ROWS = 100_000
UPDATED = 10_000
DELETED = 1_000
BUILD_CHUNK = 1_000_000
#: New ids of the runs start here (far above any table's ids).
NEW_BASE = 1_000_000_000
INSERT_BASE = 2_000_000_000
GIB = 1024**3


class Corpus:
    """synthea Observations with ids rewritten: row ``i`` is template ``i mod T`` under a unique id."""

    def __init__(self) -> None:
        self.tails: list[str] = []
        self.prefixes: list[str] = []
        with gzip.open(FIXTURE, "rt") as handle:
            for line in handle:
                resource_ = json.loads(line)
                rid = resource_.pop("id")
                resource_.pop("meta", None)
                resource_.pop("resourceType")
                self.prefixes.append(rid[:24])
                self.tails.append(json.dumps(resource_, separators=(",", ":"))[1:])

    def rid(self, i: int) -> str:
        return f"{self.prefixes[i % len(self.prefixes)]}{i:012x}"

    def line(self, i: int, version: int) -> str:
        meta = f'{{"versionId":"{version}","lastUpdated":"2024-{version:02d}-01T00:00:00Z"}}'
        return f'{{"resourceType":"Observation","id":"{self.rid(i)}","meta":{meta},{self.tails[i % len(self.tails)]}\n'


def generate(directory: Path, n: int) -> None:
    """The table's build runs, the fixed run (with its deleted file) and the insert-only run for size ``n``."""
    corpus = Corpus()
    directory.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, n, BUILD_CHUNK)):
        with (directory / f"build-{number:03d}.ndjson").open("w") as handle:
            handle.writelines(corpus.line(i, 1) for i in range(start, min(n, start + BUILD_CHUNK)))
    rng = random.Random(7)
    picked = rng.sample(range(n), UPDATED + DELETED)
    updated, deleted = sorted(picked[:UPDATED]), sorted(picked[UPDATED:])
    with (directory / "run.ndjson").open("w") as handle:
        handle.writelines(corpus.line(i, 2) for i in updated)
        handle.writelines(corpus.line(NEW_BASE + i, 1) for i in range(RUN_ROWS - UPDATED))
    with (directory / "deleted.ndjson").open("w") as handle:
        for start in range(0, len(deleted), 500):
            entries = [
                {"request": {"method": "DELETE", "url": f"Observation/{corpus.rid(i)}"}}
                for i in deleted[start : start + 500]
            ]
            handle.write(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}) + "\n")
    with (directory / "insert.ndjson").open("w") as handle:
        handle.writelines(corpus.line(INSERT_BASE + i, 1) for i in range(RUN_ROWS))


def step(name: str, directory: Path, table_dir: Path, n: int) -> None:
    """One measured step, in this (child) process; prints one JSON line."""
    # Imports first (Airflow's take seconds): the time below is the work; the RSS peak includes them.
    import deltalake  # noqa: F401
    import pyarrow

    import airflow_provider_smart.parquet.writer
    import airflow_provider_smart.tables.merge  # noqa: F401
    from airflow_provider_smart.storage.paths import resolve_output
    from airflow_provider_smart.tables.buckets import bucket_count_for
    from airflow_provider_smart.tables.deleted import read_deletions
    from airflow_provider_smart.tables.merge import DeltaTables, MergeResult

    root = resolve_output(str(table_dir))
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    results: list[MergeResult] = []
    if name == "build":
        tables = DeltaTables(root, buckets=bucket_count_for(n))
        for number, part in enumerate(sorted(directory.glob("build-*.ndjson"))):
            tt = f"2024-01-01T00:{number // 60:02d}:{number % 60:02d}Z"
            results.append(tables.merge([part], source=f"export:build-{number}", transaction_time=tt)["Observation"])
    elif name == "merge":
        deletions = read_deletions([directory / "deleted.ndjson"])
        merged = DeltaTables(root).merge(
            [directory / "run.ndjson"], deletions, source="export:run", transaction_time="2024-02-01T00:00:00Z"
        )
        results.append(merged["Observation"])
    else:
        merged = DeltaTables(root).merge(
            [directory / "insert.ndjson"], source="export:insert", transaction_time="2024-02-01T00:00:00Z"
        )
        results.append(merged["Observation"])
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    last = results[-1]
    print(
        json.dumps(
            {
                "step": name,
                "rows": n,
                "seconds": round(elapsed, 1),
                "cpu_seconds": round(usage.ru_utime + usage.ru_stime - cpu0, 1),
                "peak_rss_mib": round(usage.ru_maxrss / 1024),  # KiB on Linux
                "baseline_mib": round(baseline),
                "arrow_peak_mib": round(pyarrow.default_memory_pool().max_memory() / 2**20),
                "inserted": sum(r.inserted for r in results),
                "updated": sum(r.updated for r in results),
                "deleted": sum(r.deleted for r in results),
                "buckets": last.buckets,
                "buckets_touched": last.buckets_touched,
                "files_rewritten": sum(r.files_rewritten for r in results),
                "bytes_rewritten": sum(r.bytes_rewritten for r in results),
                "files_added": sum(r.files_added for r in results),
                "bytes_added": sum(r.bytes_added for r in results),
                "table_rows": last.rows,
            }
        ),
        flush=True,
    )


def run_step(name: str, directory: Path, table_dir: Path, n: int) -> dict[str, object]:
    command = [sys.executable, __file__, "--step", name, "--dir", str(directory), "--table", str(table_dir)]
    out = subprocess.run([*command, "--n", str(n)], capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        sys.stderr.write(out.stderr[-3000:])
        raise SystemExit(f"step {name} at {n:,} rows failed (exit code {out.returncode})")
    line: dict[str, object] = json.loads(lines[-1])
    if out.returncode != 0:
        # The work finished and reported; an abort at interpreter exit is noted, not counted.
        line["exit"] = out.returncode
    return line


def show(line: dict[str, object]) -> None:
    exit_note = f"  (exit code {line['exit']} after the work)" if "exit" in line else ""
    print(
        f"{line['step']:>7} {line['rows']:>11,}: {line['seconds']:>6.1f} s wall {line['cpu_seconds']:>6.1f} s CPU"
        f"  peak RSS {line['peak_rss_mib']:>5} MiB (imports {line['baseline_mib']})"
        f"  {line['inserted']:,} ins {line['updated']:,} upd {line['deleted']:,} del"
        f"  buckets {line['buckets_touched']}/{line['buckets']}"
        f"  rewritten {line['files_rewritten']} files {int(str(line['bytes_rewritten'])) / 1e6:,.0f} MB"
        f"  added {line['files_added']} files {int(str(line['bytes_added'])) / 1e6:,.0f} MB{exit_note}",
        flush=True,
    )


def goal(label: str, value: float, limit: float, unit: str = "x") -> bool:
    ok = value <= limit
    print(f"  {label}: {value:.2f}{unit} (goal <= {limit:g}{unit}) {'met' if ok else 'MISSED'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keep", action="store_true", help="keep the built tables and runs under --out")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        step(args.step, args.dir, args.table, args.n)
        return 0
    print("each step in its own process; a shared 2-core machine gives noisy times")
    measured: dict[tuple[str, int], dict[str, object]] = {}
    for n in sorted(args.sizes):
        directory = args.out / f"{n}"
        if directory.exists():
            shutil.rmtree(directory)
        started = time.perf_counter()
        generate(directory, n)
        print(f"generated {n:,} rows and the runs in {time.perf_counter() - started:.0f} s", flush=True)
        built = directory / "table"
        measured[("build", n)] = line = run_step("build", directory, built, n)
        show(line)
        for name in ("merge", "insert"):
            copy = directory / f"table-{name}"
            shutil.copytree(built, copy)
            measured[(name, n)] = line = run_step(name, directory, copy, n)
            show(line)
            shutil.rmtree(copy)
        if not args.keep:
            shutil.rmtree(directory)
    small, large = min(args.sizes), max(args.sizes)
    if small == large:
        return 0
    print(f"goals ({large:,} rows against {small:,}):")

    def value(name: str, n: int, key: str) -> float:
        return float(str(measured[(name, n)][key]))

    results = [
        goal(
            "merge peak RSS ratio", value("merge", large, "peak_rss_mib") / value("merge", small, "peak_rss_mib"), 1.25
        ),
        goal(f"merge peak RSS at {large:,}", value("merge", large, "peak_rss_mib") / 1024, 1.5, " GiB"),
        goal("insert CPU ratio", value("insert", large, "cpu_seconds") / value("insert", small, "cpu_seconds"), 1.5),
        goal(
            "insert peak RSS ratio",
            value("insert", large, "peak_rss_mib") / value("insert", small, "peak_rss_mib"),
            1.25,
        ),
    ]
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
