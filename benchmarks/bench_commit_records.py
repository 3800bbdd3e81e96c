"""Committing many files into one directory: the per-file leftover scan against one listing per batch.

Every landed file gets a commit record in ``_exports/<label>/files/`` (and every attachment one in
``_records/``), written atomically. Each atomic write first removes what killed earlier attempts left
of that file. Scanning the directory for that on every write costs a listing of everything written so
far, quadratic in the number of files (on S3, one LIST request per file, paged by 1,000 keys); a
batch's :class:`StaleTemps` lists the directory once. Prints, for each file count, seconds per 1,000
records and the directory listings counted, both ways, on local disk. Run on demand::

    .venv/bin/python benchmarks/bench_commit_records.py [files ...]    # default: 500 1000 4000
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from airflow_provider_smart.fhir.bulk.manifest import parse_manifest, plan_files  # noqa: E402
from airflow_provider_smart.storage.atomic import StaleTemps  # noqa: E402
from airflow_provider_smart.storage.export_state import ExportLayout  # noqa: E402
from airflow_provider_smart.storage.paths import resolve_output  # noqa: E402

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


@contextlib.contextmanager
def count_listings(root: ObjectStoragePath) -> Iterator[list[int]]:
    """Count every directory listing (glob) made through ``root``'s path class while inside."""
    counter = [0]
    cls = type(root)
    original = cls.glob

    def counting(self: ObjectStoragePath, pattern: str, *args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return original(self, pattern, *args, **kwargs)

    cls.glob = counting  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        cls.glob = original  # type: ignore[method-assign]


def run(files: int, *, batch: bool) -> tuple[float, int]:
    """Seconds to write ``files`` records, and the directory listings that took."""
    with tempfile.TemporaryDirectory() as tmp:
        root = resolve_output(tmp)
        layout = ExportLayout(root, "bench", export_id="e")
        manifest = parse_manifest(
            {
                "transactionTime": "2024-01-01T00:00:00Z",
                "output": [{"type": "Observation", "url": f"http://x/f{n}"} for n in range(files)],
            }
        )
        stale = StaleTemps() if batch else None
        with count_listings(root) as listings:
            started = time.perf_counter()
            for p in plan_files(manifest):
                layout.write_record(p, {"kind": p.kind, "lines": 1, "bytes": 3}, stale=stale)
            return time.perf_counter() - started, listings[0]


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [500, 1000, 4000]
    print(f"{'files':>7}  {'a listing per file':>30}  {'one listing per batch':>30}  speedup")
    for files in sizes:
        old, old_listings = run(files, batch=False)
        new, new_listings = run(files, batch=True)
        print(
            f"{files:>7}  {old:8.1f} s ({old / files * 1000:6.2f} s/1000, {old_listings:>5} listings)"
            f"  {new:8.1f} s ({new / files * 1000:6.2f} s/1000, {new_listings:>5} listings)  {old / new:6.1f}x"
        )


if __name__ == "__main__":
    main()
