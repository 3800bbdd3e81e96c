from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_smart.storage.atomic import (
    StaleTemps,
    atomic_open,
    atomic_write_json,
    clear_directory,
    is_complete,
    mark_complete,
    mark_incomplete,
    read_json,
    temp_sibling,
)
from airflow_provider_smart.storage.paths import resolve_output, safe_segment

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


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
    temp_sibling(target).write_bytes(b'{"resourceType":"Obs')
    other = temp_sibling(target.parent / "Observation.00001.ndjson")
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


def _leftover(final: ObjectStoragePath) -> ObjectStoragePath:
    """What a writer of ``final`` killed mid-write leaves: its temporary sibling, partly written."""
    stale = temp_sibling(final)
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b'{"resourceType":"Obs')
    return stale


def _count_listings(monkeypatch: pytest.MonkeyPatch, root: ObjectStoragePath) -> list[str]:
    """Record every directory listing (glob) made through ``root``'s path class."""
    seen: list[str] = []
    cls = type(root)
    original = cls.glob

    def counting(self: ObjectStoragePath, pattern: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(f"{self.name}/{pattern}")
        return original(self, pattern, *args, **kwargs)

    monkeypatch.setattr(cls, "glob", counting)
    return seen


def test_a_batch_lists_each_directory_once_not_once_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = resolve_output(str(tmp_path))
    finals = [root / rtype / f"{rtype}.{n:05d}.ndjson" for rtype in ("Patient", "Observation") for n in range(40)]
    leftovers = [_leftover(f) for f in finals[::7]]
    elsewhere = _leftover(root / "Patient" / "Patient.99999.ndjson")  # a file this batch does not write
    listings = _count_listings(monkeypatch, root)

    stale = StaleTemps()
    for final in finals:
        with atomic_open(final, stale=stale) as fh:
            fh.write(b"{}\n")

    assert sorted(listings) == ["Observation/_tmp.*", "Patient/_tmp.*"] and stale.listings == 2
    assert not any(p.exists() for p in leftovers)
    assert elsewhere.exists()
    assert all(f.read_bytes() == b"{}\n" for f in finals)
    # Without a batch sweeper every file lists its directory: what made big exports quadratic.
    listings.clear()
    for final in finals:
        atomic_write_json(final, {})
    assert len(listings) == len(finals)


def test_a_batch_sweeper_shared_by_threads_lists_once_and_misses_no_leftover(tmp_path: Path) -> None:
    root = resolve_output(str(tmp_path))
    finals = [root / "_records" / f"Observation.{n:05d}.json" for n in range(200)]
    leftovers = [_leftover(f) for f in finals[::3]]
    stale = StaleTemps()

    def write(final: ObjectStoragePath) -> None:
        atomic_write_json(final, {"key": final.name}, stale=stale)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write, finals))
    assert stale.listings == 1
    assert not any(p.exists() for p in leftovers)
    assert sorted(p.name for p in finals[0].parent.iterdir()) == sorted(f.name for f in finals)


def test_the_sweeper_leaves_names_that_are_not_its_temporaries(tmp_path: Path) -> None:
    root = resolve_output(str(tmp_path))
    directory = root / "Observation"
    directory.mkdir(parents=True)
    final = directory / "Observation.00000.ndjson"
    # Hidden names of other shapes: a staging directory, a blob being hashed, a short token.
    keep = ["_tmp.scheduled__1.Observation.00000.ndjson", "_tmp.0123abcd.Observation.00000.ndjson", "_SUCCESS"]
    for name in keep:
        (directory / name).write_bytes(b"x")
    with atomic_open(final, stale=StaleTemps()) as fh:
        fh.write(b"{}\n")
    assert sorted(p.name for p in directory.iterdir()) == sorted([*keep, final.name])
