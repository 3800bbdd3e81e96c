"""How fast one core checks NDJSON lines: the ceiling of a checked download on this machine.

Builds NDJSON from the sandbox's synthetic generator (the same resources ``bench_export_download.py``
serves), cuts it into 1 MiB runs of whole lines, as the downloader receives them, and times on one
thread, in CPU seconds:

* ``NdjsonStream``: the downloader's own check (every line fully parsed, an object, the expected
  ``resourceType``, counted);
* ``msgspec decode_lines``: msgspec's line decoder on a type holding only ``resourceType``;
* ``simdjson``: pysimdjson parsing each run as one array (syntax only, no type check), when installed.

Prints MB per CPU-second for each, and what the best would give on every core of this machine with
the transport and the writes free: compare it with curl's rate from ``bench_export_download.py``.
Run on demand::

    .venv/bin/python benchmarks/bench_line_check.py [MB]      # default: 256 MB of lines
"""

from __future__ import annotations

import json
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from airflow_provider_smart.fhir.bulk.lines import LineChecker, NdjsonStream  # noqa: E402
from airflow_provider_smart.sandbox.generator import SyntheticDataset  # noqa: E402

TYPES = ["Observation", "Encounter", "Condition", "Procedure", "MedicationRequest", "DiagnosticReport"]
RUN_BYTES = 1 << 20


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def runs_of(rtype: str, data: SyntheticDataset) -> list[bytes]:
    """1 MiB runs of whole lines of one resource type."""
    pool = b"".join(
        json.dumps(r, separators=(",", ":")).encode() + b"\n"
        for i in range(data.patients)
        for r in data.patient_resources(rtype, i)
    )
    runs, start = [], 0
    while start < len(pool):
        end = pool.rfind(b"\n", start, start + RUN_BYTES) + 1
        if end <= start:
            break
        runs.append(pool[start:end])
        start = end
    return runs


def timed(check: Callable[[bytes], object], runs: list[bytes], total_bytes: int) -> float:
    """MB per CPU-second of ``check`` over ``runs``, repeated until ``total_bytes`` were checked."""
    done, started = 0, cpu_seconds()
    while done < total_bytes:
        for run in runs:
            check(run)
            done += len(run)
    return done / (cpu_seconds() - started) / 1e6


def main() -> None:
    total = int(float(sys.argv[1]) * 1e6) if len(sys.argv) > 1 else 256_000_000
    import msgspec

    data = SyntheticDataset(patients=200, seed=7)
    rates: dict[str, list[float]] = {}
    for rtype in TYPES:
        runs = runs_of(rtype, data)
        per_type = total // len(TYPES)

        def stream_check(run: bytes, rtype: str = rtype) -> None:
            stream = NdjsonStream(LineChecker("bench", rtype, None))
            for _ in stream.feed(run):
                pass

        line_type = msgspec.defstruct("Line", [("resourceType", str)], gc=False)
        decoder = msgspec.json.Decoder(line_type)
        rates.setdefault("NdjsonStream (the downloader's check)", []).append(timed(stream_check, runs, per_type))
        rates.setdefault("msgspec decode_lines", []).append(timed(decoder.decode_lines, runs, per_type))
        try:
            import simdjson
        except ImportError:
            continue
        parser = simdjson.Parser()

        def simd_check(run: bytes, parser: simdjson.Parser = parser) -> None:
            doc = parser.parse(b"[" + run[:-1].replace(b"\n", b",") + b"]")
            del doc  # the parser reuses its buffer: no document may outlive the next parse

        rates.setdefault("simdjson (syntax only)", []).append(timed(simd_check, runs, per_type))
    cores = os.cpu_count() or 1
    print(f"{total / 1e6:.0f} MB of lines in 1 MiB runs, {len(TYPES)} resource types, one thread; {cores} cores")
    for name, values in rates.items():
        low, high = min(values), max(values)
        mean = sum(values) / len(values)
        print(
            f"  {name:40} {mean:6.0f} MB per CPU-s (by type {low:.0f}-{high:.0f}); "
            f"x{cores} cores: {mean * cores:6.0f} MB/s"
        )
    if "simdjson (syntax only)" not in rates:
        print("  simdjson: not installed (pip install pysimdjson) - not compared")


if __name__ == "__main__":
    main()
