"""Merge into a current-state Delta table, beside writing the same rows as plain Parquet.

A table of N Observations exists; a run of N Observations arrives (10% of them newer versions, the rest
the same versions as in the table, as a full re-export brings) with 1% of the ids in its deleted
Bundles. Each step runs in its own process and prints its wall time and peak RSS:

- ``create``: the first merge (N rows into an empty table);
- ``merge``: the run above merged into the table (10% updated, 1% deleted, the rest left alone);
- ``parquet``: the same run's N rows written as plain Parquet by the Parquet writer.

Run: ``.venv/bin/python benchmarks/bench_delta_merge.py [--n 1000000] [--dir /tmp/bench-delta]``
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CODES = [("4548-4", "Hemoglobin A1c"), ("2345-7", "Glucose"), ("8480-6", "Systolic BP"), ("718-7", "Hemoglobin")]


def observation(i: int, version: int) -> dict[str, object]:
    code, text = CODES[i % len(CODES)]
    return {
        "resourceType": "Observation",
        "id": f"obs-{i:08d}",
        "meta": {"versionId": str(version), "lastUpdated": f"2024-0{version}-01T00:00:00Z"},
        "status": "final" if version == 1 else "amended",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": text}], "text": text},
        "subject": {"reference": f"Patient/pat-{i % 5000:05d}"},
        "effectiveDateTime": f"2023-{1 + i % 12:02d}-{1 + i % 28:02d}T08:00:00Z",
        "valueQuantity": {"value": round(4 + (i % 700) / 100, 2), "unit": "%", "system": "http://unitsofmeasure.org"},
    }


def generate(directory: Path, n: int) -> None:
    rng = random.Random(7)
    updated = set(rng.sample(range(n), n // 10))
    deleted = set(rng.sample(range(n), n // 100)) - updated
    with (directory / "base.ndjson").open("w") as base, (directory / "run.ndjson").open("w") as run:
        for i in range(n):
            base.write(json.dumps(observation(i, 1)) + "\n")
            if i not in deleted:
                run.write(json.dumps(observation(i, 2 if i in updated else 1)) + "\n")
    with (directory / "deleted.ndjson").open("w") as handle:
        ids = sorted(deleted)
        for start in range(0, len(ids), 500):
            entries = [
                {"request": {"method": "DELETE", "url": f"Observation/obs-{i:08d}"}} for i in ids[start : start + 500]
            ]
            handle.write(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}) + "\n")


def step(name: str, directory: Path) -> None:
    """One measured step, in this (child) process."""
    # Imports first (Airflow's take seconds): the time below is the work, the RSS peak includes them.
    import deltalake  # noqa: F401

    import airflow_provider_smart.parquet.writer
    import airflow_provider_smart.tables.merge  # noqa: F401
    from airflow_provider_smart.storage.paths import resolve_output

    resolve_output(str(directory))
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    detail = ""
    if name == "parquet":
        from airflow_provider_smart.parquet.writer import FhirParquetWriter

        with FhirParquetWriter(str(directory / "parquet"), "run") as writer:
            writer.write_ndjson(str(directory / "run.ndjson"), "Observation")
        detail = f"{writer.result['Observation']['rows']} rows"
    else:
        from airflow_provider_smart.tables.deleted import read_deletions
        from airflow_provider_smart.tables.merge import DeltaTables

        tables = DeltaTables(resolve_output(str(directory / "tables")))
        if name == "create":
            result = tables.merge(
                [directory / "base.ndjson"], source="export:base", transaction_time="2024-01-01T00:00:00Z"
            )
        else:
            deletions = read_deletions([directory / "deleted.ndjson"])
            result = tables.merge(
                [directory / "run.ndjson"], deletions, source="export:run", transaction_time="2024-02-01T00:00:00Z"
            )
        r = result["Observation"]
        detail = f"{r.inserted} inserted, {r.updated} updated, {r.deleted} deleted, {r.unchanged} unchanged"
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(
        json.dumps(
            {
                "step": name,
                "seconds": round(elapsed, 1),
                "peak_rss_mib": round(peak),
                "baseline_mib": round(baseline),
                "detail": detail,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        step(args.step, args.dir)
        return 0
    directory = args.dir or Path(tempfile.mkdtemp(prefix="bench-delta-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        generate(directory, args.n)
        size = (directory / "run.ndjson").stat().st_size / 1e6
        print(
            f"generated {args.n:,} + {args.n:,} Observations ({size:.0f} MB per run) in "
            f"{time.perf_counter() - started:.0f}s"
        )
        for name in ("create", "merge", "parquet"):
            out = subprocess.run(
                [sys.executable, __file__, "--step", name, "--dir", str(directory)],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                sys.stderr.write(out.stderr[-3000:])
                return out.returncode
            line = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{line['step']:>8}: {line['seconds']:>7.1f} s  peak RSS {line['peak_rss_mib']:>5} MiB"
                f" (after imports {line['baseline_mib']} MiB)"
                f"  ({line['detail']})"
            )
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
