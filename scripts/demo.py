"""``make demo``: start the sandbox, register a client, run the example DAGs end to end, show what landed.

Everything happens on this machine: the sandbox listens on 127.0.0.1, the Airflow metadata DB is SQLite
under ``$AIRFLOW_HOME`` (``.airflow/`` from the Makefile), and the data lands in ``demo-output/``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.sandbox.state import SandboxConfig

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUTPUT = REPO / "demo-output"
CLIENT_ID = "airflow-demo"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

HBA1C = "4548-4"
NEW_RESULTS = 5


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def run(*args: str, env: dict[str, str] | None = None, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, env=env, capture_output=quiet, text=True, check=False)
    if result.returncode != 0:
        if quiet:
            sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"demo failed: {' '.join(args[:3])} exited with {result.returncode}")
    return result


def make_key(home: Path) -> dict[str, object]:
    """A fresh ES384 key through the product's own command; returns the public JWKS it prints."""
    key_file = home / "demo-client-key.pem"
    result = run(str(BIN / "smart-fhir"), "keygen", "--alg", "ES384", "--out", str(key_file), "--force", quiet=True)
    jwks: dict[str, object] = json.loads(result.stdout[result.stdout.index("{") :])
    return jwks


def register(server: SandboxServer, jwks: dict[str, object]) -> None:
    """Register the client the way an EHR administrator would (Aidbox-style Client + AccessPolicy)."""
    client = {
        "type": "bulk-api-client",
        "active": True,
        "auth": {"client_credentials": {"client_assertion_types": [JWT_BEARER], "access_token_expiration": 300}},
        "scope": ["system/*.read"],
        "grant_types": ["client_credentials"],
        "jwks": jwks,
    }
    policy = {"engine": "allow", "link": [{"resourceType": "Client", "id": CLIENT_ID}]}
    for path, body in ((f"/Client/{CLIENT_ID}", client), (f"/AccessPolicy/{CLIENT_ID}", policy)):
        response = requests.put(server.base_url + path, json=body, auth=server.admin_auth, timeout=30)
        response.raise_for_status()


def new_lab_results(server: SandboxServer) -> list[str]:
    """Amend a few HbA1c results on the server, as a lab would during the day (ids of the amended ones)."""
    amended: list[str] = []
    for observation in server.state.store.iter_type("Observation"):
        codings = (observation.get("code") or {}).get("coding") or []
        if not any(c.get("code") == HBA1C for c in codings):
            continue
        body = dict(observation, status="amended")
        path = f"/_sandbox/fhir/Observation/{observation['id']}"
        requests.put(server.base_url + path, json=body, auth=server.admin_auth, timeout=30).raise_for_status()
        amended.append(str(observation["id"]))
        if len(amended) == NEW_RESULTS:
            break
    return amended


def delete_one_result(server: SandboxServer, keep: list[str]) -> str:
    """Delete one HbA1c result on the server (entered in error), one that was not just amended."""
    for observation in server.state.store.iter_type("Observation"):
        codings = (observation.get("code") or {}).get("coding") or []
        if str(observation["id"]) in keep or not any(c.get("code") == HBA1C for c in codings):
            continue
        path = f"/_sandbox/fhir/Observation/{observation['id']}"
        requests.delete(server.base_url + path, auth=server.admin_auth, timeout=30).raise_for_status()
        return str(observation["id"])
    raise SystemExit("demo failed: no HbA1c result left to delete")


def show_tables(root: Path, updated: str, deleted: str) -> None:
    """What the current-state tables hold after the second export: counts, one updated, one deleted."""
    from deltalake import DeltaTable

    from airflow_provider_smart.tables.read import read_table

    for table_dir in sorted(p for p in root.iterdir() if not p.name.startswith("_")):
        table = DeltaTable(str(table_dir))
        print(f"  {table_dir.relative_to(REPO)}: {table.count()} rows, version {table.version()}")
    observations = read_table(DeltaTable(str(root / "Observation")), ["id", "status", "meta", "_fhir_source"])
    by_id = {row["id"]: row for row in observations.to_pylist()}
    row = by_id[updated]
    print(
        f"  updated: Observation/{updated} status={row['status']} versionId={row['meta']['versionId']} "
        f"(written by {row['_fhir_source']})"
    )
    print(f"  deleted: Observation/{deleted} in the table: {deleted in by_id}")


def count_lines(path: Path) -> int:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        return sum(1 for _ in handle)


def summarize(root: Path) -> None:
    """One line per committed directory: what it holds."""
    for marker in sorted(root.rglob("_SUCCESS")):
        directory = marker.parent
        if any(part.startswith("_") for part in directory.relative_to(root).parts):
            continue  # the exports' own state (_exports/<label>/: state, manifest, log.ndjson), not data
        files = [p for p in directory.iterdir() if p.is_file() and not p.name.startswith(("_", "."))]
        ndjson = [p for p in files if ".ndjson" in p.name]
        parquet = [p for p in files if p.suffix == ".parquet"]
        parts = []
        if ndjson:
            parts.append(f"{sum(count_lines(p) for p in ndjson)} resources in {len(ndjson)} NDJSON file(s)")
        if parquet:
            parts.append(f"{len(parquet)} Parquet file(s)")
        if parts:
            print(f"  {directory.relative_to(REPO)}: {', '.join(parts)}")


def connection(server: SandboxServer, home: Path, **extra: str) -> str:
    return json.dumps(
        {
            "conn_type": "smart_fhir",
            "host": server.fhir_base,
            "login": CLIENT_ID,
            "extra": {"private_key_file": str(home / "demo-client-key.pem"), "scope": "system/*.read", **extra},
        }
    )


def check(what: str, env: dict[str, str], conn_id: str = "smart_fhir_default") -> None:
    """``smart-fhir check``: the preflight table a data engineer runs before the first DAG."""
    step(f"smart-fhir check {conn_id}: {what}")
    result = run(str(BIN / "smart-fhir"), "check", conn_id, env=env, quiet=True)
    print(result.stdout.rstrip(), flush=True)


def rehearse_vendor(home: Path, jwks: dict[str, object], env: dict[str, str]) -> None:
    """A second sandbox playing Oracle Health: the preflight names the vendor and its published rules."""
    with SandboxServer(SandboxConfig(patients=1, seed=7, vendor="oracle-health")) as oracle_like:
        register(oracle_like, jwks)
        rehearsal = dict(env, AIRFLOW_CONN_SMART_FHIR_ORACLE_LIKE=connection(oracle_like, home, vendor="oracle-health"))
        check(
            "a sandbox playing Oracle Health, with the oracle-health vendor profile",
            rehearsal,
            "smart_fhir_oracle_like",
        )


def show_export_log_and_flat_view(root: Path) -> None:
    """The standard log.ndjson of the last complete export, and that export as the flat folder other SMART
    tools (cumulus-etl, bulk-data-client readers) take."""
    from airflow_provider_smart.storage.paths import resolve_output
    from airflow_provider_smart.tables.bulk_folder import write_flat_view

    logs = [p for p in sorted(root.glob("_exports/*/log.ndjson")) if (p.parent / "_SUCCESS").exists()]
    if not logs:
        print("  no complete export with a log.ndjson")
        return
    log = max(logs, key=lambda p: p.stat().st_mtime)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    print(f"  {log.relative_to(REPO)}: {len(events)} events")
    for row in events:
        if row["eventId"] in ("download_request", "download_complete", "status_progress"):
            continue
        print(f"    {row['timestamp']} {row['eventId']:<21} {json.dumps(row['eventDetail'])[:110]}")
    counted: dict[str, int] = {}
    for row in events:
        counted[row["eventId"]] = counted.get(row["eventId"], 0) + 1
    print(f"    events by kind: {counted}")
    flat = root / "flat-view"
    written = write_flat_view(resolve_output(str(root)), log.parent.name, resolve_output(str(flat)), replace=True)
    names = sorted(str(p.relative_to(flat)) for p in flat.rglob("*") if p.is_file())
    shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
    print(f"  flat view in {flat.relative_to(REPO)}/: {shown}")
    print(f"    files by type: {written['files']}")
    print(f"    read it with: cumulus-etl etl {flat.relative_to(REPO)} <output> <phi> --target=...")


def dags_test(dag_id: str, what: str, env: dict[str, str], *extra: str, output: Path = OUTPUT) -> None:
    step(f"airflow dags test {dag_id} {' '.join(extra)}: {what}".replace("  ", " "))
    started = time.monotonic()
    conf = json.dumps({"output": str(output)})
    run(str(BIN / "airflow"), "dags", "test", dag_id, *extra, "--conf", conf, env=env)
    print(f"    {dag_id} succeeded in {time.monotonic() - started:.1f}s", flush=True)


def main() -> int:
    home = Path(os.environ.get("AIRFLOW_HOME", REPO / ".airflow"))
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    # The demo's key file lives in its Airflow home: key files are read only from this directory.
    env.setdefault("AIRFLOW__SMART_FHIR__PRIVATE_KEY_DIR", str(home))

    step(f"Airflow metadata DB in {home}")
    run(str(BIN / "airflow"), "db", "migrate", env=env, quiet=True)

    step("Generating an ES384 client key (smart-fhir keygen)")
    jwks = make_key(home)

    if OUTPUT.exists():
        shutil.rmtree(OUTPUT)
    with SandboxServer(SandboxConfig(patients=25, seed=7)) as server:
        step(f"Sandbox SMART/FHIR server at {server.fhir_base}")
        register(server, jwks)
        env["AIRFLOW_CONN_SMART_FHIR_DEFAULT"] = connection(server, home)
        check("token, scopes, what the server declares, detected vendor", env)
        rehearse_vendor(home, jwks, env)
        # The token check first: if the key or the registration is wrong, it says so plainly.
        dags_test("smart_fhir_auth_check", "a token for a signed ES384 client assertion", env)
        dags_test("fhir_bulk_export_nightly", "first run: a full Bulk Data $export into NDJSON + Parquet", env)
        dags_test("fhir_delta_nightly", "first run: a full export into current-state Delta tables", env)

        amended = new_lab_results(server)
        step(f"The sandbox amends {len(amended)} HbA1c results (as new lab results during the day)")
        removed = delete_one_result(server, amended)
        step(f"The sandbox deletes Observation/{removed} (entered in error)")
        # A manual run of a daily data-interval timetable covers the day that ends at the date given: give
        # tomorrow's midnight, so the interval is today, which holds exactly those changes.
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00+00:00")
        dags_test("fhir_search_hba1c", "today's HbA1c results and their patients", env, tomorrow)
        dags_test("fhir_bulk_export_nightly", "second run: only what changed since the first", env)
        dags_test("fhir_delta_nightly", "second run: the changes merged, the deletion applied", env)
        views_root = OUTPUT / "views-example"
        dags_test("fhir_views_from_export", "export -> SQL on FHIR views -> Parquet", env, output=views_root)
        for marker in sorted((views_root / "views").glob("*/*/_SUCCESS")):
            print(f"    view {marker.parent.parent.name}: {json.loads(marker.read_text())['rows']} rows")

    step(f"What landed in {OUTPUT.relative_to(REPO)}/")
    summarize(OUTPUT)
    step("The standard export log (log.ndjson) and the flat view of the last export")
    show_export_log_and_flat_view(OUTPUT)
    step(f"Current-state Delta tables in {(OUTPUT / 'current-state/tables').relative_to(REPO)}/")
    show_tables(OUTPUT / "current-state/tables", amended[0], removed)
    print("\nDemo complete.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
