"""Delta merge behaviour on real tables: kills, concurrent merges, schema growth, other readers, S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.storage.paths import resolve_output
from airflow_provider_smart.tables.merge import DeltaTables, TableBusyError

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TT1, TT2 = "2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"


def observation(i: int, version: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{i}",
        "meta": {"versionId": str(version), "lastUpdated": f"2024-01-01T00:00:{version:02d}Z"},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}], "text": f"HbA1c {i}"},
        "valueQuantity": {"value": 5.0 + i % 30 / 10, "unit": "%"},
        **extra,
    }


def write_ndjson(path: Path, resources: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    return path


def rows(root: Path, rtype: str = "Observation") -> dict[str, str]:
    from deltalake import DeltaTable

    from airflow_provider_smart.tables.read import read_table

    table = read_table(DeltaTable(str(root / rtype)), ["id", "meta"]).to_pylist()
    return {r["id"]: r["meta"]["versionId"] for r in table}


def version(root: Path, rtype: str = "Observation") -> int:
    from deltalake import DeltaTable

    return int(DeltaTable(str(root / rtype)).version())


def tables(root: Path, **kwargs: Any) -> DeltaTables:
    return DeltaTables(resolve_output(str(root)), **kwargs)


def test_a_merge_killed_before_its_commit_leaves_the_previous_version(tmp_path: Path) -> None:
    root = tmp_path / "tables"
    first = write_ndjson(tmp_path / "in/first.ndjson", [observation(i) for i in range(1000)])
    tables(root).merge([first], source="export:one", transaction_time=TT1)
    before_version, before_rows = version(root), rows(root)
    big = write_ndjson(tmp_path / "in/big.ndjson", [observation(i, 2) for i in range(150_000)])
    ready = tmp_path / "stream-consumed"
    # The merge's source stream is held open once every row has been handed over: the writer has
    # everything but cannot commit. Killing it there is the worst moment, and it is the same moment on
    # every machine (a timed kill raced the merge and lost on fast ones).
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from airflow_provider_smart.storage.paths import resolve_output
        from airflow_provider_smart.tables import merge as merge_module
        from airflow_provider_smart.tables.merge import DeltaTables

        real_batches = merge_module._Plan._batches

        def batches_then_hold(self, *args, **kwargs):
            yield from real_batches(self, *args, **kwargs)
            Path({str(ready)!r}).touch()
            time.sleep(3600)

        merge_module._Plan._batches = batches_then_hold
        DeltaTables(resolve_output({str(root)!r})).merge([{str(big)!r}], source="export:two", transaction_time={TT2!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), f"the merge never handed over all its rows (exit code {proc.poll()})"
        time.sleep(0.5)  # let the writer flush what it can; it still cannot commit
        assert proc.poll() is None, "the merge ended although its source stream was held open"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Whatever data files the dead merge wrote, no commit references them.
    assert len(list((root / "Observation/_delta_log").glob("*.json"))) == before_version + 1
    assert version(root) == before_version
    assert rows(root) == before_rows
    # The rerun completes the merge.
    tables(root).merge([big], source="export:two", transaction_time=TT2)
    assert version(root) == before_version + 1
    got = rows(root)
    assert len(got) == 150_000 and set(got.values()) == {"2"}


def test_two_merges_at_once_serialize_or_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_smart.tables import merge as merge_module

    root = tmp_path / "tables"
    base = write_ndjson(tmp_path / "in/base.ndjson", [observation(i) for i in range(100)])
    tables(root).merge([base], source="export:base", transaction_time=TT1)
    a = write_ndjson(tmp_path / "in/a.ndjson", [observation(i, 2) for i in range(0, 50)])
    b = write_ndjson(tmp_path / "in/b.ndjson", [observation(i, 3) for i in range(25, 100)])

    real_reader = merge_module._Plan.reader
    interleaved: list[int] = []

    def reader_with_a_rival_commit(self: Any, *args: Any, **kwargs: Any) -> Any:
        # The other merge commits after this one planned and before it commits.
        if not interleaved:
            interleaved.append(1)
            tables(root).merge([b], source="export:b", transaction_time=TT2)
        return real_reader(self, *args, **kwargs)

    monkeypatch.setattr(merge_module._Plan, "reader", reader_with_a_rival_commit)
    v0 = version(root)
    with pytest.raises(TableBusyError, match="kept changing under this merge"):
        tables(root, max_attempts=1).merge([a], source="export:a", transaction_time=TT2)
    assert version(root) == v0 + 1  # b's commit only
    assert rows(root) == {f"obs-{i}": ("1" if i < 25 else "3") for i in range(100)}

    interleaved.clear()
    monkeypatch.setattr(merge_module._Plan, "reader", reader_with_a_rival_commit)
    result = tables(root, max_attempts=3).merge([a], source="export:a", transaction_time=TT2)
    assert result["Observation"].committed
    # Newest version of each id wins, whichever merge committed first.
    assert rows(root) == {f"obs-{i}": ("2" if i < 25 else "3") for i in range(100)}


def test_schema_grows_when_a_later_run_brings_a_new_field(tmp_path: Path) -> None:
    from deltalake import DeltaTable

    from airflow_provider_smart.tables.read import read_table

    root = tmp_path / "tables"
    first = write_ndjson(tmp_path / "in/1.ndjson", [observation(i) for i in range(10)])
    tables(root).merge([first], source="export:1", transaction_time=TT1)
    names = set(DeltaTable(str(root / "Observation")).schema().to_arrow().names)
    assert "issued" not in names and "interpretation" not in names
    later = [observation(3, 2, issued="2024-01-02T10:00:00Z", interpretation=[{"text": "high"}])]
    second = write_ndjson(tmp_path / "in/2.ndjson", later)
    tables(root).merge([second], source="export:2", transaction_time=TT2)
    table = read_table(DeltaTable(str(root / "Observation"))).sort_by("id").to_pylist()
    assert len(table) == 10
    by_id = {r["id"]: r for r in table}
    assert by_id["obs-3"]["issued"] == "2024-01-02T10:00:00Z"
    assert by_id["obs-3"]["interpretation"][0]["text"] == "high"
    assert by_id["obs-4"]["issued"] is None and by_id["obs-4"]["meta"]["versionId"] == "1"
    record = json.loads((root / "_schemas/Observation.json").read_text())
    assert "issued" in json.dumps(record)
    # A later run without the field does not shrink the table.
    third = write_ndjson(tmp_path / "in/3.ndjson", [observation(4, 5)])
    tables(root).merge([third], source="export:3", transaction_time="2024-01-03T00:00:00Z")
    assert "issued" in DeltaTable(str(root / "Observation")).schema().to_arrow().names


def test_resources_without_an_id_are_refused_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "tables"
    no_id = {k: v for k, v in observation(90).items() if k != "id"}
    source = write_ndjson(
        tmp_path / "in/1.ndjson", [observation(1), no_id, observation(91, id=""), observation(2), no_id]
    )
    result = tables(root).merge([source], source="export:1", transaction_time=TT1)["Observation"]
    assert result.without_id == 3 and result.inserted == 2 and result.unchanged == 0
    assert rows(root) == {"obs-1": "1", "obs-2": "1"}
    # Merged again, the id-less ones are refused again (never counted as unchanged rows).
    again = tables(root).merge([source], source="export:1", transaction_time=TT1)["Observation"]
    assert again.without_id == 3 and again.unchanged == 2 and not again.committed
    assert again.to_json()["without_id"] == 3


def test_duckdb_reads_the_same_rows(tmp_path: Path) -> None:
    import duckdb
    from deltalake import DeltaTable

    from airflow_provider_smart.tables.read import read_table

    root = tmp_path / "tables"
    src = write_ndjson(tmp_path / "in/1.ndjson", [observation(i) for i in range(50)])
    tables(root).merge([src], source="export:1", transaction_time=TT1)
    observations = read_table(DeltaTable(str(root / "Observation")))
    con = duckdb.connect()
    con.register("observations", observations)
    got = con.sql("SELECT id, status, valueQuantity.value AS v FROM observations ORDER BY id").fetchall()
    want = sorted((f"obs-{i}", "final", 5.0 + i % 30 / 10) for i in range(50))
    assert got == want
    try:
        con.sql("LOAD delta")
    except duckdb.Error:
        return  # the delta extension is downloaded on first use; offline it is not there
    path = str(root / "Observation")
    query = "SELECT id, status, valueQuantity.value FROM delta_scan(?) ORDER BY id"
    assert con.execute(query, [path]).fetchall() == want
