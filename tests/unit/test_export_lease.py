"""The export label lease: holds change hands only by create-if-absent, a lost hold is an error, and the
lease's own writes never remove another writer's temporary file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.storage.exclusive import create_exclusive, overwrite
from airflow_provider_smart.storage.lease import ExportLease, LeaseHeldError, LeaseLostError
from airflow_provider_smart.storage.paths import resolve_output


def label_dir(tmp_path: Path) -> Any:
    return resolve_output(str(tmp_path)) / "_exports" / "label"


def test_create_exclusive_creates_once(tmp_path: Path) -> None:
    path = resolve_output(str(tmp_path)) / "a" / "x.json"
    assert create_exclusive(path, b"first")
    assert not create_exclusive(path, b"second")
    assert path.read_bytes() == b"first"


def test_a_heartbeat_after_a_takeover_fails_instead_of_taking_the_label_back(tmp_path: Path) -> None:
    directory = label_dir(tmp_path)
    slow = ExportLease(directory, "dag/export/scheduled__1", timeout=0.05)
    slow.acquire()
    time.sleep(0.1)  # its hold lapses
    ExportLease(directory, "dag/export/manual__2").acquire()
    with pytest.raises(LeaseLostError, match=r"was lost .*held by 'dag/export/manual__2'"):
        slow.heartbeat()
    assert json.loads((directory / "lease.json").read_bytes())["owner"] == "dag/export/manual__2"
    slow.release()  # a lost hold is not released over the new holder
    assert ExportLease(directory, "x").holder() is not None


def test_a_heartbeat_after_the_hold_lapsed_fails_even_when_nobody_took_it(tmp_path: Path) -> None:
    lease = ExportLease(label_dir(tmp_path), "dag/export/scheduled__1", timeout=0.05)
    lease.acquire()
    lease.heartbeat()  # held: renews
    time.sleep(0.1)
    with pytest.raises(LeaseLostError, match="held by nobody"):
        lease.heartbeat()


def test_the_background_heartbeat_records_a_loss_and_check_raises_it(tmp_path: Path) -> None:
    directory = label_dir(tmp_path)
    lease = ExportLease(directory, "dag/export/scheduled__1", timeout=0.3)
    lease.acquire()
    with pytest.raises(LeaseLostError), lease.kept_alive():
        overwrite(directory / "lease.json", b'{"owner": "intruder", "token": "t", "expires_at": 9e18}')
        time.sleep(0.5)  # the next beat finds the intruder's token
        with pytest.raises(LeaseLostError):
            lease.check()


def test_the_same_task_instance_in_a_new_process_carries_on_with_its_hold(tmp_path: Path) -> None:
    directory = label_dir(tmp_path)
    first = ExportLease(directory, "dag/export/scheduled__1")
    first.acquire()
    again = ExportLease(directory, "dag/export/scheduled__1")  # after deferral, or a retry
    again.acquire()
    assert again.token == first.token
    again.heartbeat()
    first.heartbeat()  # still the same hold


@pytest.mark.parametrize("content", [b"{torn", b"[]", b'{"released": true, "owner": "old"}'])
def test_unreadable_and_released_leases_are_taken_over(tmp_path: Path, content: bytes) -> None:
    directory = label_dir(tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "lease.json").write_bytes(content)
    lease = ExportLease(directory, "next")
    lease.acquire()
    assert json.loads((directory / "lease.json").read_bytes())["token"] == lease.token
    assert [p.name for p in directory.iterdir() if "takeover" in p.name] == []  # the marker is gone


def test_a_live_takeover_marker_stops_this_run_and_a_dead_runs_marker_is_abandoned(tmp_path: Path) -> None:
    import hashlib

    directory = label_dir(tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    old = b'{"owner": "dead", "token": "t", "expires_at": 1}'
    (directory / "lease.json").write_bytes(old)
    # Another run has claimed the takeover of exactly this old lease and is about to write its own.
    marker = directory / f"lease.json.takeover.{hashlib.sha256(old).hexdigest()[:32]}.1"
    marker.write_bytes(json.dumps({"created_at": time.time()}).encode())
    with pytest.raises(LeaseHeldError, match="kept changing hands"):
        ExportLease(directory, "late").acquire()
    assert (directory / "lease.json").read_bytes() == old

    # The same marker from a run that died mid-takeover (older than the lease timeout) is abandoned: the
    # next generation's marker is created instead, and the dead run's marker is never deleted.
    marker.write_bytes(json.dumps({"created_at": time.time() - 3600}).encode())
    lease = ExportLease(directory, "late", timeout=60)
    lease.acquire()
    assert json.loads((directory / "lease.json").read_bytes())["token"] == lease.token
    assert marker.exists()


def test_lease_writes_leave_another_writers_temporary_file_alone(tmp_path: Path) -> None:
    directory = label_dir(tmp_path)
    lease = ExportLease(directory, "dag/export/scheduled__1")
    lease.acquire()
    live = directory / f"_tmp.{'a' * 32}.lease.json"  # another process between write and rename
    live.write_bytes(b"{}")
    lease.heartbeat()
    lease.release()
    assert live.read_bytes() == b"{}"
    assert sorted(p.name for p in directory.iterdir()) == [live.name, "lease.json"]
