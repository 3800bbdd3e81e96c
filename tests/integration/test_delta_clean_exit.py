"""Processes that read or merge Delta tables exit 0, every time (no SIGABRT at interpreter shutdown).

A read through ``DeltaTable.to_pyarrow_table()`` could leave Arrow I/O threads finishing read-ahead
with Python-owned buffers after the call returned; a process exiting right after aborted in about one
run in ten with ``terminate called without an active exception`` (see ``tables/read.py``). The abort is
intermittent, so each path runs in 50 processes and all 50 must exit 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.process_exits import exit_codes, forked_exit_codes
from tests.s3_fixtures import MotoS3

pytestmark = pytest.mark.integration

RUNS = 50
TYPES = ("Observation", "Patient")


def resources(rtype: str, version: int, count: int) -> list[dict[str, object]]:
    meta = {"versionId": str(version), "lastUpdated": f"2024-05-0{version}T10:00:00Z"}
    body: dict[str, object] = (
        {"status": "final", "code": {"text": "HbA1c"}} if rtype == "Observation" else {"gender": "female"}
    )
    return [{"resourceType": rtype, "id": f"{rtype[:3].lower()}-{n}", "meta": meta, **body} for n in range(count)]


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two current-state tables of three merged runs each (three data files per table, as after a few nights)."""
    from airflow_provider_smart.storage.paths import resolve_output
    from airflow_provider_smart.tables.merge import DeltaTables

    base = tmp_path_factory.mktemp("clean-exit")
    merger = DeltaTables(resolve_output(str(base / "tables")))
    for version in (1, 2, 3):
        files = []
        for rtype in TYPES:
            path = base / f"run{version}" / f"{rtype}.ndjson"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in resources(rtype, version, 40 * version)))
            files.append(resolve_output(str(path)))
        results = merger.merge(files, source=f"run{version}", transaction_time=f"2024-05-0{version}T12:00:00Z")
        assert all(r.committed for r in results.values())
    return base / "tables"


@pytest.mark.timeout(900)
def test_reading_the_tables_as_the_demo_does_exits_cleanly_in_50_fresh_processes(tables: Path) -> None:
    # What scripts/demo.py's show_tables does: open each table, count it, read columns, print, exit.
    work = f"""
    from pathlib import Path
    from deltalake import DeltaTable
    from airflow_provider_smart.tables.read import read_table

    root = Path({str(tables)!r})
    for table_dir in sorted(p for p in root.iterdir() if not p.name.startswith("_")):
        table = DeltaTable(str(table_dir))
        print(table_dir.name, table.count(), table.version())
    rows = read_table(DeltaTable(str(root / "Observation")), ["id", "status", "meta", "_fhir_source"]).to_pylist()
    assert len(rows) == 120 and rows[0]["meta"]["versionId"] == "3", rows[0]
    print(len(rows))
    """
    codes = exit_codes(work, RUNS, timeout=120)
    assert codes == {0: RUNS}, f"exit statuses of {RUNS} processes: {dict(codes)} (134/-6: SIGABRT at exit)"


@pytest.mark.timeout(1800)
def test_merging_into_the_tables_exits_cleanly_in_50_fresh_processes(tables: Path) -> None:
    # Airflow itself is imported once by the launcher (it costs seconds of CPU); each forked child then
    # imports pyarrow and deltalake, plans and commits one merge, and exits through normal shutdown.
    # About 1.5 CPU-seconds a child; the timeout leaves room for a machine shared many times over.
    preload = """
    import json, tempfile
    from pathlib import Path
    from airflow_provider_smart.storage.atomic import atomic_write_json, read_json
    from airflow_provider_smart.storage.paths import resolve_output

    warm = resolve_output(tempfile.mkdtemp()) / "warm.json"
    atomic_write_json(warm, {})
    read_json(warm)
    """
    # Even runs commit newer copies; odd runs bring older copies, so the merge plans (reads the table's
    # keys), finds nothing newer and returns at once: the read is the last native work before exit.
    work = f"""
    from airflow_provider_smart.tables.merge import DeltaTables

    index = int(os.environ["RUN_INDEX"])
    version = 1 if index % 2 else 10 + index
    run = Path(tempfile.mkdtemp())
    lines = [
        {{"resourceType": "Observation", "id": f"obs-{{n}}", "status": "amended",
          "meta": {{"versionId": str(version), "lastUpdated": "2024-06-01T10:00:00Z"}}}}
        for n in range(5)
    ]
    (run / "Observation.ndjson").write_text("".join(json.dumps(r) + "\\n" for r in lines))
    landed = [resolve_output(str(run / "Observation.ndjson"))]
    merged = DeltaTables(resolve_output({str(tables)!r})).merge(
        landed, source=f"v{{version}}", transaction_time="2024-06-01T12:00:00Z"
    )["Observation"]
    if version == 1:
        assert not merged.committed and merged.unchanged == 5, merged
    else:
        assert merged.committed and merged.updated == 5, merged
    """
    codes = forked_exit_codes(preload, work, RUNS, timeout=1700)
    assert codes == {0: RUNS}, f"exit statuses of {RUNS} merges: {dict(codes)} (134/-6: SIGABRT at exit)"


S3_RUNS = 30


@pytest.mark.timeout(1800)
def test_merging_into_a_table_on_s3_exits_cleanly_in_fresh_processes(moto_s3: MotoS3) -> None:
    # A table on S3 is read and written through delta-rs' object store wrapped in Arrow's PyFileSystem
    # (tables/files.py): Python-backed I/O, the kind that aborted at exit when a scan read ahead. The
    # merge reads keys and rewrites files one row group at a time with no read-ahead; this proves the
    # remote path ends as cleanly as the local one (the connection reaches the children by env var).
    preload = """
    import json, tempfile
    from pathlib import Path
    from airflow_provider_smart.operators.tables import storage_options_for
    from airflow_provider_smart.storage.paths import resolve_output
    """
    root = f"s3://{moto_s3.bucket}/fhir/tables"
    work = f"""
    from airflow_provider_smart.tables.merge import DeltaTables

    index = int(os.environ["RUN_INDEX"])
    # Every third run brings an older copy: the merge plans (reads the keys) and commits nothing.
    version = 1 if index % 3 == 2 else 10 + index
    run = Path(tempfile.mkdtemp())
    lines = [
        {{"resourceType": "Observation", "id": f"obs-{{n}}", "status": "amended",
          "meta": {{"versionId": str(version), "lastUpdated": "2024-06-01T10:00:00Z"}}}}
        for n in range(0, 300, 7)
    ]
    (run / "Observation.ndjson").write_text("".join(json.dumps(r) + "\\n" for r in lines))
    table_root = resolve_output({root!r}, {moto_s3.conn_id!r})
    merged = DeltaTables(table_root, storage_options=storage_options_for(table_root, {moto_s3.conn_id!r})).merge(
        [resolve_output(str(run / "Observation.ndjson"))], source=f"v{{index}}", transaction_time="2024-06-01T12:00:00Z"
    )["Observation"]
    assert merged.committed == (version != 1), merged
    """
    codes = forked_exit_codes(preload, work, S3_RUNS, timeout=1700)
    assert codes == {0: S3_RUNS}, f"exit statuses of {S3_RUNS} merges on S3: {dict(codes)} (134/-6: SIGABRT at exit)"
