"""Benchmark: checked Bulk Data downloads beside ``curl -Z --parallel-max 5`` of the same files.

Writes ``--gb`` of NDJSON (synthetic FHIR resources from the sandbox's generator, one resource type per
file, ``--files`` files) into a temporary directory, serves it with nginx started on 127.0.0.1 (Debian's
``nginx-light`` or ``nginx``; ``apt-get install -y nginx-light curl``), then measures, interleaved
``--repeat`` times, each in its own process:

* ``curl``: ``curl -Z --parallel-max 5`` of every file into /dev/null (the baseline);
* ``bare``: the provider's :class:`BulkDownloader` (every line checked: JSON, object, ``resourceType``,
  manifest count) into /dev/null, ``--workers`` in parallel;
* ``land_files``: the export operator's download path: the same checks plus atomic
  ``ObjectStoragePath`` writes into a temporary directory and a commit record per file.

With ``--old-src DIR`` (a directory holding an earlier ``airflow_provider_smart``, e.g. from
``git archive <commit> airflow_provider_smart | tar -x -C DIR``) it also runs ``bare_old``: that
version's downloader on the same files, so old and new are compared in one run.

Prints the median MB/s of each, its ratio to curl, and the peak RSS of each process (VmRSS sampled
while downloading, and the baseline before it). Run on demand, never in the tests::

    .venv/bin/python benchmarks/bench_export_download.py              # 1 GB, 32 files
    .venv/bin/python benchmarks/bench_export_download.py --gb 0.1 --repeat 1
    .venv/bin/python benchmarks/bench_export_download.py --gb 2 --repeat 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TYPES = ["Observation", "Encounter", "Condition", "Procedure", "MedicationRequest", "DiagnosticReport"]


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


# -- data and server -----------------------------------------------------------------------------------
def write_files(root: Path, total_bytes: int, files: int) -> list[dict[str, Any]]:
    """``files`` NDJSON files of about ``total_bytes / files`` each; returns manifest output entries."""
    from airflow_provider_smart.sandbox.generator import SyntheticDataset

    data = SyntheticDataset(patients=200, seed=7)
    pools: dict[str, bytes] = {}
    for rtype in TYPES:
        lines = [
            json.dumps(r, separators=(",", ":")).encode() + b"\n"
            for i in range(data.patients)
            for r in data.patient_resources(rtype, i)
        ]
        pools[rtype] = b"".join(lines)
    per_file = total_bytes // files
    entries = []
    for n in range(files):
        rtype = TYPES[n % len(TYPES)]
        pool = pools[rtype]
        repeats = max(1, per_file // len(pool))
        name = f"{rtype}.{n:03d}.ndjson"
        with (root / name).open("wb") as fh:
            for _ in range(repeats):
                fh.write(pool)
        entries.append({"type": rtype, "file": name, "count": pool.count(b"\n") * repeats})
    return entries


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def nginx(root: Path, work: Path) -> Iterator[str]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        raise SystemExit("nginx is not installed: apt-get update && apt-get install -y nginx-light")
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 2;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/fhir+ndjson;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""
    )
    proc = subprocess.Popen([binary, "-p", str(work), "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"nginx did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- children ------------------------------------------------------------------------------------------
def _manifest(spec: dict[str, Any]) -> Any:
    from airflow_provider_smart.fhir.bulk import parse_manifest

    return parse_manifest(
        {
            "transactionTime": "2024-01-01T00:00:00Z",
            "requiresAccessToken": False,
            "output": [
                {"type": e["type"], "url": f"{spec['base']}/{e['file']}", "count": e["count"]} for e in spec["entries"]
            ],
            "error": [],
        }
    )


def child_bare(spec: dict[str, Any]) -> dict[str, Any]:
    from airflow_provider_smart.fhir.bulk.manifest import plan_files
    from airflow_provider_smart.fhir.download import BulkDownloader
    from airflow_provider_smart.fhir.http import FhirHttpClient

    planned = plan_files(_manifest(spec))
    client = FhirHttpClient(None, spec["base"])
    downloader = BulkDownloader(client, requires_access_token=False, max_workers=spec["workers"])

    @contextlib.contextmanager
    def devnull(_: Any) -> Iterator[Any]:
        with open(os.devnull, "wb") as fh:
            yield fh

    baseline = rss_mb()
    start = time.perf_counter()
    with RssSampler() as sampler:
        results = downloader.download_all(planned, devnull)
    elapsed = time.perf_counter() - start
    import airflow_provider_smart

    return {
        "source": str(Path(airflow_provider_smart.__file__).parent.parent),
        "bytes": sum(r.bytes for r in results),
        "lines": sum(r.lines for r in results),
        "seconds": elapsed,
        "baseline_mb": baseline,
        "peak_mb": sampler.peak,
    }


def child_land(spec: dict[str, Any]) -> dict[str, Any]:
    from airflow_provider_smart.fhir.http import FhirHttpClient
    from airflow_provider_smart.storage.export_landing import DownloadSettings, _load_lineage_machinery, land_files
    from airflow_provider_smart.storage.export_state import ExportLayout
    from airflow_provider_smart.storage.paths import resolve_output

    manifest = _manifest(spec)
    # A task process loads Airflow's lineage collector (and its plugins) once, on its first tracked
    # write; land_files does that before its workers start. Timed apart: it is a fixed cost per task
    # (seconds here, where bytecode is not cached), not a download rate.
    warm = time.perf_counter()
    _load_lineage_machinery()
    warm = time.perf_counter() - warm
    client = FhirHttpClient(None, spec["base"])
    with tempfile.TemporaryDirectory(prefix="bench-land-", dir=spec.get("out_dir")) as out:
        layout = ExportLayout(resolve_output(out), "bench")
        baseline = rss_mb()
        start = time.perf_counter()
        with RssSampler() as sampler:
            counts = land_files(client, layout, manifest, settings=DownloadSettings(max_workers=spec["workers"]))
        elapsed = time.perf_counter() - start
    return {
        "bytes": counts["bytes"],
        "lines": counts["lines"],
        "seconds": elapsed,
        "baseline_mb": baseline,
        "peak_mb": sampler.peak,
        "lineage_load_seconds": warm,
    }


def run_python_child(kind: str, spec_path: Path, old_src: str | None = None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, str(spec_path)]
    if kind == "bare_old":
        command = [*command[:3], "bare", str(spec_path), "--old-src", str(old_src)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=REPO, text=True)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed")
    return dict(json.loads(out.strip().splitlines()[-1]))


def run_curl(spec: dict[str, Any]) -> dict[str, Any]:
    args = ["curl", "--no-progress-meter", "--fail", "-Z", "--parallel-max", "5", "--compressed"]
    for entry in spec["entries"]:
        args += [f"{spec['base']}/{entry['file']}", "-o", os.devnull]
    start = time.perf_counter()
    proc = subprocess.Popen(args)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"curl failed with {proc.returncode}")
    return {"bytes": spec["bytes"], "seconds": elapsed, "baseline_mb": 0.0, "peak_mb": usage.ru_maxrss / 1024}


# -- parent --------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="total size of the files (GB)")
    parser.add_argument("--files", type=int, default=32, help="number of files")
    parser.add_argument("--workers", type=int, default=5, help="parallel downloads (curl: --parallel-max 5)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of each (medians printed)")
    parser.add_argument("--only", default="curl,bare,land_files", help="which to run (comma separated)")
    parser.add_argument("--out-dir", help="where land_files writes (default: a temporary directory on disk)")
    parser.add_argument("--old-src", help="a directory with an earlier airflow_provider_smart to compare")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.old_src:
            sys.path.insert(0, str(Path(args.old_src).resolve()))
        kind, path = args.child
        spec = json.loads(Path(path).read_text())
        print(json.dumps(child_bare(spec) if kind == "bare" else child_land(spec)))
        return

    wanted = args.only.split(",")
    if args.old_src:
        wanted.append("bare_old")
    with tempfile.TemporaryDirectory(prefix="bench-dl-") as tmp:
        root = Path(tmp) / "files"
        work = Path(tmp) / "nginx"
        root.mkdir()
        work.mkdir()
        for readable in (Path(tmp), root):
            readable.chmod(0o755)  # nginx's workers run as an unprivileged user
        t0 = time.perf_counter()
        entries = write_files(root, int(args.gb * 1e9), args.files)
        total = sum((root / e["file"]).stat().st_size for e in entries)
        print(f"wrote {total / 1e9:.2f} GB in {len(entries)} files in {time.perf_counter() - t0:.0f}s")
        with nginx(root, work) as base:
            spec = {
                "base": base,
                "entries": entries,
                "workers": args.workers,
                "bytes": total,
                "out_dir": args.out_dir or tmp,
            }
            spec_path = Path(tmp) / "spec.json"
            spec_path.write_text(json.dumps(spec))
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in wanted}
            for _ in range(args.repeat):
                for kind in wanted:
                    if kind == "curl":
                        result = run_curl(spec)
                    else:
                        result = run_python_child(
                            kind if kind == "bare_old" else kind.split("_")[0], spec_path, args.old_src
                        )
                    if kind != "curl" and result["bytes"] != total:
                        raise SystemExit(f"{kind} got {result['bytes']} bytes, expected {total}")
                    runs[kind].append(result)
                    rate = result["bytes"] / 1e6 / result["seconds"]
                    extra = ""
                    if kind == "bare_old":
                        extra = f" (from {result['source']})"
                    if "lineage_load_seconds" in result:
                        extra = f" (lineage collector loaded in {result['lineage_load_seconds']:.1f}s before)"
                    print(f"  {kind:>10}: {rate:7.1f} MB/s, peak RSS {result['peak_mb']:.0f} MB{extra}", flush=True)
    print(f"{total / 1e9:.2f} GB, {len(entries)} files, {args.workers} workers, medians of {args.repeat}:")
    curl_rate = None
    for kind, results in runs.items():
        rate = statistics.median(r["bytes"] / 1e6 / r["seconds"] for r in results)
        peak = max(r["peak_mb"] for r in results)
        base_mb = statistics.median(r["baseline_mb"] for r in results)
        if kind == "curl":
            curl_rate = rate
        ratio = f"{rate / curl_rate:.2f}x curl" if curl_rate else ""
        baseline = f" (baseline {base_mb:.0f} MB)" if kind != "curl" else ""
        print(f"{kind:>12}: {rate:7.1f} MB/s {ratio:>12}; peak RSS {peak:.0f} MB{baseline}")


if __name__ == "__main__":
    main()
