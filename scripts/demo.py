"""``make demo``: start the sandbox, register a client, run the example DAGs end to end, show what landed.

Everything happens on this machine: the sandbox listens on 127.0.0.1, the Airflow metadata DB is SQLite
under ``$AIRFLOW_HOME`` (``.airflow/`` from the Makefile), and the data lands in ``demo-output/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.sandbox.state import SandboxConfig

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUTPUT = REPO / "demo-output"
CLIENT_ID = "airflow-demo"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

#: (dag id, what it shows). The auth check first: if the key or registration is wrong, it says so plainly.
DEMO_DAGS = (
    ("smart_fhir_auth_check", "token request with a signed ES384 client assertion"),
    ("fhir_search_hba1c", "incremental FHIR search of HbA1c Observations into NDJSON"),
    ("fhir_bulk_export_nightly", "Bulk Data $export: kick-off, deferred polling, download"),
)


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


def available_dags() -> list[tuple[str, str]]:
    present = {p.stem for p in (REPO / "dags").glob("*.py")}
    return [(dag_id, what) for dag_id, what in DEMO_DAGS if dag_id in present]


def summarize(root: Path) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        print("  (no files)")
        return
    for path in files:
        lines = ""
        if path.name.endswith(".ndjson"):
            with path.open("rb") as handle:
                lines = f"  {sum(1 for _ in handle)} resources"
        print(f"  {path.relative_to(REPO)}  {path.stat().st_size} bytes{lines}")


def main() -> int:
    home = Path(os.environ.get("AIRFLOW_HOME", REPO / ".airflow"))
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

    step(f"Airflow metadata DB in {home}")
    run(str(BIN / "airflow"), "db", "migrate", env=env, quiet=True)

    step("Generating an ES384 client key (smart-fhir keygen)")
    jwks = make_key(home)

    if OUTPUT.exists():
        shutil.rmtree(OUTPUT)
    with SandboxServer(SandboxConfig(patients=25, seed=7)) as server:
        step(f"Sandbox SMART/FHIR server at {server.fhir_base}")
        register(server, jwks)
        env["AIRFLOW_CONN_SMART_FHIR_DEFAULT"] = json.dumps(
            {
                "conn_type": "smart_fhir",
                "host": server.fhir_base,
                "login": CLIENT_ID,
                "extra": {"private_key_file": str(home / "demo-client-key.pem"), "scope": "system/*.read"},
            }
        )
        conf = json.dumps({"output": str(OUTPUT)})
        for dag_id, what in available_dags():
            step(f"airflow dags test {dag_id}: {what}")
            started = time.monotonic()
            run(str(BIN / "airflow"), "dags", "test", dag_id, "--conf", conf, env=env)
            print(f"    {dag_id} succeeded in {time.monotonic() - started:.1f}s")

    step(f"What landed in {OUTPUT.relative_to(REPO)}/")
    summarize(OUTPUT)
    print("\nDemo complete.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
