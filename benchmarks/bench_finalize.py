"""Finishing an export of many files: summarize, publish and mark, on local disk.

Prints seconds per file count; the time per file should stay flat (finalize is linear in the number of
files). Run on demand: ``.venv/bin/python benchmarks/bench_finalize.py [files ...]``.
"""

from __future__ import annotations

import sys
import tempfile
import time

from airflow_provider_smart.fhir.bulk.manifest import parse_manifest, plan_files
from airflow_provider_smart.storage.export_landing import finalize
from airflow_provider_smart.storage.export_state import ExportLayout
from airflow_provider_smart.storage.paths import resolve_output

TYPES = [f"Type{chr(65 + n % 26)}{chr(65 + n // 26)}" for n in range(50)]  # 50 directories


def run(files: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        layout = ExportLayout(resolve_output(tmp), "bench", export_id="e")
        manifest = parse_manifest(
            {
                "transactionTime": "2024-01-01T00:00:00Z",
                "output": [{"type": TYPES[n % len(TYPES)], "url": f"http://x/f{n}"} for n in range(files)],
            }
        )
        for p in plan_files(manifest):
            staged = layout.staged_path(p)
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.write_bytes(b"{}\n")
            layout.write_record(p, {"kind": p.kind, "lines": 1, "bytes": 3})
        started = time.perf_counter()
        finalize(layout, manifest)
        return time.perf_counter() - started


if __name__ == "__main__":
    for n in [int(a) for a in sys.argv[1:]] or [2_000, 8_000]:
        seconds = run(n)
        print(
            f"finalize, {n:>7,} files in {len(TYPES)} directories: {seconds:6.2f} s ({seconds / n * 1e6:.0f} us/file)"
        )
