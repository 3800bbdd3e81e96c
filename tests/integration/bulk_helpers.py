"""Helpers for running the Bulk Data operators against the sandbox without a scheduler."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_smart.operators.bulk_export import FhirBulkExportOperator
from airflow_provider_smart.sandbox.server import SandboxServer

REPO = Path(__file__).resolve().parents[2]

# Poll the sandbox's status endpoint often and without a floor, so deferred exports finish in seconds.
FAST_POLLING: dict[str, Any] = {"poll_interval": 0.2, "min_poll_interval": 0.0, "max_poll_interval": 2.0}


class FakeTI:
    """The parts of a task instance the operators use: its key and xcom_push."""

    def __init__(
        self, map_index: int = -1, *, dag_id: str = "fhir_dag", task_id: str = "export", run_id: str = "manual__run1"
    ) -> None:
        self.map_index = map_index
        self.dag_id = dag_id
        self.task_id = task_id
        self.run_id = run_id
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        json.dumps(value)  # XCom values must be JSON-safe
        self.xcoms[key] = value


def committed_records(records: Path) -> list[Path]:
    """The file records a run committed under ``records``.

    A worker killed while writing leaves ``_tmp.<uuid>.<key>.json`` siblings behind; they are not
    records (the product skips them), so a test that counts records must skip them too.
    """
    if not records.exists():
        return []
    return [p for p in records.glob("*.json") if not p.name.startswith("_")]


def export_operator(output: Path | str, **kwargs: Any) -> FhirBulkExportOperator:
    """A FhirBulkExportOperator writing to ``output`` that polls fast; ``kwargs`` override anything."""
    return FhirBulkExportOperator(**{"task_id": "export", "output": str(output), **FAST_POLLING, **kwargs})


def start_worker(code: str, *args: str) -> subprocess.Popen[bytes]:
    """``python -c code args`` from the repository root, in a session of its own: a worker a test may kill
    with SIGKILL at a moment it chooses, as a lost Airflow worker dies."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 180, worker: Any = None) -> None:
    """Poll ``predicate``; a worker process that ends first fails at once (its start takes seconds to
    tens of seconds on a loaded machine, hence the long timeout)."""
    deadline = time.time() + timeout
    while not predicate():
        assert worker is None or worker.poll() is None, f"the worker ended early with exit code {worker.poll()}"
        assert time.time() < deadline, f"timed out after {timeout:.0f}s"
        time.sleep(0.05)


def kill_worker_when(worker: subprocess.Popen[bytes], predicate: Callable[[], bool], *, settle: float = 0) -> None:
    """SIGKILL ``worker`` (from :func:`start_worker`) once ``predicate`` holds (``settle`` seconds later), as a
    lost Airflow worker dies; it never outlives the call, whatever fails."""
    try:
        wait_for(predicate, worker=worker)
        time.sleep(settle)
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(30)


def context(run_id: str = "manual__run1", **extra: Any) -> dict[str, Any]:
    return {"run_id": run_id, "ti": FakeTI(run_id=run_id), **extra}


async def first_event(trigger: Any) -> dict[str, Any]:
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError("the trigger yielded nothing")


def run_deferred(op: Any, ctx: dict[str, Any]) -> tuple[Any, list[Any]]:
    """Run ``op`` as Airflow would: execute, and on deferral run the trigger then the callback."""
    triggers: list[Any] = []
    method = None
    event: dict[str, Any] | None = None
    while True:
        try:
            if method is None:
                return op.execute(ctx), triggers
            return getattr(op, method)(ctx, event), triggers
        except TaskDeferred as deferred:
            triggers.append(deferred.trigger)
            json.dumps(deferred.trigger.serialize()[1])  # what the triggerer stores must be JSON-safe
            event = asyncio.run(first_event(deferred.trigger))
            method = deferred.method_name


def landed(root: Path, label: str, directory: str | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """resourceType -> id -> resource, from every landed data file of an export label."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(root.glob(f"*/{label}/*.ndjson")):
        kind = path.parent.parent.name  # errors/, deleted/ and attachments/ are not resource types
        if kind.startswith("_"):  # the export's own state (_exports/<label>/log.ndjson), not data
            continue
        if kind in ("errors", "deleted", "attachments") or (directory and kind != directory):
            continue
        for line in path.read_text().splitlines():
            resource = json.loads(line)
            if _is_block_header(resource):
                continue
            by_id = found.setdefault(resource["resourceType"], {})
            assert resource["id"] not in by_id, f"{resource['resourceType']}/{resource['id']} landed twice"
            by_id[resource["id"]] = resource
    return found


def _is_block_header(resource: dict[str, Any]) -> bool:
    """The Parameters line that starts an organizeOutputBy block (it names the block's resource)."""
    params = resource.get("parameter") or [{}]
    return resource["resourceType"] == "Parameters" and params[0].get("name") == "header"


def store_view(
    server: SandboxServer, types: list[str] | None = None, patients: set[str] | None = None
) -> dict[str, dict[str, Any]]:
    store = server.state.store
    out: dict[str, dict[str, Any]] = {}
    for rtype in types or store.types():
        resources = {r["id"]: r for r in store.iter_type(rtype) if patients is None or store.patient_refs(r) & patients}
        if resources:
            out[rtype] = resources
    return out


def kickoffs(server: SandboxServer) -> int:
    return sum(n for path, n in server.state.faults.requests.items() if path.endswith("$export"))
