"""Benchmark: download throughput of a >= 1 GB Bulk Data export, beside a plain streaming GET.

Starts the sandbox on 127.0.0.1 with enough synthetic patients for the requested size, runs one
system-level export, then measures in separate child processes (so each peak RSS is its own):

* ``client``: the provider's download path (``land_files``: line checks, atomic commits, records,
  parallel pool of ``--workers``) into a temporary directory;
* ``plain``: ``requests`` streaming GETs of the same URLs into /dev/null with the same pool size and
  no checks (the ceiling the client is compared with).

Prints MB/s and peak memory of both. Run: ``.venv/bin/python benchmarks/bench_export_download.py``
(options: ``--gb 1.0 --workers 4 --file-mb 64``). The sandbox runs in this process; transfers use
``Accept-Encoding: identity`` so the sandbox's on-the-fly gzip does not set the pace.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """Highest VmRSS seen while the download runs (ru_maxrss would include import-time peaks)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


# -- children ------------------------------------------------------------------------------------------
def child_client(manifest_path: str, workers: int) -> dict[str, Any]:
    from airflow_provider_smart.fhir.bulk import parse_manifest
    from airflow_provider_smart.hooks.smart import SmartFhirHook
    from airflow_provider_smart.storage.export_landing import DownloadSettings, land_files
    from airflow_provider_smart.storage.export_state import ExportLayout
    from airflow_provider_smart.storage.paths import resolve_output

    manifest = parse_manifest(json.loads(Path(manifest_path).read_text()))
    client = SmartFhirHook("smart_fhir_default").get_client()
    client.session.headers["Accept-Encoding"] = "identity"
    client.auth.get_token()  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as out:
        layout = ExportLayout(resolve_output(out), "bench")
        baseline = rss_mb()
        start = time.perf_counter()
        with RssSampler() as sampler:
            counts = land_files(client, layout, manifest, settings=DownloadSettings(max_workers=workers))
        elapsed = time.perf_counter() - start
    return {
        "bytes": counts["bytes"],
        "lines": counts["lines"],
        "seconds": elapsed,
        "baseline_mb": baseline,
        "peak_mb": sampler.peak,
    }


def child_plain(manifest_path: str, workers: int) -> dict[str, Any]:
    import requests

    from airflow_provider_smart.hooks.smart import SmartFhirHook

    manifest = json.loads(Path(manifest_path).read_text())
    hook = SmartFhirHook("smart_fhir_default")
    hook.get_access_token()
    session = requests.Session()

    def fetch(url: str) -> int:
        total = 0
        # The hook's cached token, renewed before it expires (the sandbox's tokens live 5 minutes).
        headers = {"Authorization": f"Bearer {hook.get_access_token()}", "Accept-Encoding": "identity"}
        with session.get(url, headers=headers, stream=True, timeout=120) as response:
            response.raise_for_status()
            for chunk in response.iter_content(1 << 20):
                total += len(chunk)
        return total

    baseline = rss_mb()
    start = time.perf_counter()
    with RssSampler() as sampler, ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(fetch, [item["url"] for item in manifest["output"]]))
    elapsed = time.perf_counter() - start
    return {"bytes": total, "seconds": elapsed, "baseline_mb": baseline, "peak_mb": sampler.peak}


# -- parent --------------------------------------------------------------------------------------------
def run_child(kind: str, manifest_path: Path, workers: int, env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(manifest_path), "--workers", str(workers)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if result.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{result.stderr[-3000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def export_manifest(server: Any, *, timeout: float = 3600) -> dict[str, Any]:
    from airflow_provider_smart.hooks.smart import SmartFhirHook

    # The provider's client: it renews the token when a long export outlives it.
    client = SmartFhirHook("smart_fhir_default").get_client()
    kickoff_headers = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
    response = client.request("GET", f"{server.fhir_base}/$export", headers=kickoff_headers)
    assert response.status_code == 202, response.text
    status_url = response.headers["Content-Location"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.request("GET", status_url, timeout=600, raise_for_status=False)
        if status.status_code == 200:
            return dict(status.json())
        assert status.status_code == 202, status.text
        time.sleep(1)
    raise SystemExit("export did not finish")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="export size to reach (GB of NDJSON)")
    parser.add_argument("--workers", type=int, default=4, help="parallel downloads")
    parser.add_argument("--file-mb", type=int, default=64, help="size of each export file (MB)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "MANIFEST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path = args.child
        out = child_client(path, args.workers) if kind == "client" else child_plain(path, args.workers)
        print(json.dumps(out))
        return

    from airflow_provider_smart.sandbox.bulk_jobs import BulkSettings
    from airflow_provider_smart.sandbox.server import SandboxServer
    from airflow_provider_smart.sandbox.state import SandboxConfig
    from tests.sandbox_fixtures import make_key, register_client

    def start(patients: int) -> tuple[Any, str]:
        settings = BulkSettings(max_file_resources=10**9, max_file_bytes=args.file_mb << 20, files_ttl=7200)
        server = SandboxServer(SandboxConfig(patients=patients, seed=7, bulk=settings)).start()
        _, pem, public = make_key("RS384")
        register_client(server, "bench", jwks={"keys": [public]}, access_token_expiration=3600)
        conn = json.dumps({"conn_type": "smart_fhir", "host": server.fhir_base, "login": "bench", "password": pem})
        os.environ["AIRFLOW_CONN_SMART_FHIR_DEFAULT"] = conn
        return server, conn

    # A pilot export sizes the real one.
    pilot_patients = 200
    server, _ = start(pilot_patients)
    pilot = export_manifest(server)
    from airflow_provider_smart.hooks.smart import SmartFhirHook

    pilot_client = SmartFhirHook("smart_fhir_default").get_client()
    pilot_bytes = sum(len(pilot_client.request("GET", i["url"]).content) for i in pilot["output"])
    server.stop()
    patients = math.ceil(args.gb * 1e9 * 1.02 / (pilot_bytes / pilot_patients))
    print(f"pilot: {pilot_bytes / pilot_patients / 1e3:.1f} kB per patient -> {patients} patients for {args.gb} GB")

    server, conn = start(patients)
    try:
        t0 = time.perf_counter()
        manifest = export_manifest(server)
        print(f"sandbox wrote the export in {time.perf_counter() - t0:.0f}s: {len(manifest['output'])} files")
        env = dict(os.environ, AIRFLOW_CONN_SMART_FHIR_DEFAULT=conn)
        with tempfile.TemporaryDirectory() as tmp:
            manifest_path = Path(tmp) / "manifest.json"
            manifest_path.write_text(json.dumps(manifest))
            plain = run_child("plain", manifest_path, args.workers, env)
            client = run_child("client", manifest_path, args.workers, env)
    finally:
        server.stop()
    size_gb = client["bytes"] / 1e9
    files = len(manifest["output"])
    print(f"export: {size_gb:.2f} GB, {client['lines']} resources, {files} files, {args.workers} workers")
    for name, result in (("plain streaming GET", plain), ("provider download", client)):
        rate = result["bytes"] / 1e6 / result["seconds"]
        print(
            f"{name:>20}: {rate:7.1f} MB/s ({result['seconds']:.1f}s); peak RSS {result['peak_mb']:.0f} MB "
            f"(baseline {result['baseline_mb']:.0f} MB, +{result['peak_mb'] - result['baseline_mb']:.0f} MB)"
        )


if __name__ == "__main__":
    main()
