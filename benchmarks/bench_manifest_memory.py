"""Memory of reading a completed manifest: a million-file manifest under the caps and without them.

A loopback server streams the manifest; the client runs in a child process (the one the hostile-manifest
tests use) and reports its peak resident size. Prints the peak and the outcome per case. Run on
demand: ``.venv/bin/python benchmarks/bench_manifest_memory.py [entries ...]`` (default 1000000).
"""

from __future__ import annotations

import sys

from tests.integration.test_hostile_manifests import run_child, serve_manifest
from tests.loopback import answering

URL = "https://bucket.example.com/exports/abc/Observation-{n:07d}.ndjson?X-Amz-Signature=0123456789"
CASES = {
    "default caps": {},
    "no caps": {"max_manifest_bytes": 1 << 30, "max_manifest_files": 10**8},
}


def main(entries: list[int]) -> None:
    for count in entries:
        for name, options in CASES.items():
            with answering(serve_manifest(count, URL)) as server:  # type: ignore[arg-type]
                outcome, peak_kib = run_child(server.url, options)
            print(f"{count:>9} files, {name:<12}: peak {peak_kib / 1024:7.0f} MiB, {outcome.split(' ')[0]}")


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [1_000_000])
