"""Committing many files into one directory: the per-file leftover scan against one listing per batch.

Every landed file gets a commit record in ``_exports/<label>/files/`` (and every attachment one in
``_records/``), written atomically. Each atomic write first removes what killed earlier attempts left
of that file. Scanning the directory for that on every write costs a listing of everything written so
far, quadratic in the number of files (on S3, one LIST request per file, paged by 1,000 keys); a
batch's :class:`StaleTemps` lists the directory once. Prints, for each file count, seconds per 1,000
records and the directory listings made, both ways, on local disk. Run on demand::

    .venv/bin/python benchmarks/bench_commit_records.py [files ...]    # default: 500 1000 4000
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from airflow_provider_smart.fhir.bulk.manifest import parse_manifest, plan_files  # noqa: E402
from airflow_provider_smart.storage.atomic import StaleTemps  # noqa: E402
from airflow_provider_smart.storage.export_state import ExportLayout  # noqa: E402
from airflow_provider_smart.storage.paths import resolve_output  # noqa: E402


def run(files: int, *, batch: bool) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        layout = ExportLayout(resolve_output(tmp), "bench", export_id="e")
        manifest = parse_manifest(
            {
                "transactionTime": "2024-01-01T00:00:00Z",
                "output": [{"type": "Observation", "url": f"http://x/f{n}"} for n in range(files)],
            }
        )
        stale = StaleTemps() if batch else None
        started = time.perf_counter()
        for p in plan_files(manifest):
            layout.write_record(p, {"kind": p.kind, "lines": 1, "bytes": 3}, stale=stale)
        seconds = time.perf_counter() - started
        return seconds, stale.listings if stale is not None else files


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [500, 1000, 4000]
    print(f"{'files':>7}  {'per-file scan':>24}  {'one listing per batch':>28}  speedup")
    for files in sizes:
        old, old_listings = run(files, batch=False)
        new, new_listings = run(files, batch=True)
        print(
            f"{files:>7}  {old / files * 1000:8.3f} s/1000 ({old_listings:>6} listings)"
            f"  {new / files * 1000:8.3f} s/1000 ({new_listings:>6} listings)  {old / new:6.1f}x"
        )


if __name__ == "__main__":
    main()
