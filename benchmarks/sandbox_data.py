"""How fast and how lean the sandbox's synthetic data is: set-up, streaming, and search pages over HTTP.

Run on demand: ``.venv/bin/python benchmarks/sandbox_data.py [--patients 100000] [--resources 200000]``.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--resources", type=int, default=200_000, help="Observations to stream")
    parser.add_argument("--pages", type=int, default=20, help="search pages of 1000 to fetch over HTTP")
    args = parser.parse_args()

    from airflow_provider_smart.sandbox.generator import SyntheticDataset

    # Timing without tracemalloc (it slows Python down several times); memory from the peak RSS.
    before = rss_mb()
    started = time.perf_counter()
    dataset = SyntheticDataset(args.patients, seed=42)
    setup = time.perf_counter() - started
    total = sum(dataset.count(name) for name in dataset.types())
    print(
        f"set-up of {args.patients:,} patients ({total:,} resources): {setup:.2f} s, "
        f"peak RSS +{rss_mb() - before:.0f} MiB"
    )

    before = rss_mb()
    started = time.perf_counter()
    count = size = 0
    for _, item in dataset.iter_entries("Observation"):
        size += len(json.dumps(item))
        count += 1
        if count >= args.resources:
            break
    elapsed = time.perf_counter() - started
    print(
        f"streamed {count:,} Observations ({size / 2**20:.0f} MiB of JSON): {count / elapsed:,.0f} resources/s, "
        f"peak RSS +{rss_mb() - before:.0f} MiB"
    )

    from airflow_provider_smart.sandbox.server import SandboxServer
    from airflow_provider_smart.sandbox.state import SandboxConfig
    from tests.sandbox_fixtures import SmartClient, make_key, register_client

    with SandboxServer(SandboxConfig(patients=args.patients, seed=42)) as server:
        key, pem, public = make_key()
        register_client(server, "bench", jwks={"keys": [public]})
        client = SmartClient(server, "bench", "unused", "RS384", key, pem, public)
        session = client.session()
        url: str | None = f"{server.fhir_base}/Observation?_count=1000&_total=none"
        fetched = pages = 0
        started = time.perf_counter()
        while url and pages < args.pages:
            bundle = session.get(url, timeout=120).json()
            fetched += len(bundle["entry"])
            pages += 1
            url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        elapsed = time.perf_counter() - started
        print(f"search over HTTP: {pages} pages, {fetched:,} resources, {fetched / elapsed:,.0f} resources/s")
    print(f"peak RSS of this process: {rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
