"""Benchmark: FHIR NDJSON -> Parquet with our writer beside plain pyarrow, on the same files, same run.

Builds a corpus of at least ``--mb`` megabytes by replicating the synthea-100 fixture (resource ids are
rewritten so they stay unique), one file per resource type, and converts it, each run in its own
subprocess:

* clean data: the baseline, then our writer -> ratio of our speed to the baseline's;
* the same data with one JSON ``null`` per 1,000 lines, then with one field FHIR R4 does not define per
  1,000 lines (our writer) -> ratio of each to our own clean speed (the "cliff" ratio);
* with ``--scaling``, also a quarter of the corpus (baseline and ours): peak RSS that stays put while the
  files grow 4x means flat memory.

Prints MB/s (wall and per CPU-second; CPU seconds of all threads tell more than wall time on a shared
machine) and peak RSS for each run, then the ratios as one JSON line.

    .venv/bin/python benchmarks/bench_parquet.py [--mb 400] [--scaling] [--fixture DIR] [--keep DIR]

The baseline is ``pyarrow.json.read_json`` (types inferred from the data) + ``pyarrow.parquet.write_table``
with default options: fast, but it reads each file whole into memory, its types change with the data, and
it reads an explicit ``null`` as absent (not lossless).
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


# Inserted at the start of one line in 1,000: ``implicitRules`` is an element of every R4 resource that
# Synthea never writes, so the null is the line's only change; the other field is not in R4 at all.
SPOILERS = {"clean": b"", "null": b'"implicitRules":null,', "unknown": b'"vendorTrackingCode":"x-17",'}
SPOIL_EVERY = 1000


def build_corpus(fixture: Path, target: Path, replicas: int, spoil: str = "clean") -> int:
    """One ``<Type>.ndjson`` per fixture file holding ``replicas`` copies; returns the total bytes.

    :param spoil: a key of ``SPOILERS``: what one line in ``SPOIL_EVERY`` gets.
    """
    target.mkdir(parents=True, exist_ok=True)
    total = 0
    insert = SPOILERS[spoil]
    n = 0
    for source in sorted(fixture.glob("*.ndjson.gz")):
        lines = gzip.decompress(source.read_bytes()).splitlines()
        with open(target / source.name.removesuffix(".gz"), "wb") as out:
            for k in range(replicas):
                prefix = f'"id":"r{k}-'.encode()
                for line in lines:
                    if not line.strip():
                        continue
                    data = line.replace(b'"id":"', prefix, 1) if k else line
                    n += 1
                    if insert and n % SPOIL_EVERY == 0:
                        data = b"{" + insert + data[1:]
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
    parser.add_argument("--mb", type=float, default=400.0, help="corpus size in MB (default 400)")
    parser.add_argument("--scaling", action="store_true", help="also convert a quarter of the corpus")
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
    if args.scaling:
        replicas += -replicas % 4  # a quarter of the corpus is then exactly a quarter
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-parquet-"))
    runs = [("clean", replicas, "baseline"), ("clean", replicas, "ours")]
    runs += [("null", replicas, "ours"), ("unknown", replicas, "ours")]
    if args.scaling:
        runs = [("clean", replicas // 4, "baseline"), ("clean", replicas // 4, "ours"), *runs]
    try:
        speed: dict[tuple[str, int, str], tuple[float, float]] = {}
        rss: dict[str, float] = {}
        for data, count, tool in runs:
            label = f"{data}{'' if count == replicas else '-quarter'}"
            corpus = work / f"corpus-{label}"
            if not corpus.exists():
                build_corpus(args.fixture, corpus, count, data)
            size = sum(p.stat().st_size for p in corpus.glob("*.ndjson"))
            largest = max(p.stat().st_size for p in corpus.glob("*.ndjson"))
            out = work / f"out-{tool}-{label}"
            seconds, cpu, peak = measure(tool, corpus, out)
            out_size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
            speed[(data, count, tool)] = (size / 1e6 / seconds, size / 1e6 / cpu)
            rss[f"{label}/{tool}"] = round(peak)
            print(
                f"{label:14} {tool:9} corpus {size / 1e6:7.1f} MB (largest file {largest / 1e6:6.1f} MB): "
                f"{size / 1e6 / seconds:6.1f} MB/s wall, {size / 1e6 / cpu:6.1f} MB per CPU-s, "
                f"{seconds:6.1f} s, peak RSS {peak:7.1f} MB, parquet {out_size / 1e6:6.1f} MB",
                flush=True,
            )
            shutil.rmtree(out, ignore_errors=True)

        def ratio(data: str, tool: str, over: tuple[str, str], index: int) -> float:
            return round(speed[(data, replicas, tool)][index] / speed[(over[0], replicas, over[1])][index], 3)

        print(
            json.dumps(
                {
                    "clean_ours_over_pyarrow": {
                        "wall": ratio("clean", "ours", ("clean", "baseline"), 0),
                        "cpu": ratio("clean", "ours", ("clean", "baseline"), 1),
                        "goal": 0.7,
                    },
                    "null_per_1000_over_own_clean": {
                        "wall": ratio("null", "ours", ("clean", "ours"), 0),
                        "cpu": ratio("null", "ours", ("clean", "ours"), 1),
                        "goal": 0.7,
                    },
                    "unknown_field_per_1000_over_own_clean": {
                        "wall": ratio("unknown", "ours", ("clean", "ours"), 0),
                        "cpu": ratio("unknown", "ours", ("clean", "ours"), 1),
                        "goal": 0.7,
                    },
                    "peak_rss_mb": rss,
                }
            )
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
