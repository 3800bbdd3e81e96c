"""The NDJSON run writer on S3 (moto's server over loopback, through an Airflow ``aws`` connection)."""

from __future__ import annotations

import gzip
import json

import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_smart.storage.ndjson import NdjsonRunWriter
from tests.s3_fixtures import MotoS3

pytestmark = pytest.mark.integration


def test_commit_and_rerun_on_s3(moto_s3: MotoS3) -> None:
    out = ObjectStoragePath(f"s3://{moto_s3.bucket}/fhir", conn_id=moto_s3.conn_id)
    with NdjsonRunWriter(out, "r1", primary_type="Observation", compression="gzip", max_part_lines=2) as writer:
        for i in range(5):
            writer.write({"resourceType": "Observation", "id": f"o{i}"})
        writer.write({"resourceType": "Patient", "id": "p1"}, deduplicate=True)
        # Before the commit, only hidden staging objects exist.
        assert all("/_tmp." in key for key in moto_s3.keys("fhir/"))
        writer.commit()
    keys = moto_s3.keys("fhir/")
    assert keys == [
        "fhir/Observation/r1/_SUCCESS",
        "fhir/Observation/r1/part-00000.ndjson.gz",
        "fhir/Observation/r1/part-00001.ndjson.gz",
        "fhir/Observation/r1/part-00002.ndjson.gz",
        "fhir/Patient/r1/_SUCCESS",
        "fhir/Patient/r1/part-00000.ndjson.gz",
    ]
    lines = gzip.decompress(moto_s3.read("fhir/Observation/r1/part-00001.ndjson.gz")).splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["o2", "o3"]

    # A rerun with fewer resources and no Patient replaces exactly its own objects.
    with NdjsonRunWriter(out, "r1", primary_type="Observation", compression="gzip", max_part_lines=2) as writer:
        writer.write({"resourceType": "Observation", "id": "o9"})
        writer.commit()
    assert moto_s3.keys("fhir/") == ["fhir/Observation/r1/_SUCCESS", "fhir/Observation/r1/part-00000.ndjson.gz"]
    assert json.loads(moto_s3.read("fhir/Observation/r1/_SUCCESS"))["count"] == 1
