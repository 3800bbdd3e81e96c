"""The export label lease under real races: two processes released at the same instant, many times over,
locally; and create-if-absent through S3's conditional PUT (moto's server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.process_exits import REPO
from tests.s3_fixtures import MotoS3

pytestmark = pytest.mark.integration

TRIALS = 150

# Imports Airflow once, then per trial forks two children that wait on one pipe and, released together,
# each try to acquire the same label. Half the trials start from no lease, half from an expired one (the
# takeover path). Prints, per trial, how many children acquired it.
_RACE = """
import json, os, sys, time
from airflow_provider_smart.storage.lease import ExportLease, LeaseHeldError
from airflow_provider_smart.storage.paths import resolve_output

base, trials = sys.argv[1], int(sys.argv[2])
winners = []
for trial in range(trials):
    directory = resolve_output(f"{base}/t{trial}") / "_exports" / "label"
    if trial % 2:
        ExportLease(directory, "dead-worker", timeout=0.01).acquire()
        time.sleep(0.02)
    gate_r, gate_w = os.pipe()
    children = []
    for who in ("a", "b"):
        pid = os.fork()
        if pid == 0:
            os.close(gate_w)
            os.read(gate_r, 1)
            try:
                ExportLease(directory, f"dag/export/{who}").acquire()
            except LeaseHeldError:
                os._exit(3)
            os._exit(0)
        children.append(pid)
    os.close(gate_r)
    os.write(gate_w, b"go")
    os.close(gate_w)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    if set(codes) - {0, 3}:
        sys.exit(f"trial {trial}: a child failed: {codes}")
    winners.append(codes.count(0))
print("WINNERS " + json.dumps(winners))
"""


@pytest.mark.timeout(600)
def test_two_processes_never_both_hold_the_lease(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_RACE), str(tmp_path), str(TRIALS)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("WINNERS ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    winners = json.loads(lines[-1].removeprefix("WINNERS "))
    assert len(winners) == TRIALS
    both = [trial for trial, count in enumerate(winners) if count > 1]
    nobody = [trial for trial, count in enumerate(winners) if count == 0]
    assert not both, f"both processes held the lease in {len(both)} of {TRIALS} trials: {both[:20]}"
    assert not nobody, f"neither process got a free label in trials {nobody[:20]}"


def test_the_lease_is_created_only_if_absent_on_s3(moto_s3: MotoS3) -> None:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_smart.storage.exclusive import create_exclusive
    from airflow_provider_smart.storage.lease import ExportLease, LeaseHeldError

    directory = ObjectStoragePath(f"s3://{moto_s3.bucket}/fhir/_exports/label", conn_id=moto_s3.conn_id)
    assert create_exclusive(directory / "probe", b"one")
    assert not create_exclusive(directory / "probe", b"two")  # If-None-Match: * refused by the store
    assert moto_s3.read("fhir/_exports/label/probe") == b"one"

    first = ExportLease(directory, "dag/export/scheduled__1")
    first.acquire()
    with pytest.raises(LeaseHeldError, match="scheduled__1"):
        ExportLease(directory, "dag/export/manual__2").acquire()
    first.heartbeat()
    first.release()
    ExportLease(directory, "dag/export/manual__2").acquire()
    assert json.loads(moto_s3.read("fhir/_exports/label/lease.json"))["owner"] == "dag/export/manual__2"
