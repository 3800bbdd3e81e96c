"""The NDJSON writers on local object storage: rotation, gzip, atomic commit, reruns, includes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_smart.storage.ndjson import NdjsonPartWriter, NdjsonRunWriter, committed_runs, encode_resource


def obs(i: int, **extra: object) -> dict[str, object]:
    return {"resourceType": "Observation", "id": f"o{i}", "valueString": "x" * 50, **extra}


def read_lines(path: Path) -> list[dict[str, object]]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in raw.splitlines()]


def visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith(("_", ".")))


def root(tmp_path: Path) -> ObjectStoragePath:
    return ObjectStoragePath(f"file://{tmp_path}/out")


def test_encode_resource_is_one_line_of_utf8() -> None:
    line = encode_resource({"resourceType": "Patient", "name": [{"text": "Zoë\nSmith"}]})
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and "Zoë".encode() in line


def test_parts_rotate_by_lines_and_bytes(tmp_path: Path) -> None:
    by_lines = NdjsonPartWriter(ObjectStoragePath(f"file://{tmp_path}/a"), max_part_lines=3)
    for i in range(7):
        by_lines.write(obs(i))
    assert [(p.name, p.lines) for p in by_lines.close()] == [
        ("part-00000.ndjson", 3),
        ("part-00001.ndjson", 3),
        ("part-00002.ndjson", 1),
    ]
    size = len(encode_resource(obs(0)))
    by_bytes = NdjsonPartWriter(ObjectStoragePath(f"file://{tmp_path}/b"), max_part_bytes=size * 2 + 1)
    for i in range(5):
        by_bytes.write(obs(i))
    parts = by_bytes.close()
    assert [p.lines for p in parts] == [2, 2, 1] and all(p.bytes <= size * 2 + 1 for p in parts)
    # A single line bigger than the limit still lands (alone in its part) rather than failing.
    huge = NdjsonPartWriter(ObjectStoragePath(f"file://{tmp_path}/c"), max_part_bytes=10)
    huge.write(obs(1))
    huge.write(obs(2))
    assert [p.lines for p in huge.close()] == [1, 1]
    got = [
        r["id"]
        for name in ("part-00000.ndjson", "part-00001.ndjson", "part-00002.ndjson")
        for r in read_lines(tmp_path / "a" / name)
    ]
    assert got == [f"o{i}" for i in range(7)]


def test_gzip_parts_are_valid_and_reproducible(tmp_path: Path) -> None:
    for name in ("x", "y"):
        w = NdjsonPartWriter(ObjectStoragePath(f"file://{tmp_path}/{name}"), compression="gzip", max_part_lines=2)
        for i in range(3):
            w.write(obs(i))
        assert [p.name for p in w.close()] == ["part-00000.ndjson.gz", "part-00001.ndjson.gz"]
    assert [r["id"] for r in read_lines(tmp_path / "x" / "part-00000.ndjson.gz")] == ["o0", "o1"]
    assert (tmp_path / "x" / "part-00001.ndjson.gz").read_bytes() == (
        tmp_path / "y" / "part-00001.ndjson.gz"
    ).read_bytes()
    with pytest.raises(ValueError, match="None or 'gzip'"):
        NdjsonPartWriter(ObjectStoragePath(f"file://{tmp_path}/z"), compression="zstd")


def test_nothing_is_visible_until_commit_and_marker_comes_last(tmp_path: Path) -> None:
    out = root(tmp_path)
    with NdjsonRunWriter(out, "run-1", primary_type="Observation", max_part_lines=2) as writer:
        for i in range(5):
            writer.write(obs(i))
        type_dir = tmp_path / "out" / "Observation"
        assert visible(type_dir) == []  # only the hidden staging directory exists
        results = writer.commit({"note": "hello"})
    final = type_dir / "run-1"
    assert visible(final) == ["part-00000.ndjson", "part-00001.ndjson", "part-00002.ndjson"]
    marker = json.loads((final / "_SUCCESS").read_text())
    assert marker["count"] == 5 and marker["note"] == "hello" and marker["related_types"] == []
    assert sorted(p.name for p in type_dir.iterdir()) == ["run-1"]  # staging removed
    assert results["Observation"].count == 5
    assert committed_runs(out, "Observation") == ["run-1"]


def test_a_failure_leaves_the_previous_output_untouched(tmp_path: Path) -> None:
    out = root(tmp_path)
    with NdjsonRunWriter(out, "r", primary_type="Observation") as writer:
        writer.write(obs(1))
        writer.commit()
    before = (tmp_path / "out/Observation/r/part-00000.ndjson").read_bytes()
    with pytest.raises(RuntimeError, match="boom"), NdjsonRunWriter(out, "r", primary_type="Observation") as writer:
        writer.write(obs(2))
        raise RuntimeError("boom")
    assert (tmp_path / "out/Observation/r/part-00000.ndjson").read_bytes() == before
    assert (tmp_path / "out/Observation/r/_SUCCESS").exists()
    assert sorted(p.name for p in (tmp_path / "out/Observation").iterdir()) == ["r"]


def test_rerun_replaces_its_own_output_and_nothing_else(tmp_path: Path) -> None:
    out = root(tmp_path)
    with NdjsonRunWriter(out, "r1", primary_type="Observation", max_part_lines=1) as writer:
        for i in range(3):
            writer.write(obs(i))
        writer.write({"resourceType": "Patient", "id": "p1"}, deduplicate=True)
        writer.commit()
    with NdjsonRunWriter(out, "r2", primary_type="Observation") as writer:
        writer.write(obs(9))
        writer.commit()
    # Rerun r1: fewer parts, and no Patient this time.
    with NdjsonRunWriter(out, "r1", primary_type="Observation", max_part_lines=1) as writer:
        writer.write(obs(7))
        writer.commit()
    r1 = tmp_path / "out/Observation/r1"
    assert visible(r1) == ["part-00000.ndjson"]
    assert [r["id"] for r in read_lines(r1 / "part-00000.ndjson")] == ["o7"]
    assert not (tmp_path / "out/Patient/r1").exists()
    assert [r["id"] for r in read_lines(tmp_path / "out/Observation/r2/part-00000.ndjson")] == ["o9"]
    assert (tmp_path / "out/Observation/r2/_SUCCESS").exists()


def test_includes_go_to_their_own_type_deduplicated(tmp_path: Path) -> None:
    out = root(tmp_path)
    with NdjsonRunWriter(out, "r", primary_type="Observation", compression="gzip") as writer:
        writer.write(obs(1), deduplicate=True)
        assert writer.write({"resourceType": "Patient", "id": "p1"}, deduplicate=True)
        writer.write(obs(2), deduplicate=True)
        assert not writer.write({"resourceType": "Patient", "id": "p1"}, deduplicate=True)
        assert not writer.write(obs(1), deduplicate=True)
        results = writer.commit()
    assert {k: v.count for k, v in results.items()} == {"Observation": 2, "Patient": 1}
    assert writer.duplicates == 2
    marker = json.loads((tmp_path / "out/Observation/r/_SUCCESS").read_text())
    assert marker["related_types"] == ["Patient"]
    assert [r["id"] for r in read_lines(tmp_path / "out/Patient/r/part-00000.ndjson.gz")] == ["p1"]


def test_an_empty_run_still_commits_the_primary_type(tmp_path: Path) -> None:
    with NdjsonRunWriter(root(tmp_path), "empty", primary_type="Observation") as writer:
        writer.commit()
    final = tmp_path / "out/Observation/empty"
    assert visible(final) == [] and json.loads((final / "_SUCCESS").read_text())["count"] == 0


def test_unsafe_run_labels_are_made_safe_and_resources_need_a_type(tmp_path: Path) -> None:
    writer = NdjsonRunWriter(root(tmp_path), "manual__2024-01-01T00:00:00+00:00")
    assert writer.run == "manual__2024-01-01T00_00_00_00_00"
    with pytest.raises(ValueError, match="resourceType"):
        writer.write({"id": "x"})
    writer.abort()
