"""The bucketed layout on real Delta tables: inserts append, rewrites stay in the touched files,
older tables are re-laid out, and a merge reads the keys of the buckets its run touches only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_smart.tables.buckets import BUCKET, BUCKETS_PROPERTY, bucket_of_id
from airflow_provider_smart.tables.merge import DeltaTables, TableBusyError
from tests.integration.test_delta_merge_behaviour import TT1, TT2, observation, rows, tables, version, write_ndjson

pytestmark = pytest.mark.integration
TT3 = "2024-01-03T00:00:00Z"


def delta(root: Path) -> Any:
    from deltalake import DeltaTable

    return DeltaTable(str(root / "Observation"))


def live_files(root: Path) -> dict[str, int]:
    """path -> bucket of every file the current version reads."""
    from airflow_provider_smart.tables.files import TableFiles

    return {f.path: f.bucket for f in TableFiles.listing(delta(root))}  # type: ignore[misc]


def last_commit_actions(root: Path) -> dict[str, list[dict[str, Any]]]:
    log = sorted((root / "Observation/_delta_log").glob("*.json"))[-1]
    actions: dict[str, list[dict[str, Any]]] = {}
    for line in log.read_text().splitlines():
        for kind, body in json.loads(line).items():
            actions.setdefault(kind, []).append(body)
    return actions


def base_table(tmp_path: Path, n: int = 400, buckets: int = 8) -> Path:
    root = tmp_path / "tables"
    first = write_ndjson(tmp_path / "in/base.ndjson", [observation(i) for i in range(n)])
    result = tables(root, buckets=buckets).merge([first], source="export:base", transaction_time=TT1)
    assert result["Observation"].buckets == buckets
    return root


def test_a_new_table_is_partitioned_by_bucket_and_records_the_count(tmp_path: Path) -> None:
    root = base_table(tmp_path)
    table = delta(root)
    assert table.metadata().partition_columns == [BUCKET]
    assert table.metadata().configuration[BUCKETS_PROPERTY] == "8"
    got = table.to_pyarrow_table(columns=["id", BUCKET]).to_pylist()
    assert len(got) == 400
    assert all(r[BUCKET] == bucket_of_id(r["id"], 8) for r in got)
    assert {b for b in live_files(root).values()} == set(range(8))


def test_a_run_of_new_ids_appends_and_rewrites_nothing(tmp_path: Path) -> None:
    root = base_table(tmp_path)
    before = live_files(root)
    run = write_ndjson(tmp_path / "in/new.ndjson", [observation(i) for i in range(400, 500)])
    result = tables(root).merge([run], source="export:new", transaction_time=TT2)["Observation"]
    assert (result.inserted, result.updated, result.deleted) == (100, 0, 0)
    assert (result.files_rewritten, result.bytes_rewritten) == (0, 0)
    assert result.files_added > 0 and result.bytes_added > 0
    actions = last_commit_actions(root)
    assert "remove" not in actions and len(actions["add"]) == result.files_added
    assert set(before) <= set(live_files(root))
    assert len(rows(root)) == 500


def test_an_update_and_a_deletion_rewrite_only_the_files_holding_them(tmp_path: Path) -> None:
    root = base_table(tmp_path)
    before = live_files(root)
    updated, deleted = "obs-7", "obs-123"
    touched = {p for p, b in before.items() if b in (bucket_of_id(updated, 8), bucket_of_id(deleted, 8))}
    run = write_ndjson(tmp_path / "in/run.ndjson", [observation(7, 2)])
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": f"Observation/{deleted}"}}],
    }
    deleted_file = tmp_path / "in/deleted.ndjson"
    deleted_file.write_text(json.dumps(bundle) + "\n")
    from airflow_provider_smart.tables.deleted import read_deletions

    deletions = read_deletions([deleted_file])
    result = tables(root).merge([run], deletions, source="export:run", transaction_time=TT2)["Observation"]
    assert (result.inserted, result.updated, result.deleted) == (0, 1, 1)
    assert result.buckets_touched == len({bucket_of_id(updated, 8), bucket_of_id(deleted, 8)})
    removed = {a["path"] for a in last_commit_actions(root)["remove"]}
    assert removed == touched and result.files_rewritten == len(touched)
    assert result.bytes_rewritten == sum(f.size for f in _listing_of(root, version(root) - 1) if f.path in removed)
    assert set(before) - removed <= set(live_files(root))
    got = rows(root)
    assert len(got) == 399 and got[updated] == "2" and deleted not in got
    assert all(got[f"obs-{i}"] == "1" for i in range(400) if f"obs-{i}" not in (updated, deleted))


def _listing_of(root: Path, at: int) -> list[Any]:
    from deltalake import DeltaTable

    from airflow_provider_smart.tables.files import TableFiles

    return TableFiles.listing(DeltaTable(str(root / "Observation"), version=at))


def test_the_plan_reads_keys_of_the_touched_buckets_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_smart.tables.files import TableFiles

    root = base_table(tmp_path)
    files = live_files(root)
    read: list[str] = []
    real = TableFiles.read_columns

    def recording(self: TableFiles, path: str, columns: list[str]) -> Any:
        read.append(path)
        return real(self, path, columns)

    monkeypatch.setattr(TableFiles, "read_columns", recording)
    run = write_ndjson(tmp_path / "in/run.ndjson", [observation(3, 2)])
    tables(root).merge([run], source="export:run", transaction_time=TT2)
    assert read and {files[p] for p in read} == {bucket_of_id("obs-3", 8)}


def test_concurrent_inserts_of_the_same_ids_never_duplicate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_smart.tables import merge as merge_module

    root = base_table(tmp_path, n=50)
    run = write_ndjson(tmp_path / "in/new.ndjson", [observation(i) for i in range(50, 80)])
    real_reader = merge_module._Plan.reader
    interleaved: list[int] = []

    def reader_with_a_rival_commit(self: Any, *args: Any, **kwargs: Any) -> Any:
        # The rival inserts the same new ids after this merge planned them as inserts.
        if not interleaved:
            interleaved.append(1)
            tables(root).merge([run], source="export:rival", transaction_time=TT2)
        return real_reader(self, *args, **kwargs)

    monkeypatch.setattr(merge_module._Plan, "reader", reader_with_a_rival_commit)
    with pytest.raises(TableBusyError):
        tables(root, max_attempts=1).merge([run], source="export:new", transaction_time=TT2)
    interleaved.clear()
    result = tables(root, max_attempts=2).merge([run], source="export:new", transaction_time=TT2)
    assert not result["Observation"].committed  # planned again: the rival already holds the rows
    ids = delta(root).to_pyarrow_table(columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 80


def old_layout_table(tmp_path: Path) -> Path:
    """A table as merges wrote it before buckets: the same columns, no partitions, no bucket property."""
    from deltalake import write_deltalake

    root = base_table(tmp_path, n=300, buckets=1)
    data = delta(root).to_pyarrow_table()
    data = data.drop_columns([BUCKET])
    shutil.rmtree(root / "Observation")
    write_deltalake(str(root / "Observation"), data, mode="error")
    assert delta(root).metadata().partition_columns == []
    return root


def test_an_older_unbucketed_table_is_relaid_out_by_its_next_merge(tmp_path: Path) -> None:
    root = old_layout_table(tmp_path)
    run = write_ndjson(tmp_path / "in/run.ndjson", [observation(5, 2), observation(300)])
    result = tables(root).merge([run], source="export:run", transaction_time=TT2)["Observation"]
    assert result.relaid_out and result.committed
    assert (result.inserted, result.updated) == (1, 1)
    table = delta(root)
    assert table.metadata().partition_columns == [BUCKET]
    assert table.metadata().configuration[BUCKETS_PROPERTY] == str(result.buckets)
    got = rows(root)
    assert len(got) == 301 and got["obs-5"] == "2" and got["obs-300"] == "1"
    again = tables(root).merge([run], source="export:run", transaction_time=TT2)["Observation"]
    assert not again.committed and not again.relaid_out


def test_relayout_changes_the_bucket_count_and_keeps_every_row(tmp_path: Path) -> None:
    root = base_table(tmp_path)
    before = delta(root).to_pyarrow_table().drop_columns([BUCKET]).sort_by("id")
    done = tables(root).relayout("Observation", buckets=3)
    assert done["buckets"] == 3 and done["files_removed"] == 8
    table = delta(root)
    assert table.metadata().configuration[BUCKETS_PROPERTY] == "3"
    after = table.to_pyarrow_table()
    assert all(r[BUCKET] == bucket_of_id(r["id"], 3) for r in after.select(["id", BUCKET]).to_pylist())
    assert after.drop_columns([BUCKET]).select(before.column_names).sort_by("id").equals(before)
    with pytest.raises(ValueError, match="buckets must be a whole number"):
        tables(root).relayout("Observation", buckets=0)


def test_a_relayout_killed_before_recording_its_count_is_recovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deltalake.table import TableAlterer

    root = old_layout_table(tmp_path)

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt  # the process dies between the layout commit and the property

    with monkeypatch.context() as patch:
        patch.setattr(TableAlterer, "set_table_properties", killed)
        with pytest.raises(KeyboardInterrupt):
            tables(root).relayout("Observation", buckets=4)
    assert delta(root).metadata().partition_columns == [BUCKET]
    assert BUCKETS_PROPERTY not in delta(root).metadata().configuration
    run = write_ndjson(tmp_path / "in/run.ndjson", [observation(9, 2)])
    result = tables(root).merge([run], source="export:run", transaction_time=TT3)["Observation"]
    assert result.buckets == 4 and result.updated == 1
    assert delta(root).metadata().configuration[BUCKETS_PROPERTY] == "4"
    assert len(rows(root)) == 300


def test_a_bucket_count_that_is_not_one_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="buckets must be a whole number from 1 to 4096"):
        DeltaTables(tmp_path, buckets=-2)


def test_the_merge_statement_for_other_engines_gives_the_same_table(tmp_path: Path) -> None:
    """The MERGE the docs give Spark and Databricks, run by DuckDB on the same input, ends where we end."""
    import duckdb

    from airflow_provider_smart.tables.deleted import Deletion
    from airflow_provider_smart.tables.spark import merge_statement

    root = base_table(tmp_path, n=60, buckets=4)
    before = delta(root).to_pyarrow_table()
    newer = [observation(i, 2, status="amended") for i in range(10)]
    same = [observation(i) for i in range(10, 15)]
    new = [observation(i) for i in range(60, 70)]
    run = write_ndjson(tmp_path / "in/run.ndjson", newer + same + new)
    deletions = [Deletion("Observation", f"obs-{i}", None) for i in range(20, 25)]
    deletions.append(Deletion("Observation", "obs-25", "2023-12-31T00:00:00Z"))  # before the row's copy
    result = tables(root).merge([run], deletions, source="export:run", transaction_time=TT2)["Observation"]
    assert (result.inserted, result.updated, result.deleted, result.unchanged) == (10, 10, 5, 5)

    columns = ["id", "status", "_fhir_transaction_time", "_fhir_version_id", "_fhir_last_updated", BUCKET]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    target = before.select(columns)  # noqa: F841 (read by DuckDB)
    con.execute("CREATE TABLE t AS SELECT * FROM target")
    upserts = [(r["id"], r["status"], int(r["meta"]["versionId"]), r["meta"]["lastUpdated"]) for r in newer + same]
    upserts += [(r["id"], r["status"], 1, r["meta"]["lastUpdated"]) for r in new]
    con.execute(
        "CREATE TABLE s (id VARCHAR, status VARCHAR, _fhir_transaction_time TIMESTAMPTZ, _fhir_version_id BIGINT, "
        f"_fhir_last_updated TIMESTAMPTZ, _fhir_op VARCHAR, {BUCKET} INTEGER)"
    )
    for rid, status, v, lu in upserts:
        con.execute(
            "INSERT INTO s VALUES (?, ?, ?::TIMESTAMPTZ, ?, ?::TIMESTAMPTZ, 'upsert', ?)",
            [rid, status, TT2, v, lu, bucket_of_id(rid, 4)],
        )
    for d in deletions:
        con.execute(
            "INSERT INTO s VALUES (?, NULL, ?::TIMESTAMPTZ, NULL, ?::TIMESTAMPTZ, 'delete', ?)",
            [d.resource_id, TT2, d.deleted_at, bucket_of_id(d.resource_id, 4)],
        )
    con.execute(merge_statement("t", "s", columns))
    theirs = con.execute(f"SELECT {', '.join(columns)} FROM t ORDER BY id").fetchall()  # noqa: S608
    ours = delta(root).to_pyarrow_table(columns=columns).sort_by("id").to_pylist()
    assert len(theirs) == len(ours) == 65
    assert [tuple(r.values()) for r in ours] == theirs
