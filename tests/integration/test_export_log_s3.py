"""The export log on S3 (moto's server over loopback): no append there, so the file is rewritten whole by
atomic replace; download events are buffered; fanned-out batches write parts that merge by timestamp."""

from __future__ import annotations

import json
import time

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_smart.storage.export_log import FLUSH_EVERY, ExportLog, merged_log, read_log
from tests.s3_fixtures import MotoS3

pytestmark = pytest.mark.integration


def test_the_log_is_rewritten_whole_and_stays_valid_on_s3(moto_s3: MotoS3) -> None:
    export_dir = ObjectStoragePath(f"s3://{moto_s3.bucket}/out/_exports/run1", conn_id=moto_s3.conn_id)
    log = ExportLog.beside(export_dir, "https://ehr.example/status/7")
    log.status_progress("10%", None)
    assert moto_s3.read("out/_exports/run1/log.ndjson").count(b"\n") == 1
    with log.buffered():
        for n in range(FLUSH_EVERY + 5):
            log.event("status_progress", {"body": None, "xProgress": f"{n}", "retryAfter": None})
        # One flush at FLUSH_EVERY lines; the last five wait for the end of the batch.
        assert moto_s3.read("out/_exports/run1/log.ndjson").count(b"\n") == 1 + FLUSH_EVERY
    assert len(read_log(log.path)) == FLUSH_EVERY + 6
    # A second writer (the retried task) continues the same file, a torn tail left by a kill cut off.
    moto_s3.client().put_object(
        Bucket=moto_s3.bucket,
        Key="out/_exports/run1/log.ndjson",
        Body=moto_s3.read("out/_exports/run1/log.ndjson") + b'{"exportId": "to',
    )
    ExportLog.beside(export_dir, "https://ehr.example/status/7").status_progress("done", None)
    rows = [json.loads(line) for line in moto_s3.read("out/_exports/run1/log.ndjson").splitlines()]
    assert len(rows) == FLUSH_EVERY + 7 and rows[-1]["eventDetail"]["xProgress"] == "done"
    assert not [k for k in moto_s3.keys("out/") if "_tmp." in k]  # every rewrite replaced atomically


def test_fanned_out_batches_write_parts_merged_in_time_order(moto_s3: MotoS3) -> None:
    export_dir = ObjectStoragePath(f"s3://{moto_s3.bucket}/out/_exports/run1", conn_id=moto_s3.conn_id)
    main = ExportLog.beside(export_dir, "https://ehr.example/status/7")
    main.status_progress("first", None)
    one = ExportLog.for_batch(export_dir, "https://ehr.example/status/7", ["Patient.00000"])
    two = ExportLog.for_batch(export_dir, "https://ehr.example/status/7", ["Patient.00001"])
    assert one.path != two.path != main.path
    for log, text in ((two, "second"), (one, "third"), (main, "fourth")):
        time.sleep(0.005)  # timestamps have millisecond resolution, as bulk-data-client writes them
        log.status_progress(text, None)
    rows = [json.loads(line) for line in merged_log(export_dir).splitlines()]
    assert [r["eventDetail"]["xProgress"] for r in rows] == ["first", "second", "third", "fourth"]
    assert len(moto_s3.keys("out/_exports/run1/log.parts/")) == 2
