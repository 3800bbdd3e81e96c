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

Each run is checked: every byte and every line of every file arrived. Prints, for each: the median
seconds, MB/s and ratio to curl (curl's time over its time), the CPU seconds per GB it used (user plus
system, all threads: on a shared machine this is steadier than the wall clock) and the peak RSS of its
process (VmRSS sampled while downloading, and the baseline before it). ``--rss-sizes`` then runs
``bare`` and ``land_files`` once at each size given and prints their peak RSS, to show memory flat
with the size of the export. Imports the checks need are made before the clock starts (a fixed cost
per task, printed apart). Run on demand, never in the tests::

    .venv/bin/python benchmarks/bench_export_download.py                      # 1 GB, 32 files, 3 rounds
    .venv/bin/python benchmarks/bench_export_download.py --gb 0.2 --repeat 1  # a quick look
    .venv/bin/python benchmarks/bench_export_download.py --repeat 5 --rss-sizes 0.1,2
    .venv/bin/python benchmarks/bench_export_download.py --repeat 0 --rss-sizes 0.1,2  # memory only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
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


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def warm_imports() -> float:
    """Import what the line checks use before the clock starts; returns the seconds it took.

    A fixed cost per task process, not a download rate: tens of milliseconds where bytecode is cached,
    more here when ``PYTHONDONTWRITEBYTECODE`` is set (every module compiled again).
    """
    start = time.perf_counter()
    import msgspec.json  # noqa: F401

    return time.perf_counter() - start


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

    warm = warm_imports()
    baseline = rss_mb()
    cpu = cpu_seconds()
    start = time.perf_counter()
    with RssSampler() as sampler:
        results = downloader.download_all(planned, devnull)
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds() - cpu
    import airflow_provider_smart

    return {
        "source": str(Path(airflow_provider_smart.__file__).parent.parent),
        "bytes": sum(r.bytes for r in results),
        "lines": sum(r.lines for r in results),
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "baseline_mb": baseline,
        "peak_mb": sampler.peak,
        "warm_seconds": warm,
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
    warm = time.perf_counter() - warm + warm_imports()
    client = FhirHttpClient(None, spec["base"])
    with tempfile.TemporaryDirectory(prefix="bench-land-", dir=spec.get("out_dir")) as out:
        layout = ExportLayout(resolve_output(out), "bench")
        baseline = rss_mb()
        cpu = cpu_seconds()
        start = time.perf_counter()
        with RssSampler() as sampler:
            counts = land_files(client, layout, manifest, settings=DownloadSettings(max_workers=spec["workers"]))
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds() - cpu
    return {
        "bytes": counts["bytes"],
        "lines": counts["lines"],
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "baseline_mb": baseline,
        "peak_mb": sampler.peak,
        "warm_seconds": warm,
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
    return {
        "bytes": spec["bytes"],
        "seconds": elapsed,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "baseline_mb": 0.0,
        "peak_mb": usage.ru_maxrss / 1024,
    }


# -- parent --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def served_files(gb: float, files: int, workers: int, out_dir: str | None) -> Iterator[tuple[dict[str, Any], Path]]:
    """Write ``gb`` of NDJSON in ``files`` files, serve them with nginx; yields the spec and its path."""
    with tempfile.TemporaryDirectory(prefix="bench-dl-") as tmp:
        root = Path(tmp) / "files"
        work = Path(tmp) / "nginx"
        root.mkdir()
        work.mkdir()
        for readable in (Path(tmp), root):
            readable.chmod(0o755)  # nginx's workers run as an unprivileged user
        t0 = time.perf_counter()
        entries = write_files(root, int(gb * 1e9), files)
        total = sum((root / e["file"]).stat().st_size for e in entries)
        print(f"wrote {total / 1e9:.2f} GB in {len(entries)} files in {time.perf_counter() - t0:.0f}s", flush=True)
        with nginx(root, work) as base:
            spec = {
                "base": base,
                "entries": entries,
                "workers": workers,
                "bytes": total,
                "lines": sum(e["count"] for e in entries),
                "out_dir": out_dir or tmp,
            }
            spec_path = Path(tmp) / "spec.json"
            spec_path.write_text(json.dumps(spec))
            yield spec, spec_path


def run_one(kind: str, spec: dict[str, Any], spec_path: Path, old_src: str | None) -> dict[str, Any]:
    if kind == "curl":
        result = run_curl(spec)
    else:
        result = run_python_child(kind if kind == "bare_old" else kind.split("_")[0], spec_path, old_src)
        if (result["bytes"], result["lines"]) != (spec["bytes"], spec["lines"]):
            raise SystemExit(
                f"{kind} got {result['bytes']} bytes and {result['lines']} lines, "
                f"expected {spec['bytes']} and {spec['lines']}"
            )
    rate = result["bytes"] / 1e6 / result["seconds"]
    extra = ""
    if kind == "bare_old":
        extra = f" (from {result['source']})"
    if result.get("warm_seconds"):
        extra += f" (imports warmed in {result['warm_seconds']:.1f}s before the clock)"
    print(
        f"  {kind:>10}: {result['seconds']:6.2f} s, {rate:7.1f} MB/s, CPU {result['cpu_seconds']:5.2f} s, "
        f"peak RSS {result['peak_mb']:.0f} MB{extra}",
        flush=True,
    )
    return result


def report(runs: dict[str, list[dict[str, Any]]], spec: dict[str, Any], repeat: int) -> None:
    total = spec["bytes"]
    print(
        f"{total / 1e9:.2f} GB ({total} bytes, {spec['lines']} lines), {len(spec['entries'])} files, "
        f"{spec['workers']} workers; medians of {repeat} interleaved runs:"
    )
    curl_seconds = statistics.median(r["seconds"] for r in runs["curl"]) if "curl" in runs else None
    for kind, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        cpu_per_gb = statistics.median(r["cpu_seconds"] for r in results) / (total / 1e9)
        peak = max(r["peak_mb"] for r in results)
        base_mb = statistics.median(r["baseline_mb"] for r in results)
        ratio = f"{curl_seconds / seconds:.2f}x curl" if curl_seconds else ""
        baseline = f" (baseline {base_mb:.0f} MB, +{peak - base_mb:.0f})" if kind != "curl" else ""
        print(
            f"{kind:>12}: {seconds:6.2f} s {total / 1e6 / seconds:7.1f} MB/s {ratio:>11}; "
            f"CPU {cpu_per_gb:4.2f} s/GB; peak RSS {peak:.0f} MB{baseline}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="total size of the files (GB)")
    parser.add_argument("--files", type=int, default=32, help="number of files")
    parser.add_argument("--workers", type=int, default=5, help="parallel downloads (curl: --parallel-max 5)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of each (medians printed)")
    parser.add_argument("--only", default="curl,bare,land_files", help="which to run (comma separated)")
    parser.add_argument(
        "--rss-sizes",
        default="",
        help="also run bare and land_files once at each of these sizes (GB, comma separated, e.g. 0.1,2) "
        "and print their peak RSS: memory must not grow with the size",
    )
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

    wanted = [k for k in args.only.split(",") if k]
    if args.old_src:
        wanted.append("bare_old")
    if wanted and args.repeat > 0:
        with served_files(args.gb, args.files, args.workers, args.out_dir) as (spec, spec_path):
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in wanted}
            for _ in range(args.repeat):
                for kind in wanted:
                    runs[kind].append(run_one(kind, spec, spec_path, args.old_src))
        report(runs, spec, args.repeat)
    peaks = []
    for gb in [float(x) for x in args.rss_sizes.split(",") if x]:
        with served_files(gb, args.files, args.workers, args.out_dir) as (spec, spec_path):
            for kind in ("bare", "land_files"):
                result = run_one(kind, spec, spec_path, None)
                peaks.append((spec["bytes"], kind, result))
    if peaks:
        print("peak RSS by size (flat memory: the same at every size):")
        for size, kind, result in peaks:
            grown = result["peak_mb"] - result["baseline_mb"]
            print(
                f"{size / 1e9:8.2f} GB {kind:>10}: peak RSS {result['peak_mb']:.0f} MB "
                f"(baseline {result['baseline_mb']:.0f} MB, +{grown:.0f}); "
                f"{size / 1e6 / result['seconds']:.0f} MB/s"
            )


if __name__ == "__main__":
    main()
