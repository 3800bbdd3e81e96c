"""Benchmark: FHIR NDJSON -> Parquet with our writer beside plain pyarrow, on the same files, same run.

Builds a corpus of at least ``--mb`` megabytes by replicating the synthea-100 fixture (resource ids are
rewritten so they stay unique), then converts it with each tool in its own subprocess, twice: on a
quarter of the corpus and on all of it, with one file per resource type each time (so files grow 4x).
Prints MB/s and peak RSS. Peak RSS that stays put while the files grow 4x means flat memory.

    .venv/bin/python benchmarks/bench_parquet.py [--mb 520] [--fixture DIR] [--keep DIR]

The baseline is ``pyarrow.json.read_json`` (types inferred from the data) + ``pyarrow.parquet.write_table``
with default options: fast, but it reads each file whole into memory and its types change with the data.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURE = REPO.parent / "shared" / "fixtures" / "synthea-100"


def build_corpus(fixture: Path, target: Path, replicas: int) -> int:
    """One ``<Type>.ndjson`` per fixture file holding ``replicas`` copies; returns the total bytes."""
    target.mkdir(parents=True, exist_ok=True)
    total = 0
    for source in sorted(fixture.glob("*.ndjson.gz")):
        lines = gzip.decompress(source.read_bytes()).splitlines()
        with open(target / source.name.removesuffix(".gz"), "wb") as out:
            for k in range(replicas):
                prefix = f'"id":"r{k}-'.encode()
                for line in lines:
                    if not line.strip():
                        continue
                    data = line.replace(b'"id":"', prefix, 1) if k else line
                    out.write(data + b"\n")
                    total += len(data) + 1
    return total


def run_ours(corpus: Path, out: Path) -> None:
    from airflow_provider_smart.parquet.writer import FhirParquetWriter

    with FhirParquetWriter(str(out), "bench") as writer:
        for path in sorted(corpus.glob("*.ndjson")):
            writer.write_ndjson(str(path), path.name.split(".")[0])


def run_baseline(corpus: Path, out: Path) -> None:
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(corpus.glob("*.ndjson")):
        table = pajson.read_json(path)
        pq.write_table(table, out / (path.name.split(".")[0] + ".parquet"))
        del table


def warm_up(tool: str, scratch: Path) -> None:
    """Convert one line first, so one-off imports (Airflow's, for ObjectStoragePath) are not timed."""
    corpus = scratch / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "Patient.ndjson").write_text('{"resourceType":"Patient","id":"w"}\n')
    (run_ours if tool == "ours" else run_baseline)(corpus, scratch / "out")
    shutil.rmtree(scratch)


def measure(tool: str, corpus: Path, out: Path) -> tuple[float, float, float]:
    """(conversion seconds, conversion CPU seconds, peak RSS in MB) of one tool run in a fresh subprocess.

    The seconds are measured inside the child around the conversion only, after a one-line warm-up:
    interpreter start and imports (Airflow's, for ObjectStoragePath, take seconds when bytecode caching is
    off) are not conversion. CPU seconds (all threads) tell more than wall time on a shared machine. Peak
    RSS covers the whole child.
    """
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", tool, str(corpus), str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{tool} failed: {output[-2000:]}")
    timing = next(json.loads(line) for line in output.splitlines() if "convert_seconds" in line)
    return timing["convert_seconds"], timing["cpu_seconds"], usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=520.0, help="corpus size in MB (default 520)")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument("--keep", type=Path, help="build the corpus and outputs here and keep them")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tool, corpus, out = args.child
        warm_up(tool, Path(out).with_name(Path(out).name + "-warm-up"))
        start, cpu = time.perf_counter(), time.process_time()
        (run_ours if tool == "ours" else run_baseline)(Path(corpus), Path(out))
        timing = {"convert_seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}
        print(json.dumps(timing), flush=True)
        return
    if not args.fixture.is_dir():
        raise SystemExit(f"fixture {args.fixture} not found; pass --fixture DIR with *.ndjson.gz files")
    base = sum(len(gzip.decompress(p.read_bytes())) for p in args.fixture.glob("*.ndjson.gz"))
    replicas = max(4, -(-int(args.mb * 1e6) // base))
    replicas += -replicas % 4
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-parquet-"))
    try:
        results = []
        for label, count in (("quarter", replicas // 4), ("full", replicas)):
            corpus = work / f"corpus-{label}"
            shutil.rmtree(corpus, ignore_errors=True)
            size = build_corpus(args.fixture, corpus, count)
            largest = max(p.stat().st_size for p in corpus.glob("*.ndjson"))
            for tool in ("baseline", "ours"):
                seconds, cpu, rss = measure(tool, corpus, work / f"out-{tool}-{label}")
                out_size = sum(p.stat().st_size for p in (work / f"out-{tool}-{label}").rglob("*.parquet"))
                results.append((label, tool, size, seconds, cpu, rss))
                print(
                    f"{label:8} {tool:9} corpus {size / 1e6:7.1f} MB (largest file {largest / 1e6:6.1f} MB): "
                    f"{size / 1e6 / seconds:6.1f} MB/s wall, {size / 1e6 / cpu:6.1f} MB per CPU-s, "
                    f"{seconds:6.1f} s, peak RSS {rss:7.1f} MB, parquet {out_size / 1e6:6.1f} MB",
                    flush=True,
                )
            shutil.rmtree(corpus)
        full = {tool: (s, cpu) for label, tool, _, s, cpu, _ in results if label == "full"}
        print(
            json.dumps(
                {
                    "wall_speed_ratio_ours_over_baseline": round(full["baseline"][0] / full["ours"][0], 3),
                    "cpu_speed_ratio_ours_over_baseline": round(full["baseline"][1] / full["ours"][1], 3),
                    "peak_rss_mb": {f"{label}/{tool}": round(rss) for label, tool, _, _, _, rss in results},
                }
            )
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
