"""Benchmark: FhirSearchOperator against the local sandbox, resources/s and peak memory (RSS).

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/bench_search.py                 # 100,000 Observations
    .venv/bin/python benchmarks/bench_search.py --resources 20000 --page-size 500 --gzip

The sandbox runs in this process; each extraction runs in a child process, so its peak RSS is the
client's alone. Two sizes are measured (a tenth of the target, then the target) to show that memory
stays flat as the number of resources grows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(args: argparse.Namespace) -> None:
    """Run one extraction with the operator, as a task would, and print a JSON result line."""
    from datetime import UTC, datetime

    from airflow_provider_smart.operators.search import FhirSearchOperator

    operator = FhirSearchOperator(
        task_id="bench",
        resource_type="Observation",
        search_params={"_lastUpdated": f"lt{args.until}"} if args.until else None,
        output=args.output,
        incremental=None,
        page_size=args.page_size,
        compression="gzip" if args.gzip else None,
    )
    before = rss_mib()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    summary = operator.execute({"run_id": f"bench-{datetime.now(UTC):%H%M%S}"})  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss / 1024
    count = summary["counts"]["Observation"]
    print(
        json.dumps(
            {
                "count": count,
                "seconds": elapsed,
                "rss_before_mib": before,
                "peak_rss_mib": peak,
                "client_cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime,
                "pages": summary["pages"],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=100_000, help="Observations to extract")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--until", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from airflow_provider_smart.sandbox.generator import SyntheticDataset
    from airflow_provider_smart.sandbox.server import SandboxServer
    from airflow_provider_smart.sandbox.state import SandboxConfig
    from tests.sandbox_fixtures import SmartClient, make_key, register_client

    # Enough synthetic patients for the target (counting is cheap: nothing is generated yet).
    patients = max(10, args.resources // 12)
    while SyntheticDataset(patients, seed=7).count("Observation") < args.resources:
        patients = int(patients * 1.1) + 1
    print(f"Starting the sandbox with {patients:,} patients ...", flush=True)
    with SandboxServer(SandboxConfig(patients=patients, seed=7, max_count=max(1000, args.page_size))) as server:
        store = server.state.store
        total = store.count("Observation")
        if total < args.resources:
            raise SystemExit(f"only {total} Observations generated; raise the patient count")
        key, pem, public = make_key("RS384")
        register_client(server, "bench-client", jwks={"keys": [public]})
        client = SmartClient(server, "bench-client", "smart_fhir_default", "RS384", key, pem, public)
        env = {**os.environ, "AIRFLOW_CONN_SMART_FHIR_DEFAULT": client.connection_json()}
        env.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
        env.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-airflow-"))
        # Bound each run by lastUpdated so it extracts exactly n resources (they are in lastUpdated order).
        ordered = [
            r["meta"]["lastUpdated"]
            for _, r in zip(range(args.resources + 1), store.iter_type("Observation"), strict=False)
        ]
        for n in (args.resources // 10, args.resources):
            until = ordered[n] if n < len(ordered) else None
            with tempfile.TemporaryDirectory(prefix="bench-search-") as out:
                command = [sys.executable, __file__, "--child", "--output", out, "--page-size", str(args.page_size)]
                command += ["--until", until] if until else []
                command += ["--gzip"] if args.gzip else []
                result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
                if result.returncode != 0:
                    raise SystemExit(result.stderr[-3000:])
                stats = json.loads(result.stdout.strip().splitlines()[-1])
                size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
            rate = stats["count"] / stats["seconds"]
            print(
                f"{stats['count']:>8,} resources in {stats['seconds']:6.1f}s = {rate:8,.0f} resources/s; "
                f"{stats['pages']} pages of {args.page_size}; {size / 2**20:,.1f} MiB written"
                f"{' (gzip)' if args.gzip else ''}; client RSS {stats['rss_before_mib']:.0f} MiB before the "
                f"search, peak {stats['peak_rss_mib']:.0f} MiB; client CPU {stats['client_cpu_seconds']:.1f}s "
                "(the rest is the sandbox serving)",
                flush=True,
            )


if __name__ == "__main__":
    main()
