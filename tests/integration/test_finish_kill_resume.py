"""A worker killed in the middle of the finishing step (Parquet per type, in parallel processes), inline
and fanned out: nothing of the run is published (no marker readable), the watermark stays, and the
resumed finish converts only the types whose tables did not commit, then publishes everything."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.export.finish import FINISHED_TYPES
from airflow_provider_smart.operators.bulk_export import (
    FhirBulkDownloadOperator,
    FhirBulkExportFinalizeOperator,
)
from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.storage.atomic import SUCCESS_MARKER
from tests.integration.bulk_helpers import context, export_operator, run_deferred, start_worker, store_view

pytestmark = pytest.mark.integration
LABEL = "manual__run1"
FORMATS = ("ndjson", "parquet")

# The worker stops for good right after the finish recorded its first committed type: the test kills it
# there (with its pool's processes), so one type is committed and recorded and the others are not.
_STOP_AFTER_FIRST_TYPE = """
import json, sys, time
from airflow_provider_smart.export import finish
from airflow_provider_smart.storage.export_state import ExportLayout
finish.MIN_BYTES_PER_PROCESS = 1  # a process per type, as a large export gets
real = ExportLayout.write_state
def write_state(self, state):
    real(self, state)
    if state.get("finished_types") and state.get("phase") != "complete":
        time.sleep(3600)
ExportLayout.write_state = write_state
from tests.integration.bulk_helpers import context, run_deferred
"""

_INLINE_WORKER = (
    _STOP_AFTER_FIRST_TYPE
    + """
from tests.integration.bulk_helpers import export_operator
op = export_operator(sys.argv[1], formats=("ndjson", "parquet"), deferrable=False, max_finish_workers=2)
run_deferred(op, context())
"""
)

_FINALIZE_WORKER = (
    _STOP_AFTER_FIRST_TYPE
    + """
from airflow_provider_smart.operators.bulk_export import FhirBulkExportFinalizeOperator
FhirBulkExportFinalizeOperator(task_id="finalize", export=json.loads(sys.argv[1]), max_finish_workers=2).execute(
    context()
)
"""
)


@pytest.fixture
def server(bulk_server: Callable[..., tuple[SandboxServer, Any]]) -> SandboxServer:
    return bulk_server(max_file_resources=25)[0]


def _kill_after_first_type(code: str, arg: str, state_file: Path) -> dict[str, Any]:
    """Run ``code`` in a worker, kill it (and its pool) once a type is recorded; the state it left."""
    worker = start_worker(code, arg)
    deadline = time.time() + 300
    try:
        while True:
            state = json.loads(state_file.read_text()) if state_file.exists() else {}
            if state.get(FINISHED_TYPES):
                break
            assert worker.poll() is None, f"the worker ended early with exit code {worker.poll()}"
            assert time.time() < deadline, "the worker did not get to the finishing step"
            time.sleep(0.05)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the worker's session: its pool's processes too
        worker.wait(30)
    return state


def _check_killed(out: Path, state: dict[str, Any], types: set[str]) -> tuple[str, tuple[int, int]]:
    """What the kill left: no watermark, nothing of the run published (no marker readable anywhere), the
    recorded type's table committed whole (its parts, its marker held back for the publication)."""
    assert state["phase"] == "downloading"
    assert not (out / "_watermarks").exists() or not list((out / "_watermarks").iterdir())
    recorded = set(state[FINISHED_TYPES])
    assert recorded < types  # killed mid-finish: some types remain
    assert not (out / "_exports" / LABEL / SUCCESS_MARKER).exists()
    assert not [rtype for rtype in types if (out / rtype / LABEL).exists()]  # the NDJSON is still staged
    assert not list(out.glob(f"parquet/*/{LABEL}/{SUCCESS_MARKER}"))
    first = sorted(recorded)[0]
    part = out / "parquet" / first / LABEL / "part-00000.parquet"
    assert part.exists()
    return first, (part.stat().st_mtime_ns, part.stat().st_ino)


def _check_resumed(
    out: Path, summary: dict[str, Any], server: SandboxServer, kept: tuple[str, tuple[int, int]]
) -> None:
    expected = {t: len(v) for t, v in store_view(server).items()}
    assert summary["parquet"]["counts"] == expected
    first, stat = kept
    part = out / "parquet" / first / LABEL / "part-00000.parquet"
    assert (part.stat().st_mtime_ns, part.stat().st_ino) == stat  # committed before the kill: not redone
    assert (out / "_exports" / LABEL / SUCCESS_MARKER).exists()
    for rtype in expected:
        directory = out / "parquet" / rtype / LABEL
        assert (directory / SUCCESS_MARKER).exists()
        assert (out / rtype / LABEL / SUCCESS_MARKER).exists()  # the NDJSON published with it
        assert not [p.name for p in directory.iterdir() if p.name.startswith("_tmp.")]  # leftovers cleared
    state = json.loads((out / "_exports" / LABEL / "state.json").read_text())
    assert state["phase"] == "complete" and set(state[FINISHED_TYPES]) == set(expected)
    assert list((out / "_watermarks").iterdir())


def test_inline_export_killed_mid_finish_resumes_only_what_did_not_commit(
    server: SandboxServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    types = set(store_view(server))
    state = _kill_after_first_type(_INLINE_WORKER, str(out), out / "_exports" / LABEL / "state.json")
    kept = _check_killed(out, state, types)
    summary, _ = run_deferred(export_operator(out, formats=FORMATS, deferrable=False), context())
    _check_resumed(out, summary, server, kept)


def test_fanned_out_finalize_killed_mid_finish_resumes_only_what_did_not_commit(
    server: SandboxServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    ctx = context()
    batches, _ = run_deferred(export_operator(out, formats=FORMATS, download_mode="fanout", max_batches=2), ctx)
    for n, batch in enumerate(batches):
        FhirBulkDownloadOperator(task_id=f"download_{n}", batch=batch).execute(context())
    ref = ctx["ti"].xcoms["export"]
    state = _kill_after_first_type(_FINALIZE_WORKER, json.dumps(ref), out / "_exports" / LABEL / "state.json")
    kept = _check_killed(out, state, set(store_view(server)))
    summary = FhirBulkExportFinalizeOperator(task_id="finalize", export=ref).execute(context())
    _check_resumed(out, summary, server, kept)
