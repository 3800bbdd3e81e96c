"""Parquet tables written to S3 (moto's server over loopback, through an Airflow ``aws`` connection)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_smart.parquet import FhirParquetWriter, iter_resources
from tests.s3_fixtures import MotoS3

pytestmark = pytest.mark.integration

OBS = [{"resourceType": "Observation", "id": f"o{i}", "valueQuantity": {"value": i + 0.5}} for i in range(20)]


def test_write_commit_and_read_back_on_s3(moto_s3: MotoS3, tmp_path: Path) -> None:
    source = tmp_path / "Observation.ndjson"
    source.write_text("".join(json.dumps(o) + "\n" for o in OBS))
    out = ObjectStoragePath(f"s3://{moto_s3.bucket}/parquet", conn_id=moto_s3.conn_id)
    writer = FhirParquetWriter(out, "r1", row_group_bytes=1, part_bytes=1)
    writer.write_ndjson(str(source))
    assert all("/_tmp." in key for key in moto_s3.keys("parquet/Observation/r1/"))
    result = writer.commit()
    keys = moto_s3.keys("parquet/")
    assert "parquet/Observation/_schema.json" in keys and "parquet/Observation/r1/_SUCCESS" in keys
    parts = [k for k in keys if k.startswith("parquet/Observation/r1/part-")]
    assert parts == ["parquet/Observation/r1/part-00000.parquet"]
    assert result["Observation"]["rows"] == 20
    table = pq.read_table(io.BytesIO(moto_s3.read(parts[0])))
    assert table.column("valueQuantity").to_pylist()[3] == {"value": 3.5}
    back = list(iter_resources(out / "Observation" / "r1" / "part-00000.parquet"))
    assert back == OBS
