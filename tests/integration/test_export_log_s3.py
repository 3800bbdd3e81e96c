"""The export log on S3 (moto's server over loopback): no append there, so the few lines of the export's
life rewrite log.ndjson by atomic replace, download events go out in batches as part objects of their own
(linear bytes, no collisions between parallel tasks), and export_complete folds them in."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_smart.sandbox.server import SandboxServer
from airflow_provider_smart.storage.export_log import FLUSH_EVERY, ExportLog, merged_log, read_log
from airflow_provider_smart.tables.bulk_folder import read_bulk_folder, write_flat_view
from tests.integration.bulk_helpers import context, export_operator, run_deferred
from tests.integration.test_export_log_sandbox import cumulus_lookups
from tests.s3_fixtures import MotoS3

pytestmark = pytest.mark.integration
STATUS = "https://ehr.example/status/7"


def progress(rows: list[dict[str, object]]) -> list[object]:
    return [row["eventDetail"]["xProgress"] for row in rows]  # type: ignore[index]


def test_lines_stay_whole_and_batches_become_parts_folded_in_on_completion(moto_s3: MotoS3) -> None:
    export_dir = ObjectStoragePath(f"s3://{moto_s3.bucket}/out/_exports/run1", conn_id=moto_s3.conn_id)
    log = ExportLog.beside(export_dir, STATUS)
    log.status_progress("start", None)
    assert moto_s3.read("out/_exports/run1/log.ndjson").count(b"\n") == 1
    with log.buffered():
        for n in range(FLUSH_EVERY + 5):
            log.event("status_progress", {"body": None, "xProgress": n, "retryAfter": None})
        # One part at FLUSH_EVERY lines; the last five wait for the end of the batch. log.ndjson is untouched.
        assert len(moto_s3.keys("out/_exports/run1/log.parts/")) == 1
    assert len(moto_s3.keys("out/_exports/run1/log.parts/")) == 2
    assert moto_s3.read("out/_exports/run1/log.ndjson").count(b"\n") == 1
    assert progress([json.loads(x) for x in merged_log(export_dir).splitlines()]) == ["start", *range(FLUSH_EVERY + 5)]

    # A second writer (the retried task) continues the file, a torn tail left by a kill cut off.
    key = "out/_exports/run1/log.ndjson"
    moto_s3.client().put_object(Bucket=moto_s3.bucket, Key=key, Body=moto_s3.read(key) + b'{"exportId": "to')
    retried = ExportLog.beside(export_dir, STATUS)
    retried.export_complete(files=1, resources=2, size=3, started_at=None)
    rows = read_log(retried.path)
    assert [r["eventId"] for r in rows][-1] == "export_complete" and len(rows) == FLUSH_EVERY + 7
    assert progress(rows[:-1]) == ["start", *range(FLUSH_EVERY + 5)]
    assert not moto_s3.keys("out/_exports/run1/log.parts/")  # folded in and removed
    assert not [k for k in moto_s3.keys("out/") if "_tmp." in k]  # every write replaced atomically


def test_parallel_writers_never_overwrite_each_other(moto_s3: MotoS3) -> None:
    export_dir = ObjectStoragePath(f"s3://{moto_s3.bucket}/out/_exports/run1", conn_id=moto_s3.conn_id)
    main = ExportLog.beside(export_dir, STATUS)
    main.status_progress("first", None)
    batches = [ExportLog.beside(export_dir, STATUS) for _ in range(2)]
    for log, text in ((batches[1], "second"), (batches[0], "third")):
        time.sleep(0.005)  # timestamps have millisecond resolution, as bulk-data-client writes them
        with log.buffered():
            log.status_progress(text, None)
    time.sleep(0.005)
    main.export_complete(files=0, resources=0, size=0, started_at=None)
    rows = read_log(main.path)
    assert progress(rows[:-1]) == ["first", "second", "third"] and rows[-1]["eventId"] == "export_complete"
    # A consolidation killed before it removed the parts: the repeats are dropped when merged again.
    moto_s3.client().put_object(
        Bucket=moto_s3.bucket,
        Key="out/_exports/run1/log.parts/x-000001.ndjson",
        Body=moto_s3.read("out/_exports/run1/log.ndjson").splitlines()[1] + b"\n",
    )
    assert len(merged_log(export_dir).splitlines()) == len(rows)


def test_a_sandbox_export_to_s3_leaves_one_whole_log_and_a_flat_view(
    bulk_server: Callable[..., tuple[SandboxServer, Any]], moto_s3: MotoS3
) -> None:
    bulk_server(patients=4, seed=7, max_file_resources=5)
    output = f"s3://{moto_s3.bucket}/fhir"
    op = export_operator(output, output_conn_id=moto_s3.conn_id, types=["Patient", "Observation"], deferrable=False)
    summary, _ = run_deferred(op, context("scheduled__1"))
    assert not moto_s3.keys("fhir/_exports/scheduled__1/log.parts/")  # folded into log.ndjson at the end
    rows = [json.loads(line) for line in moto_s3.read("fhir/_exports/scheduled__1/log.ndjson").splitlines()]
    completes = [r for r in rows if r["eventId"] == "download_complete"]
    assert sum(r["eventDetail"]["resourceCount"] for r in completes) == sum(summary["counts"].values())
    assert rows[-1]["eventId"] == "export_complete"
    assert cumulus_lookups(rows) == ("", summary["transaction_time"])

    flat = ObjectStoragePath(f"s3://{moto_s3.bucket}/flat", conn_id=moto_s3.conn_id)
    written = write_flat_view(ObjectStoragePath(output, conn_id=moto_s3.conn_id), "scheduled__1", flat)
    keys = moto_s3.keys("flat/")
    assert "flat/log.ndjson" in keys and written["files"].keys() == summary["counts"].keys()
    assert moto_s3.read("flat/log.ndjson") == moto_s3.read("fhir/_exports/scheduled__1/log.ndjson")
    assert read_bulk_folder(flat).transaction_time == summary["transaction_time"]
