"""Benchmark: SQL on FHIR views with the package's compiled evaluator beside per-resource fhirpathpy.

Two corpora: the synthea-100 fixture (x1) and a 10x copy with every id and reference rewritten so the
copies stay distinct (x10). Two views: ``patient_demographics`` (Patient) and ``observations``
(Observation, flattened: the value of the observation and of each component). Each measurement runs in
its own subprocess so its peak RSS is its own; rows/s count reading the NDJSON plus evaluating.

    .venv/bin/python benchmarks/bench_views.py [--fixture DIR] [--baseline-limit N]

The baseline evaluates the same column expressions with ``fhirpathpy`` (the R4 model, so choice types
resolve), one resource at a time, as a straightforward implementation would; ``getResourceKey()`` and
``getReferenceKey()`` are not FHIRPath functions there and become ``id`` / ``reference``. ``ours+parquet``
also builds the typed Arrow batches and writes the Parquet table, as the operator does.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURE = REPO.parent / "shared" / "fixtures" / "synthea-100"
VIEWS = {"patient_demographics": "Patient", "observations": "Observation"}
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def build_corpus(fixture: Path, target: Path, replicas: int) -> None:
    """``<Type>.ndjson`` with ``replicas`` copies; copy k rewrites every UUID (ids and references) to end in k."""
    target.mkdir(parents=True, exist_ok=True)
    for resource_type in VIEWS.values():
        lines = gzip.decompress((fixture / f"{resource_type}.ndjson.gz").read_bytes()).splitlines()
        with open(target / f"{resource_type}.ndjson", "wb") as out:
            for k in range(replicas):
                suffix = f"{k:012d}".encode()
                for line in lines:
                    out.write(_UUID.sub(lambda m, s=suffix: m.group()[:24] + s, line) if k else line)
                    out.write(b"\n")


def _translate(path: str) -> str:
    path = path.replace("getResourceKey()", "id")
    return re.sub(r"getReferenceKey\([A-Za-z]*\)", "reference", path)


def _columns(select: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["name"], _translate(c["path"])) for s in select for c in s.get("column", [])]


def run_ours(view_name: str, corpus: Path, write: bool) -> int:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_smart.views import ViewRunner, compile_view, library
    from airflow_provider_smart.views.sources import iter_file

    plan = compile_view(library.load(view_name))
    runner = ViewRunner(plan)
    source = ObjectStoragePath(f"file://{corpus / (plan.resource + '.ndjson')}")
    if write:
        from airflow_provider_smart.views.writer import ViewTableWriter

        writer = ViewTableWriter(plan, ObjectStoragePath(f"file://{corpus}/out"), "bench")
        writer.start()
        for item in iter_file(source):
            writer.add(runner.rows(item))
        return int(writer.commit({})["rows"])
    rows = 0
    for item in iter_file(source):
        rows += len(runner.rows(item))
    return rows


def run_fhirpathpy(view_name: str, corpus: Path, limit: int) -> int:
    from fhirpathpy import compile as fhirpath_compile
    from fhirpathpy.models import models

    from airflow_provider_smart.views import library

    view = library.load(view_name)
    model = models["r4"]
    top = view["select"][0]
    head = [(n, fhirpath_compile(p, model=model)) for n, p in _columns([top])]
    union = top.get("unionAll") or (view["select"][1].get("unionAll") if len(view["select"]) > 1 else None)
    branches = []
    for branch in union or []:
        each = fhirpath_compile(branch["forEach"], model=model) if "forEach" in branch else None
        branches.append((each, [(n, fhirpath_compile(p, model=model)) for n, p in _columns([branch])]))
    rows = 0
    with open(corpus / f"{view['resource']}.ndjson", "rb") as handle:
        for number, line in enumerate(handle):
            if number >= limit:
                break
            item = json.loads(line)
            base = {name: (fn(item) or [None])[0] for name, fn in head}
            if not branches:
                rows += 1
                continue
            for each, columns in branches:
                for focus in each(item) if each is not None else [item]:
                    row = dict(base)
                    row.update({name: (fn(focus) or [None])[0] for name, fn in columns})
                    rows += 1
    return rows


def child(engine: str, view_name: str, corpus: Path, limit: int) -> None:
    # Imports (Airflow's alone takes seconds) are not what is measured: load them before the clock starts.
    import airflow.sdk  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import airflow_provider_smart.views.sources
    import airflow_provider_smart.views.writer  # noqa: F401

    if engine == "fhirpathpy":
        import fhirpathpy.models  # noqa: F401
    else:
        # The first file opened through ObjectStoragePath sets up Airflow's filesystems (seconds, once).
        from airflow.sdk import ObjectStoragePath

        with ObjectStoragePath(f"file://{corpus / 'Patient.ndjson'}").open("rb") as warm:  # type: ignore[no-untyped-call]
            warm.read(1)
    started = time.perf_counter()
    if engine == "fhirpathpy":
        rows = run_fhirpathpy(view_name, corpus, limit)
    else:
        rows = run_ours(view_name, corpus, write=engine == "ours+parquet")
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_mb}))


def measure(engine: str, view_name: str, corpus: Path, limit: int) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--child", engine, view_name, str(corpus), str(limit)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"  {engine} failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument(
        "--baseline-limit", type=int, default=20000, help="resources the (slow) baseline reads at most per case"
    )
    args = parser.parse_args()
    try:
        import fhirpathpy  # noqa: F401
    except ImportError:
        print("fhirpathpy is not installed (it is a dev dependency: make setup); the baseline is skipped")
    with tempfile.TemporaryDirectory(prefix="bench-views-") as tmp:
        for scale in (1, 10):
            corpus = Path(tmp) / f"x{scale}"
            build_corpus(args.fixture, corpus, scale)
            for view_name in VIEWS:
                print(f"\nsynthea-100 x{scale}, view {view_name}")
                results = {}
                for engine in ("ours", "ours+parquet", "fhirpathpy"):
                    limit = args.baseline_limit if engine == "fhirpathpy" else 1 << 62
                    got = measure(engine, view_name, corpus, limit)
                    if got is None:
                        continue
                    rate = got["rows"] / got["seconds"]
                    results[engine] = rate
                    print(
                        f"  {engine:13s} {got['rows']:>8d} rows in {got['seconds']:6.2f}s = {rate:>9,.0f} rows/s,"
                        f" peak RSS {got['peak_mb']:.0f} MB"
                    )
                if "ours" in results and "fhirpathpy" in results:
                    print(f"  ratio ours / fhirpathpy: {results['ours'] / results['fhirpathpy']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
