"""Benchmark: SQL on FHIR views with the package's compiled evaluator beside per-resource fhirpathpy.

Two corpora: the synthea-100 fixture (x1) and a 10x copy with every id and reference rewritten so the
copies stay distinct (x10). Two views: ``patient_demographics`` (Patient) and ``observations``
(Observation, flattened: the value of the observation and of each component). Each measurement runs in
its own subprocess so its peak RSS is its own; rows/s count reading the NDJSON plus evaluating.

    .venv/bin/python benchmarks/bench_views.py [--fixture DIR] [--baseline-limit N]
    .venv/bin/python benchmarks/bench_views.py --sql [--observations N] [--evaluator-limit N]

``--sql`` measures the SQL engine: the operator (``FhirViewRunOperator``, ``engine="duckdb"``: the compiled
view run in DuckDB, written as the view's Parquet table) beside hand-written DuckDB SQL of the same columns
(``COPY`` to Parquet) over the same files, from NDJSON and from the package's typed Parquet, on a corpus of
~N Observations (and their Patients); the Python evaluator runs on the first ``--evaluator-limit`` lines and
its rate is scaled per row. Rows are checked equal (operator table vs hand-written table, as multisets)
and the goals are printed: operator >= 0.5x hand-written SQL, >= 10x the evaluator.

The baseline evaluates the same column expressions with ``fhirpathpy`` (the R4 model, so choice types
resolve), one resource at a time, as a straightforward implementation would; ``getResourceKey()`` and
``getReferenceKey()`` are not FHIRPath functions there and become ``id`` / ``reference``. ``ours+parquet``
also builds the typed Arrow batches and writes the Parquet table, as the operator does.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FIXTURE = REPO.parent / "shared" / "fixtures" / "synthea-100"
VIEWS = {"patient_demographics": "Patient", "observations": "Observation"}
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def build_corpus(fixture: Path, target: Path, replicas: int) -> None:
    """``<Type>.ndjson`` with ``replicas`` copies; copy k rewrites every UUID (ids and references) to end in k."""
    target.mkdir(parents=True, exist_ok=True)
    for resource_type in VIEWS.values():
        lines = gzip.decompress((fixture / f"{resource_type}.ndjson.gz").read_bytes()).splitlines()
        with open(target / f"{resource_type}.ndjson", "wb") as out:
            for k in range(replicas):
                suffix = f"{k:012d}".encode()
                for line in lines:
                    out.write(_UUID.sub(lambda m, s=suffix: m.group()[:24] + s, line) if k else line)
                    out.write(b"\n")


def _translate(path: str) -> str:
    path = path.replace("getResourceKey()", "id")
    return re.sub(r"getReferenceKey\([A-Za-z]*\)", "reference", path)


def _columns(select: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["name"], _translate(c["path"])) for s in select for c in s.get("column", [])]


def run_ours(view_name: str, corpus: Path, write: bool) -> int:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_smart.views import ViewRunner, compile_view, library
    from airflow_provider_smart.views.sources import iter_file

    plan = compile_view(library.load(view_name))
    runner = ViewRunner(plan)
    source = ObjectStoragePath(f"file://{corpus / (plan.resource + '.ndjson')}")
    if write:
        from airflow_provider_smart.views.writer import ViewTableWriter

        writer = ViewTableWriter(plan, ObjectStoragePath(f"file://{corpus}/out"), "bench")
        writer.start()
        for item in iter_file(source):
            writer.add(runner.rows(item))
        return int(writer.commit({})["rows"])
    rows = 0
    for item in iter_file(source):
        rows += len(runner.rows(item))
    return rows


def run_fhirpathpy(view_name: str, corpus: Path, limit: int) -> int:
    from fhirpathpy import compile as fhirpath_compile
    from fhirpathpy.models import models

    from airflow_provider_smart.views import library

    view = library.load(view_name)
    model = models["r4"]
    top = view["select"][0]
    head = [(n, fhirpath_compile(p, model=model)) for n, p in _columns([top])]
    union = top.get("unionAll") or (view["select"][1].get("unionAll") if len(view["select"]) > 1 else None)
    branches = []
    for branch in union or []:
        each = fhirpath_compile(branch["forEach"], model=model) if "forEach" in branch else None
        branches.append((each, [(n, fhirpath_compile(p, model=model)) for n, p in _columns([branch])]))
    rows = 0
    with open(corpus / f"{view['resource']}.ndjson", "rb") as handle:
        for number, line in enumerate(handle):
            if number >= limit:
                break
            item = json.loads(line)
            base = {name: (fn(item) or [None])[0] for name, fn in head}
            if not branches:
                rows += 1
                continue
            for each, columns in branches:
                for focus in each(item) if each is not None else [item]:
                    row = dict(base)
                    row.update({name: (fn(focus) or [None])[0] for name, fn in columns})
                    rows += 1
    return rows


def child(engine: str, view_name: str, corpus: Path, limit: int) -> None:
    # Imports (Airflow's alone takes seconds) are not what is measured: load them before the clock starts.
    import airflow.sdk  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import airflow_provider_smart.views.sources
    import airflow_provider_smart.views.writer  # noqa: F401

    if engine == "fhirpathpy":
        import fhirpathpy.models  # noqa: F401
    else:
        # The first file opened through ObjectStoragePath sets up Airflow's filesystems (seconds, once).
        from airflow.sdk import ObjectStoragePath

        with ObjectStoragePath(f"file://{corpus / 'Patient.ndjson'}").open("rb") as warm:  # type: ignore[no-untyped-call]
            warm.read(1)
    started = time.perf_counter()
    if engine == "fhirpathpy":
        rows = run_fhirpathpy(view_name, corpus, limit)
    else:
        rows = run_ours(view_name, corpus, write=engine == "ours+parquet")
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_mb}))


def measure(engine: str, view_name: str, corpus: Path, limit: int) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--child", engine, view_name, str(corpus), str(limit)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"  {engine} failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# Hand-written DuckDB SQL of the shipped views' columns, as an analyst who knows the data would write it:
# the reference keys are the text after the last '/' or 'urn:uuid:' (the data's reference forms).
_KEY = "regexp_extract({ref}, '(?:urn:uuid:|/)([^/]+)$', 1)"
_OBS_VALUE = (
    "{o}.code.coding[1].system AS code_system, {o}.code.coding[1].code AS code, {o}.code.coding[1].display AS display, "
    "{o}.valueQuantity.value AS value, {o}.valueQuantity.unit AS unit, "
    "{o}.valueCodeableConcept.coding[1].code AS value_code, {o}.valueString AS value_string"
)
HAND_SQL = {
    "observations": (
        "WITH o AS (SELECT * FROM {source}) "  # noqa: S608
        "SELECT o.id AS observation_id, "
        + _KEY.format(ref="o.subject.reference")
        + " AS patient_id, "
        + _KEY.format(ref="o.encounter.reference")
        + " AS encounter_id, o.status, "
        "o.category[1].coding[1].code AS category, CAST(o.effectiveDateTime AS TIMESTAMPTZ) AS effective, "
        + _OBS_VALUE.format(o="o")
        + " FROM o "
        "UNION ALL SELECT o.id, "
        + _KEY.format(ref="o.subject.reference")
        + ", "
        + _KEY.format(ref="o.encounter.reference")
        + ", o.status, o.category[1].coding[1].code, "
        "CAST(o.effectiveDateTime AS TIMESTAMPTZ), " + _OBS_VALUE.format(o="c") + " FROM o, unnest(o.component) AS t(c)"
    ),
    "patient_demographics": (
        "SELECT id AS patient_id, gender, CAST(birthDate AS DATE) AS birth_date, deceasedBoolean AS deceased, "
        "CAST(deceasedDateTime AS TIMESTAMPTZ) AS deceased_date_time, "
        "[n.family FOR n IN name IF n.use = 'official' AND n.family IS NOT NULL][1] AS family, "
        "array_to_string([n FOR n IN name IF n.use = 'official'][1].given, ' ') AS given, "
        "maritalStatus.coding[1].code AS marital_status, address[1].city AS city, address[1].state AS state, "
        "address[1].postalCode AS postal_code, address[1].country AS country FROM {source}"
    ),
}
HAND_COLUMNS = {
    "observations": {
        "id": "VARCHAR", "status": "VARCHAR", "subject": "STRUCT(reference VARCHAR)",
        "encounter": "STRUCT(reference VARCHAR)", "category": "STRUCT(coding STRUCT(code VARCHAR)[])[]",
        "effectiveDateTime": "VARCHAR",
        "code": "STRUCT(coding STRUCT(system VARCHAR, code VARCHAR, display VARCHAR)[])",
        "valueQuantity": "STRUCT(value DOUBLE, unit VARCHAR)",
        "valueCodeableConcept": "STRUCT(coding STRUCT(code VARCHAR)[])", "valueString": "VARCHAR",
        "component": "STRUCT(code STRUCT(coding STRUCT(system VARCHAR, code VARCHAR, display VARCHAR)[]), "
        "valueQuantity STRUCT(value DOUBLE, unit VARCHAR), valueCodeableConcept STRUCT(coding STRUCT(code VARCHAR)[]), "
        "valueString VARCHAR)[]",
    },
    "patient_demographics": {
        "id": "VARCHAR", "gender": "VARCHAR", "birthDate": "VARCHAR", "deceasedBoolean": "BOOLEAN",
        "deceasedDateTime": "VARCHAR", "name": "STRUCT(use VARCHAR, family VARCHAR, given VARCHAR[])[]",
        "maritalStatus": "STRUCT(coding STRUCT(code VARCHAR)[])",
        "address": "STRUCT(city VARCHAR, state VARCHAR, postalCode VARCHAR, country VARCHAR)[]",
    },
}  # fmt: skip


def _hand_source(view_name: str, form: str, corpus: Path) -> str:
    import duckdb

    resource_type = VIEWS[view_name]
    spec = HAND_COLUMNS[view_name]
    if form == "ndjson":
        columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in spec.items()) + "}"
        return f"read_json('{corpus / (resource_type + '.ndjson')}', format = 'newline_delimited', columns = {columns})"
    glob = f"{corpus}/parquet/{resource_type}/*/*.parquet"
    described = duckdb.connect().execute(f"DESCRIBE SELECT * FROM read_parquet('{glob}')").fetchall()  # noqa: S608
    present = {row[0] for row in described}
    # The typed Parquet has no column for an element that never appeared: the analyst writes NULL for it.
    # A struct is as wide as the data too: a cast by name gives NULL for the fields it lacks.
    cols = ", ".join(
        f'CAST({chr(34) + k + chr(34) if k in present else "NULL"} AS {v}) AS "{k}"' for k, v in spec.items()
    )
    return f"(SELECT {cols} FROM read_parquet('{glob}'))"  # noqa: S608


def sql_child(engine: str, view_name: str, form: str, corpus: Path, out: Path, limit: int) -> None:
    import airflow.sdk  # (imports are not what is measured)
    import duckdb
    import pyarrow.parquet  # noqa: F401

    from airflow_provider_smart.operators.views import FhirViewRunOperator

    resource_type = VIEWS[view_name]
    # The first file opened through ObjectStoragePath sets up Airflow's filesystems (seconds, once).
    with airflow.sdk.ObjectStoragePath(f"file://{corpus / 'Patient.ndjson'}").open("rb") as warm:  # type: ignore[no-untyped-call]
        warm.read(1)
    started, cpu = time.perf_counter(), time.process_time()
    if engine == "hand":
        query = HAND_SQL[view_name].format(source=_hand_source(view_name, form, corpus))
        con = duckdb.connect(config={"memory_limit": "1GB"})
        con.execute(f"COPY ({query}) TO '{out}/hand.parquet' (FORMAT parquet, COMPRESSION zstd)")
        rows = con.execute(f"SELECT count(*) FROM '{out}/hand.parquet'").fetchall()[0][0]  # noqa: S608
    else:
        if form == "ndjson":
            source = corpus / f"{resource_type}.ndjson"
            if engine == "python":
                sliced = out / f"{resource_type}.ndjson"  # the first `limit` lines, named for the type
                with open(source, "rb") as full, open(sliced, "wb") as part:
                    for number, line in enumerate(full):
                        if number >= limit:
                            break
                        part.write(line)
                source = sliced
        else:
            source = corpus / "parquet"
        operator = FhirViewRunOperator(
            task_id="bench", views=[view_name], source=str(source), destination=str(out), run="r", engine=engine
        )
        started, cpu = time.perf_counter(), time.process_time()
        rows = operator.execute({})["views"][view_name]["rows"]  # type: ignore[arg-type]
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    print(json.dumps({"rows": rows, "seconds": seconds, "cpu": cpu_seconds, "peak_mb": _peak_mb()}))


def _peak_mb() -> float:
    """This process's peak RSS (VmHWM): unlike ru_maxrss, not inherited from the parent that forked it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sql_measure(engine: str, view_name: str, form: str, corpus: Path, out: Path, limit: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--sql-child", engine, view_name, form, str(corpus), str(out), str(limit)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} {view_name} {form} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _same_rows(view_name: str, operator_out: Path, hand_out: Path) -> bool:
    import duckdb

    ours = f"read_parquet('{operator_out}/{view_name}/r/part-00000.parquet')"
    hand = f"read_parquet('{hand_out}/hand.parquet')"
    con = duckdb.connect()
    for a, b in ((ours, hand), (hand, ours)):
        query = f"SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b})"  # noqa: S608
        if con.execute(query).fetchall()[0][0]:
            return False
    return True


def sql_main(args: argparse.Namespace) -> int:
    from airflow_provider_smart.parquet.convert import convert_ndjson_to_parquet

    with gzip.open(args.fixture / "Observation.ndjson.gz") as handle:
        per_copy = sum(1 for _ in handle)
    replicas = max(1, round(args.observations / per_copy))
    with tempfile.TemporaryDirectory(prefix="bench-views-sql-") as tmp:
        corpus = Path(tmp) / "corpus"
        started = time.perf_counter()
        build_corpus(args.fixture, corpus, replicas)
        convert_ndjson_to_parquet([str(corpus / f"{t}.ndjson") for t in VIEWS.values()], str(corpus / "parquet"), "r1")
        print(
            f"corpus: {replicas} copies of synthea-100 = {per_copy * replicas:,} Observations, "
            f"{100 * replicas:,} Patients (NDJSON + typed Parquet built in {time.perf_counter() - started:.0f}s)"
        )
        for view_name in ("observations", "patient_demographics"):
            for form in ("ndjson", "parquet"):
                print(f"\nview {view_name} from {form}")
                results = {}
                for engine in ("duckdb", "hand", "python"):
                    if engine == "python" and form == "parquet":
                        continue
                    out = Path(tmp) / f"{view_name}-{form}-{engine}"
                    got = _sql_measure(engine, view_name, form, corpus, out, args.evaluator_limit)
                    rate = got["rows"] / got["seconds"]
                    results[engine] = rate
                    label = {"duckdb": "operator (duckdb)", "hand": "hand-written SQL", "python": "evaluator"}[engine]
                    print(
                        f"  {label:18s} {got['rows']:>9,d} rows in {got['seconds']:6.2f}s = {rate:>10,.0f} rows/s, "
                        f"CPU {got['cpu']:6.2f}s, peak RSS {got['peak_mb']:.0f} MB"
                    )
                equal = _same_rows(
                    view_name, Path(tmp) / f"{view_name}-{form}-duckdb", Path(tmp) / f"{view_name}-{form}-hand"
                )
                print(f"  rows equal (operator vs hand-written): {equal}")
                ratio = results["duckdb"] / results["hand"]
                verdict = "met" if ratio >= 0.5 else "NOT met"
                print(f"  operator / hand-written SQL: {ratio:.2f}x (goal >= 0.5x: {verdict})")
                if "python" in results:
                    speedup = results["duckdb"] / results["python"]
                    print(
                        f"  operator / evaluator: {speedup:.1f}x (goal >= 10x: {'met' if speedup >= 10 else 'NOT met'})"
                    )
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--sql-child":
        sql_child(sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5]), Path(sys.argv[6]), int(sys.argv[7]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE)
    parser.add_argument(
        "--baseline-limit", type=int, default=20000, help="resources the (slow) baseline reads at most per case"
    )
    parser.add_argument("--sql", action="store_true", help="measure the SQL engine (see the module doc)")
    parser.add_argument("--observations", type=int, default=1_000_000, help="--sql: Observations in the corpus")
    parser.add_argument(
        "--evaluator-limit", type=int, default=100_000, help="--sql: Observations/Patients the evaluator reads"
    )
    args = parser.parse_args()
    if args.sql:
        return sql_main(args)
    try:
        import fhirpathpy  # noqa: F401
    except ImportError:
        print("fhirpathpy is not installed (it is a dev dependency: make setup); the baseline is skipped")
    with tempfile.TemporaryDirectory(prefix="bench-views-") as tmp:
        for scale in (1, 10):
            corpus = Path(tmp) / f"x{scale}"
            build_corpus(args.fixture, corpus, scale)
            for view_name in VIEWS:
                print(f"\nsynthea-100 x{scale}, view {view_name}")
                results = {}
                for engine in ("ours", "ours+parquet", "fhirpathpy"):
                    limit = args.baseline_limit if engine == "fhirpathpy" else 1 << 62
                    got = measure(engine, view_name, corpus, limit)
                    if got is None:
                        continue
                    rate = got["rows"] / got["seconds"]
                    results[engine] = rate
                    print(
                        f"  {engine:13s} {got['rows']:>8d} rows in {got['seconds']:6.2f}s = {rate:>9,.0f} rows/s,"
                        f" peak RSS {got['peak_mb']:.0f} MB"
                    )
                if "ours" in results and "fhirpathpy" in results:
                    print(f"  ratio ours / fhirpathpy: {results['ours'] / results['fhirpathpy']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
