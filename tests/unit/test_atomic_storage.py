from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_smart.storage.atomic import (
    atomic_open,
    atomic_write_json,
    clear_directory,
    is_complete,
    mark_complete,
    mark_incomplete,
    read_json,
)
from airflow_provider_smart.storage.paths import resolve_output, safe_segment


def test_atomic_open_commits_only_on_success(tmp_path: Path) -> None:
    root = resolve_output(str(tmp_path))
    target = root / "Patient" / "part-00000.ndjson"
    with atomic_open(target) as fh:
        fh.write(b'{"resourceType":"Patient"}\n')
        assert not target.exists()
        assert [p.name.startswith("_tmp.") for p in target.parent.iterdir()] == [True]
    assert target.read_bytes() == b'{"resourceType":"Patient"}\n'

    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b'{"resourceType":"Patient"}\n'
    assert sorted(p.name for p in target.parent.iterdir()) == ["part-00000.ndjson"]


def test_a_new_attempt_removes_leftovers_of_killed_ones_for_that_file_only(tmp_path: Path) -> None:
    root = resolve_output(str(tmp_path))
    target = root / "Observation" / "Observation.00000.ndjson"
    target.parent.mkdir(parents=True)
    # What a worker killed mid-write leaves: a partial temp file of this name, and one of another file.
    (target.parent / "_tmp.0123abcd.Observation.00000.ndjson").write_bytes(b'{"resourceType":"Obs')
    other = target.parent / "_tmp.4567ef01.Observation.00001.ndjson"
    other.write_bytes(b"in progress elsewhere")
    with atomic_open(target) as fh:
        fh.write(b"{}\n")
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([other.name, target.name])


def test_markers_and_json(tmp_path: Path) -> None:
    d = resolve_output(f"file://{tmp_path}") / "run"
    assert read_json(d / "state.json") is None
    atomic_write_json(d / "state.json", {"a": 1})
    assert read_json(d / "state.json") == {"a": 1}
    assert not is_complete(d)
    mark_complete(d, {"files": 1})
    assert is_complete(d)
    mark_incomplete(d)
    assert not is_complete(d)
    clear_directory(d, keep={"state.json"})
    assert [p.name for p in d.iterdir()] == ["state.json"]


def test_resolve_output_errors() -> None:
    with pytest.raises(TypeError, match="ObjectStoragePath, a URI or a path"):
        resolve_output(42)
    with pytest.raises(ValueError, match="output is empty"):
        resolve_output("")


def test_safe_segment() -> None:
    assert safe_segment("scheduled__2026-01-01T00:00:00+00:00") == "scheduled__2026-01-01T00_00_00_00_00"
    with pytest.raises(ValueError):
        safe_segment("///")
